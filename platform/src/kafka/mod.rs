//! Kafka plumbing: where the broker is, the idempotent [`Producer`], the at-least-once
//! [`consumer`] loop with its dead-letter topic, topic creation, and the [`EmbeddedKafka`]
//! used when no broker is configured.

mod admin;
pub mod consumer;
mod dead_letters;
mod embedded;
mod lag;
mod lanes;
mod producer;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;

pub use admin::ensure_topics;
pub use consumer::{ConsumerLoop, ConsumerOptions, Delivery, Fatal, GiveUp, Handler};
pub use dead_letters::{DeadLetterMessage, DeadLetterReader};
pub use embedded::EmbeddedKafka;
pub use lag::{GroupLag, LagProbe, PartitionLag};
pub use producer::{DeadLetter, Producer};

use crate::contract::Topics;
use crate::env::KafkaEnv;

/// How to reach Kafka: the bootstrap servers, the topic names, and (when embedded) the
/// in-process cluster, which lives as long as any clone of this handle.
#[derive(Clone)]
pub struct Cluster {
    brokers: String,
    topics: Topics,
    partitions: i32,
    instance_id: Option<String>,
    fetch_wait: Duration,
    consumer_concurrency: usize,
    embedded: Option<Arc<EmbeddedKafka>>,
}

impl Cluster {
    /// Partitions per topic. Replies and commands are keyed by saga id, so this bounds how
    /// many consumers of one group can share the work.
    pub const DEFAULT_PARTITIONS: i32 = 6;

    /// Connects to `KAFKA_BROKERS`, or starts an embedded cluster when it is unset and
    /// `allow_embedded` (the `dev` mode) says so.
    pub fn from_env(env: &KafkaEnv, allow_embedded: bool) -> anyhow::Result<Self> {
        let topics = Topics::new(&env.topic_prefix).map_err(anyhow::Error::msg)?;
        let cluster = match &env.brokers {
            Some(brokers) => Self::external(brokers, topics),
            None if allow_embedded => Self::embedded(EmbeddedKafka::start()?, topics),
            None => anyhow::bail!(
                "KAFKA_BROKERS is not set; it is required here (only `orchestrator dev` \
                 starts an embedded Kafka)"
            ),
        };
        Ok(cluster
            .with_instance_id(env.instance_id.clone())
            .with_consumer_settings(env.fetch_wait, env.consumer_concurrency))
    }

    /// `KAFKA_FETCH_WAIT_MS` and `KAFKA_CONSUMER_CONCURRENCY` for every consumer.
    pub fn with_consumer_settings(mut self, fetch_wait: Duration, concurrency: usize) -> Self {
        self.fetch_wait = fetch_wait;
        self.consumer_concurrency = concurrency;
        self
    }

    /// Consumer settings for `group` on `topics`, with this cluster's fetch wait and
    /// concurrency, and the static member id of slot 0 when the process has an instance id
    /// (every consumer of a restartable process needs one: a broker that does not evict a
    /// dead member would otherwise wait for it forever).
    pub fn consumer_options(
        &self,
        group: impl Into<String>,
        topics: Vec<String>,
    ) -> ConsumerOptions {
        let mut options = ConsumerOptions::new(group, topics);
        options.fetch_wait = self.fetch_wait;
        options.concurrency = self.consumer_concurrency;
        options.instance_id = self.member_id(&options.group_id, 0);
        options
    }

    pub fn with_instance_id(mut self, instance_id: Option<String>) -> Self {
        self.instance_id = instance_id;
        self
    }

    /// The static member id of consumer `slot` of `group` in this process, when the process
    /// has an instance id (see `KAFKA_INSTANCE_ID`).
    pub fn member_id(&self, group: &str, slot: usize) -> Option<String> {
        self.instance_id
            .as_ref()
            .map(|id| format!("{group}:{id}:{slot}"))
    }

    pub fn external(brokers: &str, topics: Topics) -> Self {
        Self {
            brokers: brokers.to_owned(),
            topics,
            partitions: Self::DEFAULT_PARTITIONS,
            instance_id: None,
            fetch_wait: Duration::from_millis(KafkaEnv::DEFAULT_FETCH_WAIT_MS),
            consumer_concurrency: KafkaEnv::DEFAULT_CONSUMER_CONCURRENCY,
            embedded: None,
        }
    }

    pub fn embedded(embedded: EmbeddedKafka, topics: Topics) -> Self {
        Self {
            brokers: embedded.bootstrap_servers().to_owned(),
            topics,
            partitions: Self::DEFAULT_PARTITIONS,
            instance_id: None,
            fetch_wait: Duration::from_millis(KafkaEnv::DEFAULT_FETCH_WAIT_MS),
            consumer_concurrency: KafkaEnv::DEFAULT_CONSUMER_CONCURRENCY,
            embedded: Some(Arc::new(embedded)),
        }
    }

