//! What a batch writes ([`Writes`]) and how: everything the batch changed is written with
//! one statement per table, whatever the batch size. [`super::plan`] decides the writes.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use platform::db::Connection;
use serde_json::{Value, json};
use uuid::Uuid;

use super::messages;
use super::publish::Queued;
use super::store::{self, NewHistory, NewOutboxMessage};
use super::watch::Change;
use super::{Engine, Error, SagaContext};
use crate::saga::{Action, Input, Status};
use platform::contract::Topics;

/// One input for one saga, in the order the batch received it.
pub(crate) struct Arrival {
    pub saga_id: Uuid,
    pub input: Input,
    /// The history entry's kind (`reply.received`, `timer.fired`, `cancel.requested`...).
    pub kind: &'static str,
    pub detail: Value,
    pub step: Option<i32>,
    pub attempt: Option<i32>,
    /// The reply inbox row that records this input's outcome, for a reply.
    pub reply_id: Option<Uuid>,
    /// The trace context it arrived in (a reply's span); without one, the saga's own.
    pub traceparent: Option<String>,
}

impl Arrival {
    pub fn new(saga_id: Uuid, input: Input, kind: &'static str) -> Self {
        Self {
            saga_id,
            input,
            kind,
            detail: json!({}),
            step: None,
            attempt: None,
            reply_id: None,
            traceparent: None,
        }
    }
}

/// How one saga's row changes: written only if the row is still at `version`.
pub(crate) struct RowChange {
    pub id: Uuid,
    pub version: i64,
    pub status: String,
    pub current_step: i32,
    pub state: Value,
    /// The earliest deadline or retry of the new state. Unless `timer_exact`, the stored
    /// timer only moves earlier (or goes, when there is none), so that a step does not
    /// rewrite it: a timer that fires early finds nothing due, and is then set exactly.
    pub next_timer_at: Option<DateTime<Utc>>,
    /// The stored timer is set to `next_timer_at` whatever it was: the batch brought the
    /// saga a tick, so the stored timer was due.
    pub timer_exact: bool,
    pub quarantine: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Everything a batch writes; [`Writes::flush`] sends it with one statement per table.
#[derive(Default)]
pub(crate) struct Writes {
    pub rows: Vec<RowChange>,
    pub history: Vec<NewHistory>,
    pub outbox: Vec<NewOutboxMessage>,
    /// Reply inbox rows and what became of their reply.
    pub settled: Vec<(Uuid, String)>,
    /// Sagas that reached a final status, with their age, for the metrics.
    pub finished: Vec<(Status, Duration)>,
    /// For a single operator action: why the saga refused it.
    pub refused: Option<(Status, String)>,
    /// The outbox messages once written, to publish after the commit.
    pub queued: Queued,
}

impl Writes {
    /// Why a saga of the batch was quarantined, for the first one that was.
    pub fn quarantine(&self) -> Option<&str> {
        self.rows.iter().find_map(|row| row.quarantine.as_deref())
    }

    /// The history entries and outbox messages of a transition's actions; a finished saga
    /// is counted for the metrics.
    pub fn effects(
        &mut self,
        topics: &Topics,
        context: &SagaContext<'_>,
        actions: &[Action],
        created_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        for action in actions {
            if let Some((entry, message)) = messages::for_action(topics, context, action, now) {
                self.history.push(entry);
                self.outbox.extend(message);
            }
            if let Action::Finish(status) = action {
                let age = (now - created_at).to_std().unwrap_or_default();
                self.finished.push((*status, age));
            }
        }
    }

    /// Writes the batch: one versioned multi-row update of the sagas, one insert each for
    /// history and outbox, one update of the reply inbox. A saga changed by someone else
    /// since it was locked (impossible under the row lock, but checked) fails the batch.
    /// The outbox messages move to [`Writes::queued`], to publish after the commit.
    pub async fn flush(&mut self, conn: &Connection) -> Result<(), Error> {
        // Independent statements, sent together: one round trip for the batch's writes.
        let outbox = std::mem::take(&mut self.outbox);
        let changes = &self.rows;
        let rows = async {
            if changes.is_empty() {
                return Ok(0);
            }
            store::update_all(conn, changes).await
        };
        // Requests waiting on these sagas (reads, streams) wake on every replica once this
        // commits.
        let payloads = super::watch::payloads(&self.changed_sagas());
        let notified = async {
            for payload in &payloads {
                store::notify(conn, super::watch::CHANNEL, payload).await?;
            }
            Ok(())
        };
        let (updated, (), queued, (), ()) = futures_util::try_join!(
            rows,
            store::append_history(conn, &self.history),
            store::enqueue(conn, outbox),
            store::settle_replies(conn, &self.settled),
            notified,
        )?;
        if updated != self.rows.len() {
            return Err(Error::Concurrent(self.rows[0].id));
        }
        self.queued = queued;
        Ok(())
    }

    /// Sagas with a new history entry in this batch, each once, and whether the batch left
    /// it settled (its last entry's status).
    pub fn changed_sagas(&self) -> Vec<Change> {
        let mut last: HashMap<Uuid, &str> = HashMap::new();
        for entry in &self.history {
            last.insert(entry.saga_id, &entry.status);
        }
        let mut changes: Vec<Change> = last
            .into_iter()
            .map(|(id, status)| {
                let settled = status.parse::<Status>().is_ok_and(Status::is_settled);
                (id, settled)
            })
            .collect();
        changes.sort_unstable();
        changes
    }
}

impl Engine {
    /// Counts what a committed batch did.
    pub(crate) fn record(&self, writes: &Writes) {
        for (status, age) in &writes.finished {
            self.metrics.saga_finished(*status, *age);
        }
        let quarantined = writes.rows.iter().filter(|row| row.quarantine.is_some());
        self.metrics.quarantined.inc_by(quarantined.count() as u64);
    }
}
