//! Liveness and readiness.
//!
//! Readiness is reachability (Postgres, Redis, Kafka: 503 when one is down) plus the state
//! of the work: a stuck outbox (its oldest unpublished message older than
//! [`MAX_OUTBOX_AGE`]) or a reply consumer far behind (more than [`MAX_REPLY_LAG`]
//! messages) makes the answer `degraded`, still 200: both are deployment-wide, so taking
//! this replica out of rotation would not help, but a monitor should page someone.

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{Double, Nullable};
use diesel_async::RunQueryDsl;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use poem::web::Data;

use super::State;
use super::problem::Problem;
use crate::auth::Caller;

pub struct HealthApi;

/// Oldest an unpublished outbox message may be before readiness says `degraded`.
pub const MAX_OUTBOX_AGE: Duration = Duration::from_secs(30);
/// Most replies the orchestrator's consumer group may be behind before `degraded`.
pub const MAX_REPLY_LAG: i64 = 1_000;
/// How long readiness waits for the broker to report the lag.
const LAG_WAIT: Duration = Duration::from_millis(800);

/// One check of the work (not of reachability).
#[derive(Debug, Object)]
struct WorkCheck {
    /// `outbox` or `reply-lag`.
    name: String,
    /// `ok`, `degraded` or `unknown` (not measured in time).
    state: String,
    detail: String,
}

#[derive(QueryableByName)]
struct OutboxAge {
    #[diesel(sql_type = Nullable<Double>)]
    seconds: Option<f64>,
}

/// The state of one dependency.
#[derive(Debug, Object)]
struct DependencyStatus {
    /// `postgres`, `redis` or `kafka`.
    name: String,
    /// Whether it answered in time.
    up: bool,
    /// Why it is considered down.
    #[oai(skip_serializing_if_is_none)]
    error: Option<String>,
}

#[derive(Debug, Object)]
struct Readiness {
    /// `ready`, or `degraded` when a work check is (see `checks`).
    status: String,
    dependencies: Vec<DependencyStatus>,
    checks: Vec<WorkCheck>,
}

#[derive(Debug, Object)]
struct NotReady {
    #[oai(flatten)]
    problem: Problem,
    dependencies: Vec<DependencyStatus>,
}

#[derive(ApiResponse)]
enum ReadyResponse {
    /// Every dependency is reachable.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// At least one dependency is down; `detail` names it.
    #[oai(status = 503, content_type = "application/problem+json")]
    NotReady(Json<NotReady>),
}

#[derive(Debug, Object)]
#[oai(example)]
struct Alive {
    status: String,
}

impl poem_openapi::types::Example for Alive {
    fn example() -> Self {
        Self {
            status: "alive".to_owned(),
        }
    }
}

#[OpenApi(tag = "super::Tag::Health")]
impl HealthApi {
    /// Liveness
    ///
    /// 200 while the process runs; says nothing about dependencies.
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> Json<Alive> {
        Json(Alive {
            status: "alive".to_owned(),
        })
    }

    /// Readiness
    ///
    /// 200 when Postgres, Redis and Kafka all answer; 503 naming each one that does not.
    /// Why a dependency is down (its error) is shown only to an `operator` or `admin` key,
    /// or when access control is off.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self, state: Data<&State>, caller: Data<&Caller>) -> ReadyResponse {
        let checks = state.probes.check().await;
        let reveal = !state.auth_enforced || caller.sees_everything();
        let down: Vec<&str> = checks
            .iter()
            .filter(|check| check.error.is_some())
            .map(|check| check.name)
            .collect();
        let dependencies = checks
            .iter()
            .map(|check| DependencyStatus {
                name: check.name.to_owned(),
                up: check.error.is_none(),
                error: match &check.error {
                    Some(error) if reveal => Some(error.clone()),
                    Some(_) => Some("down".to_owned()),
                    None => None,
                },
            })
            .collect();
        if down.is_empty() {
            let mut checks = vec![outbox_check(&state).await, reply_lag_check(&state).await];
            if !reveal {
                for check in &mut checks {
                    check.detail.clear(); // anonymous callers learn the state, not the numbers
                }
            }
            let degraded = checks.iter().any(|check| check.state == "degraded");
            return ReadyResponse::Ready(Json(Readiness {
                status: if degraded { "degraded" } else { "ready" }.to_owned(),
                dependencies,
                checks,
            }));
        }
        for check in checks.iter().filter(|check| check.error.is_some()) {
            tracing::warn!(dependency = check.name, error = ?check.error, "dependency down");
        }
        ReadyResponse::NotReady(Json(NotReady {
            problem: Problem::new(
                503,
                "not-ready",
                "Not ready",
                format!("unreachable: {}", down.join(", ")),
            ),
            dependencies,
        }))
    }
}

async fn outbox_check(state: &State) -> WorkCheck {
    let measured = async {
        let mut conn = state.database.get().await.ok()?;
        diesel::sql_query(
            "SELECT extract(epoch FROM now() - min(created_at))::float8 AS seconds \
             FROM outbox WHERE published_at IS NULL",
        )
        .get_result::<OutboxAge>(&mut conn)
        .await
        .ok()
    };
    let limit = MAX_OUTBOX_AGE.as_secs_f64();
    let (state, detail) = match measured.await {
        None => ("unknown", "could not read the outbox".to_owned()),
        Some(OutboxAge { seconds: None }) => ("ok", "nothing waits to be published".to_owned()),
        Some(OutboxAge { seconds: Some(age) }) if age > limit => (
            "degraded",
            format!("the oldest unpublished message waits for {age:.0} s (limit {limit:.0} s)"),
        ),
        Some(OutboxAge { seconds: Some(age) }) => (
            "ok",
            format!("the oldest unpublished message is {age:.1} s old"),
        ),
    };
    WorkCheck {
        name: "outbox".to_owned(),
        state: state.to_owned(),
        detail,
    }
}

async fn reply_lag_check(state: &State) -> WorkCheck {
    let topics = state.engine.topics();
    let group = format!("{}.orchestrator", topics.prefix());
    let topic = topics.replies();
    let probe = state.lag.clone();
    let measured = tokio::time::timeout(
        LAG_WAIT,
        tokio::task::spawn_blocking(move || probe.group_lag(&group, &topic)),
    )
    .await;
    let (state, detail) = match measured {
        Ok(Ok(Ok(lag))) if lag.total() > MAX_REPLY_LAG => (
            "degraded",
            format!(
                "{} replies not applied yet (limit {MAX_REPLY_LAG})",
                lag.total()
            ),
        ),
        Ok(Ok(Ok(lag))) => ("ok", format!("{} replies not applied yet", lag.total())),
        _ => (
            "unknown",
            "the broker did not report the lag in time".to_owned(),
        ),
    };
    WorkCheck {
        name: "reply-lag".to_owned(),
        state: state.to_owned(),
        detail,
    }
}
