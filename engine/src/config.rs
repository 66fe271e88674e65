//! The engine's configuration, read once at start-up (the `orchestrator` crate adds the
//! participants' settings, which `dev` needs).
//!
//! Variables (all optional; defaults suit a machine with local Postgres and Redis):
//! - `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/sagaflow`; created if missing)
//! - `DATABASE_POOL_SIZE` (default 16), `DATABASE_ENGINE_POOL_SIZE` (default 16),
//!   `DATABASE_POOL_WAIT_MS` (default 2000), `DATABASE_STATEMENT_TIMEOUT_MS` (default 30000)
//! - `RETENTION_INBOX_DAYS` (default 14), `RETENTION_HISTORY_DAYS` (default 90)
//! - `REDIS_URL` (default `redis://127.0.0.1:6379`)
//! - `KAFKA_BROKERS` (`host:port,...`; unset: `dev` starts an embedded Kafka, `serve` refuses)
//! - `TOPIC_PREFIX` (default `sagaflow`)
//! - `HTTP_ADDR` (default `127.0.0.1:8080`); the server's limits `HTTP_HEADER_TIMEOUT_MS`
//!   (10000), `HTTP_IDLE_TIMEOUT_MS` (60000), `HTTP_REQUEST_TIMEOUT_MS` (30000),
//!   `HTTP_MAX_CONNECTIONS` (2048), `HTTP_MAX_REQUESTS` (1024) (see `api::server`);
//!   `HTTP_MAX_WAITS` (768, below `HTTP_MAX_REQUESTS`), `HTTP_MAX_WAITS_PER_KEY` (64),
//!   `HTTP_MAX_SIGNALS_PER_KEY` (8), `HTTP_MAX_STREAM_SECONDS` (300)
//! - `DEFINITIONS_DIR`: saga definition documents registered at start (see
//!   [`crate::shell::catalog`])
//! - `LOG_FORMAT` (`text` or `json`, default `text`); `RUST_LOG` (default `info`)
//! - `AUTH` (`on`/`off`, default `on`), `API_KEYS`, `API_KEYS_FILE`, `METRICS_AUTH`
//!   (`open`/`operator`, default `open`): access control (see [`crate::auth`])

use std::net::SocketAddr;

use platform::env::{self, KafkaEnv, LogFormat, RetentionEnv, StoreEnv, Vars};
use platform::settings::Setting;

use crate::api::server::ServerLimits;
use crate::auth::AuthConfig;

fn http_limits(vars: &Vars) -> Result<ServerLimits, env::Error> {
    let defaults = ServerLimits::default();
    let millis = |name: &'static str, default: std::time::Duration| -> Result<_, env::Error> {
        let ms: u64 = vars.parse_or(name, default.as_millis() as u64)?;
        if ms == 0 {
            return Err(env::Error::new(name, "0", "must be at least 1"));
        }
        Ok(std::time::Duration::from_millis(ms))
    };
    let count = |name: &'static str, default: usize| -> Result<usize, env::Error> {
        let n: usize = vars.parse_or(name, default)?;
        if n == 0 {
            return Err(env::Error::new(name, "0", "must be at least 1"));
        }
        Ok(n)
    };
    Ok(ServerLimits {
        header_timeout: millis("HTTP_HEADER_TIMEOUT_MS", defaults.header_timeout)?,
        idle_timeout: millis("HTTP_IDLE_TIMEOUT_MS", defaults.idle_timeout)?,
        request_timeout: millis("HTTP_REQUEST_TIMEOUT_MS", defaults.request_timeout)?,
        max_connections: count("HTTP_MAX_CONNECTIONS", defaults.max_connections)?,
        max_requests: count("HTTP_MAX_REQUESTS", defaults.max_requests)?,
    })
}

