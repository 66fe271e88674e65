//! The notification worker: records every saga lifecycle event once (keyed by event id, so
//! a redelivered event changes nothing) and logs it as a structured line.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use platform::contract::Event;
use platform::db::{self, prepared};
use platform::kafka::{Delivery, Handler};
use platform::telemetry;
use uuid::Uuid;

pub struct Recorder {
    database: db::Pool,
}

impl Recorder {
    pub fn new(database: db::Pool) -> Self {
        Self { database }
    }
}

impl Handler<Event> for Recorder {
    async fn handle(&self, batch: &[Delivery<Event>]) -> anyhow::Result<()> {
        let events = || batch.iter().map(|delivery| &delivery.message);
        let ids: Vec<Uuid> = events().map(|event| event.id).collect();
        let sagas: Vec<Uuid> = events().map(|event| event.saga_id).collect();
        let names: Vec<&str> = events().map(|event| event.saga.as_str()).collect();
        let kinds: Vec<&str> = events().map(|event| event.kind.as_str()).collect();
        let steps: Vec<Option<i32>> = events()
            .map(|event| event.step.and_then(|step| i32::try_from(step).ok()))
            .collect();
        let messages: Vec<&str> = events().map(|event| event.message.as_str()).collect();
        let occurred: Vec<DateTime<Utc>> = events().map(|event| event.occurred_at).collect();
        let mut conn = self.database.get().await?;
        let inserted = prepared(
            "INSERT INTO notifications (event_id, saga_id, saga, kind, step, message, occurred_at) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[], \
                                  $6::text[], $7::timestamptz[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<SqlUuid>, _>(&sagas)
        .bind::<Array<Text>, _>(&names)
        .bind::<Array<Text>, _>(&kinds)
        .bind::<Array<Nullable<Integer>>, _>(&steps)
        .bind::<Array<Text>, _>(&messages)
        .bind::<Array<Timestamptz>, _>(&occurred)
        .execute(&mut conn)
        .await?;
        for delivery in batch {
            // Each event is the last hop of its saga's trace: the relay's span is its parent.
            let event = &delivery.message;
            let span = tracing::info_span!(
                "event.recorded",
                saga.id = %event.saga_id,
                event.kind = %event.kind,
                trace_id = tracing::field::Empty,
            );
            telemetry::continue_trace(&span, delivery.traceparent.as_deref());
            span.in_scope(|| {
                tracing::info!(
                    saga.definition = %event.saga,
                    event.step = event.step,
                    event.message = %event.message,
                    "saga event",
                )
            });
        }
        tracing::debug!(received = batch.len(), inserted, "notifications recorded");
        Ok(())
    }
}
