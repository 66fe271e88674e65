//! The REST API under `/v1`: one module per resource, errors as `application/problem+json`
//! ([`problem`]), the OpenAPI document generated from these types, Swagger UI at `/docs`.
//!
//! The engine's rooms: [`flows`] (definitions, the generic start, signals) and [`operator`]
//! (sagas, notifications, dead letters, bulk jobs). An application adds its own operations
//! beside them through a [`Mount`] (the shop's orders and coupons are one); the engine
//! never names them. What is left here is shared plumbing: the probes, metrics, problem
//! details, strict bodies, pagination, idempotency keys, and each request's span and
//! metrics ([`observe`]). Who may call what is [`crate::auth`]'s business.

// `ApiError` is the problem+json response itself; its size only costs on the cold error
// path, and boxing would obscure every handler's signature.
#![allow(clippy::result_large_err)]

mod contract;
pub mod door;
pub mod flows;
mod health;
pub mod idempotency;
pub mod metrics;
pub mod observe;
pub mod operator;
pub mod pagination;
pub mod problem;
pub mod quota;
pub mod server;
pub mod snapshot;
mod strict;
pub mod wait;

use poem::{Endpoint, Route};
use poem_openapi::{OpenApi, OpenApiService, Tags};

use platform::db;
use platform::health::Probes;

use crate::auth::Policy;
use crate::shell::Engine;
use flows::{definitions, signals};
use operator::{bulk_jobs, dead_letters, events, lag, notifications, sagas, stats};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct State {
    pub probes: Probes,
    pub engine: Engine,
    pub database: db::Pool,
    /// Creates the command topics of roles that newly registered definitions name.
    pub cluster: platform::kafka::Cluster,
    /// Reads consumer lag for the operator API.
    pub lag: std::sync::Arc<platform::kafka::LagProbe>,
    /// Whether the demo data generators answer (only in `dev`).
    pub demo: bool,
    /// Whether requests are checked against API keys (see [`crate::auth`]).
    pub auth_enforced: bool,
    /// Metrics the application registers on every scrape (in `dev`, its participants').
    pub application_metrics: Option<fn(&mut prometheus_client::registry::Registry)>,
    /// Requests by route and status, with their latency (see [`observe`]).
    pub http: observe::HttpMetrics,
    /// Consumer lag as `/metrics` and `/readyz` report it.
    pub lag_cache: metrics::LagCache,
    /// Dependencies and database gauges as `/readyz` and `/metrics` report them.
    pub snapshots: snapshot::Snapshots,
    /// The process's background loops, as `/healthz` reports them.
    pub loops: platform::liveness::Loops,
    /// Requests waiting for sagas to settle (`Prefer: wait`), bounded by `HTTP_MAX_WAITS`.
    pub waiters: std::sync::Arc<crate::shell::watch::Waiters>,
    /// The longest wait a request gets: under the server's request timeout.
    pub max_wait: std::time::Duration,
    /// How long an event stream lasts (`HTTP_MAX_STREAM_SECONDS`).
    pub max_stream: std::time::Duration,
    /// Signals in flight per key (`HTTP_MAX_SIGNALS_PER_KEY`).
    pub signals: std::sync::Arc<quota::PerKey>,
}

#[derive(Tags)]
pub enum Tag {
    /// Liveness and readiness probes.
    Health,
    /// Saga instances: start any flow, send signals, status, steps, history; operator
    /// retry and cancel.
    Sagas,
    /// Flows as versioned data: register, read, set the default, compensation paths.
    Definitions,
    /// Lifecycle events recorded by the notification worker.
    Notifications,
    /// Prometheus metrics.
    Metrics,
}

/// The engine's operations.
pub type Apis = (
    health::HealthApi,
    (sagas::SagasApi, events::EventsApi),
    (signals::SignalsApi, definitions::DefinitionsApi),
    stats::StatsApi,
    dead_letters::DeadLettersApi,
    bulk_jobs::BulkJobsApi,
    lag::LagApi,
    notifications::NotificationsApi,
    metrics::MetricsApi,
);

/// What an application serves beside the engine: its operations, who may call them (its
/// rows of the access table), and the data its handlers read with `Data<&D>`.
pub struct Mount<A, D> {
    pub apis: A,
    pub rules: &'static [crate::auth::policy::Rule],
    pub data: D,
}

impl Mount<(), ()> {
    /// The engine alone.
    pub fn none() -> Self {
        Self {
            apis: (),
            rules: &[],
            data: (),
        }
    }
}

