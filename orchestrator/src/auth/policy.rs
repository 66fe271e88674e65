//! Every operation of the API and what it needs, in one table. A test keeps the table and
//! the OpenAPI document in step: an operation without an entry fails it, so a new endpoint
//! cannot ship without a decision. [`secure`] writes the table into the document.
//!
//! [`access`] is total over (method, path): `HEAD` is judged as its `GET` (the router answers
//! it with the `GET` handler); a method the table does not list for a known path is
//! [`Access::MethodNotAllowed`], never public; a path under `/v1` that no row names (an
//! empty segment included, which a `{param}` never matches) is [`Access::Unknown`]: a key
//! first, then 404. Only paths outside `/v1` that no row names (the documents, the
//! console's static files) are public. `tests/access.rs` tries every route with every
//! method and every kind of caller.

use serde_json::{Value, json};

use super::Scope::{self, Admin, Client, Operator};

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health probes, the API's documents, unknown paths, which are 404).
    Public,
    /// `/metrics`: as `METRICS_AUTH` says.
    Metrics,
    /// A key with any one of these scopes.
    Scoped(&'static [Scope]),
    /// A path the table knows with a method it does not list: 405, whoever asks.
    MethodNotAllowed,
    /// A path under `/v1` that no operation has: 401 without a valid key, else 404. Such
    /// a request never reaches the router, so no handler runs for it.
    Unknown,
}

const CLIENT: Access = Access::Scoped(&[Client]);
const OWN_OR_OPERATOR: Access = Access::Scoped(&[Client, Operator]);
const OPERATOR: Access = Access::Scoped(&[Operator]);
const ADMIN: Access = Access::Scoped(&[Admin]);
const ADMIN_OR_OPERATOR: Access = Access::Scoped(&[Operator, Admin]);
const ANY_KEY: Access = Access::Scoped(&[Client, Operator, Admin]);

/// (method, path template as in the OpenAPI document, access).
const TABLE: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    ("GET", "/metrics", Access::Metrics),
    // The shop's customers (`client`) order and use coupons; they read their own sagas.
    ("POST", "/v1/orders", CLIENT),
    ("GET", "/v1/orders/{id}", OWN_OR_OPERATOR),
    ("POST", "/v1/coupons/{id}/uses", CLIENT),
    ("POST", "/v1/coupons/{id}/direct-uses", CLIENT),
    ("GET", "/v1/products/{sku}", ANY_KEY),
    ("GET", "/v1/coupons/{id}", ANY_KEY),
    // Operators watch and operate sagas.
    ("GET", "/v1/sagas", OPERATOR),
    ("POST", "/v1/sagas", OWN_OR_OPERATOR),
    // A signal's scope is the definition's to name; the handler checks it.
    ("POST", "/v1/sagas/{id}/signals/{name}", ANY_KEY),
    ("GET", "/v1/saga-definitions", ADMIN_OR_OPERATOR),
    ("GET", "/v1/saga-definitions/{name}", ADMIN_OR_OPERATOR),
    (
        "GET",
        "/v1/saga-definitions/{name}/versions/{version}",
        ADMIN_OR_OPERATOR,
    ),
    (
        "GET",
        "/v1/saga-definitions/{name}/versions/{version}/paths",
        ADMIN_OR_OPERATOR,
    ),
    ("GET", "/v1/saga-stats", OPERATOR),
    ("GET", "/v1/sagas/{id}", OWN_OR_OPERATOR),
    ("GET", "/v1/sagas/{id}/history", OWN_OR_OPERATOR),
    ("POST", "/v1/sagas/{id}/retry", OPERATOR),
    ("POST", "/v1/sagas/{id}/cancel", OPERATOR),
    ("POST", "/v1/sagas/{id}/resolve", OPERATOR),
    ("GET", "/v1/notifications", OPERATOR),
    ("GET", "/v1/dead-letters", OPERATOR),
    ("GET", "/v1/consumer-lag", OPERATOR),
    ("POST", "/v1/bulk-jobs", OPERATOR),
    ("GET", "/v1/bulk-jobs", OPERATOR),
    ("GET", "/v1/bulk-jobs/{id}", OPERATOR),
    ("POST", "/v1/dead-letters/replay", OPERATOR),
    ("POST", "/v1/dead-letters/discard", OPERATOR),
    ("GET", "/v1/users/{id}", ADMIN_OR_OPERATOR),
    ("GET", "/v1/users/{id}/coupons", ADMIN_OR_OPERATOR),
    ("GET", "/v1/vendors/{id}", ADMIN_OR_OPERATOR),
    // Admins manage what the shop sells and who holds money.
    ("POST", "/v1/products", ADMIN),
    ("POST", "/v1/products/{sku}/stock", ADMIN),
    ("POST", "/v1/users", ADMIN),
    ("POST", "/v1/users/{id}/top-ups", ADMIN),
    ("POST", "/v1/vendors", ADMIN),
    ("POST", "/v1/coupons", ADMIN),
    // Admins register flows and choose the version new sagas start on.
    ("POST", "/v1/saga-definitions", ADMIN),
    ("PUT", "/v1/saga-definitions/{name}/default", ADMIN),
    (
        "DELETE",
        "/v1/saga-definitions/{name}/versions/{version}",
        ADMIN,
    ),
    ("POST", "/v1/demo/users", ADMIN),
    ("POST", "/v1/demo/vendors", ADMIN),
    ("POST", "/v1/demo/coupons", ADMIN),
];

