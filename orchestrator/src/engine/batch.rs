//! Set-based application of a batch of inputs (replies, timer ticks, an operator's action,
//! a start): the sagas involved are locked with one statement, every transition is computed
//! in memory (several inputs to one saga in their order), and everything the batch changed
//! is written with one statement per table, whatever the batch size.
//!
//! A saga that cannot be decoded or moved is quarantined inside the same batch (its row
//! flagged with the reason, a history entry, a metric); the other sagas of the batch move on.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use platform::db::Connection;
use serde_json::{Value, json};
use uuid::Uuid;

use super::codec::{current_step, decode_state, definition_of, encode_state};
use super::messages::{self, history};
use super::store::{self, NewHistory, NewOutboxMessage, SagaRow};
use super::{Engine, Error, SagaContext};
use crate::saga::{self, Action, Input, Status};
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
    pub next_timer_at: Option<DateTime<Utc>>,
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
    pub async fn flush(&self, conn: &mut Connection) -> Result<(), Error> {
        if !self.rows.is_empty() {
            let updated = store::update_all(conn, &self.rows).await?;
            if updated != self.rows.len() {
                return Err(Error::Concurrent(self.rows[0].id));
            }
        }
        store::append_history(conn, &self.history).await?;
        store::enqueue(conn, &self.outbox).await?;
        store::settle_replies(conn, &self.settled).await?;
        Ok(())
    }
}

impl Engine {
    /// Runs `arrivals` against the locked `rows` in memory and returns what to write.
    /// Arrivals for a saga not among `rows` are settled as `ignored: unknown saga`.
    pub(crate) fn apply_in_memory(
        &self,
        rows: &[SagaRow],
        arrivals: Vec<Arrival>,
        now: DateTime<Utc>,
    ) -> Writes {
        let mut by_saga: HashMap<Uuid, Vec<Arrival>> = HashMap::new();
        for arrival in arrivals {
            by_saga.entry(arrival.saga_id).or_default().push(arrival);
        }
        let mut writes = Writes::default();
        for row in rows {
            let arrivals = by_saga.remove(&row.id).unwrap_or_default();
            self.apply_to_row(row, arrivals, now, &mut writes);
        }
        for (saga_id, arrivals) in by_saga {
            for arrival in arrivals {
                tracing::warn!(saga.id = %saga_id, kind = arrival.kind, "input for an unknown saga");
                if let Some(reply_id) = arrival.reply_id {
                    writes
                        .settled
                        .push((reply_id, "ignored: unknown saga".to_owned()));
                }
            }
        }
        writes
    }

