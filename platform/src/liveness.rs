//! Which background loops of a process still run, for `/healthz`.
//!
//! Every loop of a process is started through [`Loops::spawn`], which watches it: a loop
//! that returns, fails or panics while the process is not shutting down is recorded as
//! stopped, with why, and logged once here. `/healthz` answers 503 while any loop is
//! stopped, so the orchestrator (or a worker) gets restarted instead of silently doing
//! less: a replica whose reply consumer died would otherwise stay "alive" and apply
//! nothing. A loop that ends with a fatal Kafka error (`kafka::Fatal`, e.g. a duplicate
//! `KAFKA_INSTANCE_ID`) stops the whole process ([`Loops::stopping`]): retrying cannot
//! help, and the binary exits non-zero with the cause ([`Loops::fatal`]).

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kafka::Fatal;

/// How a fatal stop's reason begins.
const FATAL: &str = "fatal: ";

/// A loop that stopped while it should have run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub name: String,
    pub reason: String,
}

/// The loops of one process (cheap to clone; every clone sees the same record).
#[derive(Clone, Default)]
pub struct Loops {
    stopped: Arc<Mutex<Vec<Stopped>>>,
    /// Cancelled when a loop meets a fatal error.
    on_fatal: Option<CancellationToken>,
}

impl Loops {
    /// Loops whose fatal errors cancel `process` (the process's shutdown).
    pub fn stopping(process: CancellationToken) -> Self {
        Self {
            stopped: Arc::default(),
            on_fatal: Some(process),
        }
    }

    /// The first fatal error a loop met, if any.
    pub fn fatal(&self) -> Option<Stopped> {
        self.stopped()
            .into_iter()
            .find(|stopped| stopped.reason.starts_with(FATAL))
    }

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
                Ok(Err(err)) if err.chain().any(|cause| cause.is::<Fatal>()) => {
                    if let Some(process) = &loops.on_fatal {
                        process.cancel();
                    }
                    format!("{FATAL}{err:#}")
                }
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
        if let Ok(mut all) = self.stopped.lock() {
            all.push(stopped);
        }
    }

    /// The loops that stopped, oldest first; empty while all run.
    pub fn stopped(&self) -> Vec<Stopped> {
        self.stopped
            .lock()
            .map(|all| all.clone())
            .unwrap_or_default()
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
        assert_eq!(loops.fatal(), None);
    }

    #[tokio::test]
    async fn a_fatal_kafka_error_stops_the_whole_process_and_names_its_cause() {
        let process = CancellationToken::new();
        let loops = Loops::stopping(process.clone());
        let tasks = TaskTracker::new();
        loops.spawn(&tasks, "replies-0", &process, async {
            Err(anyhow::Error::new(Fatal(
                "another process joined as `a:1`".to_owned(),
            )))
        });
        process.cancelled().await;
        tasks.close();
        tasks.wait().await;
        let fatal = loops.fatal().expect("recorded as fatal");
        assert_eq!(fatal.name, "replies-0");
        assert!(fatal.reason.contains("another process joined"), "{fatal:?}");
    }
}