/// The orchestrator's own settings: its HTTP address and access control.
pub const ORCHESTRATOR: &[Setting] = &[
    Setting {
        env: "HTTP_ADDR",
        long: "http-addr",
        default: Some(Config::DEFAULT_HTTP_ADDR),
        help: "API listen address",
        secret: false,
    },
    Setting {
        env: "HTTP_HEADER_TIMEOUT_MS",
        long: "http-header-timeout-ms",
        default: Some("10000"),
        help: "a request's headers must arrive within this (HTTP/1), else the connection is closed",
        secret: false,
    },
    Setting {
        env: "HTTP_IDLE_TIMEOUT_MS",
        long: "http-idle-timeout-ms",
        default: Some("60000"),
        help: "a connection with no request in flight and no bytes moving for this long is closed (HTTP/2; an HTTP/1 connection waiting for its next request is closed at the header timeout)",
        secret: false,
    },
    Setting {
        env: "HTTP_REQUEST_TIMEOUT_MS",
        long: "http-request-timeout-ms",
        default: Some("30000"),
        help: "a request not answered within this is answered 503",
        secret: false,
    },
    Setting {
        env: "HTTP_MAX_CONNECTIONS",
        long: "http-max-connections",
        default: Some("2048"),
        help: "open connections at most; past it a new one gets 503 with Retry-After and is closed",
        secret: false,
    },
    Setting {
        env: "HTTP_MAX_REQUESTS",
        long: "http-max-requests",
        default: Some("1024"),
        help: "requests in flight at most; past it a request is answered 503 with Retry-After at once",
        secret: false,
    },
    Setting {
        env: "HTTP_MAX_WAITS",
        long: "http-max-waits",
        default: Some("768"),
        help: "requests waiting for a saga to settle (Prefer: wait) and open event streams at most, below HTTP_MAX_REQUESTS (unset with a lower HTTP_MAX_REQUESTS: three quarters of it); past it a wait is answered at once with the current state, a stream 503",
        secret: false,
    },
    Setting {
        env: "HTTP_MAX_WAITS_PER_KEY",
        long: "http-max-waits-per-key",
        default: Some("64"),
        help: "waiting requests and open event streams of one API key at most; past it that key gets 429",
        secret: false,
    },
    Setting {
        env: "HTTP_MAX_SIGNALS_PER_KEY",
        long: "http-max-signals-per-key",
        default: Some("8"),
        help: "signals of one API key in flight at most; past it that key gets 429",
        secret: false,
    },
    Setting {
        env: "HTTP_MAX_STREAM_SECONDS",
        long: "http-max-stream-seconds",
        default: Some("300"),
        help: "an event stream ends after this; the client resumes with Last-Event-ID",
        secret: false,
    },
    Setting {
        env: "DEFINITIONS_DIR",
        long: "definitions-dir",
        default: None,
        help: "a directory of saga definition documents (*.json) registered at start, beside the built-in ones",
        secret: false,
    },
    Setting {
        env: "API_KEYS",
        long: "api-keys",
        default: None,
        help: "API keys, comma-separated, each name:scopes:secret (scopes client, operator, admin joined by +)",
        secret: true,
    },
    Setting {
        env: "API_KEYS_FILE",
        long: "api-keys-file",
        default: None,
        help: "a file of more keys, one per line (# comments)",
        secret: false,
    },
    Setting {
        env: "AUTH",
        long: "auth",
        default: Some("on"),
        help: "off serves without access control; serve refuses to start with on and no keys, dev without keys runs open",
        secret: false,
    },
    Setting {
        env: "METRICS_AUTH",
        long: "metrics-auth",
        default: Some("open"),
        help: "operator: /metrics needs an operator key",
        secret: false,
    },
];

#[derive(Debug, Clone)]
pub struct Config {
    pub stores: StoreEnv,
    pub kafka: KafkaEnv,
    pub http_addr: SocketAddr,
    /// The HTTP server's timeouts and caps (`HTTP_*`).
    pub http: ServerLimits,
    pub log_format: LogFormat,
    pub retention: RetentionEnv,
    pub auth: AuthConfig,
    /// `HTTP_MAX_WAITS`: requests waiting for sagas to settle and streams, at most.
    pub http_max_waits: usize,
    /// `HTTP_MAX_WAITS_PER_KEY`: the same, for one API key.
    pub http_max_waits_per_key: usize,
    /// `HTTP_MAX_SIGNALS_PER_KEY`: signals of one API key in flight.
    pub http_max_signals_per_key: usize,
    /// `HTTP_MAX_STREAM_SECONDS`: how long an event stream lasts.
    pub http_max_stream: std::time::Duration,
    /// `DEFINITIONS_DIR`: definition documents registered at start.
    pub definitions_dir: Option<std::path::PathBuf>,
}

