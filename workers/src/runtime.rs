//! The command runtime every participant shares.
//!
//! For each command, in order:
//! 1. inbox: a command id seen before re-sends its stored reply and does nothing else;
//! 2. locks: with the Redis strategy, the command's resources are locked (sorted, so
//!    overlapping holders cannot deadlock) and each lock's fencing token is handed to the
//!    write; a lock not had within `wait` is a retry, not a rejection;
//! 3. one Postgres transaction: claim the inbox row; in a savepoint (a rejection rolls back
//!    only the business change), order the command against its step's fence ([`fence`]:
//!    a forward command after a fence is refused, a fence or compensation records itself)
//!    and run the participant; store the reply; commit. A fence command runs no business
//!    change: its reply says whether the original took effect;
//! 4. release the locks; publish the batch's replies; only then does the consumer loop
//!    store the offsets.
//!
//! Infrastructure errors return `Err`, so the consumer loop retries the command with
//! backoff; the inbox makes the retry harmless. After the loop's budget, [`Handler::give_up`]
//! answers the command `Failed` (stored like any reply), so one bad command never holds up
//! the role.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use platform::cache;
use platform::contract::{Command, Direction, Outcome, Reply, Topics};
use platform::db::{self, Connection};
use platform::kafka::{Delivery, GiveUp, Handler, Producer};
use serde_json::Value;
use uuid::Uuid;

