//! A Redis lock with Redisson's `tryLock(wait, lease)` semantics, without its pitfalls.
//!
//! A lease-based lock alone cannot make a write safe: a holder that stalls (GC pause, slow
//! I/O, a Redis failover losing the key) past its lease may still believe it holds the lock
//! while another holder writes. So every acquisition also yields a fencing token, and the
//! guarded store, not the lock, has the last word.
//!
//! - Acquiring is one Lua script: `SET lock owner NX PX lease` and, only when that succeeded,
//!   `INCR fence`. Both happen atomically, so tokens are strictly increasing per resource and
//!   no acquisition goes without one.
//! - The owner is a random token (UUID v4): release and extension are compare-and-delete and
//!   compare-and-pexpire, so nobody releases or extends a lock it does not hold.
//! - A watchdog task extends the lease every lease/3 while the guard lives. If an extension
//!   finds the lock no longer ours, or Redis stays unreachable until the lease has surely
//!   run out, the guard is marked lost ([`Guard::is_held`]). Dropping the guard stops the
//!   watchdog; the lock then lapses with its lease.
//! - Waiting retries with exponential backoff and full jitter, never sleeping past `wait`,
//!   and a release wakes the waiters at once (`wakeups`: the release script publishes it,
//!   as Redisson does), so a hot lock passes from holder to waiter without a backoff's delay.
//!
//! # Fencing contract
//! The guarded write must check and store the token in the same statement:
//! `UPDATE ... SET fence = $token WHERE ... AND fence <= $token` (see `guarded`). A token
//! lower than the last one stored means a newer holder has written since: the write is
//! refused. Equal tokens pass, so one holder may write several times. Tokens must therefore
//! never go down, not even when Redis loses the `fence:` counter (a restart without
//! persistence): each token is at least Redis's clock in microseconds, which is above every
//! token handed out before, as long as that clock does not go back.
//!
//! Keys are `{prefix}lock:{resource}` and `{prefix}fence:{resource}`; releases are announced
//! on `{prefix}lock-released`. The acquire script touches both keys, which needs a single
//! Redis (or both keys in one Cluster slot).

mod wakeups;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use deadpool_redis::redis::Script;
use platform::cache;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// KEYS: lock, fence counter. ARGV: owner, lease ms. Returns the new fencing token, or 0.
///
/// The token is never below Redis's clock in microseconds: a Redis that restarted without
/// its data (or lost the counter) hands out tokens above every one issued before it, not
/// from 1 again, so the guarded stores do not refuse every write from then on.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
              local token = redis.call('INCR', KEYS[2])
              local now = redis.call('TIME')
              local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
              if token < floor then
                  redis.call('SET', KEYS[2], string.format('%d', floor))
                  token = floor
              end
              return token
          end
          return 0",
    )
});

/// KEYS: lock, release channel. ARGV: owner. Deletes the lock only while `owner` holds it,
/// and then announces the lock's key on the channel; returns 1 if so.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
              redis.call('DEL', KEYS[1])
              redis.call('PUBLISH', KEYS[2], KEYS[1])
              return 1
          end
          return 0",
    )
});

/// KEYS: lock. ARGV: owner, lease ms. Extends the lock only while `owner` holds it.
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

/// Hands out locks under one key prefix. Cheap to clone.
#[derive(Clone)]
pub struct Locks {
    pool: cache::Pool,
    prefix: String,
    watchdog: bool,
    wakeups: Arc<wakeups::Wakeups>,
    /// A fixed pause between tries instead of the jittered backoff (tests).
    pause: Option<Duration>,
    /// Tries that found the lock held by another.
    contended: Arc<AtomicU64>,
}

