//! The at-least-once consumer loop, key-ordered and parallel.
//!
//! Messages are read continuously and handed to a [`Handler`] in batches. Messages with
//! different keys (saga ids) run in concurrent batches, up to `concurrency`; messages with
//! one key run strictly in order, never in two batches at once (see `lanes`). Batches form
//! by themselves: whatever arrived while every slot was busy goes out together, so an idle
//! loop adds no wait and a busy one amortises its round trips.
//!
//! A partition's offset is stored only over its contiguous prefix of finished messages (the
//! handler returned `Ok`, so the effect is durable), so a crash at any point redelivers
//! rather than skips, whatever finished out of order. A message that cannot be decoded goes
//! to the dead-letter topic (whose acknowledgement is awaited before it counts as finished).
//!
//! A handler error is never swallowed, and never wedges the loop either. A failed batch is
//! handled again one message at a time, so its healthy messages go through; a message that
//! keeps failing gets `message_attempts` tries with backoff, then the handler's
//! [`Handler::give_up`] settles it (a command gets a `Failed` reply) or it goes to the
//! dead-letter topic. Only when even that fails (the handler's database is down, say) is
//! the message tried again from the start; other keys keep moving meanwhile.
//!
//! An infrastructure fault ([`crate::fault::is_fault`]: Redis or Postgres unreachable, a
//! lock not had in time, a deadlock) is not a failure of the message: it spends no
//! attempt. The message waits, with backoff, until the dependency answers, and so does
//! its key (its lane holds the key's later messages back), however long the outage; an
//! outage never turns into a `Failed` reply or a dead letter.
//!
//! On a rebalance, work in flight on a revoked partition finishes but stores nothing, and
//! what waited of it is dropped: its new owner reads it again from the committed offset.
//! Auto-commit periodically commits the *stored* offsets; shutdown lets the batches in
//! flight finish and commits synchronously one last time.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use rdkafka::Message as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers as _;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::lanes::{Lane, Lanes, Position};
use super::producer::{DeadLetter, Origin};

/// An error the Kafka client cannot recover from (librdkafka's fatal errors): the process
/// should stop, saying why, rather than retry for ever (see `liveness::Loops`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// One decoded message with its position.
#[derive(Debug, Clone)]
pub struct Delivery<T> {
    pub message: T,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The W3C trace context of the message's header, if it had one (see `telemetry`).
    pub traceparent: Option<String>,
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
    /// Batches in flight at once (each with keys no other batch in flight has).
    pub concurrency: usize,
    /// `fetch.wait.max.ms`: how long the broker may hold a fetch that found no data. Brokers
    /// that do not answer a waiting fetch early (tansu, the embedded cluster) add up to this
    /// much to every hop; see `KAFKA_FETCH_WAIT_MS`.
    pub fetch_wait: Duration,
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
            concurrency: crate::env::KafkaEnv::DEFAULT_CONSUMER_CONCURRENCY,
            fetch_wait: Duration::from_millis(crate::env::KafkaEnv::DEFAULT_FETCH_WAIT_MS),
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
    traceparent: Option<String>,
}

/// A received message: decoded, or not decodable (it goes to the dead-letter topic).
enum Entry<T> {
    Decoded(Delivery<T>, Raw),
    Undecodable(Raw, String),
}

/// Tells the loop which partitions a rebalance took away.
#[derive(Default)]
pub struct RebalanceContext {
    revoked: Mutex<Vec<(String, i32)>>,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let mut revoked = self.revoked.lock().expect("revoked partitions");
            for element in partitions.elements() {
                revoked.push((element.topic().to_owned(), element.partition()));
            }
        }
    }
}

pub struct ConsumerLoop<T, H> {
    consumer: StreamConsumer<RebalanceContext>,
    work: Arc<Work<T, H>>,
}

/// What a batch needs to run on its own task.
struct Work<T, H> {
    handler: H,
    dead_letter: DeadLetter,
    options: ConsumerOptions,
    _message: PhantomData<fn() -> T>,
}

/// Why processing stopped before a batch was done.
struct Interrupted;

