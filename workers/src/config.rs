//! The `worker` binary's configuration.
//!
//! Variables: `DATABASE_URL`, `DATABASE_POOL_SIZE`, `REDIS_URL`, `KAFKA_BROKERS` (required:
//! a worker process joins a real broker), `TOPIC_PREFIX`, `LOG_FORMAT`, `RUST_LOG`; the same
//! meaning and defaults as for the orchestrator (see README.md).

use platform::env::{self, KafkaEnv, LogFormat, StoreEnv, Vars};

#[derive(Debug, Clone)]
pub struct Config {
    pub stores: StoreEnv,
    pub kafka: KafkaEnv,
    pub log_format: LogFormat,
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
        })
    }
}
