//! The engine's counters and latency histograms (prometheus-client). Recording is a few
//! atomic operations, fit for the hot path; `/metrics` registers them, with the gauges it
//! reads at scrape time, and encodes the lot (see `api::metrics`).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::saga::Status;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Clones share their values.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub started: Counter,
    pub completed: Counter,
    pub compensated: Counter,
    pub cancelled: Counter,
    pub failed: Counter,
    pub resolved: Counter,
    pub replies: Counter,
    pub quarantined: Counter,
    pub saga_duration: Histogram,
    pub step_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Counter::default(),
            completed: Counter::default(),
            compensated: Counter::default(),
            cancelled: Counter::default(),
            failed: Counter::default(),
            resolved: Counter::default(),
            replies: Counter::default(),
            quarantined: Counter::default(),
            saga_duration: Histogram::new(BUCKETS),
            step_latency: Histogram::new(BUCKETS),
        }
    }
}

impl Metrics {
    pub fn saga_started(&self) {
        self.started.inc();
    }

    pub fn saga_finished(&self, status: Status, took: Duration) {
        let counter = match status {
            Status::Completed => &self.completed,
            Status::Compensated => &self.compensated,
            Status::Cancelled => &self.cancelled,
            Status::Failed => &self.failed,
            Status::Resolved => &self.resolved,
            Status::Running | Status::Compensating => return,
        };
        counter.inc();
        self.saga_duration.observe(took.as_secs_f64());
    }

    /// Adds every metric to `registry` (names without the `_total` a counter gets).
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            ("sagaflow_sagas_started", "Sagas started.", &self.started),
            (
                "sagaflow_sagas_completed",
                "Sagas completed.",
                &self.completed,
            ),
            (
                "sagaflow_sagas_compensated",
                "Sagas compensated after a failure.",
                &self.compensated,
            ),
            (
                "sagaflow_sagas_cancelled",
                "Sagas cancelled by an operator.",
                &self.cancelled,
            ),
            (
                "sagaflow_sagas_failed",
                "Sagas parked as FAILED (a compensation exhausted its budget).",
                &self.failed,
            ),
            (
                "sagaflow_sagas_resolved",
                "FAILED sagas an operator ended by hand (RESOLVED).",
                &self.resolved,
            ),
            (
                "sagaflow_sagas_quarantined",
                "Sagas set aside because they could not be decoded or moved.",
                &self.quarantined,
            ),
            (
                "sagaflow_replies",
                "Participant replies processed.",
                &self.replies,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register_with_unit(
            "sagaflow_step_latency",
            "Time from a command being issued to its participant's reply.",
            Unit::Seconds,
            self.step_latency.clone(),
        );
        registry.register_with_unit(
            "sagaflow_saga_duration",
            "Time from start to a final or parked status.",
            Unit::Seconds,
            self.saga_duration.clone(),
        );
    }
}