    pub fn with_partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Creates every topic of the system (idempotent).
    pub async fn ensure_topics(&self) -> anyhow::Result<()> {
        self.create_topics(&self.topics.all()).await
    }

    /// Creates the command topics of roles that registered definitions name (a topic that
    /// exists is left as it is).
    pub async fn ensure_role_topics(&self, roles: &[String]) -> anyhow::Result<()> {
        let topics: Vec<String> = roles
            .iter()
            .map(|role| self.topics.commands(role))
            .collect();
        self.create_topics(&topics).await
    }

    async fn create_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        // A flow of waits and signals names no role: a real broker refuses an empty
        // CreateTopics request as an invalid argument.
        if topics.is_empty() {
            return Ok(());
        }
        match &self.embedded {
            Some(embedded) => {
                for topic in topics {
                    embedded.create_topic(topic, self.partitions)?;
                }
                admin::await_topics(&self.brokers, topics).await
            }
            None => ensure_topics(&self.brokers, topics, self.partitions).await,
        }
    }

    pub fn producer(&self) -> anyhow::Result<Producer> {
        Producer::connect(&self.brokers)
    }

    /// Base client settings shared by producers, consumers and admin clients.
    pub(crate) fn base_config(brokers: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("socket.keepalive.enable", "true")
            // Small requests go out at once instead of waiting for an ACK (Nagle).
            .set("socket.nagle.disable", "true")
            // Fail fast on an unreachable broker in probes; librdkafka keeps reconnecting.
            .set("socket.connection.setup.timeout.ms", "5000")
            .set("log_level", "4");
        config
    }

    /// Settings of a consumer in `group` (static when `instance_id` is given), shared by
    /// the consumer loop and the dead-letter reader. Offsets are stored by the caller, after
    /// the effect is durable (at-least-once), and auto-committed from the stored ones.
    ///
    /// A static member's session timeout is long on purpose. A restart takes its old
    /// member's place without a rebalance, provided the broker has not evicted it first.
    /// tansu 0.6.0 evicts a member whose last heartbeat is older than the session timeout,
    /// and a restarted member only heartbeats again once its join and sync are done (3 s
    /// each there, more while another rebalance runs): with 10 s, a member restarted within
    /// a second or two was evicted while rejoining, and tansu then kept the evicted id as
    /// the group's leader, so the group never formed again (the chaos run's stall). The
    /// price, on any broker: the partitions of a static member that is killed and never
    /// comes back wait this long before they move. A dynamic member (no instance id, as in
    /// the compose file on Apache Kafka) keeps a short session, so a dead one's partitions
    /// move within seconds.
    pub(crate) fn group_config(
        brokers: &str,
        group: &str,
        instance_id: Option<&str>,
    ) -> ClientConfig {
        let mut config = Self::base_config(brokers);
        let (session, rebalance) = match instance_id {
            Some(instance_id) => {
                config.set("group.instance.id", instance_id);
                (STATIC_SESSION_TIMEOUT_MS, STATIC_SESSION_TIMEOUT_MS)
            }
            None => ("10000", "30000"),
        };
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            // A new group must see what was produced before it joined.
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session)
            .set("heartbeat.interval.ms", "1000")
            // Also the rebalance timeout: how long a rebalance waits for members that
            // vanished without leaving. librdkafka wants it no shorter than the session.
            .set("max.poll.interval.ms", rebalance);
        config
    }
}

/// See [`Cluster::group_config`].
const STATIC_SESSION_TIMEOUT_MS: &str = "45000";

/// The longest a member that died for good can keep its partitions: the static session
/// timeout (45 s) plus a rebalance (15 s). Commands and replies on those partitions wait
/// that long before another member reads them, so every step deadline must be longer,
/// or a lost process would compensate sagas whose steps did nothing wrong. The
/// orchestrator checks its definitions against this at start.
pub const LOST_MEMBER_COST: Duration = Duration::from_secs(60);

/// How long readiness and admin calls wait for the broker.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_consumer_of_a_process_with_an_instance_id_is_a_static_member_with_a_long_session() {
        let cluster = Cluster::external("127.0.0.1:9", Topics::new("t").unwrap())
            .with_instance_id(Some("worker-1".into()));
        // The notification worker's consumer once had no instance id: a killed one was
        // never replaced, and its group stalled on tansu.
        let options = cluster.consumer_options("t.notification", vec!["t.events".into()]);
        let member = options.instance_id.as_deref();
        assert_eq!(member, Some("t.notification:worker-1:0"));
        let config = Cluster::group_config("127.0.0.1:9", "t.notification", member);
        assert_eq!(config.get("group.instance.id"), member);
        assert_eq!(config.get("session.timeout.ms"), Some("45000"));

        let dynamic = Cluster::group_config("127.0.0.1:9", "t.notification", None);
        assert_eq!(dynamic.get("group.instance.id"), None);
        assert_eq!(dynamic.get("session.timeout.ms"), Some("10000"));
    }
}
