//! A lock holder whose lease expired cannot write: the guarded read registers the fencing
//! token on the row and the write checks it, so once a newer holder has read the row, the
//! older one's write is refused, whether the newer one has written yet or not.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use platform::testkit::{TestDb, TestRedis};
use shop::guarded::{self, Adjusted};
use shop::lock::Locks;
use shop::participant::{Context, Failure, Strategy};
use support::add_product;

fn context(resource: &str, fence: u64) -> Context {
    Context {
        strategy: Strategy::RedisLock,
        fences: HashMap::from([(resource.to_owned(), fence)]),
        now: Utc::now(),
        think_time: Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_whose_lease_expired_cannot_write() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    add_product(&db.pool, "A", 10, 100).await;
    // No watchdog: the slow holder's lease really runs out.
    let locks = Locks::new(redis.pool.clone(), redis.prefix.clone()).without_watchdog();

    let slow = locks
        .try_lock("sku:A", Duration::ZERO, Duration::from_millis(200))
        .await
        .unwrap()
        .expect("first lock");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fast = locks
        .try_lock("sku:A", Duration::from_secs(1), Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the expired lock is free again");
    assert!(fast.fence() > slow.fence());

    let mut conn = db.pool.get().await.unwrap();
    let written = guarded::adjust(
        &mut conn,
        &context("sku:A", fast.fence()),
        guarded::STOCK,
        "sku:A",
        "A",
        -1,
    )
    .await
    .unwrap();
    assert_eq!(written, Adjusted::Done { after: 9 });

    // The slow holder wakes up and writes what it computed from its stale read.
    let stale = guarded::adjust(
        &mut conn,
        &context("sku:A", slow.fence()),
        guarded::STOCK,
        "sku:A",
        "A",
        -2,
    )
    .await;
    match stale {
        Err(Failure::Retry(err)) => assert!(err.to_string().contains("stale fencing token")),
        other => panic!("the stale holder wrote: {other:?}"),
    }
    let after = guarded::adjust(
        &mut conn,
        &context("sku:A", fast.fence()),
        guarded::STOCK,
        "sku:A",
        "A",
        0,
    )
    .await
    .unwrap();
    assert_eq!(
        after,
        Adjusted::Done { after: 9 },
        "the stale write changed nothing"
    );

    assert!(
        !slow.release().await.unwrap(),
        "the expired holder no longer owns the lock"
    );
    assert!(fast.release().await.unwrap());
}

/// The interleaving a write-only check misses: A (older token) reads 10 and stalls while its
/// lease runs out; B (newer token) reads 10; A writes 9; B writes 9. Two reservations, one
/// unit taken. With the token registered by the read, A's write is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_holder_that_read_before_the_new_holder_cannot_write_after_it_read() {
    let db = TestDb::migrated().await;
    add_product(&db.pool, "A", 10, 100).await;
    let (older, newer) = (Some(17), Some(18));
    let mut a = db.pool.get().await.unwrap();
    let mut b = db.pool.get().await.unwrap();

    let read_a = guarded::read_fenced(&mut a, guarded::STOCK, "sku:A", "A", older)
        .await
        .unwrap()
        .expect("row");
    let read_b = guarded::read_fenced(&mut b, guarded::STOCK, "sku:A", "A", newer)
        .await
        .unwrap()
        .expect("row");
    assert_eq!((read_a.value, read_b.value), (10, 10));

    let write_a = guarded::write_fenced(
        &mut a,
        guarded::STOCK,
        "sku:A",
        "A",
        read_a.value - 1,
        older,
    )
    .await;
    match write_a {
        Err(Failure::Retry(err)) => assert!(err.to_string().contains("stale fencing token")),
        other => panic!("the expired holder wrote after the new holder read: {other:?}"),
    }
    guarded::write_fenced(
        &mut b,
        guarded::STOCK,
        "sku:A",
        "A",
        read_b.value - 1,
        newer,
    )
    .await
    .unwrap();
    // The older holder cannot even start over with its token.
    let reread = guarded::read_fenced(&mut a, guarded::STOCK, "sku:A", "A", older).await;
    assert!(matches!(reread, Err(Failure::Retry(_))), "{reread:?}");
    let now = guarded::read_fenced(&mut b, guarded::STOCK, "sku:A", "A", newer)
        .await
        .unwrap()
        .expect("row");
    assert_eq!(
        now.value, 9,
        "exactly one unit taken, by the one reservation"
    );
}
