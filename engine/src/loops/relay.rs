//! The outbox relay: marks published what the engine sent after its commits, and sweeps
//! up whatever is left unsent.
//!
//! The task that commits a transition publishes its messages itself
//! ([`crate::shell::publish`]) and hands the acknowledged ids here: the relay marks them
//! published a few milliseconds later, many batches in one statement. Every
//! `poll_interval` it also sweeps: rows still unpublished `sweep_after` their transaction
//! (their process died before sending, the broker refused, a caller never published) are
//! claimed in id order with `FOR UPDATE SKIP LOCKED`, so several orchestrator replicas
//! never sweep the same row twice, and rows of one saga (one key, one partition) are
//! handed to the idempotent producer in the order they were written. A crash between
//! publish and mark re-publishes: consumers dedup by message id.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Timestamptz};
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use platform::db::{self, Connection, prepared};
use platform::kafka::Producer;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::schema::outbox;
use crate::shell::publish::{self, Marks, Message};

#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub batch_size: i64,
    /// How often to sweep for rows left unsent.
    pub poll_interval: Duration,
    /// How old an unsent row must be before the sweep takes it: the committing task sends
    /// its own at once, and the sweep should not race it.
    pub sweep_after: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            sweep_after: Duration::from_secs(1),
            retention: Duration::from_secs(3600),
        }
    }
}

/// Ids sent after commit are gathered this long, so that busy moments mark many batches'
/// messages in one statement.
const MARK_WINDOW: Duration = Duration::from_millis(10);

pub struct Relay {
    pool: db::Pool,
    producer: Producer,
    clock: Clock,
    options: RelayOptions,
    marks: Marks,
}

impl Relay {
    pub fn new(
        pool: db::Pool,
        producer: Producer,
        clock: Clock,
        options: RelayOptions,
        marks: Marks,
    ) -> Self {
        Self {
            pool,
            producer,
            clock,
            options,
            marks,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut last_cleanup = std::time::Instant::now();
        let mut failures = 0u32;
        let mut sent = Vec::new();
        let mut next_sweep = tokio::time::Instant::now();
        tracing::info!("outbox relay started");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.marks.recv_many(&mut sent, 4096) => {
                    if received == 0 {
                        // Every publisher is gone: only sweeping is left.
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep_until(next_sweep) => {}
                        }
                    } else {
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(MARK_WINDOW) => {}
                        }
                        while let Ok(mark) = self.marks.try_recv() {
                            sent.push(mark);
                        }
                        self.mark(&mut sent).await;
                        continue;
                    }
                }
                _ = tokio::time::sleep_until(next_sweep) => {}
            }
            match self.publish_batch().await {
                Ok(published) => {
                    failures = 0;
                    next_sweep = tokio::time::Instant::now()
                        + if published as i64 == self.options.batch_size {
                            Duration::ZERO // more is waiting
                        } else {
                            self.options.poll_interval
                        };
                }
                Err(err) => {
                    failures += 1;
                    tracing::error!(
                        error = format!("{err:#}"),
                        failures,
                        "outbox publish failed"
                    );
                    next_sweep = tokio::time::Instant::now()
                        + Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                }
            }
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                last_cleanup = std::time::Instant::now();
                if let Err(err) = self.cleanup().await {
                    tracing::warn!(error = format!("{err:#}"), "outbox cleanup failed");
                }
            }
        }
        // What was sent but not yet marked: marked now, rather than sent again later.
        while let Ok(mark) = self.marks.try_recv() {
            sent.push(mark);
        }
        self.mark(&mut sent).await;
        tracing::info!("outbox relay stopped");
        Ok(())
    }

    /// Marks rows the engine sent after its commits, each with when the broker acknowledged
    /// it; on failure they stay unmarked, and the sweep sends them again (a duplicate, which
    /// consumers drop).
    async fn mark(&self, sent: &mut Vec<(i64, DateTime<Utc>)>) {
        if sent.is_empty() {
            return;
        }
        let (ids, acknowledged): (Vec<i64>, Vec<DateTime<Utc>>) = sent.iter().copied().unzip();
        let marked = async {
            let mut conn = self.pool.get().await?;
            prepared(
                "UPDATE outbox SET published_at = u.acknowledged \
                 FROM unnest($1::int8[], $2::timestamptz[]) AS u(id, acknowledged) \
                 WHERE outbox.id = u.id",
            )
            .bind::<Array<BigInt>, _>(&ids)
            .bind::<Array<Timestamptz>, _>(&acknowledged)
            .execute(&mut conn)
            .await?;
            anyhow::Ok(())
        };
        if let Err(err) = marked.await {
            tracing::warn!(
                error = format!("{err:#}"),
                rows = sent.len(),
                "marking sent outbox rows failed; the sweep sends them again"
            );
        }
        sent.clear();
    }

    /// Sweeps up to one batch of rows left unsent; returns how many were published.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let horizon = self.clock.now()
            - chrono::TimeDelta::from_std(self.options.sweep_after).unwrap_or_default();
        let mut pooled = self.pool.get().await?;
        let conn: &mut Connection = &mut pooled;
        let producer = &self.producer;
        let batch_size = self.options.batch_size;
        conn.transaction(async |conn: &mut Connection| {
            let messages: Vec<Message> = outbox::table
                .filter(outbox::published_at.is_null())
                .filter(outbox::created_at.lt(horizon))
                .order(outbox::id.asc())
                .limit(batch_size)
                .select((
                    outbox::id,
                    outbox::topic,
                    outbox::message_key,
                    outbox::payload,
                    outbox::traceparent,
                ))
                .for_update()
                .skip_locked()
                .load(conn)
                .await?;
            if messages.is_empty() {
                return Ok(0);
            }
            // All sends are enqueued in id order before any is awaited, so the producer
            // keeps the per-key order while pipelining the batch.
            let sends = messages
                .iter()
                .map(|message| publish::send(producer, message));
            let results = futures_util::future::join_all(sends).await;
            let mut published = Vec::with_capacity(messages.len());
            let mut first_error = None;
            for (message, result) in messages.iter().zip(results) {
                match result {
                    Ok(_) => published.push(message.id),
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
            diesel::update(outbox::table.filter(outbox::id.eq_any(&published)))
                .set(outbox::published_at.eq(Utc::now()))
                .execute(conn)
                .await?;
            match first_error {
                // Commit the marks of what was acknowledged, report the rest.
                Some(err) if published.is_empty() => Err(err),
                Some(err) => {
                    tracing::warn!(error = format!("{err:#}"), "part of an outbox batch failed");
                    Ok(published.len())
                }
                None => Ok(published.len()),
            }
        })
        .await
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        let horizon = self.clock.now()
            - chrono::TimeDelta::from_std(self.options.retention).unwrap_or_default();
        let mut conn = self.pool.get().await?;
        let deleted = diesel::delete(outbox::table.filter(outbox::published_at.lt(horizon)))
            .execute(&mut conn)
            .await?;
        if deleted > 0 {
            tracing::debug!(deleted, "published outbox rows cleaned up");
        }
        Ok(())
    }
}
