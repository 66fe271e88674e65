//! The Lua-script strategy: a Redis gate in front of the database.
//!
//! One atomic script per operation checks and takes capacity (stock units, coupons left)
//! from counters held in Redis, so most losers of a rush (the 400 of 500 claims that cannot
//! get one of 100 coupons) are turned away without touching Postgres. A counter is seeded
//! from Postgres the first time it is needed (`SET NX`, so a concurrent seeder cannot reset
//! capacity already taken).
//!
//! The gate is a filter, not the authority: the write behind it is the Postgres strategy's
//! conditional `UPDATE`, so an over-generous gate (a reseed while operations are in flight)
//! can never break an invariant. It must not stay stricter than Postgres either: each take
//! is a lease that its operation settles (kept after a commit, returned after a failure);
//! the lease of an operation that crashed in between expires and its capacity is returned
//! (see `TAKE`). A compensation forgets the counters of what it touched, which are reseeded
//! from Postgres on next use.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use deadpool_redis::redis::Script;
use diesel::sql_types::{BigInt, Text};
use diesel::{OptionalExtension as _, QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use platform::cache;
use platform::db::Connection;

use crate::guarded::Counter;

/// KEYS: gate counters. ARGV: the operation's id, now (ms), the lease (ms), then the
/// amounts, then the seeds (one each per key). Returns 1 and takes every amount, or 0 and
/// takes nothing.
///
/// Every take is recorded as a lease (`<counter>:leases`, by expiry, and `<counter>:taken`,
/// the amount) until the operation settles it. A lease still there at its expiry belongs to
/// an operation that crashed between the gate and its commit: its amount goes back to the
/// counter first, so a crash never leaves the gate stricter than Postgres for longer than
/// one lease.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = #KEYS
          local op, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
          for i = 1, n do
              local key = KEYS[i]
              redis.call('SET', key, ARGV[3 + n + i], 'NX')
              local expired = redis.call('ZRANGEBYSCORE', key .. ':leases', '-inf', now)
              for _, member in ipairs(expired) do
                  local amount = redis.call('HGET', key .. ':taken', member)
                  if amount then
                      redis.call('INCRBY', key, amount)
                  end
                  redis.call('HDEL', key .. ':taken', member)
                  redis.call('ZREM', key .. ':leases', member)
              end
          end
          for i = 1, n do
              if tonumber(redis.call('GET', KEYS[i])) < tonumber(ARGV[3 + i]) then
                  return 0
              end
          end
          for i = 1, n do
              local key = KEYS[i]
              redis.call('DECRBY', key, ARGV[3 + i])
              redis.call('ZADD', key .. ':leases', now + lease, op)
              redis.call('HSET', key .. ':taken', op, ARGV[3 + i])
          end
          return 1",
    )
});

/// KEYS: gate counters. ARGV: the operation's id, then `1` to return its amounts (it
/// failed) or `0` to keep them taken (it committed). A lease already reclaimed at its
/// expiry is not returned twice.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"for i = 1, #KEYS do
              local key = KEYS[i]
              local amount = redis.call('HGET', key .. ':taken', ARGV[1])
              if amount then
                  if ARGV[2] == '1' then
                      redis.call('INCRBY', key, amount)
                  end
                  redis.call('HDEL', key .. ':taken', ARGV[1])
                  redis.call('ZREM', key .. ':leases', ARGV[1])
              end
          end
          return 1",
    )
});

/// How long capacity taken at the gate may wait for its operation to settle before it
/// counts as left behind by a crash. Longer than any operation: Postgres statements time
/// out after 30 s.
pub const LEASE: Duration = Duration::from_secs(60);

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

    /// Takes every wanted amount atomically for operation `op`; `false` (nothing taken)
    /// when any is short. A resource missing from Postgres seeds as 0, so the operation is
    /// turned away here and its rejection comes from the participant. The operation must
    /// [`settle`](Gate::settle) what it took.
    pub async fn take(
        &self,
        conn: &mut Connection,
        wants: &[Want],
        op: Uuid,
    ) -> anyhow::Result<bool> {
        self.take_at(conn, wants, op, Utc::now()).await
    }

    /// [`Gate::take`] as of `now` (tests move it to let leases expire).
    pub async fn take_at(
        &self,
        conn: &mut Connection,
        wants: &[Want],
        op: Uuid,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        let mut seeds = Vec::with_capacity(wants.len());
        for want in wants {
            seeds.push(remaining(conn, want).await?);
        }
        let mut script = TAKE.prepare_invoke();
        for want in wants {
            script.key(self.key(&want.resource));
        }
        script
            .arg(op.to_string())
            .arg(now.timestamp_millis())
            .arg(i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX));
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

    /// Ends operation `op`'s leases: `committed` keeps what it took (Postgres has it now),
    /// otherwise it goes back to the counters.
    pub async fn settle(&self, wants: &[Want], op: Uuid, committed: bool) -> anyhow::Result<()> {
        if wants.is_empty() {
            return Ok(());
        }
        let mut script = SETTLE.prepare_invoke();
        for want in wants {
            script.key(self.key(&want.resource));
        }
        script
            .arg(op.to_string())
            .arg(if committed { "0" } else { "1" });
        let mut redis = self.pool.get().await?;
        script.invoke_async::<i64>(&mut redis).await?;
        Ok(())
    }

    /// Drops the counters of `resources`; the next operation reseeds them from Postgres.
    pub async fn forget(&self, resources: &[String]) -> anyhow::Result<()> {
        if resources.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = resources
            .iter()
            .map(|r| self.key(r))
            .flat_map(|key| [format!("{key}:leases"), format!("{key}:taken"), key])
            .collect();
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
