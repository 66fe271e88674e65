//! Who may call what: bearer API keys with scopes. This module is the only place that reads
//! a key or decides on access; handlers receive the [`Caller`] it admitted.
//!
//! - **Keys** come from `API_KEYS` (entries separated by commas or white space) or the file
//!   named by `API_KEYS_FILE` (one entry per line, `#` comments), each `name:scopes:secret`
//!   with scopes joined by `+` (`shop:client:…`, `ops:operator+admin:…`). Only the SHA-256
//!   of each secret is held in memory. A secret is at least 16 characters.
//! - **Scopes:** `client` starts orders and coupon uses and reads what it started;
//!   `operator` lists and inspects sagas and runs operator actions; `admin` manages
//!   products, stock, users, top-ups, vendors and campaigns. [`policy`] maps every operation
//!   of the API to what it needs, and the OpenAPI document states it.
//! - **Answers:** no key or an unknown key is 401 with `WWW-Authenticate: Bearer`; a key
//!   without the scope is 403. Both are problem+json.
//! - **Switching it off** takes `AUTH=off` (logged as a warning at start). `serve` refuses
//!   to start with neither keys nor `AUTH=off`; `dev` without keys runs open, with a banner.

pub mod policy;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use poem::http::StatusCode;
use poem::{Request, Response};
use sha2::{Digest, Sha256};

use platform::env::{self, Vars};

pub use policy::{Access, Policy};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Client,
    Operator,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Client, Scope::Operator, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Operator => "operator",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == value)
            .ok_or_else(|| format!("unknown scope `{value}` (client, operator, admin)"))
    }
}

/// The one who sent a request, as admitted by [`Gate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name; recorded as the actor of operator actions, and the owner of the
    /// sagas it starts.
    pub name: String,
    scopes: u8,
}

impl Caller {
    /// Whoever calls while access control is off: may do everything.
    pub fn open() -> Self {
        Self {
            name: "anonymous".to_owned(),
            scopes: Scope::ALL.iter().fold(0, |bits, scope| bits | scope.bit()),
        }
    }

    /// A caller with no key, on a public operation.
    pub fn nobody() -> Self {
        Self {
            name: "anonymous".to_owned(),
            scopes: 0,
        }
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    /// Whether the caller reads every saga and order, not only those it started.
    pub fn sees_everything(&self) -> bool {
        self.has(Scope::Operator) || self.has(Scope::Admin)
    }

    /// The name a client's sagas are recorded under: `None` for callers that see
    /// everything, whose sagas belong to no client.
    pub fn owner(&self) -> Option<&str> {
        (!self.sees_everything()).then_some(self.name.as_str())
    }
}

/// Names no key may take: the name callers without a key are recorded under, and those
/// that would read as one in a history.
const RESERVED_NAMES: &[&str] = &["anonymous", "system", "engine", "timer", "nobody"];

/// The configured keys: SHA-256 of each secret to its caller.
#[derive(Clone, Default)]
pub struct Keys {
    by_hash: HashMap<[u8; 32], Caller>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.by_hash.values().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        f.debug_struct("Keys").field("names", &names).finish()
    }
}

impl Keys {
    /// Parses entries `name:scope+scope:secret`, separated by commas, white space or lines
    /// (`#` starts a comment line).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Keys::default();
        let mut names = std::collections::HashSet::new();
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| line.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|entry| !entry.is_empty());
        // Errors name an entry by its position, never by its text: a malformed entry may
        // hold its secret where the name belongs.
        for (index, entry) in entries.enumerate() {
            let at = format!("entry {}", index + 1);
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(scopes), Some(secret)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("{at} is not `name:scopes:secret`"));
            };
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !name_ok {
                return Err(format!(
                    "{at}: a key's name has 1-64 letters, digits, `-`, `_` or `.`"
                ));
            }
            if RESERVED_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "{at}: its name is reserved (callers without a key are recorded so)"
                ));
            }
            let mut bits = 0;
            for scope in scopes.split('+') {
                bits |= scope
                    .parse::<Scope>()
                    .map_err(|_| format!("{at}: scopes are client, operator, admin, joined by +"))?
                    .bit();
            }
            if secret.chars().count() < 16 {
                return Err(format!("{at}: the secret must be at least 16 characters"));
            }
            if !names.insert(name.to_owned()) {
                return Err(format!("{at}: its name is another entry's too"));
            }
            let caller = Caller {
                name: name.to_owned(),
                scopes: bits,
            };
            if keys.by_hash.insert(hash(secret), caller).is_some() {
                return Err(format!("{at}: its secret is also another key's"));
            }
        }
        Ok(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    fn find(&self, secret: &str) -> Option<&Caller> {
        // Looked up by the secret's hash: timing can tell at most how a hash compares,
        // which says nothing about any secret.
        self.by_hash.get(&hash(secret))
    }
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `/metrics` needs a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Anyone who reaches the port may scrape (the default; bind the port accordingly).
    Open,
    /// An `operator` key is needed.
    Operator,
}

