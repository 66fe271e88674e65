//! The notification worker: records every saga lifecycle event once (keyed by event id, so
//! a redelivered event changes nothing) and logs it as a structured line.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::Event;
use platform::db;
use platform::kafka::{Delivery, Handler};
use platform::telemetry;

use engine::schema::notifications;

pub struct Recorder {
    database: db::Pool,
}

impl Recorder {
    pub fn new(database: db::Pool) -> Self {
        Self { database }
    }
}

#[derive(Insertable)]
#[diesel(table_name = notifications)]
struct NewNotification<'a> {
    event_id: uuid::Uuid,
    saga_id: uuid::Uuid,
    saga: &'a str,
    kind: &'a str,
    step: Option<i32>,
    message: &'a str,
    occurred_at: chrono::DateTime<chrono::Utc>,
}

impl Handler<Event> for Recorder {
    async fn handle(&self, batch: &[Delivery<Event>]) -> anyhow::Result<()> {
        let rows: Vec<NewNotification<'_>> = batch
            .iter()
            .map(|delivery| {
                let event = &delivery.message;
                NewNotification {
                    event_id: event.id,
                    saga_id: event.saga_id,
                    saga: &event.saga,
                    kind: &event.kind,
                    step: event.step.and_then(|step| i32::try_from(step).ok()),
                    message: &event.message,
                    occurred_at: event.occurred_at,
                }
            })
            .collect();
        let mut conn = self.database.get().await?;
        let inserted = diesel::insert_into(notifications::table)
            .values(&rows)
            .on_conflict_do_nothing()
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
