//! Liveness and readiness.
//!
//! Both answer from memory: readiness from the last [`Snapshots`] reading (taken every
//! second in the background, so a flood of probes costs the dependencies nothing), and
//! liveness from the loops' own reports (see [`crate::loops`]).
//!
//! Readiness is whether this replica can serve its API: 503 only when it cannot (Postgres
//! unreachable, one of its loops dead, or the last reading stale). Everything shared by
//! every replica makes the answer `degraded`, still 200, because taking this replica out
//! of rotation would not help and one outage must not empty the Service: Redis or Kafka
//! unreachable (the outbox holds what cannot be published meanwhile, and workers wait
//! out a Redis outage), a stuck outbox (its oldest unpublished message older than
//! [`MAX_OUTBOX_AGE`]), or a reply consumer far behind (more than [`MAX_REPLY_LAG`]
//! messages). A monitor should page someone on `degraded`.

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

/// One check of what every replica shares: the work, and the shared dependencies.
#[derive(Debug, Object)]
struct WorkCheck {
    /// `outbox`, `reply-lag`, or a shared dependency that is down (`redis`, `kafka`).
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
    /// This replica serves its API: `ready`, or `degraded` naming in `checks` what every
    /// replica shares and is in trouble (Redis or Kafka down, a stuck outbox...).
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// This replica cannot serve: Postgres is down or one of its loops stopped; `detail`
    /// names it.
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
    /// 503 only when this replica cannot serve its API: Postgres does not answer, or one of
    /// its background loops stopped. Redis or Kafka down is 200 `degraded`, named in
    /// `checks` (the outbox keeps what cannot be published; an outage of a dependency every
    /// replica shares must not take them all out of rotation). Why a dependency is down
    /// (its error) is shown only to an `operator` or `admin` key, or when access control is
    /// off.
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
            .collect::<Vec<_>>();
        let stopped: Vec<String> = state
            .loops
            .stopped()
            .into_iter()
            .map(|stopped| stopped.name)
            .collect();
        let down: Vec<&str> = dependencies
            .iter()
            .filter(|dependency| !dependency.up)
            .map(|dependency| dependency.name.as_str())
            .collect();
        if let Some(why) = unable_to_serve(&down, &stopped) {
            return not_ready(&why, dependencies);
        }
        let mut checks: Vec<WorkCheck> = down.iter().map(|name| shared_outage(name)).collect();
        checks.push(outbox_check(snapshot.gauges.as_ref()));
        checks.push(reply_lag_check(&state));
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

/// Why this replica cannot serve its API, if it cannot: its own database is unreachable,
/// or a loop of its own stopped. Redis and Kafka are not here: they are shared, and the
/// API works without them (the outbox holds what cannot be published).
fn unable_to_serve(down: &[&str], stopped: &[String]) -> Option<String> {
    if down.contains(&"postgres") {
        return Some("unreachable: postgres".to_owned());
    }
    if !stopped.is_empty() {
        return Some(format!("stopped: {}", stopped.join(", ")));
    }
    None
}

/// A shared dependency that does not answer: the replica serves on, degraded.
fn shared_outage(name: &str) -> WorkCheck {
    let detail = match name {
        "kafka" => "unreachable: new commands wait in the outbox until it answers",
        "redis" => "unreachable: workers wait with their commands until it answers",
        _ => "unreachable",
    };
    WorkCheck {
        name: name.to_owned(),
        state: "degraded".to_owned(),
        detail: detail.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_this_replica_needs_to_serve_makes_it_unready() {
        assert_eq!(unable_to_serve(&[], &[]), None);
        assert_eq!(unable_to_serve(&["redis", "kafka"], &[]), None);
        assert_eq!(
            unable_to_serve(&["redis", "postgres"], &[]).as_deref(),
            Some("unreachable: postgres")
        );
        assert_eq!(
            unable_to_serve(&["kafka"], &["relay".to_owned()]).as_deref(),
            Some("stopped: relay")
        );
    }
}
