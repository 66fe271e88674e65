//! Topic creation: idempotent, and complete only once the broker lists every partition.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::types::RDKafkaErrorCode;

use super::{BROKER_TIMEOUT, Cluster};

fn admin_client(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(Cluster::base_config(brokers).create()?)
}

/// Creates the topics that do not exist yet, then waits until the broker's metadata lists
/// them all with a leader, so a consumer that subscribes right after gets its partitions.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[String],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin = admin_client(brokers)?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .context("creating topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic} failed: {code}"),
        }
    }
    await_topics(brokers, topics).await
}

/// Waits until the broker's metadata lists every topic with a leader for each partition.
pub(super) async fn await_topics(brokers: &str, topics: &[String]) -> anyhow::Result<()> {
    let brokers = brokers.to_owned();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || wait_for_metadata(&brokers, &topics)).await?
}

/// The topics the broker does not list yet with a leader for every partition.
fn missing_topics(brokers: &str, topics: &[String]) -> anyhow::Result<Vec<String>> {
    let client: BaseConsumer = Cluster::base_config(brokers).create()?;
    let metadata = client.fetch_metadata(None, BROKER_TIMEOUT)?;
    Ok(topics
        .iter()
        .filter(|name| {
            !metadata.topics().iter().any(|topic| {
                topic.name() == name.as_str()
                    && topic.error().is_none()
                    && !topic.partitions().is_empty()
                    && topic.partitions().iter().all(|p| p.leader() >= 0)
            })
        })
        .cloned()
        .collect())
}

fn wait_for_metadata(brokers: &str, topics: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = missing_topics(brokers, topics)?;
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("topics not visible in broker metadata after 30 s: {missing:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
