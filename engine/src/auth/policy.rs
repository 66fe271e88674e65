//! Every operation of the API and what it needs, in one table: the engine's rows
//! ([`ENGINE`]) joined with those of the application mounted beside it ([`Policy::new`]).
//! A test keeps the table and the OpenAPI document in step ([`Policy::mismatches`]): an
//! operation without an entry fails it, so a new endpoint cannot ship without a decision.
//! [`Policy::secure`] writes the table into the document.
//!
//! [`Policy::access`] is total over (method, path): `HEAD` is judged as its `GET` (the router answers
//! it with the `GET` handler); a method the table does not list for a known path is
//! [`Access::MethodNotAllowed`], never public; a path under `/v1` that no row names (an
//! empty segment included, which a `{param}` never matches) is [`Access::Unknown`]: a key
//! first, then 404. Only paths outside `/v1` that no row names (the documents, the
//! console's static files) are public. `orchestrator/tests/auth.rs` tries every route with
//! every method and every kind of caller.

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

pub const CLIENT: Access = Access::Scoped(&[Client]);
pub const OWN_OR_OPERATOR: Access = Access::Scoped(&[Client, Operator]);
pub const OPERATOR: Access = Access::Scoped(&[Operator]);
pub const ADMIN: Access = Access::Scoped(&[Admin]);
pub const ADMIN_OR_OPERATOR: Access = Access::Scoped(&[Operator, Admin]);
pub const ANY_KEY: Access = Access::Scoped(&[Client, Operator, Admin]);

/// (method, path template as in the OpenAPI document, access).
pub type Rule = (&'static str, &'static str, Access);

/// The engine's own operations. An application mounted beside the engine (the shop) brings
/// its own rows; [`Policy::new`] joins them.
pub const ENGINE: &[Rule] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    ("GET", "/metrics", Access::Metrics),
    // Operators watch and operate sagas.
    ("GET", "/v1/sagas", OPERATOR),
    // Each flow names who may start it (`start_scopes`); the handler checks it.
    ("POST", "/v1/sagas", ANY_KEY),
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
    ("GET", "/v1/sagas/{id}/events", OWN_OR_OPERATOR),
    ("GET", "/v1/saga-events", OPERATOR),
    ("POST", "/v1/sagas/{id}/retry", OPERATOR),
    ("POST", "/v1/sagas/{id}/cancel", OPERATOR),
    ("POST", "/v1/sagas/{id}/resolve", OPERATOR),
    ("POST", "/v1/sagas/{id}/quarantine/lift", OPERATOR),
    ("GET", "/v1/notifications", OPERATOR),
    ("GET", "/v1/dead-letters", OPERATOR),
    ("GET", "/v1/consumer-lag", OPERATOR),
    ("POST", "/v1/bulk-jobs", OPERATOR),
    ("GET", "/v1/bulk-jobs", OPERATOR),
    ("GET", "/v1/bulk-jobs/{id}", OPERATOR),
    ("POST", "/v1/dead-letters/replay", OPERATOR),
    ("POST", "/v1/dead-letters/discard", OPERATOR),
    // Admins register flows and choose the version new sagas start on.
    ("POST", "/v1/saga-definitions", ADMIN),
    ("PUT", "/v1/saga-definitions/{name}/default", ADMIN),
    (
        "DELETE",
        "/v1/saga-definitions/{name}/versions/{version}",
        ADMIN,
    ),
    (
        "PUT",
        "/v1/saga-definitions/{name}/versions/{version}/retirement",
        ADMIN,
    ),
    (
        "DELETE",
        "/v1/saga-definitions/{name}/versions/{version}/retirement",
        ADMIN,
    ),
];

/// The whole table a server judges by: the engine's rows and its application's.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: std::sync::Arc<[Rule]>,
}

