//! Publish after commit, the outbox as the net.
//!
//! A transition's messages are written to the outbox in the transaction that changes its
//! saga, so there is never a state without its messages. Once that transaction committed,
//! the task that committed it hands them to the [`Publisher`] ([`crate::shell::Engine::publish`]),
//! which sends them at once, in their order, and passes the ids the broker acknowledged to
//! the relay to mark published, many batches in one statement. No wake-up hop, no read of
//! the outbox: a step's command leaves as soon as its state is durable.
//!
//! Whatever is not sent that way (the process died after its commit, the broker refused,
//! a transaction whose caller dropped its [`Queued`]) stays unmarked, and the
//! [relay](crate::loops::relay) sweeps it a moment later. A message may then go out twice;
//! consumers dedup by message id, as they do for every redelivery.

use chrono::{DateTime, Utc};
use platform::kafka::Producer;
use platform::telemetry;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument as _;

/// One outbox row, as written and as it is sent (and as the relay reads it back).
#[derive(diesel::Queryable)]
pub(crate) struct Message {
    pub id: i64,
    pub topic: String,
    pub key: String,
    pub payload: Value,
    pub traceparent: Option<String>,
}

/// The messages a transaction wrote to the outbox: hand them to [`crate::shell::Engine::publish`]
/// once it committed, never before (a rolled-back transaction's messages must not leave).
#[must_use = "publish them once the transaction committed; the relay sweeps them otherwise, late"]
#[derive(Default)]
pub struct Queued(pub(crate) Vec<Message>);

impl Queued {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queued({} messages)", self.0.len())
    }
}

/// The ids of sent messages with when the broker acknowledged each, for the relay to mark
/// published.
pub type Marks = mpsc::UnboundedReceiver<(i64, DateTime<Utc>)>;

/// Sends committed messages at once; a cheap handle.
#[derive(Clone)]
pub struct Publisher {
    producer: Producer,
    marks: mpsc::UnboundedSender<(i64, DateTime<Utc>)>,
}

impl Publisher {
    /// A publisher, and the ids it sent for the relay ([`crate::loops::relay::Relay`]) to mark.
    pub fn new(producer: Producer) -> (Self, Marks) {
        let (marks, sent) = mpsc::unbounded_channel();
        (Self { producer, marks }, sent)
    }

    /// Sends `queued` in the background, in its order (the producer keeps the order of one
    /// key), and hands the acknowledged ids on to be marked. The caller does not wait for
    /// the broker: its transaction is durable, and what fails here the relay sweeps.
    pub fn publish(&self, queued: Queued) {
        if queued.is_empty() {
            return;
        }
        let (producer, marks) = (self.producer.clone(), self.marks.clone());
        tokio::spawn(async move {
            // All sends are enqueued in order before any is awaited.
            let sends = queued.0.iter().map(|message| send(&producer, message));
            let results = futures_util::future::join_all(sends).await;
            for (message, result) in queued.0.iter().zip(results) {
                match result {
                    // The relay may be gone (shutdown): the row is then swept next time.
                    Ok(acknowledged) => drop(marks.send((message.id, acknowledged))),
                    Err(err) => tracing::warn!(
                        error = format!("{err:#}"),
                        outbox.id = message.id,
                        "publishing after commit failed; the relay will send it"
                    ),
                }
            }
        });
    }
}

/// Sends one outbox message and waits for the broker's acknowledgement (returns when it
/// came), as a hop of its saga's trace: the message's header makes this span the parent of
/// whoever consumes it.
pub(crate) async fn send(producer: &Producer, message: &Message) -> anyhow::Result<DateTime<Utc>> {
    let span = tracing::info_span!(
        "outbox.publish",
        saga.id = %message.key,
        topic = %message.topic,
        trace_id = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, message.traceparent.as_deref());
    let traceparent = telemetry::handed_on(&span, message.traceparent.as_deref());
    producer
        .send_traced(
            &message.topic,
            &message.key,
            &message.payload,
            traceparent.as_deref(),
        )
        .instrument(span)
        .await
        .map(|_| Utc::now())
}
