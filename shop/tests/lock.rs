//! The Redis lock on the real Redis: fencing tokens, ownership, the watchdog, waiting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::redis::AsyncCommands as _;
use platform::testkit::TestRedis;
use rand::Rng as _;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use shop::lock::Locks;

const NOW: Duration = Duration::ZERO;
const LONG: Duration = Duration::from_secs(5);

fn locks(redis: &TestRedis) -> Locks {
    Locks::new(redis.pool.clone(), redis.prefix.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acquisition_gets_a_larger_fencing_token() {
    let redis = TestRedis::start();
    let locks = locks(&redis);
    let first = locks.try_lock("sku:A", NOW, LONG).await.unwrap().unwrap();
    let first_fence = first.fence();
    assert!(first.release().await.unwrap());
    let second = locks.try_lock("sku:A", NOW, LONG).await.unwrap().unwrap();
    assert!(second.fence() > first_fence);
    assert_eq!(second.resource(), "sku:A");
    assert!(second.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_lock_is_not_given_to_another() {
    let redis = TestRedis::start();
    let locks = locks(&redis);
    let holder = locks.try_lock("user:42", NOW, LONG).await.unwrap().unwrap();

    let started = Instant::now();
    let other = locks
        .try_lock("user:42", Duration::from_millis(100), LONG)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(other.is_none(), "two holders at once");
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");

    // Another resource is independent.
    let unrelated = locks.try_lock("user:43", NOW, LONG).await.unwrap();
    assert!(unrelated.is_some());

    assert!(holder.is_held());
    assert!(holder.release().await.unwrap());
    assert!(
        locks
            .try_lock("user:42", NOW, LONG)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_former_holder_cannot_release_the_current_holders_lock() {
    let redis = TestRedis::start();
    let locks = locks(&redis).without_watchdog();
    let expired = locks
        .try_lock("sku:A", NOW, Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let current = locks.try_lock("sku:A", NOW, LONG).await.unwrap().unwrap();

    assert!(!expired.is_held());
    assert!(
        !expired.release().await.unwrap(),
        "released someone else's lock"
    );
    let third = locks.try_lock("sku:A", NOW, LONG).await.unwrap();
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
    assert!(locks.try_lock("sku:A", NOW, LONG).await.unwrap().is_none());
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
        .try_lock("sku:A", NOW, LONG)
        .await
        .unwrap()
        .expect("the lease expired");
    assert!(second.fence() > first.fence());
    assert!(!first.is_held());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_guard_stops_its_watchdog() {
    let redis = TestRedis::start();
    let locks = locks(&redis);
    let dropped = locks
        .try_lock("vendor:7", NOW, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    drop(dropped);
    // A watchdog still running would keep extending the lease, and this wait would time out.
    let next = locks
        .try_lock("vendor:7", Duration::from_secs(2), LONG)
        .await
        .unwrap();
    assert!(next.is_some(), "the dropped guard's lease never ran out");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watchdog_notices_a_lost_lock_and_leaves_the_new_owner_alone() {
    let redis = TestRedis::start();
    let locks = locks(&redis);
    let guard = locks
        .try_lock("coupon:9", NOW, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    // What a failover losing the key, followed by another process's acquisition, leaves.
    let key = redis.key("lock:coupon:9");
    let mut conn = redis.pool.get().await.unwrap();
    let _: () = conn.set_ex(&key, "someone-else", 5).await.unwrap();

    platform::testkit::eventually("the guard to notice", Duration::from_secs(10), async || {
        !guard.is_held()
    })
    .await;
    assert!(!guard.release().await.unwrap());
    let owner: Option<String> = conn.get(&key).await.unwrap();
    assert_eq!(owner.as_deref(), Some("someone-else"));
    let ttl_ms: i64 = conn.pttl(&key).await.unwrap();
    // Extended by our watchdog it would have a 300 ms lease; deleted, no TTL at all.
    assert!(ttl_ms > 1_000, "the foreign lock was touched: {ttl_ms} ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_gives_up_after_the_configured_time() {
    let redis = TestRedis::start();
    let locks = locks(&redis);
    let held = locks.try_lock("sku:A", NOW, LONG).await.unwrap().unwrap();
    let started = Instant::now();
    let waited = locks
        .try_lock("sku:A", Duration::from_millis(250), LONG)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(waited.is_none());
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");

    // Released meanwhile: a waiter gets it before its wait runs out.
    let waiter = tokio::spawn({
        let locks = locks.clone();
        async move { locks.try_lock("sku:A", LONG, LONG).await.unwrap().is_some() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(held.release().await.unwrap());
    assert!(waiter.await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_lock_sets_neither_deadlock_nor_overlap() {
    let redis = Arc::new(TestRedis::start());
    let locks = locks(&redis);
    let resources: Vec<String> = (0..4).map(|n| format!("sku:{n}")).collect();
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            // A random non-empty subset in random order, sometimes with a duplicate: what
            // lock_all sorts and deduplicates.
            let mut rng = rand::rng();
            let size = rng.random_range(1..=resources.len());
            let mut picked: Vec<String> =
                resources.choose_multiple(&mut rng, size).cloned().collect();
            picked.shuffle(&mut rng);
            if rng.random_bool(0.3) {
                picked.push(picked[0].clone());
            }
            let (locks, redis) = (locks.clone(), redis.clone());
            tokio::spawn(async move {
                let guards = locks
                    .lock_all(&picked, Duration::from_secs(10), LONG)
                    .await
                    .unwrap()
                    .expect("all locks within the wait");
                picked.sort();
                picked.dedup();
                // Read, hold, write back: an increment that loses updates unless exclusive.
                let mut conn = redis.pool.get().await.unwrap();
                let mut values = Vec::new();
                for resource in &picked {
                    let key = redis.key(&format!("counter:{resource}"));
                    let value: Option<i64> = conn.get(&key).await.unwrap();
                    values.push((key, value.unwrap_or(0)));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                for (key, value) in values {
                    let _: () = conn.set(&key, value + 1).await.unwrap();
                }
                // Back to the pool before the releases, which take connections of their own:
                // four holders each keeping one starve a pool of four (deadpool sizes its pool
                // by physical cores: four connections on the CI machine, a VM).
                drop(conn);
                for guard in guards {
                    assert!(guard.release().await.unwrap());
                }
                picked
            })
        })
        .collect();
    let mut expected = HashMap::<String, i64>::new();
    for task in tasks {
        for resource in task.await.unwrap() {
            *expected.entry(resource).or_default() += 1;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut conn = redis.pool.get().await.unwrap();
    for (resource, count) in expected {
        let value: i64 = conn
            .get(redis.key(&format!("counter:{resource}")))
            .await
            .unwrap();
        assert_eq!(
            value, count,
            "{resource}: lost updates, the locks overlapped"
        );
    }
}

/// A Redis restarted without persistence loses the fence counters. The next token must
/// still be above every token handed out before, or every guarded write would be refused.
#[tokio::test(flavor = "multi_thread")]
async fn fencing_tokens_keep_growing_after_redis_lost_its_counters() {
    let redis = TestRedis::start();
    let locks = locks(&redis);
    let first = locks.try_lock("sku:A", NOW, LONG).await.unwrap().unwrap();
    let before = first.fence();
    first.release().await.unwrap();
    let mut conn = redis.pool.get().await.unwrap();
    let _: () = conn
        .del(format!("{}fence:sku:A", redis.prefix))
        .await
        .unwrap();
    let after = locks.try_lock("sku:A", NOW, LONG).await.unwrap().unwrap();
    assert!(after.fence() > before, "{} after {before}", after.fence());
}

/// A release wakes the lock's waiters at once, in every process: a waiter (its own
/// `Locks`, so its own subscription, as in another process) that would next try a minute
/// later takes the lock within seconds of the release.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_wakes_a_waiter_long_before_its_next_try() {
    let redis = TestRedis::start();
    let holder_side = locks(&redis);
    let waiter_side = locks(&redis).retrying_every(Duration::from_secs(60));
    let holder = holder_side
        .try_lock("campaign:7", NOW, LONG)
        .await
        .unwrap()
        .unwrap();
    let waiting = waiter_side.clone();
    let waiter = tokio::spawn(async move {
        let guard = waiting
            .try_lock("campaign:7", Duration::from_secs(120), LONG)
            .await
            .unwrap();
        (guard, Instant::now())
    });
    // Its first try failed, and so did the one right after it started listening: it now
    // sleeps for a minute unless a release wakes it.
    tokio::time::timeout(Duration::from_secs(30), async {
        while waiter_side.contended() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the waiter never tried twice");
    let released = Instant::now();
    assert!(holder.release().await.unwrap());
    let (guard, taken) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter slept through the release")
        .unwrap();
    let guard = guard.expect("the waiter gave up");
    let after = taken.duration_since(released);
    assert!(
        after < Duration::from_secs(10),
        "taken {after:?} after the release"
    );
    assert!(guard.release().await.unwrap());
}
