//! `GET /metrics` in the Prometheus text format: the engine's in-process counters and
//! histograms, plus gauges read from Postgres at scrape time. The gauges come from the
//! database rather than from counters because every replica must report the same backlog
//! and the same per-status totals, whoever did the work.

use std::fmt::Write as _;

use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use poem::web::Data;
use poem_openapi::payload::PlainText;
use poem_openapi::{ApiResponse, OpenApi};

use super::State;
use super::problem::ApiResult;
use crate::saga::Status;
use crate::schema::{outbox, sagas};

pub struct MetricsApi;

#[derive(ApiResponse)]
enum Scraped {
    /// Prometheus text exposition format 0.0.4.
    #[oai(status = 200, content_type = "text/plain; version=0.0.4")]
    Ok(PlainText<String>),
}

#[OpenApi(tag = "super::Tag::Metrics")]
impl MetricsApi {
    /// Prometheus metrics
    ///
    /// Counters of this process (`sagaflow_sagas_started_total`, `..._completed_total`,
    /// `..._compensated_total`, `..._cancelled_total`, `..._failed_total`,
    /// `sagaflow_replies_total`), the step latency and saga duration histograms, and two
    /// gauges read from the database: `sagaflow_outbox_backlog` (outbox messages not yet
    /// published) and `sagaflow_sagas{status="..."}` (sagas per status, every status listed).
    /// Kafka consumer lag is not exported yet; read it from the broker.
    #[oai(path = "/metrics", method = "get")]
    async fn scrape(&self, state: Data<&State>) -> ApiResult<Scraped> {
        let mut conn = state.database.get().await?;
        let backlog: i64 = outbox::table
            .filter(outbox::published_at.is_null())
            .count()
            .get_result(&mut conn)
            .await?;
        let per_status: Vec<(String, i64)> = sagas::table
            .group_by(sagas::status)
            .select((sagas::status, count_star()))
            .load(&mut conn)
            .await?;
        drop(conn);

        let mut out = String::new();
        state.engine.metrics().render(&mut out);
        let _ = writeln!(
            out,
            "# HELP sagaflow_outbox_backlog Outbox messages not yet published.\n\
             # TYPE sagaflow_outbox_backlog gauge\n\
             sagaflow_outbox_backlog {backlog}"
        );
        let _ = writeln!(
            out,
            "# HELP sagaflow_sagas Sagas per status.\n# TYPE sagaflow_sagas gauge"
        );
        // Every status, zeros included: a series that vanishes reads as "no data", not 0.
        for status in Status::ALL {
            let count = per_status
                .iter()
                .find(|(name, _)| name == status.as_str())
                .map_or(0, |(_, count)| *count);
            let _ = writeln!(out, "sagaflow_sagas{{status=\"{status}\"}} {count}");
        }
        Ok(Scraped::Ok(PlainText(out)))
    }
}
