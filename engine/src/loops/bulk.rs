//! The bulk-job loop: works through the sagas each bulk job named (see
//! `api::operator::bulk_jobs`), one operator action per saga through the engine, which
//! decides as it does for a single action. Pending items are claimed with `FOR UPDATE SKIP
//! LOCKED`, so replicas share the work. Each action runs in a savepoint of the transaction
//! that claimed the item, and the item's outcome is written in that same transaction: the
//! action and its outcome commit together or not at all, so a crash between them leaves
//! the item pending with nothing done, and no action is ever repeated. An action the
//! engine refuses (the saga moved on meanwhile) is `skipped`, with why.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use platform::db::Connection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::schema::{bulk_job_items, bulk_jobs};
use crate::shell::{self, Engine, Operator};

const BATCH: i64 = 50;

pub struct Bulk {
    engine: Engine,
    interval: Duration,
}

impl Bulk {
    pub fn new(engine: Engine, interval: Duration) -> Self {
        Self { engine, interval }
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        run(self.engine, self.interval, shutdown).await;
        Ok(())
    }
}

async fn run(engine: Engine, interval: Duration, shutdown: CancellationToken) {
    tracing::info!("bulk-job loop started");
    loop {
        let worked = match work(&engine).await {
            Ok(worked) => worked,
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "bulk jobs failed; retrying");
                0
            }
        };
        if worked as i64 == BATCH {
            continue; // more waiting
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    tracing::info!("bulk-job loop stopped");
}

/// One batch of pending items; returns how many it worked on.
async fn work(engine: &Engine) -> anyhow::Result<usize> {
    let mut pooled = engine.pool().get().await?;
    let conn: &mut Connection = &mut pooled;
    let worked = conn
        .transaction::<_, anyhow::Error, _>(async |conn: &mut Connection| {
            let items: Vec<(Uuid, Uuid, String, Option<String>, String)> = bulk_job_items::table
                .inner_join(bulk_jobs::table)
                .filter(bulk_job_items::outcome.eq("pending"))
                .order((bulk_job_items::job_id, bulk_job_items::saga_id))
                .limit(BATCH)
                .select((
                    bulk_job_items::job_id,
                    bulk_job_items::saga_id,
                    bulk_jobs::action,
                    bulk_jobs::reason,
                    bulk_jobs::requested_by,
                ))
                .for_update()
                .skip_locked()
                .load(conn)
                .await?;
            let mut acted = Vec::new();
            for (job, saga, action, reason, by) in &items {
                let operator = Operator {
                    actor: by.clone(),
                    reason: reason.clone(),
                    expected_version: None,
                };
                // A savepoint: a refused or failed action leaves nothing behind.
                let result = conn
                    .transaction::<_, shell::Error, _>(async |conn: &mut Connection| {
                        engine.bulk_action_in(conn, *saga, action, &operator).await
                    })
                    .await;
                let (outcome, detail) = match result {
                    Ok(writes) => {
                        let quarantined = writes
                            .quarantine()
                            .map(|reason| format!("saga {saga} quarantined: {reason}"));
                        acted.push((*saga, writes));
                        match quarantined {
                            Some(why) => ("skipped", Some(why)),
                            None => ("done", None),
                        }
                    }
                    Err(
                        err @ (shell::Error::Conflict { .. }
                        | shell::Error::Corrupt { .. }
                        | shell::Error::NotFound(_)),
                    ) => ("skipped", Some(err.to_string())),
                    Err(err) => ("failed", Some(err.to_string())),
                };
                diesel::update(bulk_job_items::table.find((job, saga)))
                    .set((
                        bulk_job_items::outcome.eq(outcome),
                        bulk_job_items::detail.eq(detail),
                    ))
                    .execute(conn)
                    .await?;
            }
            if !items.is_empty() {
                diesel::sql_query(
                    "UPDATE bulk_jobs SET finished_at = now() WHERE finished_at IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM bulk_job_items i \
                       WHERE i.job_id = bulk_jobs.id AND i.outcome = 'pending')",
                )
                .execute(conn)
                .await?;
            }
            Ok((items.len(), acted))
        })
        .await?;
    let (worked, acted) = worked;
    for (saga, writes) in acted {
        // Committed: count and publish it. A saga quarantined on the way was written as such.
        let _ = engine.acted(saga, writes);
    }
    Ok(worked)
}