/// The engine's operations, then the application's.
pub fn openapi<A: OpenApi>(application: A) -> OpenApiService<(Apis, A), ()> {
    OpenApiService::new(
        (
            (
                health::HealthApi,
                (sagas::SagasApi, events::EventsApi),
                (signals::SignalsApi, definitions::DefinitionsApi),
                stats::StatsApi,
                dead_letters::DeadLettersApi,
                bulk_jobs::BulkJobsApi,
                lag::LagApi,
                notifications::NotificationsApi,
                metrics::MetricsApi,
            ),
            application,
        ),
        "sagaflow",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Saga orchestrator: start sagas, inspect their status and history, retry or cancel \
         them. Every error is `application/problem+json`.",
    )
    .contact(poem_openapi::ContactObject::new().name("sagaflow maintainers"))
    // Relative: the orchestrator that serves this document, wherever it listens (so
    // Swagger UI's "Try it out" calls the same host).
    .server(poem_openapi::ServerObject::new("/").description("this orchestrator"))
}

/// Example resource id in the OpenAPI document.
pub fn example_id() -> uuid::Uuid {
    uuid::Uuid::from_u128(0x019a_b7c2_5e10_7c3e_9a41_2f6d_8e0b_1c55)
}

/// The OpenAPI document as JSON (checked in as `openapi/openapi.json`), with each
/// operation's security from the access table.
pub fn spec_json<A: OpenApi>(application: A, policy: &Policy) -> String {
    secured_spec(&openapi(application).spec(), policy)
}

fn secured_spec(generated: &str, policy: &Policy) -> String {
    let mut spec: serde_json::Value =
        serde_json::from_str(generated).expect("poem-openapi writes valid JSON");
    contract::complete(&mut spec);
    policy.secure(&mut spec);
    serde_json::to_string_pretty(&spec).expect("a JSON value serialises")
}

/// The whole HTTP surface: the engine's API and the application's, their documents, the
/// console, behind the access gate and the body limits.
pub fn routes<A, D>(
    state: State,
    auth: crate::auth::AuthConfig,
    mount: Mount<A, D>,
) -> impl Endpoint<Output = poem::Response>
where
    A: OpenApi + 'static,
    D: Clone + Send + Sync + 'static,
{
    let http = state.http.clone();
    let policy = Policy::new(mount.rules);
    let gate = crate::auth::Gate::new(auth, policy.clone());
    let service = openapi(mount.apis);
    let generated = service.spec();
    let spec = secured_spec(&generated, &policy);
    let document: serde_json::Value =
        serde_json::from_str(&spec).expect("the secured document is JSON");
    let labels = observe::RouteLabels::from_spec(&document);
    let operations = std::sync::Arc::new(strict::Operations::of(&document));
    // Swagger UI embeds the document it was made from; give it the secured one, so its
    // "Authorize" button knows the bearer scheme.
    let docs = service.swagger_ui_html().replace(&generated, &spec);
    let docs = poem::endpoint::make_sync(move |_| poem::web::Html(docs.clone()));
    let spec = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json")
            .body(spec.clone())
    });
    let catalog = std::sync::Arc::clone(state.engine.catalog());
    // Built once per change of the catalog, not per request: anyone may ask for it.
    let built: std::sync::Mutex<Option<(u64, String)>> = std::sync::Mutex::default();
    let asyncapi = poem::endpoint::make_sync(move |_| {
        let generation = catalog.generation();
        let mut cached = built.lock().unwrap_or_else(|poison| poison.into_inner());
        let body = match &*cached {
            Some((at, body)) if *at == generation => body.clone(),
            _ => {
                let body = flows::asyncapi::live(&catalog).to_string();
                *cached = Some((generation, body.clone()));
                body
            }
        };
        poem::Response::builder()
            .content_type("application/json")
            .body(body)
    });
    let routes = Route::new()
        .nest("/", service)
        .at("/asyncapi.json", poem::get(asyncapi))
        .at("/docs", poem::get(docs))
        .at("/openapi.json", poem::get(spec))
        .at(
            "/saga-definition.schema.json",
            poem::get(poem::endpoint::make_sync(|_| {
                poem::Response::builder()
                    .content_type("application/schema+json")
                    .body(crate::saga::document::FORMAT)
            })),
        )
        .nest("/ui", crate::console::routes());
    door::Door {
        routes,
        gate,
        policy,
        operations,
        metrics: http,
        labels,
        state,
        data: mount.data,
    }
}
