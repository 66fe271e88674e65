//! The at-least-once consumer loop.
//!
//! Messages are read in order, decoded, and handed to a [`Handler`] in small batches. An
//! offset is stored only after the handler returned `Ok` for its batch (its effect is
//! durable), and offsets are stored strictly in order, so a crash at any point redelivers
//! rather than skips. A message that cannot be decoded goes to the dead-letter topic (whose
//! acknowledgement is awaited before its offset is stored) and the loop moves on.
//!
//! A handler error is never swallowed, and never wedges the loop either. A failed batch is
//! handled again one message at a time, so its healthy messages go through; a message that
//! keeps failing gets `message_attempts` tries with backoff, then the handler's
//! [`Handler::give_up`] settles it (a command gets a `Failed` reply) or it goes to the
//! dead-letter topic. Only when even that fails (the handler's database is down, say) is
//! the message tried again from the start, since then nothing behind it could succeed.
//!
//! Auto-commit periodically commits the *stored* offsets; shutdown commits them
//! synchronously one last time.

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::producer::{DeadLetter, Origin};

/// One decoded message with its position.
#[derive(Debug, Clone)]
pub struct Delivery<T> {
    pub message: T,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
}

/// Applies the effect of a batch of messages. `Ok` means the effect is durable; an error
/// makes the loop handle the messages again, so implementations must be idempotent (inbox).
pub trait Handler<T>: Send + Sync + 'static {
    fn handle(&self, batch: &[Delivery<T>]) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Settles a message that failed its whole retry budget on its own. The default sends
    /// it to the dead-letter topic. An error means the failure could not even be recorded:
    /// the loop pauses and tries the message again from the start.
    fn give_up(
        &self,
        _delivery: &Delivery<T>,
        _error: &anyhow::Error,
    ) -> impl Future<Output = anyhow::Result<GiveUp>> + Send {
        async { Ok(GiveUp::DeadLetter) }
    }
}

/// What became of a message that failed every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The handler recorded the outcome itself (a command answered with `Failed`).
    Settled,
    /// The loop sends the message to the dead-letter topic.
    DeadLetter,
}

#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// One consumer group per role: replicas with the same group share the partitions.
    pub group_id: String,
    pub topics: Vec<String>,
    /// Most messages handed to the handler at once.
    pub max_batch: usize,
    /// How long to wait for more messages once one arrived, to fill a batch.
    pub linger: Duration,
    /// First and largest pause between retries of a failing message.
    pub retry_backoff: (Duration, Duration),
    /// Tries one message gets on its own before it is given up on (`Handler::give_up`).
    pub message_attempts: u32,
    /// Static membership (`group.instance.id`), see `Cluster::member_id`.
    pub instance_id: Option<String>,
}

impl ConsumerOptions {
    pub fn new(group_id: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            group_id: group_id.into(),
            topics,
            max_batch: 64,
            linger: Duration::from_millis(5),
            retry_backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            message_attempts: 5,
            instance_id: None,
        }
    }
}

/// A message as read from the topic, before decoding.
struct Raw {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

pub struct ConsumerLoop<T, H> {
    consumer: StreamConsumer,
    handler: H,
    dead_letter: DeadLetter,
    options: ConsumerOptions,
    _message: PhantomData<fn() -> T>,
}

/// Why processing stopped before a batch was done.
struct Interrupted;

impl<T, H> ConsumerLoop<T, H>
where
    T: DeserializeOwned + Send + Sync + 'static,
    H: Handler<T>,
{
    pub fn new(
        brokers: &str,
        options: ConsumerOptions,
        handler: H,
        dead_letter: DeadLetter,
    ) -> anyhow::Result<Self> {
        let mut config = Cluster::base_config(brokers);
        if let Some(instance_id) = &options.instance_id {
            config.set("group.instance.id", instance_id);
        }
        let consumer: StreamConsumer = config
            .set("group.id", &options.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            // Offsets are stored by us, after the effect is durable (at-least-once).
            .set("enable.auto.offset.store", "false")
            // A new group must see what was produced before it joined.
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Also the rebalance timeout: how long a rebalance waits for members that
            // vanished without leaving (a killed process). The default, 5 minutes, stalls
            // every partition of the group that long after a kill -9.
            .set("max.poll.interval.ms", "30000")
            .create()?;
        let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer,
            handler,
            dead_letter,
            options,
            _message: PhantomData,
        })
    }

    /// Runs until `shutdown` is cancelled; the batch in flight is finished and its offsets
    /// committed before returning.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(group = %self.options.group_id, topics = ?self.options.topics, "consumer started");
        while let Some(batch) = self.next_batch(&shutdown).await {
            if self.process(batch, &shutdown).await.is_err() {
                break;
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => tracing::warn!(error = %err, "final offset commit failed"),
        }
        tracing::info!(group = %self.options.group_id, "consumer stopped");
        Ok(())
    }

