//! Liveness and readiness.

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use poem::web::Data;

use super::State;
use super::problem::Problem;
use crate::auth::Caller;

pub struct HealthApi;

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
    status: String,
    dependencies: Vec<DependencyStatus>,
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
            return ReadyResponse::Ready(Json(Readiness {
                status: "ready".to_owned(),
                dependencies,
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
