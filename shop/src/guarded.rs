//! Guarded changes to a counter column (stock, balance, coupons claimed): the one place
//! where the concurrency strategies differ.
//!
//! - Redis lock (and the unprotected test mode): read the value, check the rule, write the
//!   new value. The lock makes the read-then-write safe while its lease holds; the fencing
//!   token makes it safe when the lease expires under a slow holder: the *read* registers
//!   the token on the row (`fence <= token`, then `fence = token`) and the write checks it
//!   again, so once a newer holder has read the row, an older one can no longer write.
//! - Postgres (and the Lua gate, which filters in front of it): one conditional
//!   `UPDATE ... SET v = v + delta WHERE <rule holds>`, which Postgres applies atomically.
//!
//! Table and column names come from the constants below, never from input.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::{OptionalExtension as _, QueryableByName};
use diesel_async::RunQueryDsl;
use platform::db::{Connection, prepared};

use crate::participant::{Context, Failure};

/// A counter column and how its row is found.
#[derive(Debug, Clone, Copy)]
pub struct Counter {
    pub table: &'static str,
    pub key: &'static str,
    /// SQL type of the key (`text`, `uuid`).
    pub key_type: &'static str,
    pub column: &'static str,
    /// SQL type of the column (`integer`, `bigint`).
    pub column_type: &'static str,
    /// The largest value the column holds: a change past it is out of bounds, never an
    /// overflow error.
    pub max: i64,
    /// A column the value must not exceed (coupons claimed <= total quantity).
    pub upper_bound: Option<&'static str>,
    /// SQL for the capacity left to take (the Lua gate's seed).
    pub remaining: &'static str,
}

pub const STOCK: Counter = Counter {
    table: "products",
    key: "sku",
    key_type: "text",
    column: "stock",
    column_type: "integer",
    max: i32::MAX as i64,
    upper_bound: None,
    remaining: "stock",
};

pub const USER_BALANCE: Counter = Counter {
    table: "users",
    key: "id",
    key_type: "uuid",
    column: "balance_cents",
    column_type: "bigint",
    max: i64::MAX,
    upper_bound: None,
    remaining: "balance_cents",
};

pub const VENDOR_BALANCE: Counter = Counter {
    table: "vendors",
    key: "id",
    key_type: "uuid",
    column: "balance_cents",
    column_type: "bigint",
    max: i64::MAX,
    upper_bound: None,
    remaining: "balance_cents",
};

pub const COUPONS_CLAIMED: Counter = Counter {
    table: "coupon_campaigns",
    key: "id",
    key_type: "uuid",
    column: "claimed",
    column_type: "integer",
    max: i32::MAX as i64,
    upper_bound: Some("total_quantity"),
    remaining: "total_quantity - claimed",
};

/// The result of a guarded change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjusted {
    Done {
        after: i64,
    },
    /// No row with that key.
    Missing,
    /// The change would leave `[0, limit]` (the upper-bound column, or the column's
    /// largest value); nothing was written.
    OutOfBounds {
        current: i64,
        limit: Option<i64>,
    },
}

/// A counter's value and its upper bound, as read.
#[derive(Debug, QueryableByName)]
pub struct Current {
    #[diesel(sql_type = BigInt)]
    pub value: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub upper: Option<i64>,
}

/// Adds `delta` to the counter of row `key`, keeping it within bounds. `resource` names the
/// lock whose fencing token guards the write.
pub async fn adjust(
    conn: &mut Connection,
    context: &Context,
    counter: Counter,
    resource: &str,
    key: &str,
    delta: i64,
) -> Result<Adjusted, Failure> {
    let Counter {
        table,
        key: key_column,
        key_type,
        column,
        upper_bound,
        max,
        ..
    } = counter;
    let upper_sql = upper_bound.map_or("NULL".to_owned(), |c| format!("{c}::bigint"));
    if context.atomic_writes() {
        // The bounds are checked in numeric, so a huge delta is refused, not overflowed.
        let upper_rule = upper_bound.map_or(String::new(), |c| {
            format!(" AND {column}::numeric + $2 <= {c}")
        });
        let updated: Option<Current> = prepared(format!(
            "UPDATE {table} SET {column} = {column} + $2, updated_at = now() \
             WHERE {key_column} = $1::{key_type} \
               AND {column}::numeric + $2 BETWEEN 0 AND $3{upper_rule} \
             RETURNING {column}::bigint AS value, {upper_sql} AS upper"
        ))
        .bind::<Text, _>(key)
        .bind::<BigInt, _>(delta)
        .bind::<BigInt, _>(max)
        .get_result(conn)
        .await
        .optional()?;
        if let Some(row) = updated {
            return Ok(Adjusted::Done { after: row.value });
        }
        return Ok(match read(conn, counter, key).await? {
            None => Adjusted::Missing,
            Some(row) => out_of_bounds(row, max),
        });
    }

    let fence = context.fence(resource);
    let Some(current) = read_fenced(conn, counter, resource, key, fence).await? else {
        return Ok(Adjusted::Missing);
    };
    let limit = current.upper.unwrap_or(max).min(max);
    let after = match current.value.checked_add(delta) {
        Some(after) if (0..=limit).contains(&after) => after,
        _ => return Ok(out_of_bounds(current, max)),
    };
    context.think().await;
    write_fenced(conn, counter, resource, key, after, fence).await?;
    Ok(Adjusted::Done { after })
}