impl Locks {
    pub fn new(pool: cache::Pool, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self {
            wakeups: wakeups::Wakeups::new(pool.client().clone(), &prefix),
            pool,
            prefix,
            watchdog: true,
            pause: None,
            contended: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Locks whose lease is never extended. Test-only: it lets a test show a slow holder
    /// outliving its lease, which is what fencing tokens protect against.
    pub fn without_watchdog(mut self) -> Self {
        self.watchdog = false;
        self
    }

    /// Waiters retry every `pause` exactly, instead of after a jittered backoff. Test-only:
    /// with a long pause, a waiter that takes the lock soon after its release was woken.
    pub fn retrying_every(mut self, pause: Duration) -> Self {
        self.pause = Some(pause);
        self
    }

    /// How many tries, by these locks' waiters, found the lock held by another.
    pub fn contended(&self) -> u64 {
        self.contended.load(Ordering::Relaxed)
    }

    /// Tries to take `resource` (e.g. `sku:ABC`) for `lease`, retrying for up to `wait`.
    /// `Ok(None)` means another holder kept it for the whole wait.
    pub async fn try_lock(
        &self,
        resource: &str,
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<Guard>, Error> {
        let key = format!("{}lock:{resource}", self.prefix);
        let fence_key = format!("{}fence:{resource}", self.prefix);
        let owner = Uuid::new_v4().to_string();
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut waiting = None;
        loop {
            // Registered before the try, so a release right after a failed try wakes us.
            let woken = waiting.as_ref().map(|waiting: &wakeups::Waiting| {
                let mut woken = Box::pin(waiting.notify().notified_owned());
                woken.as_mut().enable();
                woken
            });
            // The lease starts on the server somewhere after this instant; counting from
            // here never overstates how long we hold it.
            let sent = Instant::now();
            let mut conn = self.pool.get().await?;
            let fence: u64 = ACQUIRE
                .key(&key)
                .key(&fence_key)
                .arg(&owner)
                .arg(millis(lease))
                .invoke_async(&mut conn)
                .await?;
            drop(conn);
            if fence > 0 {
                let guard = self.guard(resource, key, owner, fence, lease, sent);
                return Ok(Some(guard));
            }
            self.contended.fetch_add(1, Ordering::Relaxed);
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            match woken {
                // The first failed try: from now on a release wakes us. Try once more at
                // once, since the release may have come before we listened.
                None => waiting = Some(self.wakeups.wait_on(&key).await),
                Some(woken) => self.sleep(&mut backoff, left, woken).await,
            }
        }
    }

    /// The pause between two tries: the backoff (full jitter, so waiters that collided once
    /// spread out instead of retrying in step), cut short by a release.
    async fn sleep(
        &self,
        backoff: &mut Duration,
        left: Duration,
        woken: std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>,
    ) {
        let pause = self
            .pause
            .unwrap_or_else(|| rand::rng().random_range(Duration::ZERO..=*backoff));
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = tokio::time::sleep(pause.min(left)) => {}
            () = woken => {}
        }
    }

    /// Takes all of `resources` or none, waiting up to `wait` in total.
    ///
    /// Every caller takes them in the same (sorted) order, so two holders of overlapping
    /// sets can never each hold what the other waits for. Duplicates are dropped: the
    /// second attempt on a lock we already hold would only wait on ourselves.
    pub async fn lock_all(
        &self,
        resources: &[String],
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<Vec<Guard>>, Error> {
        let mut wanted: Vec<&str> = resources.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let started = Instant::now();
        let mut held = Vec::with_capacity(wanted.len());
        for resource in wanted {
            let left = wait.saturating_sub(started.elapsed());
            match self.try_lock(resource, left, lease).await {
                Ok(Some(guard)) => held.push(guard),
                outcome => {
                    // Holding part of the set while giving up would block others for nothing.
                    release_all(held).await;
                    return outcome.map(|_| None);
                }
            }
        }
        Ok(Some(held))
    }

    fn guard(
        &self,
        resource: &str,
        key: String,
        owner: String,
        fence: u64,
        lease: Duration,
        sent: Instant,
    ) -> Guard {
        let lost = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let expires = if self.watchdog {
            let watchdog = Watchdog {
                pool: self.pool.clone(),
                key: key.clone(),
                owner: owner.clone(),
                lease,
                lost: lost.clone(),
            };
            tokio::spawn(watchdog.run(sent + lease, stop.clone()));
            None
        } else {
            Some(sent + lease)
        };
        Guard {
            pool: self.pool.clone(),
            resource: resource.to_owned(),
            channel: self.wakeups.channel().to_owned(),
            key,
            owner,
            fence,
            lost,
            expires,
            stop,
        }
    }
}

async fn release_all(guards: Vec<Guard>) {
    for guard in guards.into_iter().rev() {
        let key = guard.key.clone();
        if let Err(err) = guard.release().await {
            tracing::warn!(lock = %key, error = %err, "lock not released; it lapses with its lease");
        }
    }
}

/// Keeps one lease alive.
struct Watchdog {
    pool: cache::Pool,
    key: String,
    owner: String,
    lease: Duration,
    lost: Arc<AtomicBool>,
}

impl Watchdog {
    /// Extends every lease/3 until `stop`; `valid_until` is when the lease runs out unless
    /// extended. Gives up (marking the guard lost) once the lock is gone.
    async fn run(self, mut valid_until: Instant, stop: CancellationToken) {
        let period = (self.lease / 3).max(Duration::from_millis(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            let sent = Instant::now();
            // Also stop mid-request: a hung Redis must not keep a dropped guard's task alive.
            let extended = tokio::select! {
                () = stop.cancelled() => return,
                extended = self.extend() => extended,
            };
            match extended {
                Ok(true) => valid_until = sent + self.lease,
                Ok(false) => {
                    tracing::warn!(lock = %self.key, "lock lost before release: its lease ran out");
                    self.lost.store(true, Ordering::SeqCst);
                    return;
                }
                Err(err) if Instant::now() >= valid_until => {
                    tracing::warn!(lock = %self.key, error = %err, "lock lost: lease ran out while Redis failed");
                    self.lost.store(true, Ordering::SeqCst);
                    return;
                }
                // The lease still runs: try again at the next period.
                Err(err) => tracing::warn!(lock = %self.key, error = %err, "lock extension failed"),
            }
        }
    }

    async fn extend(&self) -> Result<bool, Error> {
        let mut conn = self.pool.get().await?;
        let extended: u64 = EXTEND
            .key(&self.key)
            .arg(&self.owner)
            .arg(millis(self.lease))
            .invoke_async(&mut conn)
            .await?;
        Ok(extended == 1)
    }
}

/// A held lock. Dropping it stops the watchdog, and the lock lapses with its lease;
/// [`Guard::release`] frees it at once.
#[must_use = "dropping a guard gives the lock up when its lease runs out"]
pub struct Guard {
    pool: cache::Pool,
    resource: String,
    /// Where the release is announced.
    channel: String,
    key: String,
    owner: String,
    fence: u64,
    lost: Arc<AtomicBool>,
    /// Without a watchdog, when the lease runs out.
    expires: Option<Instant>,
    stop: CancellationToken,
}

impl Guard {
    /// The fencing token of this acquisition: larger than that of every earlier one.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// False once the lock is known or presumed lost. Writes still go through the fencing
    /// check: `true` can be stale by up to one watchdog period.
    pub fn is_held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && self.expires.is_none_or(|at| Instant::now() < at)
    }

    /// Releases the lock; `false` when it was no longer ours (expired, taken by another).
    pub async fn release(self) -> Result<bool, Error> {
        // Stop the watchdog first, so it cannot report our own release as a lost lock.
        self.stop.cancel();
        let mut conn = self.pool.get().await?;
        let deleted: u64 = RELEASE
            .key(&self.key)
            .key(&self.channel)
            .arg(&self.owner)
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A lease in whole milliseconds, at least 1: `PX 0` is an error in Redis.
fn millis(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1)
}
