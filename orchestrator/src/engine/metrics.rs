//! Engine counters and a step/saga latency histogram, rendered in the Prometheus text
//! format. Plain atomics: recording is on the hot path and must not lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::saga::Status;

/// Upper bounds of the latency buckets, in milliseconds.
const BUCKETS_MS: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, value: Duration) {
        let ms = u64::try_from(value.as_millis()).unwrap_or(u64::MAX);
        for (bound, bucket) in BUCKETS_MS.iter().zip(&self.buckets) {
            if ms <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in BUCKETS_MS.iter().zip(&self.buckets) {
            let seconds = *bound as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{seconds}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub compensated: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub resolved: AtomicU64,
    pub replies: AtomicU64,
    pub quarantined: AtomicU64,
    pub saga_duration: Histogram,
    pub step_latency: Histogram,
}

impl Metrics {
    pub fn saga_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
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
        counter.fetch_add(1, Ordering::Relaxed);
        self.saga_duration.observe(took);
    }

    pub fn render(&self, out: &mut String) {
        let counters = [
            (
                "sagaflow_sagas_started_total",
                "Sagas started.",
                &self.started,
            ),
            (
                "sagaflow_sagas_completed_total",
                "Sagas completed.",
                &self.completed,
            ),
            (
                "sagaflow_sagas_compensated_total",
                "Sagas compensated after a failure.",
                &self.compensated,
            ),
            (
                "sagaflow_sagas_cancelled_total",
                "Sagas cancelled by an operator.",
                &self.cancelled,
            ),
            (
                "sagaflow_sagas_failed_total",
                "Sagas parked as FAILED (a compensation exhausted its budget).",
                &self.failed,
            ),
            (
                "sagaflow_sagas_resolved_total",
                "FAILED sagas an operator ended by hand (RESOLVED).",
                &self.resolved,
            ),
            (
                "sagaflow_sagas_quarantined_total",
                "Sagas set aside because they could not be decoded or moved.",
                &self.quarantined,
            ),
            (
                "sagaflow_replies_total",
                "Participant replies processed.",
                &self.replies,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        self.step_latency.render(
            "sagaflow_step_latency_seconds",
            "Time from a command being issued to its participant's reply.",
            out,
        );
        self.saga_duration.render(
            "sagaflow_saga_duration_seconds",
            "Time from start to a final or parked status.",
            out,
        );
    }
}
