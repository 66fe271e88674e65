//! Retention: old rows of the inbox, history and bookkeeping tables are deleted in small
//! batches by a background loop, so no table grows without bound.
//!
//! Each crate names its own tables as [`Rule`]s; this module only runs them. The windows come
//! from [`crate::env::RetentionEnv`]. The inbox window must stay longer than the broker's
//! retention: after an offset reset, a consumer replays what the broker still holds, and
//! only the inbox keeps that replay from applying a command or reply twice.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use diesel::sql_query;
use diesel::sql_types::Timestamptz;
use diesel_async::RunQueryDsl;
use tokio_util::sync::CancellationToken;

use crate::db::{Connection, Pool};

/// How often a process sweeps its tables.
pub const EVERY: Duration = Duration::from_secs(600);

/// Which window a rule's rows age against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// `RETENTION_INBOX_DAYS`: dedup records (inboxes, fences).
    Inbox,
    /// `RETENTION_HISTORY_DAYS`: what people read (history of finished sagas, notifications).
    History,
    /// A fixed window (idempotency keys).
    Fixed(TimeDelta),
}

/// Rows of `table` whose `age` expression (a timestamptz) is older than the window, and
/// that also match `and` (SQL, may be empty), are deleted. Names come from code, never input.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub table: &'static str,
    pub age: &'static str,
    pub and: &'static str,
    pub window: Window,
}

/// Rows deleted per statement: short transactions, no long locks.
const BATCH: i64 = 5_000;

/// Deletes what every rule allows, as of `now`. Returns the rows deleted per table.
pub async fn sweep(
    conn: &mut Connection,
    rules: &[Rule],
    windows: &crate::env::RetentionEnv,
    now: DateTime<Utc>,
) -> diesel::QueryResult<Vec<(&'static str, usize)>> {
    let mut deleted = Vec::with_capacity(rules.len());
    for rule in rules {
        let window = match rule.window {
            Window::Inbox => windows.inbox,
            Window::History => windows.history,
            Window::Fixed(window) => window,
        };
        let cutoff = now - window;
        let and = if rule.and.is_empty() {
            String::new()
        } else {
            format!(" AND ({})", rule.and)
        };
        let statement = format!(
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(\
             SELECT ctid FROM {table} WHERE {age} < $1{and} LIMIT {BATCH}))",
            table = rule.table,
            age = rule.age,
        );
        let mut total = 0;
        loop {
            let rows = sql_query(&statement)
                .bind::<Timestamptz, _>(cutoff)
                .execute(conn)
                .await?;
            total += rows;
            if (rows as i64) < BATCH {
                break;
            }
        }
        deleted.push((rule.table, total));
    }
    Ok(deleted)
}

/// Sweeps every `every` until shutdown. Errors are logged and retried next round.
pub async fn run(
    pool: Pool,
    rules: &'static [Rule],
    windows: crate::env::RetentionEnv,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match pool.get().await {
            Ok(mut conn) => match sweep(&mut conn, rules, &windows, Utc::now()).await {
                Ok(deleted) => {
                    let deleted: Vec<_> = deleted.into_iter().filter(|(_, n)| *n > 0).collect();
                    if !deleted.is_empty() {
                        tracing::info!(?deleted, "retention sweep");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "retention sweep failed"),
            },
            Err(err) => tracing::warn!(error = %err, "retention sweep: no connection"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
