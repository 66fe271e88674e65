//! Typed configuration from environment variables.
//!
//! Every binary builds one config struct at start-up from a [`Vars`] source. A value that is
//! present but malformed is an [`Error`] naming the variable, so a typo stops the process
//! instead of silently falling back to a default. Tests build a [`Vars`] from pairs instead of
//! mutating the process environment.

use std::collections::HashMap;
use std::str::FromStr;

/// A configuration variable that is present but unusable.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct Error {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

impl Error {
    pub fn new(name: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// Where configuration values come from: the process environment or, in tests, a map.
pub struct Vars {
    overrides: Option<HashMap<String, String>>,
}

impl Vars {
    /// The process environment.
    pub fn process() -> Self {
        Self { overrides: None }
    }

    /// Only the given pairs (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let map = pairs
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        Self {
            overrides: Some(map),
        }
    }

    /// Reads `name`; `None` when unset or blank.
    pub fn optional(&self, name: &'static str) -> Result<Option<String>, Error> {
        let raw = match &self.overrides {
            Some(map) => map.get(name).cloned(),
            None => match std::env::var(name) {
                Ok(value) => Some(value),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(raw)) => {
                    return Err(Error::new(name, raw.to_string_lossy(), "not valid UTF-8"));
                }
            },
        };
        Ok(raw
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty()))
    }

    /// Reads `name` and parses it, or returns `default` when unset.
    pub fn parse_or<T>(&self, name: &'static str, default: T) -> Result<T, Error>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.optional(name)? {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|err: T::Err| Error::new(name, raw, err.to_string())),
        }
    }

    /// Reads a URL-like variable (or takes `default`) and checks its scheme.
    pub fn url_or(
        &self,
        name: &'static str,
        default: &str,
        schemes: &[&str],
    ) -> Result<String, Error> {
        let value = self.optional(name)?.unwrap_or_else(|| default.to_owned());
        let scheme_ok = schemes
            .iter()
            .any(|scheme| value.starts_with(&format!("{scheme}://")));
        if scheme_ok {
            Ok(value)
        } else {
            let expected: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
            Err(Error::new(
                name,
                value,
                format!("expected a URL starting with {}", expected.join(" or ")),
            ))
        }
    }
}

/// Kafka settings shared by every process that talks to the broker.
#[derive(Debug, Clone)]
pub struct KafkaEnv {
    /// `KAFKA_BROKERS`: `host:port[,host:port...]`; `None` means "start an embedded cluster"
    /// where the binary allows it.
    pub brokers: Option<String>,
    /// `TOPIC_PREFIX`: every topic name starts with it, so several deployments (or tests)
    /// can share one broker.
    pub topic_prefix: String,
    /// `KAFKA_INSTANCE_ID`: when set, this process's consumers are static group members
    /// (`group.instance.id`), so a restarted process takes its old members' place at once
    /// instead of waiting for them to be evicted. It must be stable across restarts and
    /// unique among live processes.
    pub instance_id: Option<String>,
    /// `KAFKA_FETCH_WAIT_MS`: how long a consumer's fetch may wait at the broker when there
    /// is no data (`fetch.wait.max.ms`). tansu and the embedded cluster do not answer a
    /// waiting fetch early when data arrives, so this is added to every hop at low load;
    /// lower costs idle CPU (README, "Latency settings"). Unset, it is
    /// [`Self::DEFAULT_FETCH_WAIT_MS`] with `KAFKA_BROKERS`, and
    /// [`Self::DEFAULT_EMBEDDED_FETCH_WAIT_MS`] without (dev's embedded cluster).
    pub fetch_wait: std::time::Duration,
    /// `KAFKA_CONSUMER_CONCURRENCY`: batches of different keys one consumer runs at once.
    pub consumer_concurrency: usize,
}

