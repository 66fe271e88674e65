//! The participants' metrics (prometheus-client): commands by role and outcome with their
//! latency, and the Redis locks' wait time and failures. One set per process, shared by
//! every role it runs; a `worker` serves it at `METRICS_ADDR` (see [`serve`]), and
//! `orchestrator dev`, which runs the roles in-process, adds it to its own `/metrics`.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use poem::listener::TcpListener;
use poem::{EndpointExt as _, Route, get, handler};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

type Labels = Vec<(String, String)>;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The families a worker exports, as they are named in its `/metrics` (histograms and
/// counters with their `_bucket` / `_total` ... samples).
pub const FAMILIES: [&str; 4] = [
    "sagaflow_commands",
    "sagaflow_command_duration_seconds",
    "sagaflow_lock_wait_seconds",
    "sagaflow_lock_failures",
];

pub struct WorkerMetrics {
    commands: Family<Labels, Counter>,
    command_duration: Family<Labels, Histogram>,
    lock_wait: Family<Labels, Histogram>,
    lock_failures: Family<Labels, Counter>,
}

/// This process's participant metrics.
pub static METRICS: LazyLock<WorkerMetrics> = LazyLock::new(|| WorkerMetrics {
    commands: Family::default(),
    command_duration: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
    lock_wait: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
    lock_failures: Family::default(),
});

fn role(role: &str) -> Labels {
    vec![("role".to_owned(), role.to_owned())]
}

impl WorkerMetrics {
    /// A command handled to `outcome` (`succeeded`, `rejected`, `failed`, or `error` for an
    /// attempt that will be retried), `took` from the batch's start to its commit (none for
    /// a command answered `failed` after its retry budget: its time is its retries').
    pub fn command(&self, role_name: &str, outcome: &str, took: Option<Duration>) {
        let mut labels = role(role_name);
        labels.push(("outcome".to_owned(), outcome.to_owned()));
        self.commands.get_or_create(&labels).inc();
        if let Some(took) = took {
            self.command_duration
                .get_or_create(&role(role_name))
                .observe(took.as_secs_f64());
        }
    }

    /// The time a batch waited for its Redis locks, and whether it got them.
    pub fn lock(&self, role_name: &str, waited: Duration, acquired: bool) {
        self.lock_wait
            .get_or_create(&role(role_name))
            .observe(waited.as_secs_f64());
        // Created at the first lock, so that "no failures" is a 0, not a missing series.
        let failures = self.lock_failures.get_or_create(&role(role_name));
        if !acquired {
            failures.inc();
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sagaflow_commands",
            "Commands handled by participants, by role and outcome (error: an attempt that is retried).",
            self.commands.clone(),
        );
        registry.register_with_unit(
            "sagaflow_command_duration",
            "Time from a command batch's start to its commit, per command, by role.",
            Unit::Seconds,
            self.command_duration.clone(),
        );
        registry.register_with_unit(
            "sagaflow_lock_wait",
            "Time spent waiting for the Redis locks of a batch, by role.",
            Unit::Seconds,
            self.lock_wait.clone(),
        );
        registry.register(
            "sagaflow_lock_failures",
            "Batches whose Redis locks were not had within LOCK_WAIT_MS (or Redis failed), by role.",
            self.lock_failures.clone(),
        );
    }

    /// OpenMetrics text of these metrics alone.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// The fatal error that stopped this process, if one did.
static FATAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the fatal error that stops the process (the first one wins).
pub fn fatal(reason: String) {
    let _ = FATAL.set(reason);
}

/// The fatal error that stopped the process, for its exit.
pub fn fatal_reason() -> Option<&'static str> {
    FATAL.get().map(String::as_str)
}

/// Role loops of this process that stopped with an error.
static FAILED_ROLES: AtomicUsize = AtomicUsize::new(0);

/// A role's consumer loop stopped with an error: the process is no longer healthy.
pub fn role_failed() {
    FAILED_ROLES.fetch_add(1, Ordering::Relaxed);
}

/// 200 while every role loop of this process runs; 503 once one stopped with an error.
#[handler]
fn healthz() -> poem::Response {
    match FAILED_ROLES.load(Ordering::Relaxed) {
        0 => poem::Response::builder().body("ok"),
        failed => poem::Response::builder()
            .status(poem::http::StatusCode::SERVICE_UNAVAILABLE)
            .body(format!("{failed} role loop(s) stopped with an error")),
    }
}

#[handler]
fn scrape() -> poem::Response {
    poem::Response::builder()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(METRICS.encode())
}

/// Serves `GET /metrics` and `GET /healthz` at `addr` until `shutdown`.
pub async fn serve(addr: String, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = Route::new()
        .at("/metrics", get(scrape))
        .at("/healthz", get(healthz))
        .map_to_response();
    tracing::info!(%addr, "metrics served");
    poem::Server::new(TcpListener::bind(addr))
        .run_with_graceful_shutdown(app, shutdown.cancelled_owned(), None)
        .await?;
    Ok(())
}
