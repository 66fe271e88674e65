//! The outbox relay: publishes outbox rows to Kafka after the transaction that wrote them
//! committed, and marks them published only once the broker acknowledged them.
//!
//! Rows are claimed in id order with `FOR UPDATE SKIP LOCKED`, so several orchestrator
//! replicas never publish the same row twice, and rows of one saga (one key, one partition)
//! are handed to the idempotent producer in the order they were written. A crash between
//! publish and mark re-publishes the batch: consumers dedup by message id.
//!
//! The relay LISTENs for the outbox trigger's NOTIFY before its first query, so no wake-up
//! is lost; a poll interval covers a dropped notification connection.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt as _;
use platform::db::{self, Connection};
use platform::kafka::Producer;
use platform::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::clock::Clock;
use crate::schema::outbox;

#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub batch_size: i64,
    pub poll_interval: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            retention: Duration::from_secs(3600),
        }
    }
}

pub struct Relay {
    database_url: String,
    pool: db::Pool,
    producer: Producer,
    clock: Clock,
    options: RelayOptions,
}

#[derive(Queryable)]
struct Pending {
    id: i64,
    topic: String,
    message_key: String,
    payload: serde_json::Value,
    traceparent: Option<String>,
}

impl Relay {
    pub fn new(
        database_url: &str,
        pool: db::Pool,
        producer: Producer,
        clock: Clock,
        options: RelayOptions,
    ) -> Self {
        Self {
            database_url: database_url.to_owned(),
            pool,
            producer,
            clock,
            options,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut listener = match self.listen().await {
            Ok(conn) => Some(conn),
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "outbox LISTEN failed; polling only"
                );
                None
            }
        };
        let mut wakeups = listener
            .as_mut()
            .map(|conn| Box::pin(conn.notifications_stream()));
        let mut last_cleanup = std::time::Instant::now();
        let mut failures = 0u32;
        tracing::info!("outbox relay started");
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            match self.publish_batch().await {
                Ok(published) => {
                    failures = 0;
                    if published as i64 == self.options.batch_size {
                        continue; // more is waiting
                    }
                }
                Err(err) => {
                    failures += 1;
                    tracing::error!(
                        error = format!("{err:#}"),
                        failures,
                        "outbox publish failed"
                    );
                    let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            }
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                last_cleanup = std::time::Instant::now();
                if let Err(err) = self.cleanup().await {
                    tracing::warn!(error = format!("{err:#}"), "outbox cleanup failed");
                }
            }
            let notified = async {
                match wakeups.as_mut() {
                    Some(stream) => stream.next().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.options.poll_interval) => {}
                still_listening = notified => {
                    if !still_listening {
                        tracing::warn!("outbox notifications ended; polling only");
                        wakeups = None;
                    }
                }
            }
        }
        tracing::info!("outbox relay stopped");
        Ok(())
    }

    async fn listen(&self) -> anyhow::Result<AsyncPgConnection> {
        let mut conn = AsyncPgConnection::establish(&self.database_url)
            .await
            .context("connecting the outbox listener")?;
        diesel::sql_query("LISTEN sagaflow_outbox")
            .execute(&mut conn)
            .await?;
        Ok(conn)
    }

    /// Publishes up to one batch; returns how many rows were published.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut pooled = self.pool.get().await?;
        let conn: &mut Connection = &mut pooled;
        let producer = &self.producer;
        let batch_size = self.options.batch_size;
        conn.transaction(async |conn: &mut Connection| {
            let pending: Vec<Pending> = outbox::table
                .filter(outbox::published_at.is_null())
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
            if pending.is_empty() {
                return Ok(0);
            }
            // All sends are enqueued in id order before any is awaited, so the producer
            // keeps the per-key order while pipelining the batch.
            let sends = pending.iter().map(|row| async move {
                // The hop from the outbox to the broker, in the saga's trace; the message's
                // header makes this span the parent of whoever consumes it.
                let span = tracing::info_span!(
                    "outbox.publish",
                    saga.id = %row.message_key,
                    topic = %row.topic,
                    trace_id = tracing::field::Empty,
                );
                telemetry::continue_trace(&span, row.traceparent.as_deref());
                let traceparent = telemetry::handed_on(&span, row.traceparent.as_deref());
                producer
                    .send_traced(
                        &row.topic,
                        &row.message_key,
                        &row.payload,
                        traceparent.as_deref(),
                    )
                    .instrument(span)
                    .await
            });
            let results = futures_util::future::join_all(sends).await;
            let mut published = Vec::with_capacity(pending.len());
            let mut first_error = None;
            for (row, result) in pending.iter().zip(results) {
                match result {
                    Ok(_) => published.push(row.id),
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