impl KafkaEnv {
    /// Default of `KAFKA_FETCH_WAIT_MS`, measured (README, "Latency settings").
    pub const DEFAULT_FETCH_WAIT_MS: u64 = 10;
    /// Default of `KAFKA_FETCH_WAIT_MS` for the embedded cluster (`dev`): one process on a
    /// developer's machine, where a step's latency is what people see and the cluster's idle
    /// polling is cheap, measured (README, "Latency settings").
    pub const DEFAULT_EMBEDDED_FETCH_WAIT_MS: u64 = 3;
    /// Default of `KAFKA_CONSUMER_CONCURRENCY`.
    pub const DEFAULT_CONSUMER_CONCURRENCY: usize = 8;

    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        let brokers = vars.optional("KAFKA_BROKERS")?;
        if let Some(list) = &brokers {
            for broker in list.split(',') {
                let valid = broker
                    .trim()
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !valid {
                    return Err(Error::new(
                        "KAFKA_BROKERS",
                        list.clone(),
                        format!("{broker:?} is not host:port"),
                    ));
                }
            }
        }
        let topic_prefix = vars
            .optional("TOPIC_PREFIX")?
            .unwrap_or_else(|| "sagaflow".to_owned());
        crate::contract::Topics::new(&topic_prefix)
            .map_err(|reason| Error::new("TOPIC_PREFIX", topic_prefix.clone(), reason))?;
        let instance_id = vars.optional("KAFKA_INSTANCE_ID")?;
        if let Some(id) = &instance_id {
            crate::contract::Topics::new(id)
                .map_err(|reason| Error::new("KAFKA_INSTANCE_ID", id.clone(), reason))?;
        }
        let default_fetch_wait = if brokers.is_some() {
            Self::DEFAULT_FETCH_WAIT_MS
        } else {
            Self::DEFAULT_EMBEDDED_FETCH_WAIT_MS
        };
        let fetch_wait = match vars.parse_or("KAFKA_FETCH_WAIT_MS", default_fetch_wait)? {
            ms @ 1..=10_000 => std::time::Duration::from_millis(ms),
            ms => {
                return Err(Error::new(
                    "KAFKA_FETCH_WAIT_MS",
                    ms.to_string(),
                    "must be 1 to 10000",
                ));
            }
        };
        let consumer_concurrency = match vars.parse_or(
            "KAFKA_CONSUMER_CONCURRENCY",
            Self::DEFAULT_CONSUMER_CONCURRENCY,
        )? {
            n @ 1..=1024 => n,
            n => {
                return Err(Error::new(
                    "KAFKA_CONSUMER_CONCURRENCY",
                    n.to_string(),
                    "must be 1 to 1024",
                ));
            }
        };
        Ok(Self {
            brokers,
            topic_prefix,
            instance_id,
            fetch_wait,
            consumer_concurrency,
        })
    }
}

/// Connection settings for Postgres and Redis, shared by both binaries.
#[derive(Debug, Clone)]
pub struct StoreEnv {
    /// `DATABASE_URL`
    pub database_url: String,
    /// `DATABASE_POOL_SIZE`: the API's connections (a worker process: all of its own).
    pub database_pool_size: usize,
    /// `DATABASE_ENGINE_POOL_SIZE`: the orchestrator's engine loops (relay, timers, reply
    /// consumers) have their own pool, so a flood of API requests cannot starve them.
    pub database_engine_pool_size: usize,
    /// `DATABASE_POOL_WAIT_MS`: longest wait for a free connection.
    pub database_pool_wait: std::time::Duration,
    /// `DATABASE_STATEMENT_TIMEOUT_MS`: Postgres `statement_timeout` of every connection.
    pub database_statement_timeout: std::time::Duration,
    /// `REDIS_URL`
    pub redis_url: String,
}

impl StoreEnv {
    /// Pool settings for a pool of `size` connections.
    pub fn pool_options(&self, size: usize) -> crate::db::PoolOptions {
        crate::db::PoolOptions {
            max_size: size,
            wait_timeout: self.database_pool_wait,
            statement_timeout: self.database_statement_timeout,
        }
    }

