//! `GET /metrics` (OpenMetrics text, prometheus-client): the engine's counters and latency
//! histograms, gauges of this process's Postgres pools, and gauges read from Postgres every
//! second in the background ([`super::snapshot`]), never at scrape time. Those come from the database rather than from counters because every
//! replica must report the same backlog whoever did the work, and each is one indexed query
//! over a bounded set of rows (the outbox's unpublished messages, the sagas still moving):
//! a scrape never reads the whole saga table.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use poem::web::Data;
use poem_openapi::payload::PlainText;
use poem_openapi::{ApiResponse, OpenApi};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use platform::contract::Topics;
use platform::kafka::{GroupLag, LagProbe};
use tokio_util::sync::CancellationToken;

use super::State;
use super::problem::{ApiError, ApiResult};
use crate::saga::Status;

pub struct MetricsApi;

#[derive(ApiResponse)]
enum Scraped {
    /// OpenMetrics text exposition format 1.0.0 (Prometheus reads it).
    #[oai(
        status = 200,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )]
    Ok(PlainText<String>),
}

type Labels = Vec<(String, String)>;

#[OpenApi(tag = "super::Tag::Metrics")]
impl MetricsApi {
    /// Prometheus metrics
    ///
    /// Counters of this process (`sagaflow_sagas_started_total`, `..._completed_total`,
    /// `..._compensated_total`, `..._cancelled_total`, `..._failed_total`,
    /// `..._resolved_total`, `..._quarantined_total`, `sagaflow_replies_total`), the step
    /// latency and saga duration histograms, `sagaflow_db_pool_connections{pool,state}`
    /// (in use, idle, waiting), and two gauges read from the database:
    /// `sagaflow_outbox_backlog` (outbox messages not yet published),
    /// `sagaflow_outbox_oldest_age_seconds` (the oldest of them) and
    /// `sagaflow_sagas{status}` (sagas still RUNNING, COMPENSATING or FAILED),
    /// `sagaflow_dead_letters_waiting`, `sagaflow_waiting_requests` (requests waiting for a
    /// saga to settle); `sagaflow_consumer_lag{consumer,partition}` (read
    /// from the broker every 15 s in the background); the HTTP requests by method, route and status
    /// with their latency; in `dev`, the participants' commands and locks as well.
    #[oai(path = "/metrics", method = "get")]
    async fn scrape(&self, state: Data<&State>) -> ApiResult<Scraped> {
        // From the background snapshot: a scrape never waits on Postgres or the broker.
        let gauges = state
            .snapshots
            .last()
            .and_then(|snapshot| snapshot.gauges.clone())
            .unwrap_or_default();
        let lag = state.lag_cache.snapshot();

        let mut registry = Registry::default();
        state.engine.metrics().register(&mut registry);
        state.http.register(&mut registry);
        if let Some(register) = state.application_metrics {
            // `dev` runs the participants in-process: their metrics are this process's too.
            register(&mut registry);
        }
        let outbox = Gauge::<i64>::default();
        outbox.set(gauges.outbox_backlog);
        registry.register(
            "sagaflow_outbox_backlog",
            "Outbox messages not yet published.",
            outbox,
        );
        let age = Gauge::<f64, AtomicU64>::default();
        age.set(gauges.outbox_oldest_seconds.unwrap_or(0.0));
        registry.register_with_unit(
            "sagaflow_outbox_oldest_age",
            "Age of the oldest outbox message not yet published (0 when none waits).",
            Unit::Seconds,
            age,
        );
        let sagas = Family::<Labels, Gauge>::default();
        // Every status listed, zeros included: a series that vanishes reads as "no data".
        for status in [Status::Running, Status::Compensating, Status::Failed] {
            let count = gauges
                .moving
                .iter()
                .find(|(name, _)| name == status.as_str())
                .map_or(0, |(_, count)| *count);
            sagas
                .get_or_create(&vec![("status".to_owned(), status.as_str().to_owned())])
                .set(count);
        }
        registry.register("sagaflow_sagas", "Sagas still moving, per status.", sagas);
        let pools = Family::<Labels, Gauge>::default();
        for (name, pool) in [("api", &state.database), ("engine", state.engine.pool())] {
            let status = pool.status();
            let busy = status.size.saturating_sub(status.available);
            for (which, value) in [
                ("in_use", busy),
                ("idle", status.available),
                ("waiting", status.waiting),
            ] {
                let labels = vec![
                    ("pool".to_owned(), name.to_owned()),
                    ("state".to_owned(), which.to_owned()),
                ];
                pools
                    .get_or_create(&labels)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
        registry.register(
            "sagaflow_db_pool_connections",
            "Postgres connections of this process's pools, by state.",
            pools,
        );
        let waiting = Gauge::<i64>::default();
        waiting.set(gauges.dead_letters_waiting);
        registry.register(
            "sagaflow_dead_letters_waiting",
            "Dead letters recorded and neither replayed nor discarded.",
            waiting,
        );
        let waits = Gauge::<i64>::default();
        waits.set(i64::try_from(state.waiters.waiting()).unwrap_or(i64::MAX));
        registry.register(
            "sagaflow_waiting_requests",
            "Requests of this replica waiting for a saga to settle (Prefer: wait).",
            waits,
        );
        let lags = Family::<Labels, Gauge>::default();
        for (consumer, group_lag) in lag.iter() {
            for partition in &group_lag.partitions {
                let labels = vec![
                    ("consumer".to_owned(), consumer.clone()),
                    ("partition".to_owned(), partition.partition.to_string()),
                ];
                lags.get_or_create(&labels).set(partition.lag);
            }
        }
        registry.register(
            "sagaflow_consumer_lag",
            "Messages of a consumer group's topic not yet committed, per partition (read every 15 s).",
            lags,
        );
        let mut out = String::new();
        encode(&mut out, &registry).map_err(ApiError::internal)?;
        Ok(Scraped::Ok(PlainText(out)))
    }
}

/// Consumer lag for `/metrics`: a snapshot that a background task ([`LagCache::refresh`])
/// reads from the broker every [`LagCache::EVERY`], so that a scrape never waits on the
/// broker, whatever their rate and however slow or absent the broker is. A group the broker
/// does not answer for is left out of that round.
#[derive(Clone, Default)]
pub struct LagCache(Arc<std::sync::Mutex<Lags>>);

type Lags = Arc<Vec<(String, GroupLag)>>;

impl LagCache {
    const EVERY: Duration = Duration::from_secs(15);

    fn snapshot(&self) -> Lags {
        self.0.lock().map(|lags| lags.clone()).unwrap_or_default()
    }

    /// The last reading of one consumer's lag (`orchestrator`, a role's name...).
    pub fn group(&self, consumer: &str) -> Option<GroupLag> {
        self.snapshot()
            .iter()
            .find(|(name, _)| name == consumer)
            .map(|(_, lag)| lag.clone())
    }

    /// Refreshes the snapshot until `shutdown`, one read of every group at a time.
    pub async fn refresh(self, probe: Arc<LagProbe>, topics: Topics, shutdown: CancellationToken) {
        loop {
            let wanted = super::operator::lag::consumers(&topics);
            let probe = probe.clone();
            let read = tokio::task::spawn_blocking(move || {
                wanted
                    .into_iter()
                    .filter_map(|(consumer, group, topic)| {
                        probe
                            .group_lag(&group, &topic)
                            .ok()
                            .map(|lag| (consumer, lag))
                    })
                    .collect::<Vec<_>>()
            });
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                read = read => read.unwrap_or_default(),
            };
            if let Ok(mut lags) = self.0.lock() {
                *lags = Arc::new(read);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Self::EVERY) => {}
            }
        }
    }
}
