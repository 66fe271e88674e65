//! The Lua-script strategy: a Redis gate in front of the database.
//!
//! One atomic script checks and takes capacity (stock units, coupons left) from counters
//! held in Redis, for every operation of a worker's batch in one call, so most losers of a
//! rush (the 400 of 500 claims that cannot get one of 100 coupons) are turned away without
//! touching Postgres. A counter is seeded from Postgres the first time it is needed (`SET
//! NX`, so a concurrent seeder cannot reset capacity already taken).
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

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use deadpool_redis::redis::Script;
use diesel::sql_types::{BigInt, Text};
use diesel::{OptionalExtension as _, QueryableByName};
use diesel_async::RunQueryDsl;
use platform::cache;
use platform::db::{Connection, prepared};

use crate::guarded::Counter;

/// KEYS: the gate counters of a batch of operations. ARGV: now (ms), the lease (ms), one
/// seed per key (`''` when not read), then each operation: its id, its number of wants `k`,
/// and `k` pairs (key index, amount). Takes each operation's amounts, all or nothing, in
/// order, and returns 1 or 0 per operation. When a counter is missing and its seed was not
/// given, it takes nothing and returns -1 followed by the missing keys' indexes: the caller
/// reads those seeds from Postgres and calls again. A seed is set with `NX`, so a
/// concurrent seeder cannot reset capacity already taken.
///
/// Every take is recorded as a lease (`<counter>:leases`, by expiry, and `<counter>:taken`,
/// the amount) until the operation settles it. A lease still there at its expiry belongs to
/// an operation that crashed between the gate and its commit: its amount goes back to the
/// counter first, so a crash never leaves the gate stricter than Postgres for longer than
/// one lease.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = #KEYS
          local now, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
          local missing = {-1}
          for i = 1, n do
              local seed = ARGV[2 + i]
              if seed ~= '' then
                  redis.call('SET', KEYS[i], seed, 'NX')
              elseif redis.call('EXISTS', KEYS[i]) == 0 then
                  missing[#missing + 1] = i
              end
          end
          if #missing > 1 then
              return missing
          end
          for i = 1, n do
              local key = KEYS[i]
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
          local taken = {}
          local at = 3 + n
          while at <= #ARGV do
              local op, k = ARGV[at], tonumber(ARGV[at + 1])
              local enough = true
              for j = 0, k - 1 do
                  local key = KEYS[tonumber(ARGV[at + 2 + 2 * j])]
                  if tonumber(redis.call('GET', key)) < tonumber(ARGV[at + 3 + 2 * j]) then
                      enough = false
                  end
              end
              if enough then
                  for j = 0, k - 1 do
                      local key = KEYS[tonumber(ARGV[at + 2 + 2 * j])]
                      local amount = ARGV[at + 3 + 2 * j]
                      redis.call('DECRBY', key, amount)
                      redis.call('ZADD', key .. ':leases', now + lease, op)
                      redis.call('HSET', key .. ':taken', op, amount)
                  end
              end
              taken[#taken + 1] = enough and 1 or 0
              at = at + 2 + 2 * k
          end
          return taken",
    )
});

