//! Which background loops of a process still run, for `/healthz`.
//!
//! Every loop of a process is started through [`Loops::spawn`], which watches it: a loop
//! that returns, fails or panics while the process is not shutting down is recorded as
//! stopped, with why, and logged once here. `/healthz` answers 503 while any loop is
//! stopped, so the orchestrator (or a worker) gets restarted instead of silently doing
//! less: a replica whose reply consumer died would otherwise stay "alive" and apply
//! nothing.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A loop that stopped while it should have run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub name: String,
    pub reason: String,
}

/// The loops of one process (cheap to clone; every clone sees the same record).
#[derive(Clone, Default)]
pub struct Loops(Arc<Mutex<Vec<Stopped>>>);

impl Loops {
    /// Runs `run` on `tasks` under `name`. Its end before `shutdown` is cancelled, for
    /// whatever cause, marks it stopped.
    pub fn spawn<F>(
        &self,
        tasks: &TaskTracker,
        name: impl Into<String>,
        shutdown: &CancellationToken,
        run: F,
    ) where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.into();
        let loops = self.clone();
        let shutdown = shutdown.clone();
        // Its own task, so that a panic ends that task and is seen here as a JoinError.
        let handle = tokio::spawn(run);
        tasks.spawn(async move {
            let reason = match handle.await {
                Ok(Ok(())) if shutdown.is_cancelled() => return,
                Ok(Ok(())) => "returned before shutdown".to_owned(),
                Ok(Err(err)) => format!("{err:#}"),
                Err(err) if err.is_panic() => "panicked".to_owned(),
                Err(err) => err.to_string(),
            };
            tracing::error!(r#loop = %name, reason = %reason, "a background loop stopped");
            loops.record(Stopped { name, reason });
        });
    }

    /// Like [`Self::spawn`], for a loop that has no error to return.
    pub fn spawn_infallible<F>(
        &self,
        tasks: &TaskTracker,
        name: impl Into<String>,
        shutdown: &CancellationToken,
        run: F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(tasks, name, shutdown, async move {
            run.await;
            Ok(())
        });
    }

    /// Records a stop seen by other means (a loop that reports its own failure).
    pub fn record(&self, stopped: Stopped) {
        if let Ok(mut all) = self.0.lock() {
            all.push(stopped);
        }
    }

    /// The loops that stopped, oldest first; empty while all run.
    pub fn stopped(&self) -> Vec<Stopped> {
        self.0.lock().map(|all| all.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loop_that_fails_panics_or_returns_early_is_recorded_and_shutdown_is_not() {
        let loops = Loops::default();
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        loops.spawn(&tasks, "fails", &shutdown, async {
            anyhow::bail!("broker gone")
        });
        loops.spawn_infallible(&tasks, "panics", &shutdown, async {
            panic!("a bug");
        });
        loops.spawn_infallible(&tasks, "returns", &shutdown, async {});
        let waits = shutdown.clone();
        loops.spawn_infallible(&tasks, "runs", &shutdown, async move {
            waits.cancelled().await;
        });
        while loops.stopped().len() < 3 {
            tokio::task::yield_now().await;
        }
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        let mut stopped = loops.stopped();
        stopped.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = stopped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["fails", "panics", "returns"]);
        assert_eq!(stopped[0].reason, "broker gone");
        assert_eq!(stopped[1].reason, "panicked");
    }
}
