//! Redis: the connection pool (deadpool-redis), and the client it was built from.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_redis::redis::Client;
use deadpool_redis::{Config, PoolConfig, Runtime, Timeouts};

/// Connections at most: a worker's batches (`KAFKA_CONSUMER_CONCURRENCY`, 8) each hold one
/// while they call Redis, beside the lock watchdogs; deadpool's default is twice the cores.
pub const MAX_CONNECTIONS: usize = 16;

/// The longest wait for a pooled connection, and for a new one to open. Past it the call
/// fails as Redis being unavailable (a worker retries the command later) instead of hanging:
/// without it, an exhausted pool or a Redis that swallows packets held a lock's wait, and
/// the command, for ever.
pub const WAIT: Duration = Duration::from_secs(3);

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
    let mut config = Config::from_url(url);
    config.pool = Some(PoolConfig {
        max_size: MAX_CONNECTIONS,
        timeouts: Timeouts {
            wait: Some(WAIT),
            create: Some(WAIT),
            recycle: Some(WAIT),
        },
        ..PoolConfig::default()
    });
    let pool = config
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