/// KEYS: the gate counters of a batch of operations. ARGV: each operation: its id, `1` to
/// return its amounts (it failed) or `0` to keep them taken (it committed), its number of
/// keys `k`, and their `k` indexes. A lease already reclaimed at its expiry is not returned
/// twice.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local at = 1
          while at <= #ARGV do
              local op, back, k = ARGV[at], ARGV[at + 1] == '1', tonumber(ARGV[at + 2])
              for j = 1, k do
                  local key = KEYS[tonumber(ARGV[at + 2 + j])]
                  local amount = redis.call('HGET', key .. ':taken', op)
                  if amount then
                      if back then
                          redis.call('INCRBY', key, amount)
                      end
                      redis.call('HDEL', key .. ':taken', op)
                      redis.call('ZREM', key .. ':leases', op)
                  end
              end
              at = at + 3 + k
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
        let taken = self.take_all(conn, &[(op, wants)], now).await?;
        Ok(matches!(taken.as_slice(), [true]))
    }

    /// [`Gate::take`] for a batch of operations in one script, in order: whether each
    /// operation took its amounts. Postgres is read only for counters the gate does not
    /// hold yet.
    pub async fn take_all(
        &self,
        conn: &mut Connection,
        ops: &[(Uuid, &[Want])],
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<bool>> {
        let (keys, indexed) = self.keys(ops.iter().map(|(op, wants)| (*op, *wants)));
        if keys.is_empty() {
            return Ok(vec![true; ops.len()]);
        }
        let mut seeds: Vec<Option<i64>> = vec![None; keys.len()];
        let mut redis = self.pool.get().await?;
        loop {
            let mut script = TAKE.prepare_invoke();
            for (key, _) in &keys {
                script.key(key);
            }
            script
                .arg(now.timestamp_millis())
                .arg(i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX));
            for seed in &seeds {
                script.arg(seed.map_or(String::new(), |seed| seed.to_string()));
            }
            for (op, wanted) in &indexed {
                script.arg(op.to_string()).arg(wanted.len());
                for (index, amount) in wanted {
                    script.arg(index + 1).arg(*amount);
                }
            }
            let answer: Vec<i64> = script.invoke_async(&mut redis).await?;
            if answer.as_slice().first() != Some(&-1) {
                anyhow::ensure!(answer.len() == ops.len(), "gate answered {answer:?}");
                return Ok(answer.into_iter().map(|taken| taken == 1).collect());
            }
            for index in &answer[1..] {
                let index = usize::try_from(*index - 1)?;
                let want = keys.get(index).context("gate named an unknown counter")?.1;
                seeds[index] = Some(remaining(conn, want).await?);
            }
        }
    }

    /// Ends operation `op`'s leases: `committed` keeps what it took (Postgres has it now),
    /// otherwise it goes back to the counters.
    pub async fn settle(&self, wants: &[Want], op: Uuid, committed: bool) -> anyhow::Result<()> {
        self.settle_all(&[(op, wants, committed)]).await
    }

    /// [`Gate::settle`] for a batch of operations in one script.
    pub async fn settle_all(&self, ops: &[(Uuid, &[Want], bool)]) -> anyhow::Result<()> {
        let (keys, indexed) = self.keys(ops.iter().map(|(op, wants, _)| (*op, *wants)));
        if keys.is_empty() {
            return Ok(());
        }
        let mut script = SETTLE.prepare_invoke();
        for (key, _) in &keys {
            script.key(key);
        }
        for ((op, wanted), (_, _, committed)) in indexed.iter().zip(ops) {
            script
                .arg(op.to_string())
                .arg(if *committed { "0" } else { "1" })
                .arg(wanted.len());
            for (index, _) in wanted {
                script.arg(index + 1);
            }
        }
        let mut redis = self.pool.get().await?;
        script.invoke_async::<i64>(&mut redis).await?;
        Ok(())
    }

    /// The distinct counters of `ops` (each with a want that names it), and each
    /// operation's wants as (counter index, amount).
    fn keys<'w>(
        &self,
        ops: impl Iterator<Item = (Uuid, &'w [Want])>,
    ) -> (Counters<'w>, Vec<(Uuid, Wanted)>) {
        let mut keys: Vec<(String, &Want)> = Vec::new();
        let mut indexed = Vec::new();
        for (op, wants) in ops {
            let mut wanted = Vec::with_capacity(wants.len());
            for want in wants {
                let key = self.key(&want.resource);
                let index = match keys.iter().position(|(known, _)| *known == key) {
                    Some(index) => index,
                    None => {
                        keys.push((key, want));
                        keys.len() - 1
                    }
                };
                wanted.push((index, want.amount));
            }
            indexed.push((op, wanted));
        }
        (keys, indexed)
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

/// A batch's distinct gate counters, each with a want that names it (for its seed).
type Counters<'w> = Vec<(String, &'w Want)>;

/// One operation's wants, as (counter index, amount).
type Wanted = Vec<(usize, i64)>;

/// The capacity left in Postgres (0 for an unknown row).
async fn remaining(conn: &mut Connection, want: &Want) -> anyhow::Result<i64> {
    let Counter {
        table,
        key,
        key_type,
        remaining,
        ..
    } = want.counter;
    let row: Option<Remaining> = prepared(format!(
        "SELECT ({remaining})::bigint AS remaining FROM {table} WHERE {key} = $1::{key_type}"
    ))
    .bind::<Text, _>(&want.key)
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.map_or(0, |r| r.remaining.max(0)))
}