    fn apply_to_row(
        &self,
        row: &SagaRow,
        arrivals: Vec<Arrival>,
        now: DateTime<Utc>,
        writes: &mut Writes,
    ) {
        let settle = |writes: &mut Writes, arrival: &Arrival, outcome: String| {
            if let Some(reply_id) = arrival.reply_id {
                writes.settled.push((reply_id, outcome));
            }
        };
        if let Some(reason) = &row.quarantine {
            for arrival in &arrivals {
                settle(
                    writes,
                    arrival,
                    format!("ignored: saga quarantined: {reason}"),
                );
            }
            return;
        }
        let decoded = definition_of(&self.catalog, row)
            .and_then(|definition| Ok((definition, decode_state(row)?)))
            .and_then(|(definition, state)| {
                // A deploy that added or removed a step: the pure core would ignore every
                // input to this saga for ever. Set it aside, visibly, instead.
                if state.steps.len() != definition.steps.len() {
                    return Err(Error::Corrupt {
                        id: row.id,
                        reason: format!(
                            "stored with {} steps; definition `{}` has {}",
                            state.steps.len(),
                            definition.name,
                            definition.steps.len()
                        ),
                    });
                }
                Ok((definition, state))
            });
        let (definition, mut state) = match decoded {
            Ok(decoded) => decoded,
            Err(err) => {
                let reason = match err {
                    Error::Corrupt { reason, .. } => reason,
                    other => other.to_string(),
                };
                self.quarantine(row, &reason, now, writes);
                for arrival in &arrivals {
                    let outcome = format!("ignored: saga {} quarantined: {reason}", row.id);
                    settle(writes, arrival, outcome);
                }
                return;
            }
        };
        let mut changed = false;
        let mut timer_stale = false;
        for arrival in arrivals {
            let transition = saga::transition(&definition, &state, &arrival.input, now, jitter());
            match transition.outcome {
                saga::Outcome::Applied => {
                    let state_after = &transition.state;
                    writes.history.push(history(
                        row.id,
                        arrival.kind,
                        arrival.step,
                        arrival.attempt,
                        state_after,
                        arrival.detail.clone(),
                        now,
                    ));
                    let context = SagaContext {
                        id: row.id,
                        definition: &definition,
                        payload: &row.payload,
                        state: state_after,
                        traceparent: arrival
                            .traceparent
                            .as_deref()
                            .or(row.traceparent.as_deref()),
                    };
                    writes.effects(
                        &self.topics,
                        &context,
                        &transition.actions,
                        row.created_at,
                        now,
                    );
                    settle(writes, &arrival, "applied".to_owned());
                    state = transition.state;
                    changed = true;
                }
                saga::Outcome::Ignored { reason } => {
                    if matches!(arrival.input, Input::Tick) {
                        // Nothing was due: the timer column is brought back in line with
                        // the state, so that the timer loop does not pick the saga up again.
                        timer_stale = true;
                    } else if matches!(
                        arrival.input,
                        Input::CancelRequested
                            | Input::RetryRequested
                            | Input::ResolveRequested
                            | Input::Signal { .. }
                    ) {
                        writes.refused = Some((state.status, reason.clone()));
                    } else {
                        let mut detail = arrival.detail.clone();
                        detail["ignored"] = json!(reason);
                        writes.history.push(history(
                            row.id,
                            arrival.kind,
                            arrival.step,
                            arrival.attempt,
                            &state,
                            detail,
                            now,
                        ));
                        tracing::info!(saga.id = %row.id, reason = %reason, "input ignored");
                    }
                    settle(writes, &arrival, format!("ignored: {reason}"));
                }
            }
        }
        if changed || timer_stale {
            let mut next_timer_at = state.next_timer();
            if !changed && next_timer_at.is_some_and(|at| at <= now) {
                // The core found nothing due at a time its own state calls due. Never hand
                // the timer loop the same overdue row again: it would come first in every
                // batch and hide the others. Look again a little later.
                tracing::warn!(saga.id = %row.id, "a due timer with nothing to do; deferred");
                next_timer_at = Some(now + chrono::TimeDelta::seconds(5));
            }
            writes.rows.push(RowChange {
                id: row.id,
                version: row.version,
                status: state.status.as_str().to_owned(),
                current_step: current_step(&state),
                state: encode_state(&state),
                next_timer_at,
                quarantine: None,
                updated_at: if changed { now } else { row.updated_at },
            });
        }
    }

    /// Sets a saga aside with the reason: no timer fires for it and no input moves it.
    fn quarantine(&self, row: &SagaRow, reason: &str, now: DateTime<Utc>, writes: &mut Writes) {
        tracing::error!(saga.id = %row.id, reason, "saga quarantined");
        writes.rows.push(RowChange {
            id: row.id,
            version: row.version,
            status: row.status.clone(),
            current_step: row.current_step,
            state: row.state.clone(),
            next_timer_at: None,
            quarantine: Some(reason.to_owned()),
            updated_at: now,
        });
        writes.history.push(NewHistory {
            saga_id: row.id,
            kind: "saga.quarantined".to_owned(),
            step: None,
            attempt: None,
            status: row.status.clone(),
            detail: json!({ "reason": reason }),
            recorded_at: now,
        });
    }

    /// Counts what a committed batch did.
    pub(crate) fn record(&self, writes: &Writes) {
        for (status, age) in &writes.finished {
            self.metrics.saga_finished(*status, *age);
        }
        let quarantined = writes.rows.iter().filter(|row| row.quarantine.is_some());
        self.metrics.quarantined.inc_by(quarantined.count() as u64);
    }
}

/// Retry backoff jitter for the pure core.
fn jitter() -> f64 {
    rand::random::<f64>()
}
