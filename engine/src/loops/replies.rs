//! The reply consumer: applies participants' replies to their sagas, one transaction per
//! batch (inbox dedup, row lock, transition, state + history + outbox). The consumer loop
//! stores the batch's offsets only after that transaction committed.

use diesel_async::AsyncConnection as _;
use platform::contract::Reply;
use platform::db::Connection;
use platform::kafka::{Delivery, GiveUp, Handler};
use platform::telemetry;

use crate::shell::{self, Engine};

/// A transient database error (pool timeout, deadlock, statement timeout, lost connection)
/// is a fault the consumer loop waits out, never a reason to dead-letter a reply.
fn transient_waits(err: shell::Error) -> anyhow::Error {
    let transient = match &err {
        shell::Error::Database(db) => platform::fault::database(db),
        shell::Error::Pool(_) | shell::Error::Concurrent(_) => true,
        _ => false,
    };
    if transient {
        platform::fault::Unavailable::error(format!("{err}"))
    } else {
        err.into()
    }
}

pub struct ReplyHandler {
    engine: Engine,
}

impl ReplyHandler {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

impl Handler<Reply> for ReplyHandler {
    async fn handle(&self, batch: &[Delivery<Reply>]) -> anyhow::Result<()> {
        // One span per reply, a child of the worker's span that sent it, open until the
        // batch committed; the commands and events the reply causes carry it on.
        let spans: Vec<tracing::Span> = batch
            .iter()
            .map(|delivery| {
                let reply = &delivery.message;
                let span = tracing::info_span!(
                    "saga.reply",
                    saga.id = %reply.saga_id,
                    step = reply.step,
                    direction = ?reply.direction,
                    outcome = reply.outcome.label(),
                    trace_id = tracing::field::Empty,
                );
                telemetry::continue_trace(&span, delivery.traceparent.as_deref());
                span
            })
            .collect();
        let traced: Vec<(&Reply, Option<String>)> = batch
            .iter()
            .zip(&spans)
            .map(|(delivery, span)| {
                let traceparent = telemetry::handed_on(span, delivery.traceparent.as_deref());
                (&delivery.message, traceparent)
            })
            .collect();
        let mut pooled = self.engine.pool().get().await?;
        let conn: &mut Connection = &mut pooled;
        let engine = &self.engine;
        let queued = conn
            .transaction::<_, shell::Error, _>(async |conn: &mut Connection| {
                engine
                    .apply_traced_replies(conn, traced.iter().cloned())
                    .await
            })
            .await
            .map_err(transient_waits)?;
        // Committed: the commands and events it caused leave now.
        engine.publish(queued);
        drop(spans);
        for delivery in batch {
            engine.record_reply_metrics(&delivery.message);
        }
        Ok(())
    }

    /// A reply that kept failing goes to the dead-letter topic, unless the database is what
    /// failed: then nothing could be applied, and the loop tries the reply again later.
    /// (Transient database errors never get here: they are faults that spend no attempt.)
    async fn give_up(&self, _: &Delivery<Reply>, error: &anyhow::Error) -> anyhow::Result<GiveUp> {
        platform::db::ping(self.engine.pool())
            .await
            .map_err(|down| down.context(format!("reply not applied: {error:#}")))?;
        Ok(GiveUp::DeadLetter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error as DieselError};

    #[test]
    fn transient_database_errors_wait_and_others_spend_the_budget() {
        let database = |kind, message: &str| {
            shell::Error::Database(DieselError::DatabaseError(
                kind,
                Box::new(message.to_owned()),
            ))
        };
        for transient in [
            database(DatabaseErrorKind::Unknown, "deadlock detected"),
            database(
                DatabaseErrorKind::Unknown,
                "canceling statement due to statement timeout",
            ),
            database(
                DatabaseErrorKind::SerializationFailure,
                "could not serialize",
            ),
            database(DatabaseErrorKind::ClosedConnection, "closed"),
            shell::Error::Concurrent(uuid::Uuid::nil()),
        ] {
            let shown = transient.to_string();
            assert!(
                platform::fault::is_fault(&transient_waits(transient)),
                "{shown}"
            );
        }
        let broken = database(DatabaseErrorKind::CheckViolation, "violates check");
        assert!(!platform::fault::is_fault(&transient_waits(broken)));
    }
}
