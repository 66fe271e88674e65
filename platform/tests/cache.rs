//! The Redis pool against the real Redis.

use std::time::{Duration, Instant};

use deadpool_redis::{PoolError, TimeoutType};
use platform::cache;
use platform::testkit::TestRedis;

#[tokio::test]
async fn an_exhausted_pool_fails_a_checkout_after_its_wait_instead_of_hanging() {
    let redis = TestRedis::start();
    let mut held = Vec::new();
    for _ in 0..cache::MAX_CONNECTIONS {
        held.push(redis.pool.get().await.expect("a connection"));
    }
    let asked = Instant::now();
    // Far longer than the pool's wait: reaching it means the checkout hung.
    let checkout = tokio::time::timeout(cache::WAIT * 20, redis.pool.get())
        .await
        .expect("the checkout gave up within its wait, not never");
    match checkout {
        Err(PoolError::Timeout(TimeoutType::Wait)) => {}
        other => panic!(
            "expected a wait timeout, got {:?}",
            other.map(|_| "a connection")
        ),
    }
    assert!(asked.elapsed() >= cache::WAIT, "it waited its time first");
    // A connection given back is handed out again.
    held.pop();
    let mut conn = tokio::time::timeout(Duration::from_secs(30), redis.pool.get())
        .await
        .expect("a freed connection is handed out")
        .expect("a connection");
    let pong: String = deadpool_redis::redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
}
