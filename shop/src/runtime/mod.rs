//! The command runtime every participant shares.
//!
//! Commands come in batches from the consumer loop (see [`batch`] for how a batch is
//! processed together). For each command:
//! 1. inbox: a command id seen before re-sends its stored reply and does nothing else;
//! 2. locks: with the Redis strategy, the command's resources are locked (sorted, so
//!    overlapping holders cannot deadlock) and each lock's fencing token is handed to the
//!    write; a lock not had within `wait` is a fault to wait out, not a rejection;
//! 3. one Postgres transaction: claim the inbox row; in a savepoint (a rejection rolls back
//!    only the business change), order the command against its step's fence ([`fence`]:
//!    a forward command after a fence is refused, a fence or compensation records itself)
//!    and run the participant; store the reply; commit. A fence command runs no business
//!    change: its reply says whether the original took effect;
//! 4. release the locks; publish the batch's replies; only then does the consumer loop
//!    store the offsets.
//!
//! Errors return `Err`, so the consumer loop retries the command with backoff; the inbox
//! makes the retry harmless. An infrastructure fault (Redis or Postgres unreachable, locks
//! not had in time: `platform::fault`) spends no attempt: the command waits until the
//! dependency answers, so an outage never becomes a business failure. Any other error,
//! after the loop's budget, makes [`Handler::give_up`] answer the command `Failed` (stored
//! like any reply), so one bad command never holds up the role.

mod batch;
pub mod inbox;

use std::time::Duration;

use anyhow::Context as _;
use platform::cache;
use platform::contract::{Command, Direction, Outcome, Reply, Topics};
use platform::db::{self, Connection};
use platform::kafka::{Delivery, GiveUp, Handler, Producer};
use platform::telemetry;
use uuid::Uuid;

pub use self::batch::Answer;
use crate::gate::{Gate, Want};
use crate::lock::{Guard, Locks};
use crate::metrics::METRICS;
use crate::participant::{Failure, Participant, Strategy};
use platform::fault::Unavailable;

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub strategy: Strategy,
    /// How long to wait for the locks of one command.
    pub lock_wait: Duration,
    /// Lock lease; the watchdog extends it while the command runs.
    pub lock_lease: Duration,
    pub think_time: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            strategy: Strategy::RedisLock,
            lock_wait: Duration::from_secs(5),
            lock_lease: Duration::from_secs(10),
            think_time: Duration::ZERO,
        }
    }
}

pub struct CommandRuntime<P> {
    participant: P,
    database: db::Pool,
    locks: Locks,
    gate: Gate,
    producer: Producer,
    replies_topic: String,
    options: RuntimeOptions,
    /// The last batch had a command rejected or failing: the next one runs apart at once
    /// rather than twice (a coupon rush rejects most of its claims).
    refusing: std::sync::atomic::AtomicBool,
}

