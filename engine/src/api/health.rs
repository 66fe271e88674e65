//! Liveness and readiness.
//!
//! Both answer from memory: readiness from the last [`Snapshots`] reading (taken every
//! second in the background, so a flood of probes costs the dependencies nothing), and
//! liveness from the loops' own reports (see [`crate::loops`]).
//!
//! Readiness is reachability (Postgres, Redis, Kafka: 503 when one is down, or when the
//! last reading is stale) plus the state of the work: a stuck outbox (its oldest unpublished message older than
//! [`MAX_OUTBOX_AGE`]) or a reply consumer far behind (more than [`MAX_REPLY_LAG`]
//! messages) makes the answer `degraded`, still 200: both are deployment-wide, so taking
//! this replica out of rotation would not help, but a monitor should page someone.

use std::time::Duration;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use poem::web::Data;

use super::State;
use super::problem::Problem;
use super::snapshot::{Gauges, Snapshots};
use crate::auth::Caller;

pub struct HealthApi;

/// Oldest an unpublished outbox message may be before readiness says `degraded`.
pub const MAX_OUTBOX_AGE: Duration = Duration::from_secs(30);
/// Most replies the orchestrator's consumer group may be behind before `degraded`.
pub const MAX_REPLY_LAG: i64 = 1_000;

/// One check of the work (not of reachability).
#[derive(Debug, Object)]
struct WorkCheck {
    /// `outbox` or `reply-lag`.
    name: String,
    /// `ok`, `degraded` or `unknown` (not measured in time).
    state: String,
    detail: String,
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

#[derive(ApiResponse)]
enum LiveResponse {
    /// Every background loop runs.
    #[oai(status = 200)]
    Alive(Json<Alive>),
    /// A background loop stopped; `detail` names it.
    #[oai(status = 503, content_type = "application/problem+json")]
    Stopped(Json<Problem>),
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
    /// 200 while every background loop of this process runs (reply consumer, relay,
    /// timers, bulk jobs, dead letters, retention, probes); 503 naming those that stopped,
    /// so that the process gets restarted. Says nothing about dependencies.
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self, state: Data<&State>) -> LiveResponse {
        let stopped = state.loops.stopped();
        if stopped.is_empty() {
            return LiveResponse::Alive(Json(Alive {
                status: "alive".to_owned(),
            }));
        }
        let names: Vec<&str> = stopped.iter().map(|s| s.name.as_str()).collect();
        LiveResponse::Stopped(Json(Problem::new(
            503,
            "loop-stopped",
            "A background loop stopped",
            format!("stopped: {}", names.join(", ")),
        )))
    }

    /// Readiness
    ///
    /// 200 when Postgres, Redis and Kafka all answer; 503 naming each one that does not.
    /// Why a dependency is down (its error) is shown only to an `operator` or `admin` key,
    /// or when access control is off.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self, state: Data<&State>, caller: Data<&Caller>) -> ReadyResponse {
        let reveal = !state.auth_enforced || caller.sees_everything();
        let Some(snapshot) = state.snapshots.last() else {
            return not_ready("no reading of the dependencies yet (starting)", Vec::new());
        };
        if snapshot.age() > Snapshots::STALE {
            return not_ready(
                &format!(
                    "the last reading of the dependencies is {} s old",
                    snapshot.age().as_secs()
                ),
                Vec::new(),
            );
        }
        let down: Vec<&str> = snapshot
            .dependencies
            .iter()
            .filter(|check| check.error.is_some())
            .map(|check| check.name)
            .collect();
        let dependencies = snapshot
            .dependencies
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
        if !down.is_empty() {
            return not_ready(&format!("unreachable: {}", down.join(", ")), dependencies);
        }
        let mut checks = vec![
            outbox_check(snapshot.gauges.as_ref()),
            reply_lag_check(&state),
        ];
        if !reveal {
            for check in &mut checks {
                check.detail.clear(); // anonymous callers learn the state, not the numbers
            }
        }
        let degraded = checks.iter().any(|check| check.state == "degraded");
        ReadyResponse::Ready(Json(Readiness {
            status: if degraded { "degraded" } else { "ready" }.to_owned(),
            dependencies,
            checks,
        }))
    }
}

fn not_ready(detail: &str, dependencies: Vec<DependencyStatus>) -> ReadyResponse {
    ReadyResponse::NotReady(Json(NotReady {
        problem: Problem::new(503, "not-ready", "Not ready", detail),
        dependencies,
    }))
}

fn outbox_check(gauges: Option<&Gauges>) -> WorkCheck {
    let limit = MAX_OUTBOX_AGE.as_secs_f64();
    let (state, detail) = match gauges.map(|gauges| gauges.outbox_oldest_seconds) {
        None => ("unknown", "could not read the outbox".to_owned()),
        Some(None) => ("ok", "nothing waits to be published".to_owned()),
        Some(Some(age)) if age > limit => (
            "degraded",
            format!("the oldest unpublished message waits for {age:.0} s (limit {limit:.0} s)"),
        ),
        Some(Some(age)) => (
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

fn reply_lag_check(state: &State) -> WorkCheck {
    let (state, detail) = match state.lag_cache.group("orchestrator") {
        Some(lag) if lag.total() > MAX_REPLY_LAG => (
            "degraded",
            format!(
                "{} replies not applied yet (limit {MAX_REPLY_LAG})",
                lag.total()
            ),
        ),
        Some(lag) => ("ok", format!("{} replies not applied yet", lag.total())),
        None => (
            "unknown",
            "the broker has not reported the lag yet".to_owned(),
        ),
    };
    WorkCheck {
        name: "reply-lag".to_owned(),
        state: state.to_owned(),
        detail,
    }
}