impl Default for Policy {
    /// The engine alone.
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Policy {
    pub fn new(application: &[Rule]) -> Self {
        Self {
            rules: ENGINE.iter().chain(application).copied().collect(),
        }
    }

    /// What a request to `path` with `method` needs.
    pub fn access(&self, method: &str, path: &str) -> Access {
        let method = if method == "HEAD" { "GET" } else { method };
        let mut known_path = false;
        for (m, template, access) in self.rules.iter() {
            if matches(template, path) {
                if *m == method {
                    return *access;
                }
                known_path = true;
            }
        }
        // `//`, `.` and `..` are never a route's; refused here so that no normalisation
        // further down can turn such a path into one the table did not judge.
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
    pub fn allowed_methods(&self, path: &str) -> Vec<&'static str> {
        let mut methods: Vec<&'static str> = self
            .rules
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
    pub fn operations(&self) -> impl Iterator<Item = Rule> + '_ {
        self.rules.iter().copied()
    }

    /// Operations of `spec` without a row, and rows without an operation: both must be
    /// empty, so that no endpoint ships without a decision.
    pub fn mismatches(&self, spec: &Value) -> Vec<String> {
        let mut operations = Vec::new();
        for (path, methods) in spec["paths"].as_object().into_iter().flatten() {
            for method in methods.as_object().into_iter().flatten().map(|(m, _)| m) {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
        let mut faults = Vec::new();
        for (method, path) in &operations {
            if !self.rules.iter().any(|(m, p, _)| m == method && p == path) {
                faults.push(format!("{method} {path} has no access rule"));
            }
        }
        for (method, path, _) in self.rules.iter() {
            if !operations.iter().any(|(m, p)| m == method && p == path) {
                faults.push(format!("the rule for {method} {path} names no operation"));
            }
        }
        faults
    }
    /// Writes the table into the OpenAPI document: the bearer scheme, and for each operation
    /// its security, its scopes (`x-scopes` and a sentence in the description), and its 401
    /// and 403 answers.
    pub fn secure(&self, spec: &mut Value) {
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
                let access = self.access(&method.to_uppercase(), path);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_of_the_engine_has_an_entry_and_every_entry_an_operation() {
        let spec: Value = serde_json::from_str(&crate::api::openapi(()).spec()).unwrap();
        assert_eq!(Policy::default().mismatches(&spec), Vec::<String>::new());
    }

    #[test]
    fn an_operation_without_a_row_or_a_row_without_an_operation_is_named() {
        let spec = json!({ "paths": { "/v1/x": { "get": {} } } });
        let policy = Policy::new(&[("POST", "/v1/y", ADMIN)]);
        let faults = policy.mismatches(&spec);
        assert!(faults.contains(&"GET /v1/x has no access rule".to_owned()));
        assert!(faults.contains(&"the rule for POST /v1/y names no operation".to_owned()));
    }

    #[test]
    fn paths_match_their_templates_only() {
        let policy = Policy::new(&[("GET", "/v1/orders/{id}", OWN_OR_OPERATOR)]);
        let access = |method, path| policy.access(method, path);
        assert_eq!(access("GET", "/v1/sagas/abc"), OWN_OR_OPERATOR);
        assert_eq!(access("POST", "/v1/sagas/abc/retry"), OPERATOR);
        assert_eq!(access("GET", "/v1/sagas"), OPERATOR);
        assert_eq!(access("HEAD", "/v1/sagas"), OPERATOR);
        assert_eq!(access("HEAD", "/metrics"), Access::Metrics);
        assert_eq!(access("GET", "/v1/sagas/"), Access::Unknown); // no id: a key, then 404
        assert_eq!(access("POST", "/v1/sagas//retry"), Access::Unknown);
        assert_eq!(access("GET", "/v1/nothing-here"), Access::Unknown);
        assert_eq!(access("DELETE", "/v1/orders/x"), Access::MethodNotAllowed);
        assert_eq!(access("GET", "/v1/orders/x"), OWN_OR_OPERATOR);
        assert_eq!(access("OPTIONS", "/v1/sagas"), Access::MethodNotAllowed);
        assert_eq!(access("POST", "/healthz"), Access::MethodNotAllowed);
        assert_eq!(access("GET", "/docs"), Access::Public);
        assert_eq!(access("GET", "/ui/console.js"), Access::Public);
        assert_eq!(access("GET", "//v1/sagas"), Access::Unknown);
        assert_eq!(access("GET", "/v1/../v1/sagas"), Access::Unknown);
        assert_eq!(access("GET", "/"), Access::Public);
        assert_eq!(policy.allowed_methods("/v1/sagas/x"), ["GET", "HEAD"]);
        assert_eq!(
            Policy::default().access("GET", "/v1/orders/x"),
            Access::Unknown,
            "the engine alone knows no shop"
        );
    }
}