impl<P: Participant> CommandRuntime<P> {
    /// `redis_prefix` namespaces the locks and gate counters in Redis.
    pub fn new(
        participant: P,
        database: db::Pool,
        redis: cache::Pool,
        redis_prefix: &str,
        producer: Producer,
        topics: &Topics,
        options: RuntimeOptions,
    ) -> Self {
        Self {
            participant,
            database,
            locks: Locks::new(redis.clone(), redis_prefix),
            gate: Gate::new(redis, redis_prefix),
            producer,
            replies_topic: topics.replies(),
            options,
            refusing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Processes one command to its reply (stored, not yet published): a batch of one.
    pub async fn process(&self, command: &Command) -> anyhow::Result<Reply> {
        self.process_batch(&[command])
            .await?
            .pop()
            .context("a batch of one has one answer")?
    }

    /// What the Lua gate must take for a forward command (nothing under other strategies).
    fn wants(&self, command: &Command) -> anyhow::Result<Vec<Want>> {
        if self.options.strategy != Strategy::LuaGate || command.direction != Direction::Forward {
            return Ok(Vec::new());
        }
        match self.participant.gate(command) {
            Ok(wants) => Ok(wants),
            // The business call below reports a malformed payload as its rejection.
            Err(Failure::Rejected(_)) => Ok(Vec::new()),
            Err(Failure::Retry(err)) => Err(err),
        }
    }

    /// Settles the gate leases of a batch's operations: (operation, wants, committed).
    async fn settle(&self, ops: &[(Uuid, &[Want], bool)]) {
        if ops.is_empty() {
            return;
        }
        if let Err(err) = self.gate.settle_all(ops).await {
            // The lease expires and is settled by a later take: late, never lost.
            tracing::warn!(error = format!("{err:#}"), "gate lease not settled");
        }
    }

    async fn lock(&self, resources: &[String]) -> anyhow::Result<Vec<Guard>> {
        if self.options.strategy != Strategy::RedisLock || resources.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let locked = self
            .locks
            .lock_all(resources, self.options.lock_wait, self.options.lock_lease)
            .await;
        let acquired = matches!(locked, Ok(Some(_)));
        METRICS.lock(
            self.participant.role().as_str(),
            started.elapsed(),
            acquired,
        );
        // Redis unreachable (in the error's chain) or the locks busy past their wait: both
        // are faults to wait out, never a reason to answer `Failed` (see `platform::fault`).
        locked?.ok_or_else(|| {
            Unavailable::error(format!(
                "locks {resources:?} not acquired within {:?}",
                self.options.lock_wait
            ))
        })
    }

    /// Stores a reply for a command that never reached the business logic.
    async fn commit_reply(
        &self,
        conn: &mut Connection,
        command: &Command,
        outcome: Outcome,
    ) -> anyhow::Result<Reply> {
        let reply = Reply::answering(command, outcome);
        let claimed =
            inbox::claim(conn, self.participant.role(), &[(command, Some(&reply))]).await?;
        if claimed.contains(&command.id) {
            return Ok(reply);
        }
        inbox::stored_replies(conn, &[command.id])
            .await?
            .remove(&command.id)
            .context("inbox row without a reply")
    }
}

impl<P: Participant> CommandRuntime<P> {
    /// The span of one command's handling, in the trace its message carried.
    fn span(&self, delivery: &Delivery<Command>) -> tracing::Span {
        let command = &delivery.message;
        let span = tracing::info_span!(
            "command",
            otel.name = %command.name,
            saga.id = %command.saga_id,
            command.id = %command.id,
            role = self.participant.role().as_str(),
            step = command.step,
            attempt = command.attempt,
            direction = command.direction.as_str(),
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        telemetry::continue_trace(&span, delivery.traceparent.as_deref());
        span
    }

    /// Enqueued in order, acknowledged together; each reply with the trace context it
    /// hands on (the span of its command).
    async fn publish(&self, replies: &[(Reply, Option<String>)]) -> anyhow::Result<()> {
        let keys: Vec<String> = replies.iter().map(|(r, _)| r.saga_id.to_string()).collect();
        let sends = replies
            .iter()
            .zip(&keys)
            .map(|((reply, traceparent), key)| {
                self.producer
                    .send_traced(&self.replies_topic, key, reply, traceparent.as_deref())
            });
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }
}

impl<P: Participant> Handler<Command> for CommandRuntime<P> {
    async fn handle(&self, batch: &[Delivery<Command>]) -> anyhow::Result<()> {
        let commands: Vec<&Command> = batch.iter().map(|delivery| &delivery.message).collect();
        // One span per command, a child of the relay's span that sent it, open until its
        // reply is published; the reply's header hands it on to the engine.
        let spans: Vec<tracing::Span> = batch.iter().map(|delivery| self.span(delivery)).collect();
        let started = std::time::Instant::now();
        let started_at = chrono::Utc::now();
        let role = self.participant.role().as_str();
        let answers = match self.process_batch(&commands).await {
            Ok(answers) => answers,
            Err(err) => {
                for _ in batch {
                    METRICS.command(role, "error", Some(started.elapsed()));
                }
                return Err(err);
            }
        };
        let mut replies = Vec::with_capacity(batch.len());
        let mut failure = None;
        for ((delivery, span), answer) in batch.iter().zip(&spans).zip(answers) {
            let command = &delivery.message;
            match &answer {
                // A stored reply re-sent (a redelivery, or a neighbour's retry after this
                // one committed) was counted when it was made: only this batch's count.
                Ok(reply) if reply.replied_at < started_at => {}
                Ok(reply) => METRICS.command(role, reply.outcome.label(), Some(started.elapsed())),
                Err(_) => METRICS.command(role, "error", Some(started.elapsed())),
            }
            match answer {
                Ok(reply) => {
                    span.record("outcome", reply.outcome.label());
                    span.in_scope(|| match &reply.outcome {
                        Outcome::Rejected { reason } => {
                            tracing::info!(reason, "command rejected");
                        }
                        _ => tracing::debug!(outcome = reply.outcome.label(), "command answered"),
                    });
                    let traceparent = telemetry::handed_on(span, delivery.traceparent.as_deref());
                    replies.push((reply, traceparent));
                }
                Err(err) => {
                    failure.get_or_insert_with(|| {
                        err.context(format!("{} for saga {}", command.name, command.saga_id))
                    });
                }
            }
        }
        let published = self.publish(&replies).await;
        match failure {
            // What committed is answered now, not after the failing command's retries
            // (the loop retries it on its own; its neighbours find their stored replies).
            Some(err) => {
                if let Err(publish) = published {
                    tracing::warn!(error = format!("{publish:#}"), "early reply publish failed");
                }
                Err(err)
            }
            None => published,
        }
    }

    /// A command that kept failing is answered `Failed`, stored in the inbox like any reply
    /// (so a redelivery gets the same answer and the attempt can never take effect later),
    /// and the saga's retry policy takes over.
    async fn give_up(
        &self,
        delivery: &Delivery<Command>,
        error: &anyhow::Error,
    ) -> anyhow::Result<GiveUp> {
        let command = &delivery.message;
        let mut pooled = self.database.get().await?;
        let reason = format!("gave up after repeated failures: {error:#}");
        let reply = self
            .commit_reply(&mut pooled, command, Outcome::Failed { reason })
            .await?;
        drop(pooled);
        METRICS.command(self.participant.role().as_str(), "failed", None);
        let span = self.span(delivery);
        span.record("outcome", reply.outcome.label());
        let traceparent = telemetry::handed_on(&span, delivery.traceparent.as_deref());
        self.publish(&[(reply, traceparent)]).await?;
        tracing::warn!(saga.id = %command.saga_id, command = %command.name, error = format!("{error:#}"), "command answered Failed after its retry budget");
        Ok(GiveUp::Settled)
    }
}
