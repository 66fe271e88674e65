//! The REST API: one module per resource, errors as `application/problem+json`
//! ([`problem`]), the OpenAPI document generated from these types, Swagger UI at `/docs`.

mod health;
pub mod problem;

use poem::middleware::Tracing;
use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::OpenApiService;

use platform::health::Probes;

/// What the handlers share.
#[derive(Clone)]
pub struct State {
    pub probes: Probes,
}

type Apis = health::HealthApi;

pub fn openapi() -> OpenApiService<Apis, ()> {
    OpenApiService::new(health::HealthApi, "sagaflow", env!("CARGO_PKG_VERSION")).description(
        "Saga orchestrator: start sagas, inspect their status and history, retry or cancel them.",
    )
}

/// The OpenAPI document as JSON (checked in as `openapi/openapi.json`).
pub fn spec_json() -> String {
    openapi().spec()
}

pub fn routes(state: State) -> impl Endpoint {
    let service = openapi();
    let docs = service.swagger_ui();
    let spec = service.spec_endpoint();
    Route::new()
        .nest("/", service)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .data(state)
        .with(Tracing)
}