/// A batch's end: what finished, and the lanes it held.
type Finished = (Vec<Position>, Vec<Lane>);

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
        let consumer: StreamConsumer<RebalanceContext> =
            Cluster::group_config(brokers, &options.group_id, options.instance_id.as_deref())
                .set(
                    "fetch.wait.max.ms",
                    options.fetch_wait.as_millis().max(1).to_string(),
                )
                .create_with_context(RebalanceContext::default())?;
        let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer,
            work: Arc::new(Work {
                handler,
                dead_letter,
                options,
                _message: PhantomData,
            }),
        })
    }

    /// Runs until `shutdown` is cancelled; the batches in flight are finished and their
    /// offsets committed before returning.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let options = &self.work.options;
        tracing::info!(group = %options.group_id, topics = ?options.topics, concurrency = options.concurrency, "consumer started");
        let concurrency = options.concurrency.max(1);
        let max_batch = options.max_batch.max(1);
        // Read ahead at most this much, so a slow handler holds back the fetch.
        let read_ahead = concurrency * max_batch * 2;
        let mut lanes: Lanes<Entry<T>> = Lanes::default();
        let mut running: JoinSet<Finished> = JoinSet::new();
        let mut failure = None;
        'receiving: loop {
            while running.len() < concurrency {
                let Some(batch) = lanes.next_batch(max_batch) else {
                    break;
                };
                let work = self.work.clone();
                let shutdown = shutdown.clone();
                running.spawn(async move { work.run_batch(batch.items, &shutdown).await });
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                joined = running.join_next(), if !running.is_empty() => match joined {
                    Some(Ok((done, used))) => self.finish(&mut lanes, &done, used),
                    Some(Err(err)) => {
                        failure = Some(anyhow::anyhow!("a batch task failed: {err}"));
                        break;
                    }
                    None => {}
                },
                received = self.consumer.recv(), if lanes.waiting() < read_ahead => {
                    let mut received = Some(received);
                    while let Some(result) = received.take() {
                        match result {
                            Ok(message) => {
                                let raw = raw(&message);
                                drop(message);
                                self.revoke(&mut lanes);
                                let (topic, partition, offset) = (raw.topic.clone(), raw.partition, raw.offset);
                                let key = raw.key.clone();
                                lanes.push(&topic, partition, offset, key.as_deref(), entry(raw));
                                // What librdkafka holds already (the rest of a fetch) joins
                                // at once, so that a fetch's messages form batches together
                                // instead of a batch each while tasks are free.
                                if lanes.waiting() < read_ahead {
                                    received = self.consumer.recv().now_or_never();
                                }
                            }
                            Err(err) => match self.fatal(&err) {
                                // librdkafka will not recover from it: end the loop, say why.
                                Some(fatal) => {
                                    failure = Some(fatal);
                                    break 'receiving;
                                }
                                None => self.log_receive_error(err).await,
                            },
                        }
                    }
                }
            }
            self.revoke(&mut lanes);
        }
        // Let what is in flight finish (a handler pausing between retries stops at once).
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok((done, used)) => self.finish(&mut lanes, &done, used),
                Err(err) => {
                    failure.get_or_insert(anyhow::anyhow!("a batch task failed: {err}"));
                }
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => tracing::warn!(error = %err, "final offset commit failed"),
        }
        tracing::info!(group = %self.work.options.group_id, "consumer stopped");
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Partitions a rebalance took away since the last look.
    fn revoke(&self, lanes: &mut Lanes<Entry<T>>) {
        let revoked = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .expect("revoked partitions"),
        );
        if !revoked.is_empty() {
            tracing::info!(partitions = ?revoked, "partitions revoked; their waiting messages dropped");
            lanes.revoke(&revoked);
        }
    }

    fn finish(&self, lanes: &mut Lanes<Entry<T>>, done: &[Position], used: Vec<Lane>) {
        for (topic, partition, offset) in lanes.finish(done, used) {
            // Fails only when the partition was revoked meanwhile: its new owner re-reads
            // the message, which the inbox makes harmless.
            if let Err(err) = self.consumer.store_offset(&topic, partition, offset) {
                tracing::warn!(topic, partition, offset, error = %err, "could not store offset");
            }
        }
    }

    /// A fatal error of the client (librdkafka raises one, e.g., when another process
    /// joined the group under this member's static instance id): the reason, naming the
    /// setting to look at where there is one.
    fn fatal(&self, err: &KafkaError) -> Option<anyhow::Error> {
        let (code, reason) = match self.consumer.client().fatal_error() {
            Some(fatal) => fatal,
            None if matches!(err, KafkaError::MessageConsumptionFatal(_)) => {
                (err.rdkafka_error_code()?, err.to_string())
            }
            None => return None,
        };
        let options = &self.work.options;
        let hint = match (code, &options.instance_id) {
            (RDKafkaErrorCode::FencedInstanceId, Some(id)) => format!(
                ": another process joined group `{}` as `{id}`; each process needs its own \
                 KAFKA_INSTANCE_ID",
                options.group_id
            ),
            _ => String::new(),
        };
        Some(anyhow::Error::new(Fatal(format!(
            "fatal Kafka error in group `{}`: {code:?}: {reason}{hint}",
            options.group_id
        ))))
    }

    async fn log_receive_error(&self, err: KafkaError) {
        tracing::warn!(group = %self.work.options.group_id, error = %err, "receive failed; retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn entry<T: DeserializeOwned>(raw: Raw) -> Entry<T> {
    match decode::<T>(&raw) {
        Ok(message) => Entry::Decoded(
            Delivery {
                message,
                topic: raw.topic.clone(),
                partition: raw.partition,
                offset: raw.offset,
                key: raw.key.clone(),
                traceparent: raw.traceparent.clone(),
            },
            raw,
        ),
        Err(reason) => Entry::Undecodable(raw, reason),
    }
}

impl<T, H> Work<T, H>
where
    T: DeserializeOwned + Send + Sync + 'static,
    H: Handler<T>,
{
    /// Runs one batch: runs of decodable messages go to the handler, undecodable ones to
    /// the dead-letter topic, in order. Returns what finished (all of it, unless shutdown
    /// interrupted a retry) and the lanes the batch held.
    async fn run_batch(
        &self,
        items: Vec<super::lanes::Item<Entry<T>>>,
        shutdown: &CancellationToken,
    ) -> Finished {
        let used: Vec<Lane> = items.iter().map(|item| item.lane().clone()).collect();
        let mut done = Vec::with_capacity(items.len());
        let mut pending: Vec<Delivery<T>> = Vec::new();
        let mut raws: Vec<Raw> = Vec::new();
        let mut positions: Vec<Position> = Vec::new();
        for item in items {
            match item.entry {
                Entry::Decoded(delivery, raw) => {
                    pending.push(delivery);
                    raws.push(raw);
                    positions.push(item.position);
                }
                Entry::Undecodable(raw, reason) => {
                    let handled = self
                        .handle_batch(&pending, &raws, &positions, &mut done, shutdown)
                        .await;
                    pending.clear();
                    raws.clear();
                    positions.clear();
                    if handled.is_err() || self.dead_letter(&raw, &reason, shutdown).await.is_err()
                    {
                        return (done, used);
                    }
                    done.push(item.position);
                }
            }
        }
        let _ = self
            .handle_batch(&pending, &raws, &positions, &mut done, shutdown)
            .await;
        (done, used)
    }

    /// The batch at once; when that fails, each message on its own, so that one bad message
    /// costs only its own retries.
    async fn handle_batch(
        &self,
        batch: &[Delivery<T>],
        raws: &[Raw],
        positions: &[Position],
        done: &mut Vec<Position>,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        if batch.is_empty() {
            return Ok(());
        }
        match self.handler.handle(batch).await {
            Ok(()) => {
                done.extend_from_slice(positions);
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
        for ((delivery, raw), position) in batch.iter().zip(raws).zip(positions) {
            self.handle_alone(delivery, raw, shutdown).await?;
            done.push(position.clone());
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
        let mut waits = 0u32;
        loop {
            let mut failure = None;
            let mut attempt = 0;
            while attempt < attempts {
                match self.handler.handle(std::slice::from_ref(delivery)).await {
                    Ok(()) => return Ok(()),
                    Err(err) if crate::fault::is_fault(&err) => {
                        waits += 1;
                        tracing::warn!(
                            group = %self.options.group_id,
                            topic = %delivery.topic,
                            partition = delivery.partition,
                            offset = delivery.offset,
                            waits,
                            error = format!("{err:#}"),
                            "a dependency is unavailable; the message waits for it",
                        );
                        self.pause(waits, shutdown).await?;
                    }
                    Err(err) => {
                        attempt += 1;
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
        Ok(())
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
        traceparent: header(message, crate::telemetry::TRACEPARENT),
    }
}

/// The value of the header `name`, as text (lossy). rdkafka panics while reading a header
/// whose *name* is not UTF-8; such a message is still handled, as if the header were absent,
/// rather than letting one odd producer stop the consumer loop.
pub(crate) fn header(
    message: &rdkafka::message::BorrowedMessage<'_>,
    name: &str,
) -> Option<String> {
    let headers = message.headers()?;
    let find = || {
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(find))
        .ok()
        .flatten()
}

fn decode<T: DeserializeOwned>(raw: &Raw) -> Result<T, String> {
    let payload = raw.payload.as_deref().ok_or("message has no payload")?;
    serde_json::from_slice(payload).map_err(|err| format!("undecodable JSON: {err}"))
}