fn out_of_bounds(row: Current, max: i64) -> Adjusted {
    Adjusted::OutOfBounds {
        current: row.value,
        limit: Some(row.upper.unwrap_or(max).min(max)),
    }
}

/// The value a read-then-write starts from, read by registering `fence` on the row in the
/// same statement (`fence <= token`, then `fence = token`). From then on a holder with a
/// smaller token can neither read nor write the row, so two holders whose leases overlap
/// can never both write a value computed from the same read. Without a token (the
/// unprotected test strategy) a plain read.
pub async fn read_fenced(
    conn: &mut Connection,
    counter: Counter,
    resource: &str,
    key: &str,
    fence: Option<i64>,
) -> Result<Option<Current>, Failure> {
    let Some(token) = fence else {
        return read(conn, counter, key).await;
    };
    let Counter {
        table,
        key: key_column,
        key_type,
        column,
        upper_bound,
        ..
    } = counter;
    let upper_sql = upper_bound.map_or("NULL".to_owned(), |c| format!("{c}::bigint"));
    let registered: Option<Current> = prepared(format!(
        "UPDATE {table} SET fence = $2 WHERE {key_column} = $1::{key_type} AND fence <= $2 \
         RETURNING {column}::bigint AS value, {upper_sql} AS upper"
    ))
    .bind::<Text, _>(key)
    .bind::<BigInt, _>(token)
    .get_result(conn)
    .await
    .optional()?;
    if registered.is_some() {
        return Ok(registered);
    }
    match read(conn, counter, key).await? {
        None => Ok(None),
        Some(_) => Err(stale(resource, fence)),
    }
}

/// Writes the value computed from [`read_fenced`], unless a newer holder registered its
/// token since: then the write is refused and the command retried.
pub async fn write_fenced(
    conn: &mut Connection,
    counter: Counter,
    resource: &str,
    key: &str,
    value: i64,
    fence: Option<i64>,
) -> Result<(), Failure> {
    let Counter {
        table,
        key: key_column,
        key_type,
        column,
        column_type,
        ..
    } = counter;
    let written = prepared(format!(
        "UPDATE {table} SET {column} = CAST($2 AS {column_type}), \
         fence = COALESCE($3, fence), updated_at = now() \
         WHERE {key_column} = $1::{key_type} AND ($3::bigint IS NULL OR fence <= $3)"
    ))
    .bind::<Text, _>(key)
    .bind::<BigInt, _>(value)
    .bind::<Nullable<BigInt>, _>(fence)
    .execute(conn)
    .await?;
    if written == 0 {
        return Err(stale(resource, fence));
    }
    Ok(())
}

fn stale(resource: &str, fence: Option<i64>) -> Failure {
    Failure::Retry(anyhow::anyhow!(
        "stale fencing token {fence:?} for {resource}: a newer lock holder has the row"
    ))
}

async fn read(
    conn: &mut Connection,
    counter: Counter,
    key: &str,
) -> Result<Option<Current>, Failure> {
    let Counter {
        table,
        key: key_column,
        key_type,
        column,
        upper_bound,
        ..
    } = counter;
    let upper_sql = upper_bound.map_or("NULL".to_owned(), |c| format!("{c}::bigint"));
    Ok(prepared(format!(
        "SELECT {column}::bigint AS value, {upper_sql} AS upper \
         FROM {table} WHERE {key_column} = $1::{key_type}"
    ))
    .bind::<Text, _>(key)
    .get_result(conn)
    .await
    .optional()?)
}
