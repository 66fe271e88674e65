//! A Redis lock with Redisson's `tryLock(wait, lease)` semantics, without its pitfalls.
//!
//! - Acquire is one Lua script: `SET lock owner NX PX lease` and, only when that succeeded,
//!   `INCR fence`, so every acquisition returns a strictly larger fencing token.
//! - The owner is a random token: release and extend are compare-and-delete and
//!   compare-and-pexpire, so nobody releases or extends a lock it does not hold.
//! - A watchdog extends the lease every lease/3 while the guard lives; if an extension finds
//!   the lock gone (the process stalled past its lease), the guard is marked lost.
//! - Waiting retries with exponential backoff and full jitter, never past `wait`.
//!
//! Fencing contract: the guarded write checks the token (`fence <= token`, then stores it),
//! so a holder whose lease expired, and whose resource a newer holder has written since,
//! cannot write a stale value (see `guarded`).

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::redis::Script;
use platform::cache;
use rand::Rng as _;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

/// KEYS: lock, fence counter. ARGV: owner, lease ms. Returns the fencing token, or 0.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
              return redis.call('INCR', KEYS[2])
          end
          return 0",
    )
});

/// KEYS: lock. ARGV: owner. Deletes only our own lock.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
              return redis.call('DEL', KEYS[1])
          end
          return 0",
    )
});

/// KEYS: lock. ARGV: owner, lease ms. Extends only our own lock.
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
              return redis.call('PEXPIRE', KEYS[1], ARGV[2])
          end
          return 0",
    )
});

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis: {0}")]
    Redis(#[from] deadpool_redis::redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
}

/// Lock factory for one key prefix.
#[derive(Clone)]
pub struct Locks {
    pool: cache::Pool,
    prefix: String,
    watchdog: bool,
}

impl Locks {
    pub fn new(pool: cache::Pool, prefix: impl Into<String>) -> Self {
        Self {
            pool,
            prefix: prefix.into(),
            watchdog: true,
        }
    }

    /// Locks whose lease is never extended: only to demonstrate (in tests) what fencing
    /// protects against when a holder outlives its lease.
    pub fn without_watchdog(mut self) -> Self {
        self.watchdog = false;
        self
    }

    /// Tries to take `resource` (e.g. `sku:A`) for `lease`, waiting up to `wait`.
    pub async fn try_lock(
        &self,
        resource: &str,
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<Guard>, Error> {
        let key = format!("{}lock:{resource}", self.prefix);
        let fence_key = format!("{}fence:{resource}", self.prefix);
        let owner = Uuid::new_v4().to_string();
        let lease_ms = lease.as_millis().max(1) as u64;
        let deadline = Instant::now() + wait;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut conn = self.pool.get().await?;
            let token: u64 = ACQUIRE
                .key(&key)
                .key(&fence_key)
                .arg(&owner)
                .arg(lease_ms)
                .invoke_async(&mut conn)
                .await?;
            drop(conn);
            if token > 0 {
                return Ok(Some(self.guard(resource, key, owner, token, lease)));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let jittered = rand::rng().random_range(Duration::ZERO..=backoff);
            tokio::time::sleep(jittered.min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Takes several locks in sorted, deduplicated order, so holders of overlapping sets
    /// cannot deadlock; releases what it took if one is not had within `wait`.
    pub async fn lock_all(
        &self,
        resources: &[String],
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<Vec<Guard>>, Error> {
        let mut sorted: Vec<&String> = resources.iter().collect();
        sorted.sort();
        sorted.dedup();
        let deadline = Instant::now() + wait;
        let mut guards = Vec::with_capacity(sorted.len());
        for resource in sorted {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_lock(resource, left, lease).await {
                Ok(Some(guard)) => guards.push(guard),
                outcome => {
                    for guard in guards {
                        let _ = guard.release().await;
                    }
                    return outcome.map(|_| None);
                }
            }
        }
        Ok(Some(guards))
    }

    fn guard(
        &self,
        resource: &str,
        key: String,
        owner: String,
        fence: u64,
        lease: Duration,
    ) -> Guard {
        let lost = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        if self.watchdog {
            tokio::spawn(watchdog(
                self.pool.clone(),
                key.clone(),
                owner.clone(),
                lease,
                lost.clone(),
                stop.clone(),
            ));
        }
        Guard {
            pool: self.pool.clone(),
            resource: resource.to_owned(),
            key,
            owner,
            fence,
            lost,
            _watchdog: stop.drop_guard(),
        }
    }
}

/// Extends the lease every lease/3 until stopped or the lock turns out to be gone.
async fn watchdog(
    pool: cache::Pool,
    key: String,
    owner: String,
    lease: Duration,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let period = (lease / 3).max(Duration::from_millis(1));
    let lease_ms = lease.as_millis().max(1) as u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let extended: Result<u64, Error> = async {
            let mut conn = pool.get().await?;
            Ok(EXTEND
                .key(&key)
                .arg(&owner)
                .arg(lease_ms)
                .invoke_async(&mut conn)
                .await?)
        }
        .await;
        match extended {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(lock = %key, "lock lost before release; the lease had expired");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            // A failed extension is retried at the next period; the lease still runs.
            Err(err) => tracing::warn!(lock = %key, error = %err, "lock extension failed"),
        }
    }
}

/// A held lock. Dropping it stops the watchdog (the lease then runs out); `release` frees
/// it at once.
pub struct Guard {
    pool: cache::Pool,
    resource: String,
    key: String,
    owner: String,
    fence: u64,
    lost: Arc<AtomicBool>,
    _watchdog: DropGuard,
}

impl Guard {
    /// The fencing token of this acquisition.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// False once the watchdog found the lock taken away.
    pub fn is_held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// Releases the lock; `false` when it was no longer ours (expired, taken by another).
    pub async fn release(self) -> Result<bool, Error> {
        let mut conn = self.pool.get().await?;
        let deleted: u64 = RELEASE
            .key(&self.key)
            .arg(&self.owner)
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }
}
