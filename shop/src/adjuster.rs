//! Changes to counters from outside a saga (an operator adjusting stock, a user topping up
//! a wallet). They go through the same strategy as the participants: under the resource's
//! Redis lock with its fencing token, and the Lua gate forgets the counter afterwards.
//! An unguarded `UPDATE` here could be overwritten by a participant's locked
//! read-then-write, which is exactly the lost update the locks exist to prevent.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use diesel_async::AsyncConnection as _;
use platform::cache;
use platform::db::{self, Connection};

use crate::gate::Gate;
use crate::guarded::{self, Adjusted, Counter};
use crate::lock::{Guard, Locks};
use crate::participant::{Context, Failure, Strategy};
use crate::runtime::RuntimeOptions;

#[derive(Clone)]
pub struct Adjuster {
    database: db::Pool,
    locks: Locks,
    gate: Gate,
    options: RuntimeOptions,
}

impl Adjuster {
    pub fn new(
        database: db::Pool,
        redis: cache::Pool,
        redis_prefix: &str,
        options: RuntimeOptions,
    ) -> Self {
        Self {
            database,
            locks: Locks::new(redis.clone(), redis_prefix),
            gate: Gate::new(redis, redis_prefix),
            options,
        }
    }

    /// Adds `delta` to the counter of row `key` (lock name `resource`) within its bounds, in
    /// a transaction of its own.
    pub async fn adjust(
        &self,
        counter: Counter,
        resource: &str,
        key: &str,
        delta: i64,
    ) -> Result<Adjusted, Error> {
        let held = self.hold(resource).await?;
        let result = async {
            let mut pooled = self.database.get().await.map_err(anyhow::Error::from)?;
            let conn: &mut Connection = &mut pooled;
            conn.transaction::<_, Failure, _>(async |conn: &mut Connection| {
                guarded::adjust(conn, &held.context, counter, resource, key, delta).await
            })
            .await
            .map_err(Error::from)
        }
        .await;
        self.release(held).await;
        result
    }

    /// Takes what a guarded change of `resource` needs (its lock, under the Redis strategy)
    /// before any database connection is taken, so waiting for a busy lock holds none. The
    /// caller runs `guarded::adjust` with [`Held::context`] in its own transaction (with its
    /// own writes, an idempotency record say), then calls [`Adjuster::release`].
    pub async fn hold(&self, resource: &str) -> Result<Held, Error> {
        let guard = match self.options.strategy {
            Strategy::RedisLock => Some(
                self.locks
                    .try_lock(resource, self.options.lock_wait, self.options.lock_lease)
                    .await
                    .map_err(anyhow::Error::from)?
                    .ok_or_else(|| Error::Busy(resource.to_owned()))?,
            ),
            _ => None,
        };
        let context = Context {
            strategy: self.options.strategy,
            fences: guard
                .iter()
                .map(|g| (g.resource().to_owned(), g.fence()))
                .collect::<HashMap<_, _>>(),
            now: Utc::now(),
            think_time: Duration::ZERO,
        };
        Ok(Held {
            context,
            guard,
            resource: resource.to_owned(),
        })
    }

    /// Lets go of a held resource, after its transaction ended either way.
    pub async fn release(&self, held: Held) {
        if let Some(guard) = held.guard
            && let Err(err) = guard.release().await
        {
            // The lease runs out by itself; fencing keeps a late holder from writing.
            tracing::warn!(error = %err, "lock release failed");
        }
        if self.options.strategy == Strategy::LuaGate
            && let Err(err) = self.gate.forget(&[held.resource]).await
        {
            tracing::warn!(error = format!("{err:#}"), "gate counter not reset");
        }
    }
}

/// A resource held for a guarded change.
pub struct Held {
    pub context: Context,
    guard: Option<Guard>,
    resource: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A business rule refused the change; nothing changed.
    #[error("{0}")]
    Refused(String),
    /// The resource's lock was not had in time; nothing changed, the caller may retry.
    #[error("{0} is busy; try again")]
    Busy(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Rejected(reason) => Error::Refused(reason),
            Failure::Retry(err) => Error::Failed(err),
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(err: diesel::result::Error) -> Self {
        Error::Failed(err.into())
    }
}
