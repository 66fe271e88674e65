//! The idempotent producer and the dead-letter sender built on it.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde::Serialize;

use super::{BROKER_TIMEOUT, Cluster};

/// A cheap-to-clone idempotent producer. `send` resolves only once the broker acknowledged
/// the write (acks=all), which is what lets callers mark an outbox row published.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl Producer {
    pub fn connect(brokers: &str) -> anyhow::Result<Self> {
        let inner = Cluster::base_config(brokers)
            // Idempotence implies acks=all and retries without duplicates or reordering
            // within a partition.
            .set("enable.idempotence", "true")
            // Send at once: under load batches still form from what queues up while
            // earlier requests are in flight (README, "Latency settings").
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self { inner })
    }

    /// Publishes one message and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(i32, i64)> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(owned);
        match self.inner.send(record, Duration::from_secs(10)).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((err, _message)) => {
                Err(anyhow::Error::new(err).context(format!("publishing to topic {topic} failed")))
            }
        }
    }

    /// Publishes `value` as JSON.
    pub async fn send_json<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
    ) -> anyhow::Result<(i32, i64)> {
        self.send_traced(topic, key, value, None).await
    }

    /// Publishes `value` as JSON with its trace context in the `traceparent` header.
    pub async fn send_traced<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
        traceparent: Option<&str>,
    ) -> anyhow::Result<(i32, i64)> {
        let payload = serde_json::to_vec(value)?;
        match traceparent {
            Some(traceparent) => {
                let headers = [(crate::telemetry::TRACEPARENT, traceparent)];
                self.send(topic, key, &payload, &headers).await
            }
            None => self.send(topic, key, &payload, &[]).await,
        }
    }

    /// Asks the broker for cluster metadata: the readiness probe for Kafka.
    pub async fn probe(&self) -> anyhow::Result<()> {
        let producer = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, BROKER_TIMEOUT)
                .map(|_| ())
        })
        .await??;
        Ok(())
    }

    /// Waits for queued messages (used at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(err) = self.inner.flush(timeout) {
            tracing::warn!(error = %err, "producer flush did not complete");
        }
    }
}

/// Sends messages that cannot be processed to the dead-letter topic, with the reason and
/// their origin in headers, so the consumer can move on without losing them.
#[derive(Clone)]
pub struct DeadLetter {
    producer: Producer,
    topic: String,
}

/// Where a dead-lettered message came from.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub group: &'a str,
}

impl DeadLetter {
    pub fn new(producer: Producer, topic: String) -> Self {
        Self { producer, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub async fn send(
        &self,
        origin: &Origin<'_>,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
    ) -> anyhow::Result<()> {
        let key = key.map(String::from_utf8_lossy).unwrap_or_default();
        let partition = origin.partition.to_string();
        let offset = origin.offset.to_string();
        let headers = [
            ("x-original-topic", origin.topic),
            ("x-original-partition", partition.as_str()),
            ("x-original-offset", offset.as_str()),
            ("x-consumer-group", origin.group),
            ("x-error", reason),
        ];
        self.producer
            .send(&self.topic, &key, payload, &headers)
            .await?;
        Ok(())
    }
}