/// What a request to `path` with `method` needs.
pub fn access(method: &str, path: &str) -> Access {
    let method = if method == "HEAD" { "GET" } else { method };
    let mut known_path = false;
    for (m, template, access) in TABLE {
        if matches(template, path) {
            if *m == method {
                return *access;
            }
            known_path = true;
        }
    }
    // `//`, `.` and `..` are never a route's; refused here so that no normalisation further
    // down can turn such a path into one the table did not judge.
    let odd = path
        .split('/')
        .skip(1)
        .any(|segment| segment.is_empty() || segment == "." || segment == "..");
    if known_path {
        Access::MethodNotAllowed
    } else if (odd && path != "/") || path == "/v1" || path.starts_with("/v1/") {
        Access::Unknown
    } else {
        Access::Public
    }
}

/// The methods a path has (`HEAD` wherever `GET` is), for a 405's `Allow`.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let mut methods: Vec<&'static str> = TABLE
        .iter()
        .filter(|(_, template, _)| matches(template, path))
        .map(|(method, _, _)| *method)
        .collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods
}

/// Every (method, path template) of the table: what the access test walks.
pub fn operations() -> impl Iterator<Item = (&'static str, &'static str, Access)> {
    TABLE.iter().copied()
}

fn matches(template: &str, path: &str) -> bool {
    let (mut template, mut path) = (template.split('/'), path.split('/'));
    loop {
        match (template.next(), path.next()) {
            (None, None) => return true,
            (Some(t), Some(p)) if t == p || (t.starts_with('{') && !p.is_empty()) => {}
            _ => return false,
        }
    }
}

/// Writes the table into the OpenAPI document: the bearer scheme, and for each operation
/// its security, its scopes (`x-scopes` and a sentence in the description), and its 401
/// and 403 answers.
pub fn secure(spec: &mut Value) {
    spec["components"]["securitySchemes"]["apiKey"] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`Authorization: Bearer <key>`). Each key has scopes: \
            `client`, `operator`, `admin`; each operation names the scopes it accepts.",
    });
    let Some(paths) = spec["paths"].as_object_mut() else {
        return;
    };
    for (path, operations) in paths.iter_mut() {
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for (method, operation) in operations.iter_mut() {
            let access = access(&method.to_uppercase(), path);
            let (security, sentence) = match access {
                Access::Public | Access::MethodNotAllowed | Access::Unknown => continue,
                Access::Metrics => (
                    json!([{}, { "apiKey": [] }]),
                    "Needs an `operator` key when `METRICS_AUTH=operator`.".to_owned(),
                ),
                Access::Scoped(scopes) => {
                    let names: Vec<String> =
                        scopes.iter().map(|scope| format!("`{scope}`")).collect();
                    operation["x-scopes"] = json!(
                        scopes
                            .iter()
                            .map(|scope| scope.as_str())
                            .collect::<Vec<_>>()
                    );
                    (
                        json!([{ "apiKey": [] }]),
                        format!("Needs an API key with scope {}.", names.join(" or ")),
                    )
                }
            };
            operation["security"] = security;
            let description = operation["description"].as_str().unwrap_or_default();
            operation["description"] = if description.is_empty() {
                json!(sentence)
            } else {
                json!(format!("{description}\n\n{sentence}"))
            };
            let problem = |text: &str| {
                json!({
                    "description": text,
                    "content": { "application/problem+json": {
                        "schema": { "$ref": "#/components/schemas/Problem" } } },
                })
            };
            operation["responses"]["401"] =
                problem("No API key, or one that is not valid (`WWW-Authenticate: Bearer`).");
            operation["responses"]["403"] = problem("The key lacks the scope this needs.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_of_the_api_has_an_entry_and_every_entry_an_operation() {
        let spec: Value = serde_json::from_str(&crate::api::openapi().spec()).unwrap();
        let mut operations = Vec::new();
        for (path, methods) in spec["paths"].as_object().unwrap() {
            for method in methods.as_object().unwrap().keys() {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
        for (method, path) in &operations {
            assert!(
                TABLE.iter().any(|(m, p, _)| m == method && p == path),
                "{method} {path} has no access rule in auth::policy"
            );
        }
        for (method, path, _) in TABLE {
            assert!(
                operations.iter().any(|(m, p)| m == method && p == path),
                "the rule for {method} {path} names no operation"
            );
        }
    }

    #[test]
    fn paths_match_their_templates_only() {
        assert_eq!(access("GET", "/v1/sagas/abc"), OWN_OR_OPERATOR);
        assert_eq!(access("POST", "/v1/sagas/abc/retry"), OPERATOR);
        assert_eq!(access("GET", "/v1/sagas"), OPERATOR);
        assert_eq!(access("HEAD", "/v1/sagas"), OPERATOR);
        assert_eq!(access("HEAD", "/metrics"), Access::Metrics);
        assert_eq!(access("GET", "/v1/sagas/"), Access::Unknown); // no id: a key, then 404
        assert_eq!(access("POST", "/v1/products//stock"), Access::Unknown);
        assert_eq!(access("GET", "/v1/nothing-here"), Access::Unknown);
        assert_eq!(access("DELETE", "/v1/orders/x"), Access::MethodNotAllowed);
        assert_eq!(access("OPTIONS", "/v1/sagas"), Access::MethodNotAllowed);
        assert_eq!(access("POST", "/healthz"), Access::MethodNotAllowed);
        assert_eq!(access("GET", "/docs"), Access::Public);
        assert_eq!(access("GET", "/ui/console.js"), Access::Public);
        assert_eq!(access("GET", "//v1/sagas"), Access::Unknown);
        assert_eq!(access("GET", "/v1/../v1/sagas"), Access::Unknown);
        assert_eq!(access("GET", "/"), Access::Public);
        assert_eq!(allowed_methods("/v1/sagas/x"), ["GET", "HEAD"]);
    }
}
