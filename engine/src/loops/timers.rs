//! The timer loop: feeds a `Tick` to every saga whose deadline or retry time has passed.
//! Due rows are claimed with `FOR UPDATE SKIP LOCKED`, so several orchestrator replicas
//! share the work without firing one timer twice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::shell::Engine;

pub struct Timers {
    engine: Engine,
    interval: Duration,
    batch: i64,
}

impl Timers {
    pub fn new(engine: Engine, interval: Duration) -> Self {
        Self {
            engine,
            interval,
            batch: 100,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!("timer loop started");
        loop {
            let fired = match self.engine.fire_due_timers(self.batch).await {
                Ok(fired) => fired,
                Err(err) => {
                    tracing::error!(error = %err, "firing timers failed");
                    0
                }
            };
            if fired as i64 == self.batch {
                continue; // a backlog: keep going
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        tracing::info!("timer loop stopped");
        Ok(())
    }
}
