//! What every HTTP request leaves behind: a span (the root of a saga's trace when the
//! request starts one, or a child of the caller's `traceparent`), and the request counter
//! and latency histogram by route and status that `/metrics` reports.
//!
//! The route label is the `operationId` of the operation the method and path match in the
//! OpenAPI document, so the label set is bounded by the API, not by the URLs people send;
//! the console, the docs and paths that match nothing have fixed labels of their own.

use std::sync::Arc;
use std::time::Instant;

use poem::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use platform::telemetry;

type Labels = Vec<(String, String)>;

/// Upper bounds of the request latency buckets, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Request counters and latencies; clones share their values.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        }
    }
}

impl HttpMetrics {
    fn record(&self, method: &str, route: &str, status: u16, took: f64) {
        let route = vec![
            ("method".to_owned(), method.to_owned()),
            ("route".to_owned(), route.to_owned()),
        ];
        let mut counted = route.clone();
        counted.push(("status".to_owned(), status.to_string()));
        self.requests.get_or_create(&counted).inc();
        self.latency.get_or_create(&route).observe(took);
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sagaflow_http_requests",
            "HTTP requests answered, by method, route (operationId) and status.",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "sagaflow_http_request_duration",
            "Time to answer an HTTP request, by method and route (operationId).",
            Unit::Seconds,
            self.latency.clone(),
        );
    }
}

/// One operation of the OpenAPI document: (method, path segments with `None` for a
/// `{parameter}`, operationId).
type Operation = (String, Vec<Option<String>>, String);

/// Route labels: every operation of the OpenAPI document.
#[derive(Clone, Default)]
pub struct RouteLabels(Arc<Vec<Operation>>);

impl RouteLabels {
    pub fn from_spec(spec: &serde_json::Value) -> Self {
        let mut routes = Vec::new();
        let paths = spec["paths"].as_object().into_iter().flatten();
        for (path, operations) in paths {
            let segments: Vec<Option<String>> = path
                .split('/')
                .map(|segment| (!segment.starts_with('{')).then(|| segment.to_owned()))
                .collect();
            for (method, operation) in operations.as_object().into_iter().flatten() {
                if let Some(id) = operation["operationId"].as_str() {
                    let method = method.to_ascii_uppercase();
                    routes.push((method, segments.clone(), id.to_owned()));
                }
            }
        }
        Self(Arc::new(routes))
    }

    /// The label of a request: its operation, or a fixed label.
    pub fn label(&self, method: &str, path: &str) -> String {
        let segments: Vec<&str> = path.split('/').collect();
        let operation = self.0.iter().find(|(m, pattern, _)| {
            m == method
                && pattern.len() == segments.len()
                && pattern
                    .iter()
                    .zip(&segments)
                    .all(|(want, got)| want.as_deref().is_none_or(|want| want == *got))
        });
        match operation {
            Some((_, _, id)) => id.clone(),
            None if matches!(
                path,
                "/docs" | "/openapi.json" | "/asyncapi.json" | "/saga-definition.schema.json"
            ) =>
            {
                "docs".to_owned()
            }
            None if path == "/ui" || path.starts_with("/ui/") => "console".to_owned(),
            None => "unmatched".to_owned(),
        }
    }
}

/// The method label: a standard method, or `OTHER` (any token is a valid method, and the
/// label set must not grow with what clients send).
fn method_label(method: &poem::http::Method) -> String {
    use poem::http::Method;
    let standard = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ];
    if standard.contains(method) {
        method.as_str().to_owned()
    } else {
        "OTHER".to_owned()
    }
}

/// A request on its way through: its span, and what its metrics need when it is answered.
/// Begun before any check runs and ended with the final response, so a 401 or a 404 is
/// counted like any other answer ([`super::door`]).
pub struct Observed {
    started: Instant,
    method: String,
    route: String,
    pub span: tracing::Span,
}

impl Observed {
    pub fn begin(routes: &RouteLabels, request: &Request) -> Self {
        let method = method_label(request.method());
        let route = routes.label(&method, request.uri().path());
        let span = tracing::info_span!(
            "http.request",
            otel.name = %format_args!("{method} {route}"),
            http.method = %method,
            http.route = %route,
            http.status = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        telemetry::continue_trace(&span, request.header(telemetry::TRACEPARENT));
        Observed {
            started: Instant::now(),
            method,
            route,
            span,
        }
    }

    pub fn end(self, metrics: &HttpMetrics, response: &Response) {
        let status = response.status().as_u16();
        self.span.record("http.status", status);
        metrics.record(
            &self.method,
            &self.route,
            status,
            self.started.elapsed().as_secs_f64(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_labelled_by_its_operation_or_a_bounded_fixed_label() {
        let spec: serde_json::Value =
            serde_json::from_str(&crate::api::spec_json((), &crate::auth::Policy::default()))
                .expect("the document is JSON");
        let routes = RouteLabels::from_spec(&spec);
        assert_eq!(routes.label("POST", "/v1/sagas"), "startSaga");
        let saga = "/v1/sagas/01a20f57-0000-7000-8000-000000000000";
        assert_eq!(routes.label("GET", saga), "getSaga");
        assert_eq!(routes.label("DELETE", saga), "unmatched");
        assert_eq!(routes.label("GET", "/ui/app.js"), "console");
        assert_eq!(routes.label("GET", "/docs"), "docs");
        assert_eq!(routes.label("GET", "/v1/no-such-thing/123"), "unmatched");
        let made_up = poem::http::Method::from_bytes(b"FOO1").unwrap();
        assert_eq!(method_label(&made_up), "OTHER");
        assert_eq!(method_label(&poem::http::Method::DELETE), "DELETE");
    }
}