impl std::str::FromStr for MetricsAccess {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "open" => Ok(Self::Open),
            "operator" => Ok(Self::Operator),
            other => Err(format!("expected `open` or `operator`, got `{other}`")),
        }
    }
}

/// Access control as configured.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `false` only with `AUTH=off`.
    pub enabled: bool,
    pub keys: Keys,
    pub metrics: MetricsAccess,
}

impl AuthConfig {
    /// Reads `AUTH` (`on`/`off`, default `on`), `API_KEYS`, `API_KEYS_FILE` and
    /// `METRICS_AUTH` (`open`/`operator`, default `open`).
    pub fn from_vars(vars: &Vars) -> Result<Self, env::Error> {
        let enabled = match vars.optional("AUTH")?.as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => {
                return Err(env::Error::new("AUTH", other, "expected `on` or `off`"));
            }
        };
        let mut text = vars.optional("API_KEYS")?.unwrap_or_default();
        if let Some(path) = vars.optional("API_KEYS_FILE")? {
            let file = std::fs::read_to_string(&path)
                .map_err(|err| env::Error::new("API_KEYS_FILE", &path, err.to_string()))?;
            text.push('\n');
            text.push_str(&file);
        }
        let keys = Keys::parse(&text)
            .map_err(|reason| env::Error::new("API_KEYS", "(not shown)", reason))?;
        Ok(Self {
            enabled,
            keys,
            metrics: vars.parse_or("METRICS_AUTH", MetricsAccess::Open)?,
        })
    }

    /// Open access: what `AUTH=off` gives.
    pub fn off() -> Self {
        Self {
            enabled: false,
            keys: Keys::default(),
            metrics: MetricsAccess::Open,
        }
    }

    /// Whether requests are checked at all: on, and with at least one key (`dev` without
    /// keys runs open; `serve` refuses to start that way, see `app`).
    pub fn enforced(&self) -> bool {
        self.enabled && !self.keys.is_empty()
    }
}

/// The middleware that admits or refuses every request by [`policy`].
#[derive(Clone)]
pub struct Gate {
    config: Arc<AuthConfig>,
    policy: policy::Policy,
}

impl Gate {
    pub fn new(config: AuthConfig, policy: policy::Policy) -> Self {
        Self {
            config: Arc::new(config),
            policy,
        }
    }

    /// Admits the request (adding its [`Caller`] to it) and returns nothing, or returns the
    /// answer that refuses it (401, 403, 404, 405).
    pub fn refusal(&self, request: &mut Request) -> Option<Response> {
        let access = self
            .policy
            .access(request.method().as_str(), request.uri().path());
        match self.decide(access, request.header("authorization")) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                None
            }
            Err(refusal) => Some(refusal.response()),
        }
    }

    fn decide(&self, access: Access, authorization: Option<&str>) -> Result<Caller, Refusal> {
        if access == Access::MethodNotAllowed {
            return Err(Refusal::Method);
        }
        if !self.config.enforced() {
            return match access {
                Access::Unknown => Err(Refusal::NotFound),
                _ => Ok(Caller::open()),
            };
        }
        let presented = authorization.map(|value| self.identify(value));
        let needed: &[Scope] = match access {
            Access::MethodNotAllowed => return Err(Refusal::Method),
            Access::Unknown => {
                // A key first: without one, nobody learns which paths exist.
                return Err(match presented {
                    None => Refusal::NoKey,
                    Some(Err(())) => Refusal::InvalidKey,
                    Some(Ok(_)) => Refusal::NotFound,
                });
            }
            Access::Public => {
                // A valid key still counts: an operator sees more of `/readyz`.
                return Ok(presented
                    .and_then(Result::ok)
                    .unwrap_or_else(Caller::nobody));
            }
            Access::Metrics if self.config.metrics == MetricsAccess::Open => {
                return Ok(Caller::nobody());
            }
            Access::Metrics => &[Scope::Operator],
            Access::Scoped(scopes) => scopes,
        };
        let caller = match presented {
            None => return Err(Refusal::NoKey),
            Some(Err(())) => return Err(Refusal::InvalidKey),
            Some(Ok(caller)) => caller,
        };
        if needed.iter().any(|scope| caller.has(*scope)) {
            return Ok(caller);
        }
        Err(Refusal::Scope {
            key: caller.name,
            needed,
        })
    }

    fn identify(&self, authorization: &str) -> Result<Caller, ()> {
        let (scheme, secret) = authorization.trim().split_once(' ').ok_or(())?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(());
        }
        self.config.keys.find(secret.trim()).cloned().ok_or(())
    }
}

/// Why a request was turned away.
#[derive(Debug)]
enum Refusal {
    NoKey,
    InvalidKey,
    /// A known path with a method it does not have (405; `api` adds `Allow`).
    Method,
    /// A path under `/v1` that no operation has, asked with a valid key.
    NotFound,
    Scope {
        key: String,
        needed: &'static [Scope],
    },
}

