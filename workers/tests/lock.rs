//! The Redis lock on the real Redis: fencing tokens, ownership, the watchdog, waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::redis::AsyncCommands as _;
use platform::testkit::TestRedis;
use rand::seq::IndexedRandom as _;
use workers::lock::Locks;

fn locks(redis: &TestRedis) -> Locks {
    Locks::new(redis.pool.clone(), redis.prefix.clone())
}

const NOW: Duration = Duration::ZERO;

#[tokio::test(flavor = "multi_thread")]
async fn every_acquisition_gets_a_larger_fencing_token() {
    let redis = TestRedis::start();
    let locks = locks(&redis);
    let first = locks
        .try_lock("sku:A", NOW, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let first_fence = first.fence();
    assert!(first.release().await.unwrap());
    let second = locks
        .try_lock("sku:A", NOW, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(second.fence() > first_fence);
    assert!(second.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_held_by_another_cannot_be_released_by_a_former_holder() {
    let redis = TestRedis::start();
    let locks = locks(&redis).without_watchdog();
    let expired = locks
        .try_lock("sku:A", NOW, Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let current = locks
        .try_lock("sku:A", NOW, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();

    assert!(
        !expired.release().await.unwrap(),
        "released someone else's lock"
    );
    let third = locks
        .try_lock("sku:A", NOW, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(third.is_none(), "the current holder's lock must survive");
    assert!(current.is_held());
    assert!(current.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watchdog_keeps_a_slow_holder_alive() {
    let redis = TestRedis::start();
    let locks = locks(&redis);
    let slow = locks
        .try_lock("sku:A", NOW, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await; // four leases
    assert!(
        locks
            .try_lock("sku:A", NOW, Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );
    assert!(slow.is_held());
    assert!(slow.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_watchdog_the_lease_runs_out() {
    let redis = TestRedis::start();
    let locks = locks(&redis).without_watchdog();
    let first = locks
        .try_lock("sku:A", NOW, Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = locks
        .try_lock("sku:A", NOW, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the lease expired");
    assert!(second.fence() > first.fence());
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_gives_up_after_the_configured_time() {
    let redis = TestRedis::start();
    let locks = locks(&redis);
    let held = locks
        .try_lock("sku:A", NOW, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let waited = locks
        .try_lock("sku:A", Duration::from_millis(250), Duration::from_secs(5))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(waited.is_none());
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");

    // Released meanwhile: a waiter gets it before its wait runs out.
    let locks2 = locks.clone();
    let waiter = tokio::spawn(async move {
        locks2
            .try_lock("sku:A", Duration::from_secs(5), Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(held.release().await.unwrap());
    assert!(waiter.await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_lock_sets_neither_deadlock_nor_overlap() {
    let redis = TestRedis::start();
    let locks = locks(&redis);
    let resources: Vec<String> = (0..6).map(|n| format!("res:{n}")).collect();
    let redis = Arc::new(redis);
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let locks = locks.clone();
            let redis = redis.clone();
            let picked: Vec<String> = resources
                .choose_multiple(&mut rand::rng(), 4)
                .cloned()
                .collect();
            tokio::spawn(async move {
                let guards = locks
                    .lock_all(&picked, Duration::from_secs(30), Duration::from_secs(5))
                    .await
                    .unwrap()
                    .expect("locks within 30 s");
                // A non-atomic read-increment-write: correct only under mutual exclusion.
                let mut conn = redis.pool.get().await.unwrap();
                for resource in &picked {
                    let key = redis.key(&format!("counter:{resource}"));
                    let value: i64 = conn.get::<_, Option<i64>>(&key).await.unwrap().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let _: () = conn.set(&key, value + 1).await.unwrap();
                }
                for guard in guards {
                    guard.release().await.unwrap();
                }
                picked
            })
        })
        .collect();
    let mut expected = std::collections::HashMap::<String, i64>::new();
    for task in tasks {
        for resource in task.await.unwrap() {
            *expected.entry(resource).or_default() += 1;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut conn = redis.pool.get().await.unwrap();
    for (resource, count) in expected {
        let key = redis.key(&format!("counter:{resource}"));
        let value: i64 = conn.get(&key).await.unwrap();
        assert_eq!(value, count, "{resource}");
    }
}
