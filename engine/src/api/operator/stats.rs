//! What the console's overview shows: sagas by definition and status, what started and
//! ended in each of the last 60 minutes, overdue and quarantined sagas, the outbox
//! backlog and the dead letters waiting. Each number is one query; the by-status count reads every saga row, so this is
//! for a person's overview (seconds apart), not for a scraper.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use crate::api::State;
use crate::api::problem::ApiResult;

pub struct StatsApi;

/// How many sagas of one definition are in one status.
#[derive(Debug, Object, QueryableByName)]
struct StatusCount {
    #[diesel(sql_type = Text)]
    definition: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// What happened in one minute.
#[derive(Debug, Object, QueryableByName)]
struct Minute {
    /// The minute's start.
    #[diesel(sql_type = Timestamptz)]
    minute: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    started: i64,
    #[diesel(sql_type = BigInt)]
    completed: i64,
    /// Ended COMPENSATED or CANCELLED.
    #[diesel(sql_type = BigInt)]
    compensated: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
}

#[derive(QueryableByName)]
struct Single {
    #[diesel(sql_type = BigInt)]
    count: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest: Option<DateTime<Utc>>,
}

/// The overview.
#[derive(Debug, Object)]
struct Stats {
    by_status: Vec<StatusCount>,
    /// The last 60 minutes, oldest first; minutes with nothing in them are left out.
    per_minute: Vec<Minute>,
    /// Running or compensating sagas whose deadline or retry time passed more than a
    /// minute ago without the engine moving them: the engine is down or behind.
    overdue: i64,
    /// Sagas the engine set aside because it could not read or move them.
    quarantined: i64,
    /// Outbox messages (commands and events) not yet published to Kafka.
    outbox_backlog: i64,
    /// Dead letters nobody replayed or discarded yet.
    dead_letters_waiting: i64,
    /// How long the oldest of them has waited, in seconds.
    #[oai(skip_serializing_if_is_none)]
    oldest_unpublished_seconds: Option<f64>,
    /// When these numbers were read.
    as_of: DateTime<Utc>,
}

#[OpenApi(tag = "crate::api::Tag::Sagas")]
impl StatsApi {
    /// Saga statistics
    ///
    /// Counts by definition and status, what started and ended in each of the last 60
    /// minutes, overdue and quarantined sagas, and the outbox backlog: the console's
    /// overview.
    #[oai(path = "/v1/saga-stats", method = "get")]
    async fn stats(&self, state: Data<&State>) -> ApiResult<Json<Stats>> {
        let mut conn = state.database.get().await?;
        let by_status: Vec<StatusCount> = diesel::sql_query(
            "SELECT definition, status, count(*) AS count FROM sagas \
             GROUP BY definition, status ORDER BY definition, status",
        )
        .load(&mut conn)
        .await?;
        let per_minute: Vec<Minute> = diesel::sql_query(
            "WITH started AS ( \
               SELECT date_trunc('minute', created_at) AS minute, count(*) AS n FROM sagas \
               WHERE created_at > now() - interval '60 minutes' GROUP BY 1), \
             ended AS ( \
               SELECT date_trunc('minute', status_changed_at) AS minute, \
                 count(*) FILTER (WHERE status = 'COMPLETED') AS completed, \
                 count(*) FILTER (WHERE status IN ('COMPENSATED', 'CANCELLED')) AS compensated, \
                 count(*) FILTER (WHERE status = 'FAILED') AS failed \
               FROM sagas WHERE status_changed_at > now() - interval '60 minutes' \
                 AND status IN ('COMPLETED', 'COMPENSATED', 'CANCELLED', 'FAILED') GROUP BY 1) \
             SELECT coalesce(s.minute, e.minute) AS minute, coalesce(s.n, 0) AS started, \
               coalesce(e.completed, 0) AS completed, coalesce(e.compensated, 0) AS compensated, \
               coalesce(e.failed, 0) AS failed \
             FROM started s FULL JOIN ended e ON s.minute = e.minute ORDER BY 1",
        )
        .load(&mut conn)
        .await?;
        let overdue: Single = diesel::sql_query(
            "SELECT count(*) AS count, min(t.fire_at) AS oldest \
             FROM saga_timers t JOIN sagas s ON s.id = t.saga_id \
             WHERE t.fire_at < now() - interval '1 minute' \
               AND s.status IN ('RUNNING', 'COMPENSATING') AND s.quarantine IS NULL",
        )
        .get_result(&mut conn)
        .await?;
        let quarantined: Single = diesel::sql_query(
            "SELECT count(*) AS count, min(updated_at) AS oldest FROM sagas \
             WHERE quarantine IS NOT NULL",
        )
        .get_result(&mut conn)
        .await?;
        let backlog: Single = diesel::sql_query(
            "SELECT count(*) AS count, min(created_at) AS oldest FROM outbox \
             WHERE published_at IS NULL",
        )
        .get_result(&mut conn)
        .await?;
        let dead: Single = diesel::sql_query(
            "SELECT count(*) AS count, min(received_at) AS oldest FROM dead_letters \
             WHERE state = 'waiting'",
        )
        .get_result(&mut conn)
        .await?;
        let now = Utc::now();
        Ok(Json(Stats {
            by_status,
            per_minute,
            overdue: overdue.count,
            quarantined: quarantined.count,
            outbox_backlog: backlog.count,
            dead_letters_waiting: dead.count,
            oldest_unpublished_seconds: backlog
                .oldest
                .map(|oldest| (now - oldest).as_seconds_f64().max(0.0)),
            as_of: now,
        }))
    }
}
