//! Redis: the connection pool (deadpool-redis).

use anyhow::Context as _;
use deadpool_redis::{Config, Runtime};

pub type Pool = deadpool_redis::Pool;

pub fn pool(url: &str) -> anyhow::Result<Pool> {
    Config::from_url(url)
        .create_pool(Some(Runtime::Tokio1))
        .context("building the Redis pool")
}

/// `PING`: the readiness probe for Redis.
pub async fn ping(pool: &Pool) -> anyhow::Result<()> {
    let mut conn = pool.get().await.context("no Redis connection")?;
    let pong: String = deadpool_redis::redis::cmd("PING")
        .query_async(&mut conn)
        .await?;
    anyhow::ensure!(pong == "PONG", "unexpected PING answer {pong:?}");
    Ok(())
}
