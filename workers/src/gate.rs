//! The Lua-script strategy: a Redis gate in front of the database.
//!
//! One atomic script per operation checks and takes capacity (stock units, coupons left)
//! from counters held in Redis, so most losers of a rush (the 400 of 500 claims that cannot
//! get one of 100 coupons) are turned away without touching Postgres. A counter is seeded
//! from Postgres the first time it is needed (`SET NX`, so a concurrent seeder cannot reset
//! capacity already taken).
//!
//! The gate is a filter, not the authority: the write behind it is the Postgres strategy's
//! conditional `UPDATE`, so an over-generous gate (after a crash between gate and commit,
//! or a reseed while operations are in flight) can never break an invariant. Capacity taken
//! by an operation that then fails is given back; a compensation forgets the counters of
//! what it touched, which are reseeded from Postgres on next use.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;
use diesel::sql_types::{BigInt, Text};
use diesel::{OptionalExtension as _, QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use platform::cache;
use platform::db::Connection;

use crate::guarded::Counter;

/// KEYS: gate counters. ARGV: amounts, then seeds (one each per key).
/// Returns 1 and takes every amount, or 0 and takes nothing.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = #KEYS
          for i = 1, n do
              redis.call('SET', KEYS[i], ARGV[n + i], 'NX')
          end
          for i = 1, n do
              if tonumber(redis.call('GET', KEYS[i])) < tonumber(ARGV[i]) then
                  return 0
              end
          end
          for i = 1, n do
              redis.call('DECRBY', KEYS[i], ARGV[i])
          end
          return 1",
    )
});

/// Capacity an operation wants from one resource.
#[derive(Debug, Clone)]
pub struct Want {
    /// Lock-style resource name (`sku:A`), also the gate counter's name.
    pub resource: String,
    pub counter: Counter,
    /// The row key in `counter.table`.
    pub key: String,
    pub amount: i64,
}

#[derive(QueryableByName)]
struct Remaining {
    #[diesel(sql_type = BigInt)]
    remaining: i64,
}

#[derive(Clone)]
pub struct Gate {
    pool: cache::Pool,
    prefix: String,
}

impl Gate {
    pub fn new(pool: cache::Pool, prefix: impl Into<String>) -> Self {
        Self {
            pool,
            prefix: prefix.into(),
        }
    }

    fn key(&self, resource: &str) -> String {
        format!("{}gate:{resource}", self.prefix)
    }

    /// Takes every wanted amount atomically; `false` (nothing taken) when any is short.
    /// A resource missing from Postgres seeds as 0, so the operation is turned away here
    /// and its rejection comes from the participant.
    pub async fn take(&self, conn: &mut Connection, wants: &[Want]) -> anyhow::Result<bool> {
        let mut seeds = Vec::with_capacity(wants.len());
        for want in wants {
            seeds.push(remaining(conn, want).await?);
        }
        let mut script = TAKE.prepare_invoke();
        for want in wants {
            script.key(self.key(&want.resource));
        }
        for want in wants {
            script.arg(want.amount);
        }
        for seed in seeds {
            script.arg(seed);
        }
        let mut redis = self.pool.get().await?;
        let taken: i64 = script.invoke_async(&mut redis).await?;
        Ok(taken == 1)
    }

    /// Returns what `take` took, after the operation behind it did not happen.
    pub async fn give_back(&self, wants: &[Want]) -> anyhow::Result<()> {
        let mut redis = self.pool.get().await?;
        let mut pipe = deadpool_redis::redis::pipe();
        for want in wants {
            pipe.cmd("INCRBY")
                .arg(self.key(&want.resource))
                .arg(want.amount)
                .ignore();
        }
        pipe.query_async::<()>(&mut redis).await?;
        Ok(())
    }

    /// Drops the counters of `resources`; the next operation reseeds them from Postgres.
    pub async fn forget(&self, resources: &[String]) -> anyhow::Result<()> {
        if resources.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = resources.iter().map(|r| self.key(r)).collect();
        let mut redis = self.pool.get().await?;
        deadpool_redis::redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }
}

/// The capacity left in Postgres (0 for an unknown row).
async fn remaining(conn: &mut Connection, want: &Want) -> anyhow::Result<i64> {
    let Counter {
        table,
        key,
        key_type,
        remaining,
        ..
    } = want.counter;
    let row: Option<Remaining> = sql_query(format!(
        "SELECT ({remaining})::bigint AS remaining FROM {table} WHERE {key} = $1::{key_type}"
    ))
    .bind::<Text, _>(&want.key)
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.map_or(0, |r| r.remaining.max(0)))
}