impl Refusal {
    fn response(self) -> Response {
        match self {
            Refusal::NoKey => unauthorized(None),
            Refusal::InvalidKey => unauthorized(Some("invalid_token")),
            Refusal::Method => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method Not Allowed",
                "this path does not take this method; `Allow` lists those it takes",
            ),
            Refusal::NotFound => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not Found",
                "no operation has this path",
            ),
            Refusal::Scope { key, needed } => {
                let names: Vec<&str> = needed.iter().map(|scope| scope.as_str()).collect();
                problem(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "Forbidden",
                    &format!(
                        "key `{key}` lacks the scope this needs: {}",
                        names.join(" or ")
                    ),
                )
            }
        }
    }
}

fn unauthorized(error: Option<&str>) -> Response {
    let (challenge, detail) = match error {
        None => (
            r#"Bearer realm="sagaflow""#.to_owned(),
            "send an API key: `Authorization: Bearer <key>`",
        ),
        Some(error) => (
            format!(r#"Bearer realm="sagaflow", error="{error}""#),
            "the API key is not valid",
        ),
    };
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    );
    if let Ok(value) = challenge.parse() {
        response.headers_mut().insert("www-authenticate", value);
    }
    response
}

fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": format!("https://sagaflow.dev/problems/{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    Response::builder()
        .status(status)
        .content_type("application/problem+json")
        .body(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef";

    #[test]
    fn keys_parse_with_their_scopes_and_only_their_hash_is_kept() {
        let keys = Keys::parse(&format!(
            "# ops\nops:operator+admin:{SECRET}X\n shop:client:{SECRET}Y, other:client:{SECRET}Z"
        ))
        .unwrap();
        assert_eq!(keys.len(), 3);
        let ops = keys.find(&format!("{SECRET}X")).unwrap();
        assert!(ops.has(Scope::Operator) && ops.has(Scope::Admin) && !ops.has(Scope::Client));
        assert_eq!(keys.find(&format!("{SECRET}Y")).unwrap().name, "shop");
        assert!(keys.find(SECRET).is_none());
        assert!(
            !format!("{keys:?}").contains(SECRET),
            "no secret in debug output"
        );
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        for (text, reason) in [
            ("shop:client", "entry 1 is not `name:scopes:secret`"),
            (&format!("shop:god:{SECRET}") as &str, "scopes are client"),
            (&format!("anonymous:client:{SECRET}"), "reserved"),
            (&format!("Anonymous:client:{SECRET}"), "reserved"),
            ("shop:client:short", "at least 16"),
            (
                &format!("a:client:{SECRET}1,a:client:{SECRET}2"),
                "another entry's too",
            ),
            (
                &format!("a:client:{SECRET},b:admin:{SECRET}"),
                "also another key's",
            ),
            (&format!("a b/:client:{SECRET}"), "entry 1 is not"),
        ] {
            let err = Keys::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn a_bad_entry_is_named_by_its_position_never_by_its_text() {
        for (text, position) in [
            // A secret pasted where the name goes, and a secret with no name at all.
            (format!("ok:client:{SECRET}A,{SECRET}B:client:x"), "entry 2"),
            (format!("ok:client:{SECRET}A\n{SECRET}B"), "entry 2"),
            (format!("{SECRET}C"), "entry 1"),
            (format!("x:client:{SECRET}D, y:client:{SECRET}D"), "entry 2"),
        ] {
            let err = Keys::parse(&text).unwrap_err();
            assert!(err.contains(position), "{err}");
            assert!(!err.contains(SECRET), "the error shows a secret: {err}");
        }
    }

    #[test]
    fn a_key_is_admitted_only_with_a_scope_the_operation_needs() {
        let mut config = AuthConfig::off();
        config.enabled = true;
        config.keys = Keys::parse(&format!("shop:client:{SECRET}")).unwrap();
        let gate = Gate::new(config, policy::Policy::default());
        let bearer = format!("Bearer {SECRET}");
        let client = Access::Scoped(&[Scope::Client]);
        let admin = Access::Scoped(&[Scope::Admin]);
        assert_eq!(gate.decide(client, Some(&bearer)).unwrap().name, "shop");
        assert_eq!(
            gate.decide(admin, Some(&bearer))
                .unwrap_err()
                .response()
                .status(),
            403
        );
        assert_eq!(
            gate.decide(client, None).unwrap_err().response().status(),
            401
        );
        let wrong = gate
            .decide(client, Some("Bearer nope"))
            .unwrap_err()
            .response();
        assert_eq!(wrong.status(), 401);
        assert!(
            wrong.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        assert_eq!(
            gate.decide(client, Some(&format!("Basic {SECRET}")))
                .unwrap_err()
                .response()
                .status(),
            401
        );
        assert_eq!(gate.decide(Access::Public, None).unwrap(), Caller::nobody());
    }

    #[test]
    fn switched_off_everyone_may_do_everything() {
        let gate = Gate::new(AuthConfig::off(), policy::Policy::default());
        let caller = gate.decide(Access::Scoped(&[Scope::Admin]), None).unwrap();
        assert!(caller.has(Scope::Admin) && caller.sees_everything());
    }
}
