//! Reading the dead-letter topic. Its messages are whatever could not be handled, so they
//! are not decoded: each arrives as bytes with the headers the consumer loop wrote
//! (`x-original-topic`, `x-original-partition`, `x-original-offset`, `x-consumer-group`,
//! `x-error`). One message at a time: the topic is quiet, and its offset is stored only
//! after the message was recorded (at-least-once; the recorder is idempotent).

use std::future::Future;
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use tokio_util::sync::CancellationToken;

use super::Cluster;

/// One dead letter as read from the topic.
#[derive(Debug, Clone)]
pub struct DeadLetterMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub origin_topic: Option<String>,
    pub origin_partition: Option<i32>,
    pub origin_offset: Option<i64>,
    pub consumer_group: Option<String>,
    pub error: String,
}

pub struct DeadLetterReader {
    consumer: StreamConsumer,
    group: String,
}

impl DeadLetterReader {
    pub fn new(
        cluster: &Cluster,
        group: String,
        instance_id: Option<String>,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer =
            Cluster::group_config(cluster.brokers(), &group, instance_id.as_deref()).create()?;
        consumer.subscribe(&[cluster.topics().dead_letter().as_str()])?;
        Ok(Self { consumer, group })
    }

    /// Hands each dead letter to `record` until it succeeds (backing off between tries),
    /// then stores its offset; stops when `shutdown` is cancelled.
    pub async fn run<F, Fut>(self, shutdown: CancellationToken, mut record: F)
    where
        F: FnMut(DeadLetterMessage) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        tracing::info!(group = %self.group, "dead-letter reader started");
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.consumer.recv() => received,
            };
            let message = match received {
                Ok(message) => message,
                Err(err) => {
                    tracing::warn!(error = %err, "dead-letter receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let letter = read(&message);
            let (topic, partition, offset) = (
                message.topic().to_owned(),
                message.partition(),
                message.offset(),
            );
            drop(message);
            let mut backoff = Duration::from_millis(100);
            loop {
                match record(letter.clone()).await {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(
                            error = format!("{err:#}"),
                            partition,
                            offset,
                            "recording a dead letter failed; retrying"
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            if let Err(err) = self.consumer.store_offset(&topic, partition, offset) {
                tracing::warn!(error = %err, "could not store the dead-letter offset");
            }
        }
        if let Err(err) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %err, "final dead-letter commit");
        }
    }
}

fn read(message: &rdkafka::message::BorrowedMessage<'_>) -> DeadLetterMessage {
    let header = |name: &str| super::consumer::header(message, name);
    DeadLetterMessage {
        partition: message.partition(),
        offset: message.offset(),
        key: message
            .key()
            .map(|key| String::from_utf8_lossy(key).into_owned()),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        origin_topic: header("x-original-topic"),
        origin_partition: header("x-original-partition").and_then(|v| v.parse().ok()),
        origin_offset: header("x-original-offset").and_then(|v| v.parse().ok()),
        consumer_group: header("x-consumer-group"),
        error: header("x-error").unwrap_or_else(|| "(no reason given)".to_owned()),
    }
}