    /// Waits for one message, then takes whatever else arrives within `linger`.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Option<Vec<Raw>> {
        let mut batch = Vec::new();
        while batch.is_empty() {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return None,
                received = self.consumer.recv() => received,
            };
            match received {
                Ok(message) => batch.push(raw(&message)),
                Err(err) => self.log_receive_error(err).await,
            }
        }
        while batch.len() < self.options.max_batch {
            match tokio::time::timeout(self.options.linger, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(raw(&message)),
                Ok(Err(err)) => {
                    self.log_receive_error(err).await;
                    break;
                }
                Err(_elapsed) => break,
            }
        }
        Some(batch)
    }

    async fn log_receive_error(&self, err: KafkaError) {
        tracing::warn!(group = %self.options.group_id, error = %err, "receive failed; retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Decodes the batch; runs of decodable messages go to the handler, undecodable ones to
    /// the dead-letter topic, in offset order.
    async fn process(
        &self,
        batch: Vec<Raw>,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let mut pending: Vec<Delivery<T>> = Vec::with_capacity(batch.len());
        let mut raws: Vec<Raw> = Vec::with_capacity(batch.len());
        for raw in batch {
            match decode::<T>(&raw) {
                Ok(message) => {
                    pending.push(Delivery {
                        message,
                        topic: raw.topic.clone(),
                        partition: raw.partition,
                        offset: raw.offset,
                        key: raw.key.clone(),
                    });
                    raws.push(raw);
                }
                Err(reason) => {
                    self.handle_batch(&pending, &raws, shutdown).await?;
                    pending.clear();
                    raws.clear();
                    self.dead_letter(&raw, &reason, shutdown).await?;
                }
            }
        }
        self.handle_batch(&pending, &raws, shutdown).await
    }

    /// The batch at once; when that fails, each message on its own, so that one bad message
    /// costs only its own retries.
    async fn handle_batch(
        &self,
        batch: &[Delivery<T>],
        raws: &[Raw],
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        if batch.is_empty() {
            return Ok(());
        }
        match self.handler.handle(batch).await {
            Ok(()) => {
                for delivery in batch {
                    self.store(&delivery.topic, delivery.partition, delivery.offset);
                }
                return Ok(());
            }
            Err(err) if batch.len() > 1 => tracing::warn!(
                group = %self.options.group_id,
                topic = %batch[0].topic,
                partition = batch[0].partition,
                offset = batch[0].offset,
                batch = batch.len(),
                error = format!("{err:#}"),
                "batch failed; handling its messages one at a time",
            ),
            Err(_) => {}
        }
        for (delivery, raw) in batch.iter().zip(raws) {
            self.handle_alone(delivery, raw, shutdown).await?;
        }
        Ok(())
    }

    async fn handle_alone(
        &self,
        delivery: &Delivery<T>,
        raw: &Raw,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let attempts = self.options.message_attempts.max(1);
        let mut round = 0u32;
        loop {
            let mut failure = None;
            for attempt in 1..=attempts {
                match self.handler.handle(std::slice::from_ref(delivery)).await {
                    Ok(()) => {
                        self.store(&delivery.topic, delivery.partition, delivery.offset);
                        return Ok(());
                    }
                    Err(err) => {
                        tracing::error!(
                            group = %self.options.group_id,
                            topic = %delivery.topic,
                            partition = delivery.partition,
                            offset = delivery.offset,
                            attempt,
                            attempts,
                            error = format!("{err:#}"),
                            "message failed",
                        );
                        failure = Some(err);
                        if attempt < attempts {
                            self.pause(attempt, shutdown).await?;
                        }
                    }
                }
            }
            let err = failure.unwrap_or_else(|| anyhow::anyhow!("no attempt made"));
            match self.handler.give_up(delivery, &err).await {
                Ok(GiveUp::Settled) => {
                    tracing::warn!(
                        group = %self.options.group_id,
                        topic = %delivery.topic,
                        partition = delivery.partition,
                        offset = delivery.offset,
                        "message given up on after {attempts} attempts; settled by its handler",
                    );
                    self.store(&delivery.topic, delivery.partition, delivery.offset);
                    return Ok(());
                }
                Ok(GiveUp::DeadLetter) => {
                    let reason = format!("failed {attempts} attempts: {err:#}");
                    return self.dead_letter(raw, &reason, shutdown).await;
                }
                Err(give_up) => {
                    round += 1;
                    tracing::error!(
                        group = %self.options.group_id,
                        error = format!("{give_up:#}"),
                        round,
                        "could not settle a failed message; trying it again",
                    );
                    self.pause(round, shutdown).await?;
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        raw: &Raw,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let origin = Origin {
            topic: &raw.topic,
            partition: raw.partition,
            offset: raw.offset,
            group: &self.options.group_id,
        };
        let payload = raw.payload.as_deref().unwrap_or_default();
        let mut attempt = 0u32;
        while let Err(err) = self
            .dead_letter
            .send(&origin, raw.key.as_deref(), payload, reason)
            .await
        {
            attempt += 1;
            tracing::error!(
                error = format!("{err:#}"),
                attempt,
                "dead-letter publish failed; retrying"
            );
            self.pause(attempt, shutdown).await?;
        }
        tracing::warn!(
            topic = %raw.topic,
            partition = raw.partition,
            offset = raw.offset,
            dead_letter = %self.dead_letter.topic(),
            reason,
            "message sent to the dead-letter topic",
        );
        self.store(&raw.topic, raw.partition, raw.offset);
        Ok(())
    }

    fn store(&self, topic: &str, partition: i32, offset: i64) {
        // Fails only when the partition was revoked meanwhile: its new owner re-reads the
        // message, which the inbox makes harmless.
        if let Err(err) = self.consumer.store_offset(topic, partition, offset) {
            tracing::warn!(topic, partition, offset, error = %err, "could not store offset");
        }
    }

    async fn pause(&self, attempt: u32, shutdown: &CancellationToken) -> Result<(), Interrupted> {
        let (first, max) = self.options.retry_backoff;
        let delay = first
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(max);
        tokio::select! {
            _ = shutdown.cancelled() => Err(Interrupted),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

fn raw(message: &rdkafka::message::BorrowedMessage<'_>) -> Raw {
    Raw {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
    }
}

fn decode<T: DeserializeOwned>(raw: &Raw) -> Result<T, String> {
    let payload = raw.payload.as_deref().ok_or("message has no payload")?;
    serde_json::from_slice(payload).map_err(|err| format!("undecodable JSON: {err}"))
}