impl Config {
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8080";

    pub fn from_env() -> Result<Self, env::Error> {
        Self::from_vars(&Vars::process())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, env::Error> {
        let default_addr: SocketAddr = Self::DEFAULT_HTTP_ADDR
            .parse()
            .map_err(|_| env::Error::new("HTTP_ADDR", Self::DEFAULT_HTTP_ADDR, "bad default"))?;
        let http = http_limits(vars)?;
        // Unset: 768, or three quarters of a lower HTTP_MAX_REQUESTS.
        let default_waits = 768.min(http.max_requests * 3 / 4);
        let http_max_waits: usize = vars.parse_or("HTTP_MAX_WAITS", default_waits)?;
        if http_max_waits >= http.max_requests {
            // Waiting requests are requests in flight: at the same bound, waiters alone
            // would leave no place for any other request.
            return Err(env::Error::new(
                "HTTP_MAX_WAITS",
                http_max_waits.to_string(),
                "must be below HTTP_MAX_REQUESTS",
            ));
        }
        let at_least_one = |name: &'static str, default: usize| -> Result<usize, env::Error> {
            let n: usize = vars.parse_or(name, default)?;
            if n == 0 {
                return Err(env::Error::new(name, "0", "must be at least 1"));
            }
            Ok(n)
        };
        Ok(Self {
            stores: StoreEnv::from_vars(vars)?,
            kafka: KafkaEnv::from_vars(vars)?,
            http_addr: vars.parse_or("HTTP_ADDR", default_addr)?,
            http_max_waits_per_key: at_least_one("HTTP_MAX_WAITS_PER_KEY", 64)?,
            http_max_signals_per_key: at_least_one("HTTP_MAX_SIGNALS_PER_KEY", 8)?,
            http_max_stream: std::time::Duration::from_secs(at_least_one(
                "HTTP_MAX_STREAM_SECONDS",
                300,
            )? as u64),
            http,
            log_format: vars.parse_or("LOG_FORMAT", LogFormat::Text)?,
            retention: RetentionEnv::from_vars(vars)?,
            auth: AuthConfig::from_vars(vars)?,
            http_max_waits,
            definitions_dir: vars
                .optional("DEFINITIONS_DIR")?
                .map(std::path::PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_environment() {
        let config = Config::from_vars(&Vars::from_pairs([])).unwrap();
        assert_eq!(config.http_addr.to_string(), Config::DEFAULT_HTTP_ADDR);
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn waits_stay_below_the_requests_in_flight() {
        let config = Config::from_vars(&Vars::from_pairs([])).unwrap();
        assert!(config.http_max_waits < config.http.max_requests);
        let few = Config::from_vars(&Vars::from_pairs([("HTTP_MAX_REQUESTS", "8")])).unwrap();
        assert_eq!(few.http_max_waits, 6);
        let err = Config::from_vars(&Vars::from_pairs([
            ("HTTP_MAX_REQUESTS", "8"),
            ("HTTP_MAX_WAITS", "8"),
        ]))
        .unwrap_err();
        assert_eq!(err.name, "HTTP_MAX_WAITS");
    }

    #[test]
    fn a_malformed_address_names_the_variable() {
        let err = Config::from_vars(&Vars::from_pairs([("HTTP_ADDR", "localhost")])).unwrap_err();
        assert_eq!(err.name, "HTTP_ADDR");
        let err = Config::from_vars(&Vars::from_pairs([("LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(err.name, "LOG_FORMAT");
    }
}