    pub const DEFAULT_DATABASE_URL: &'static str = "postgres://postgres@127.0.0.1:5432/sagaflow";
    pub const DEFAULT_REDIS_URL: &'static str = "redis://127.0.0.1:6379";

    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        let size = |name: &'static str, default: usize| -> Result<usize, Error> {
            match vars.parse_or(name, default)? {
                0 => Err(Error::new(name, "0", "must be at least 1")),
                size => Ok(size),
            }
        };
        let millis = |name: &'static str, default: u64| -> Result<std::time::Duration, Error> {
            match vars.parse_or(name, default)? {
                0 => Err(Error::new(name, "0", "must be at least 1")),
                ms => Ok(std::time::Duration::from_millis(ms)),
            }
        };
        let database_pool_size = size("DATABASE_POOL_SIZE", 16)?;
        Ok(Self {
            database_engine_pool_size: size("DATABASE_ENGINE_POOL_SIZE", 16)?,
            database_pool_wait: millis("DATABASE_POOL_WAIT_MS", 2_000)?,
            database_statement_timeout: millis("DATABASE_STATEMENT_TIMEOUT_MS", 30_000)?,
            database_url: vars.url_or(
                "DATABASE_URL",
                Self::DEFAULT_DATABASE_URL,
                &["postgres", "postgresql"],
            )?,
            database_pool_size,
            redis_url: vars.url_or("REDIS_URL", Self::DEFAULT_REDIS_URL, &["redis", "rediss"])?,
        })
    }
}

/// How long old rows are kept (see `platform::retention`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionEnv {
    /// `RETENTION_INBOX_DAYS` (default 14): inbox and fence rows. Keep it longer than the
    /// broker's retention (Kafka's default is 7 days).
    pub inbox: chrono::TimeDelta,
    /// `RETENTION_HISTORY_DAYS` (default 90): the history of finished sagas, notifications.
    pub history: chrono::TimeDelta,
}

impl RetentionEnv {
    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        let days = |name: &'static str, default: i64| -> Result<chrono::TimeDelta, Error> {
            let days: i64 = vars.parse_or(name, default)?;
            if !(1..=36_500).contains(&days) {
                return Err(Error::new(
                    name,
                    days.to_string(),
                    "must be 1 to 36500 days",
                ));
            }
            Ok(chrono::TimeDelta::days(days))
        };
        Ok(Self {
            inbox: days("RETENTION_INBOX_DAYS", 14)?,
            history: days("RETENTION_HISTORY_DAYS", 90)?,
        })
    }
}

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("expected `text` or `json`, got `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_any_variable() {
        let vars = Vars::from_pairs([]);
        let stores = StoreEnv::from_vars(&vars).unwrap();
        assert_eq!(stores.database_url, StoreEnv::DEFAULT_DATABASE_URL);
        assert_eq!(stores.redis_url, StoreEnv::DEFAULT_REDIS_URL);
        let kafka = KafkaEnv::from_vars(&vars).unwrap();
        assert_eq!(kafka.brokers, None);
        assert_eq!(kafka.topic_prefix, "sagaflow");
    }

    #[test]
    fn the_fetch_wait_defaults_lower_for_the_embedded_cluster_only() {
        let wait = |pairs: &[(&str, &str)]| {
            KafkaEnv::from_vars(&Vars::from_pairs(pairs.iter().copied()))
                .unwrap()
                .fetch_wait
                .as_millis() as u64
        };
        assert_eq!(wait(&[]), KafkaEnv::DEFAULT_EMBEDDED_FETCH_WAIT_MS);
        assert_eq!(
            wait(&[("KAFKA_BROKERS", "127.0.0.1:9092")]),
            KafkaEnv::DEFAULT_FETCH_WAIT_MS
        );
        assert_eq!(wait(&[("KAFKA_FETCH_WAIT_MS", "7")]), 7);
        assert_eq!(
            wait(&[
                ("KAFKA_BROKERS", "127.0.0.1:9092"),
                ("KAFKA_FETCH_WAIT_MS", "7")
            ]),
            7
        );
    }

    #[test]
    fn malformed_values_name_their_variable() {
        let cases = [
            ("DATABASE_URL", "mysql://x"),
            ("REDIS_URL", "localhost:6379"),
            ("DATABASE_POOL_SIZE", "many"),
            ("KAFKA_BROKERS", "localhost"),
            ("TOPIC_PREFIX", "has space"),
            ("KAFKA_FETCH_WAIT_MS", "0"),
            ("KAFKA_CONSUMER_CONCURRENCY", "none"),
        ];
        for (name, value) in cases {
            let vars = Vars::from_pairs([(name, value)]);
            let err = StoreEnv::from_vars(&vars)
                .err()
                .or_else(|| KafkaEnv::from_vars(&vars).err())
                .unwrap_or_else(|| panic!("{name}={value} was accepted"));
            assert_eq!(err.name, name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn log_format_parses_known_values_only() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("yaml".parse::<LogFormat>().is_err());
    }
}
