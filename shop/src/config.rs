//! The `worker` binary's configuration.
//!
//! Variables: `DATABASE_URL`, `DATABASE_POOL_SIZE`, `REDIS_URL`, `KAFKA_BROKERS` (required:
//! a worker process joins a real broker), `TOPIC_PREFIX`, `LOG_FORMAT`, `RUST_LOG`; the same
//! meaning and defaults as for the orchestrator (see README.md). Plus
//! `CONCURRENCY_STRATEGY` (`redis-lock`, default, `postgres` or `lua-gate`) and `LOCK_WAIT_MS` /
//! `LOCK_LEASE_MS` (default 5000 / 10000), and the retention windows `RETENTION_INBOX_DAYS` /
//! `RETENTION_HISTORY_DAYS` (default 14 / 90).

use std::time::Duration;

use platform::env::{self, KafkaEnv, LogFormat, RetentionEnv, StoreEnv, Vars};
use platform::settings::{self, Setting};

use crate::participant::Strategy;
use crate::runtime::RuntimeOptions;

/// The participants' settings (also read by `orchestrator dev`, which runs them).
pub const PARTICIPANTS: &[Setting] = &[
    Setting {
        env: "CONCURRENCY_STRATEGY",
        long: "concurrency-strategy",
        default: Some("redis-lock"),
        help: "how participants keep concurrent changes apart: redis-lock, postgres or lua-gate",
        secret: false,
    },
    Setting {
        env: "LOCK_WAIT_MS",
        long: "lock-wait-ms",
        default: Some("5000"),
        help: "how long a participant waits for a resource's lock before retrying the command",
        secret: false,
    },
    Setting {
        env: "LOCK_LEASE_MS",
        long: "lock-lease-ms",
        default: Some("10000"),
        help: "lock lease; a watchdog extends it while the holder works",
        secret: false,
    },
];

/// Settings of the `worker` process alone.
pub const WORKER: &[Setting] = &[Setting {
    env: "METRICS_ADDR",
    long: "metrics-addr",
    default: None,
    help: "where a worker serves GET /metrics for Prometheus (e.g. 0.0.0.0:9100); unset, none is served",
    secret: false,
}];

platform::settings_args!(
    Settings,
    [
        settings::STORES,
        settings::KAFKA,
        settings::RETENTION,
        settings::LOGS,
        PARTICIPANTS,
        WORKER
    ]
);

#[derive(Debug, Clone)]
pub struct Config {
    pub stores: StoreEnv,
    pub kafka: KafkaEnv,
    pub log_format: LogFormat,
    pub runtime: RuntimeOptions,
    pub retention: RetentionEnv,
    /// Where `GET /metrics` is served (`METRICS_ADDR`), if anywhere.
    pub metrics_addr: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, env::Error> {
        Self::from_vars(&Vars::process())
    }

    pub fn from_vars(vars: &Vars) -> Result<Self, env::Error> {
        Ok(Self {
            stores: StoreEnv::from_vars(vars)?,
            kafka: KafkaEnv::from_vars(vars)?,
            log_format: vars.parse_or("LOG_FORMAT", LogFormat::Text)?,
            runtime: runtime_options(vars)?,
            retention: RetentionEnv::from_vars(vars)?,
            metrics_addr: vars.optional("METRICS_ADDR")?,
        })
    }
}

/// The participants' runtime settings; shared with `orchestrator dev`, which runs them too.
pub fn runtime_options(vars: &Vars) -> Result<RuntimeOptions, env::Error> {
    let strategy = vars.parse_or("CONCURRENCY_STRATEGY", Strategy::RedisLock)?;
    if strategy == Strategy::Unprotected {
        return Err(env::Error::new(
            "CONCURRENCY_STRATEGY",
            "unprotected",
            "loses updates by design; it exists for tests only",
        ));
    }
    let defaults = RuntimeOptions::default();
    let millis = |name, default: Duration| -> Result<Duration, env::Error> {
        let ms = vars.parse_or(name, u64::try_from(default.as_millis()).unwrap_or(u64::MAX))?;
        Ok(Duration::from_millis(ms))
    };
    Ok(RuntimeOptions {
        strategy,
        lock_wait: millis("LOCK_WAIT_MS", defaults.lock_wait)?,
        lock_lease: millis("LOCK_LEASE_MS", defaults.lock_lease)?,
        think_time: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unprotected_strategy_cannot_be_configured() {
        let vars = Vars::from_pairs([("CONCURRENCY_STRATEGY", "unprotected")]);
        assert_eq!(
            runtime_options(&vars).unwrap_err().name,
            "CONCURRENCY_STRATEGY"
        );
        let vars = Vars::from_pairs([("CONCURRENCY_STRATEGY", "postgres")]);
        assert_eq!(runtime_options(&vars).unwrap().strategy, Strategy::Postgres);
    }
}
