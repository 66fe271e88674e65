//! The REST API under `/v1`: one module per resource, errors as `application/problem+json`
//! ([`problem`]), the OpenAPI document generated from these types, Swagger UI at `/docs`.
//!
//! Two rooms: [`shop`] (orders, products, users, vendors, coupons) and [`operator`] (sagas,
//! notifications). What is left here is shared plumbing: the probes, metrics, problem
//! details, strict bodies, pagination, idempotency keys, and each request's span and
//! metrics ([`observe`]). Who may call what is
//! [`crate::auth`]'s business.

// `ApiError` is the problem+json response itself; its size only costs on the cold error
// path, and boxing would obscure every handler's signature.
#![allow(clippy::result_large_err)]

mod contract;
pub mod flows;
mod health;
pub mod idempotency;
pub mod metrics;
pub mod observe;
pub mod operator;
pub mod pagination;
pub mod problem;
pub mod server;
pub mod shop;
pub mod snapshot;
mod strict;

use poem::http::StatusCode;
use poem::{Endpoint, EndpointExt, Request, Route};
use poem_openapi::{OpenApiService, Tags};

use platform::db;
use platform::health::Probes;

use crate::engine::Engine;
use flows::{definitions, signals};
use operator::{bulk_jobs, dead_letters, lag, notifications, sagas, stats};
use shop::{coupons, demo, orders, products, users, vendors};

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
    /// Claim and payout in the request, for the Kafka-vs-direct comparison.
    pub direct: workers::direct::DirectUse,
    /// Stock and balance changes under the participants' concurrency strategy.
    pub adjuster: workers::adjuster::Adjuster,
    /// Requests by route and status, with their latency (see [`observe`]).
    pub http: observe::HttpMetrics,
    /// Consumer lag as `/metrics` and `/readyz` report it.
    pub lag_cache: metrics::LagCache,
    /// Dependencies and database gauges as `/readyz` and `/metrics` report them.
    pub snapshots: snapshot::Snapshots,
    /// The process's background loops, as `/healthz` reports them.
    pub loops: platform::liveness::Loops,
}

#[derive(Tags)]
pub enum Tag {
    /// Liveness and readiness probes.
    Health,
    /// Orders: each starts an order saga (reserve stock, charge payment, prepare shipment).
    Orders,
    /// Products and their stock.
    Products,
    /// Users and their wallets.
    Users,
    /// Vendors, their balances and payout ledgers.
    Vendors,
    /// Coupon campaigns, and using a coupon (a saga, or directly).
    Coupons,
    /// Saga instances: start any flow, send signals, status, steps, history; operator
    /// retry and cancel.
    Sagas,
    /// Flows as versioned data: register, read, set the default, compensation paths.
    Definitions,
    /// Lifecycle events recorded by the notification worker.
    Notifications,
    /// Random demo data.
    Demo,
    /// Prometheus metrics.
    Metrics,
}

type Apis = (
    health::HealthApi,
    orders::OrdersApi,
    products::ProductsApi,
    users::UsersApi,
    vendors::VendorsApi,
    coupons::CouponsApi,
    sagas::SagasApi,
    (signals::SignalsApi, definitions::DefinitionsApi),
    stats::StatsApi,
    dead_letters::DeadLettersApi,
    bulk_jobs::BulkJobsApi,
    lag::LagApi,
    notifications::NotificationsApi,
    demo::DemoApi,
    metrics::MetricsApi,
);

pub fn openapi() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            health::HealthApi,
            orders::OrdersApi,
            products::ProductsApi,
            users::UsersApi,
            vendors::VendorsApi,
            coupons::CouponsApi,
            sagas::SagasApi,
            (signals::SignalsApi, definitions::DefinitionsApi),
            stats::StatsApi,
            dead_letters::DeadLettersApi,
            bulk_jobs::BulkJobsApi,
            lag::LagApi,
            notifications::NotificationsApi,
            demo::DemoApi,
            metrics::MetricsApi,
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
fn example_id() -> uuid::Uuid {
    uuid::Uuid::from_u128(0x019a_b7c2_5e10_7c3e_9a41_2f6d_8e0b_1c55)
}

/// Example SKU in the OpenAPI document.
fn example_sku() -> String {
    "MUG-01".to_owned()
}

/// The OpenAPI document as JSON (checked in as `openapi/openapi.json`), with each
/// operation's security from [`crate::auth::policy`].
pub fn spec_json() -> String {
    secured_spec(&openapi().spec())
}

fn secured_spec(generated: &str) -> String {
    let mut spec: serde_json::Value =
        serde_json::from_str(generated).expect("poem-openapi writes valid JSON");
    contract::complete(&mut spec);
    crate::auth::policy::secure(&mut spec);
    serde_json::to_string_pretty(&spec).expect("a JSON value serialises")
}

pub fn routes(state: State, gate: crate::auth::Gate) -> impl Endpoint {
    let http = state.http.clone();
    let service = openapi();
    let generated = service.spec();
    let spec = secured_spec(&generated);
    let labels = observe::RouteLabels::from_spec(
        &serde_json::from_str(&spec).expect("the secured document is JSON"),
    );
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
    let asyncapi = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json")
            .body(flows::asyncapi::live(&catalog).to_string())
    });
    Route::new()
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
        .nest("/ui", crate::console::routes())
        .around(strict::strict_body)
        .around(limit_body)
        .data(state)
        .around(move |endpoint, request| gate.clone().admit(endpoint, request))
        .catch_all_error(problem::catch_all)
        .around(allow_header)
        .around(move |endpoint, request| {
            observe::request(endpoint, (http.clone(), labels.clone()), request)
        })
}

/// Refuses bodies over [`MAX_BODY_BYTES`] with 413, whatever their framing: a declared
/// length is checked before reading; anything else (chunked, or an HTTP/2 stream that
/// declares nothing) is read up to the limit, never further.
async fn limit_body<E: Endpoint>(
    endpoint: std::sync::Arc<E>,
    mut request: Request,
) -> poem::Result<poem::Response> {
    use tokio::io::AsyncReadExt as _;
    let too_large = || {
        poem::Error::from_string(
            format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
    };
    let declared = request
        .header("content-length")
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    if declared.is_none() {
        let mut body = Vec::new();
        request
            .take_body()
            .into_async_read()
            .take(MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|err| poem::Error::from_string(err.to_string(), StatusCode::BAD_REQUEST))?;
        if body.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        request.set_body(body);
    }
    endpoint
        .call(request)
        .await
        .map(poem::IntoResponse::into_response)
}

/// RFC 9110: a 405 lists the methods the resource supports in `Allow`.
async fn allow_header<E: Endpoint>(
    endpoint: std::sync::Arc<E>,
    request: Request,
) -> poem::Result<poem::Response> {
    let path = request.uri().path().to_owned();
    let mut response = endpoint
        .call(request)
        .await
        .map(poem::IntoResponse::into_response)?;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let mut allowed = crate::auth::policy::allowed_methods(&path);
        if allowed.is_empty() {
            allowed = vec!["GET", "HEAD"]; // the documents and the console's files
        }
        if let Ok(value) = allowed.join(", ").parse() {
            response.headers_mut().insert("allow", value);
        }
    }
    Ok(response)
}
