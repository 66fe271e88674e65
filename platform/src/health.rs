//! Dependency probes behind `/readyz`: Postgres, Redis and Kafka, checked concurrently,
//! each with a time limit, so one hung dependency cannot hang the probe.

use std::time::Duration;

use crate::kafka::Producer;
use crate::{cache, db};

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Probes {
    pub database: db::Pool,
    pub redis: cache::Pool,
    pub kafka: Producer,
}

/// The state of one dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    /// `None` when reachable, else what went wrong.
    pub error: Option<String>,
}

impl Probes {
    pub async fn check(&self) -> Vec<Check> {
        let (database, redis, kafka) = tokio::join!(
            probe("postgres", db::ping(&self.database)),
            probe("redis", cache::ping(&self.redis)),
            probe("kafka", self.kafka.probe()),
        );
        vec![database, redis, kafka]
    }
}

async fn probe(name: &'static str, check: impl Future<Output = anyhow::Result<()>>) -> Check {
    let error = match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(format!("{err:#}")),
        Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    Check { name, error }
}
