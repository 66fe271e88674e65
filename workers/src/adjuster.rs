//! Changes to counters from outside a saga (an operator adjusting stock, a user topping up
//! a wallet). They go through the same strategy as the participants: under the resource's
//! Redis lock with its fencing token, and the Lua gate forgets the counter afterwards.
//! An unguarded `UPDATE` here could be overwritten by a participant's locked
//! read-then-write, which is exactly the lost update the locks exist to prevent.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use diesel_async::AsyncConnection as _;
use platform::cache;
use platform::db::{self, Connection};

use crate::gate::Gate;
use crate::guarded::{self, Adjusted, Counter};
use crate::lock::Locks;
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

    /// Adds `delta` to the counter of row `key` (lock name `resource`) within its bounds.
    pub async fn adjust(
        &self,
        counter: Counter,
        resource: &str,
        key: &str,
        delta: i64,
    ) -> anyhow::Result<Adjusted> {
        let guard = match self.options.strategy {
            Strategy::RedisLock => Some(
                self.locks
                    .try_lock(resource, self.options.lock_wait, self.options.lock_lease)
                    .await?
                    .with_context(|| format!("{resource} is busy; try again"))?,
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
        let mut pooled = self.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        let result = conn
            .transaction::<_, Failure, _>(async |conn: &mut Connection| {
                guarded::adjust(conn, &context, counter, resource, key, delta).await
            })
            .await;
        if let Some(guard) = guard {
            let _ = guard.release().await;
        }
        if self.options.strategy == Strategy::LuaGate {
            self.gate.forget(&[resource.to_owned()]).await?;
        }
        match result {
            Ok(adjusted) => Ok(adjusted),
            Err(Failure::Rejected(reason)) => anyhow::bail!(reason),
            Err(Failure::Retry(err)) => Err(err),
        }
    }
}
