//! Redis: the connection pool (deadpool-redis), and the client it was built from.

use anyhow::Context as _;
use deadpool_redis::redis::Client;
use deadpool_redis::{Config, Runtime};

/// The pool, which derefs to deadpool's, and the client behind it: a subscription needs a
/// connection of its own, which a pooled one cannot be.
#[derive(Clone)]
pub struct Pool {
    pool: deadpool_redis::Pool,
    client: Client,
}

impl Pool {
    /// The client, for connections outside the pool (a subscription).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl std::ops::Deref for Pool {
    type Target = deadpool_redis::Pool;

    fn deref(&self) -> &Self::Target {
        &self.pool
    }
}

pub fn pool(url: &str) -> anyhow::Result<Pool> {
    let pool = Config::from_url(url)
        .create_pool(Some(Runtime::Tokio1))
        .context("building the Redis pool")?;
    let client = Client::open(url).context("reading the Redis URL")?;
    Ok(Pool { pool, client })
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