use crate::fence;
use crate::gate::{Gate, Want};
use crate::lock::{Guard, Locks};
use crate::participant::{Context, Failure, Participant, Strategy};
use crate::schema::processed_commands;

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
        }
    }

    /// Processes one command to its reply (stored, not yet published).
    pub async fn process(&self, command: &Command) -> anyhow::Result<Reply> {
        let mut pooled = self.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        if let Some(reply) = stored_reply(conn, command.id).await? {
            tracing::info!(command.id = %command.id, saga.id = %command.saga_id, "redelivered command; re-sending its reply");
            return Ok(reply);
        }
        // A fence touches no business resource: it needs no lock.
        let resources = match self.participant.resources(command) {
            _ if command.direction == Direction::Fence => Vec::new(),
            Ok(resources) => resources,
            Err(Failure::Rejected(reason)) => {
                return self
                    .commit_reply(conn, command, Outcome::Rejected { reason })
                    .await;
            }
            Err(Failure::Retry(err)) => return Err(err),
        };
        let wants = self.wants(command)?;
        // Each take is a lease of its own, settled below whatever happens to the command.
        let op = Uuid::now_v7();
        if !wants.is_empty() && !self.gate.take(conn, &wants, op).await? {
            let short: Vec<&str> = wants.iter().map(|w| w.resource.as_str()).collect();
            let reason = format!("not enough left of {}", short.join(", "));
            return self
                .commit_reply(conn, command, Outcome::Rejected { reason })
                .await;
        }
        let guards = match self.lock(&resources).await {
            Ok(guards) => guards,
            Err(err) => {
                self.settle(&wants, op, false).await;
                return Err(err);
            }
        };
        let fences: HashMap<String, u64> = guards
            .iter()
            .map(|guard| (guard.resource().to_owned(), guard.fence()))
            .collect();
        let context = Context {
            strategy: self.options.strategy,
            fences,
            now: Utc::now(),
            think_time: self.options.think_time,
        };
        let result = self.transact(conn, command, &context).await;
        let committed =
            matches!(&result, Ok(reply) if matches!(reply.outcome, Outcome::Succeeded { .. }));
        self.settle(&wants, op, committed).await;
        if self.options.strategy == Strategy::LuaGate
            && command.direction == Direction::Compensate
            && result.is_ok()
        {
            // Capacity came back in Postgres: let the gate reseed from there.
            self.gate.forget(&resources).await?;
        }
        for guard in guards {
            if let Err(err) = guard.release().await {
                // The lease expires by itself; fencing keeps a late holder from writing.
                tracing::warn!(error = %err, "lock release failed");
            }
        }
        result
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

    async fn settle(&self, wants: &[Want], op: Uuid, committed: bool) {
        if wants.is_empty() {
            return;
        }
        if let Err(err) = self.gate.settle(wants, op, committed).await {
            // The lease expires and is settled by a later take: late, never lost.
            tracing::warn!(error = format!("{err:#}"), "gate lease not settled");
        }
    }

    async fn lock(&self, resources: &[String]) -> anyhow::Result<Vec<Guard>> {
        if self.options.strategy != Strategy::RedisLock || resources.is_empty() {
            return Ok(Vec::new());
        }
        self.locks
            .lock_all(resources, self.options.lock_wait, self.options.lock_lease)
            .await?
            .with_context(|| {
                format!(
                    "locks {resources:?} not acquired within {:?}",
                    self.options.lock_wait
                )
            })
    }

    /// One transaction: inbox claim, business change in a savepoint, tombstone, reply.
    async fn transact(
        &self,
        conn: &mut Connection,
        command: &Command,
        context: &Context,
    ) -> anyhow::Result<Reply> {
        let participant = &self.participant;
        let role = participant.role();
        let outcome = conn
            .transaction::<_, anyhow::Error, _>(async |conn: &mut Connection| {
                let claimed = diesel::insert_into(processed_commands::table)
                    .values((
                        processed_commands::command_id.eq(command.id),
                        processed_commands::saga_id.eq(command.saga_id),
                        processed_commands::role.eq(role.as_str()),
                        processed_commands::reply.eq(Value::Null),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?;
                if claimed == 0 {
                    return Ok(None); // processed concurrently by another replica
                }
                let change = conn
                    .transaction::<_, Failure, _>(async |conn: &mut Connection| {
                        match command.direction {
                            Direction::Forward => fence::claim_forward(conn, command).await?,
                            Direction::Compensate => {
                                fence::fence(conn, command).await?;
                            }
                            Direction::Fence => {
                                let fenced = fence::fence(conn, command).await?;
                                return Ok(
                                    serde_json::to_value(fenced).map_err(anyhow::Error::from)?
                                );
                            }
                        }
                        participant.apply(conn, command, context).await
                    })
                    .await;
                let outcome = match change {
                    Ok(output) => Outcome::Succeeded { output },
                    Err(Failure::Rejected(reason)) => Outcome::Rejected { reason },
                    Err(Failure::Retry(err)) => return Err(err),
                };
                let reply = reply_for(command, outcome);
                diesel::update(processed_commands::table.find(command.id))
                    .set(processed_commands::reply.eq(serde_json::to_value(&reply)?))
                    .execute(conn)
                    .await?;
                Ok(Some(reply))
            })
            .await?;
        match outcome {
            Some(reply) => Ok(reply),
            None => stored_reply(conn, command.id)
                .await?
                .context("inbox row without a reply"),
        }
    }

    /// Stores a reply for a command that never reached the business logic.
    async fn commit_reply(
        &self,
        conn: &mut Connection,
        command: &Command,
        outcome: Outcome,
    ) -> anyhow::Result<Reply> {
        let reply = reply_for(command, outcome);
        let inserted = diesel::insert_into(processed_commands::table)
            .values((
                processed_commands::command_id.eq(command.id),
                processed_commands::saga_id.eq(command.saga_id),
                processed_commands::role.eq(self.participant.role().as_str()),
                processed_commands::reply.eq(serde_json::to_value(&reply)?),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        if inserted == 0 {
            return stored_reply(conn, command.id)
                .await?
                .context("inbox row without a reply");
        }
        Ok(reply)
    }
}

async fn stored_reply(conn: &mut Connection, command_id: Uuid) -> anyhow::Result<Option<Reply>> {
    let stored: Option<Value> = processed_commands::table
        .find(command_id)
        .select(processed_commands::reply)
        .first(conn)
        .await
        .optional()?;
    match stored {
        None | Some(Value::Null) => Ok(None),
        Some(value) => Ok(Some(serde_json::from_value(value)?)),
    }
}

fn reply_for(command: &Command, outcome: Outcome) -> Reply {
    Reply {
        id: Uuid::now_v7(),
        command_id: command.id,
        saga_id: command.saga_id,
        step: command.step,
        attempt: command.attempt,
        direction: command.direction,
        outcome,
        command_issued_at: command.issued_at,
        replied_at: Utc::now(),
    }
}

impl<P: Participant> CommandRuntime<P> {
    /// Enqueued in order, acknowledged together.
    async fn publish(&self, replies: &[Reply]) -> anyhow::Result<()> {
        let keys: Vec<String> = replies.iter().map(|r| r.saga_id.to_string()).collect();
        let sends = replies
            .iter()
            .zip(&keys)
            .map(|(reply, key)| self.producer.send_json(&self.replies_topic, key, reply));
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }
}

impl<P: Participant> Handler<Command> for CommandRuntime<P> {
    async fn handle(&self, batch: &[Delivery<Command>]) -> anyhow::Result<()> {
        let mut replies = Vec::with_capacity(batch.len());
        for delivery in batch {
            let command = &delivery.message;
            match self.process(command).await {
                Ok(reply) => {
                    if let Outcome::Rejected { reason } = &reply.outcome {
                        tracing::info!(saga.id = %command.saga_id, command = %command.name, reason, "command rejected");
                    }
                    replies.push(reply);
                }
                Err(err) => {
                    // What committed before the failure is answered now, not after the
                    // failing command's retries.
                    if let Err(publish) = self.publish(&replies).await {
                        tracing::warn!(
                            error = format!("{publish:#}"),
                            "early reply publish failed"
                        );
                    }
                    return Err(
                        err.context(format!("{} for saga {}", command.name, command.saga_id))
                    );
                }
            }
        }
        self.publish(&replies).await
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
        self.publish(std::slice::from_ref(&reply)).await?;
        tracing::warn!(saga.id = %command.saga_id, command = %command.name, error = format!("{error:#}"), "command answered Failed after its retry budget");
        Ok(GiveUp::Settled)
    }
}
