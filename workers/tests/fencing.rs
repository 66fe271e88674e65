//! A lock holder whose lease expired cannot write: the guarded write checks the fencing
//! token, and a newer holder's write has raised it.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use platform::testkit::{TestDb, TestRedis};
use support::add_product;
use workers::guarded::{self, Adjusted};
use workers::lock::Locks;
use workers::participant::{Context, Failure, Strategy};

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
