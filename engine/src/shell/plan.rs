//! The planning function beside the state machine: for locked saga rows and the inputs
//! that arrived for them (replies, timer ticks, operator actions, signals: all alike), it
//! runs the pure core ([`crate::saga::transition`]) in memory, several inputs to one saga
//! in their order, and returns what to write ([`Writes`]): the new rows, history entries,
//! outbox messages, the reply inbox's outcomes. No I/O: the definitions come from the
//! catalog's memory and the retry jitter from the caller, so a plan is a function of its
//! arguments. The shell's verbs ([`super::Engine`]) lock, plan and act.
//!
//! A saga that cannot be decoded or moved is quarantined inside the same plan (its row
//! flagged with the reason, a history entry); the other sagas of the batch move on.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use platform::contract::Topics;
use serde_json::json;
use uuid::Uuid;

use super::batch::{Arrival, RowChange, Writes};
use super::catalog::Catalog;
use super::codec::{current_step, decode_state, definition_of, encode_state};
use super::messages::history;
use super::store::{NewHistory, SagaRow};
use super::{Error, SagaContext};
use crate::saga::{self, Input};

/// What a plan reads besides the rows and the inputs.
pub(crate) struct Planner<'a> {
    pub catalog: &'a Catalog,
    pub topics: &'a Topics,
    /// Retry backoff jitter in [0, 1).
    pub jitter: &'a (dyn Fn() -> f64 + Sync),
}

impl Planner<'_> {
    /// Runs `arrivals` against the locked `rows` and returns what to write.
    /// Arrivals for a saga not among `rows` are settled as `ignored: unknown saga`.
    pub(crate) fn plan(
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
            self.row(row, arrivals, now, &mut writes);
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

    fn row(&self, row: &SagaRow, arrivals: Vec<Arrival>, now: DateTime<Utc>, writes: &mut Writes) {
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
        let decoded = definition_of(self.catalog, row)
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
                quarantine(row, &reason, now, writes);
                for arrival in &arrivals {
                    let outcome = format!("ignored: saga {} quarantined: {reason}", row.id);
                    settle(writes, arrival, outcome);
                }
                return;
            }
        };
        let mut changed = false;
        let mut timer_stale = false;
        // A tick comes only when the stored timer is due: it must then be set anew.
        let ticked = arrivals
            .iter()
            .any(|arrival| matches!(arrival.input, Input::Tick));
        for arrival in arrivals {
            let transition =
                saga::transition(&definition, &state, &arrival.input, now, (self.jitter)());
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
                        self.topics,
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
                        // Nothing was due: the stored timer is brought back in line with
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
                timer_exact: ticked,
                quarantine: None,
                updated_at: if changed { now } else { row.updated_at },
            });
        }
    }
}

/// Sets a saga aside with the reason: no timer fires for it and no input moves it.
fn quarantine(row: &SagaRow, reason: &str, now: DateTime<Utc>, writes: &mut Writes) {
    tracing::error!(saga.id = %row.id, reason, "saga quarantined");
    writes.rows.push(RowChange {
        id: row.id,
        version: row.version,
        status: row.status.clone(),
        current_step: row.current_step,
        state: row.state.clone(),
        next_timer_at: None,
        timer_exact: true,
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

#[cfg(test)]
mod tests {
    //! A version change while sagas run: two versions of one flow are loaded, the default
    //! is the newer one, and a saga on each is driven by random inputs through the planner.
    //! Each must keep to its own version's shape: never quarantined, never a command of the
    //! other version, its stored state always the length of its own steps.

    use std::collections::HashSet;

    use chrono::TimeDelta;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::saga::tests::epoch;
    use crate::saga::tests::properties::{Move, a_definition, signal_input, timed_moves, to_input};
    use crate::saga::{Definition, StepKind};

    /// The same flow's next version: its commands renamed, so that a command of the wrong
    /// version is told apart even where the two shapes agree.
    fn next_version(mut definition: Definition) -> Definition {
        definition.version = 2;
        for step in &mut definition.steps {
            if let StepKind::Task(task) = &mut step.kind {
                task.command = format!("v2.{}", task.command);
                task.compensation = task.compensation.take().map(|c| format!("v2.{c}"));
            }
        }
        definition
    }

    fn commands(definition: &Definition) -> HashSet<String> {
        let mut names = HashSet::new();
        for step in &definition.steps {
            if let StepKind::Task(task) = &step.kind {
                names.insert(task.command.clone());
                names.extend(task.compensation.clone());
            }
        }
        names
    }

    fn started(id: u128, definition: &Definition) -> SagaRow {
        let now = epoch();
        let state = saga::start(definition, &json!({ "at": now.to_rfc3339() }), now).state;
        SagaRow {
            id: Uuid::from_u128(id),
            definition: definition.name.clone(),
            status: state.status.as_str().to_owned(),
            current_step: current_step(&state),
            payload: json!({ "at": now.to_rfc3339() }),
            state: encode_state(&state),
            version: 0,
            idempotency_key: None,
            created_at: now,
            updated_at: now,
            quarantine: None,
            traceparent: None,
            definition_version: i32::try_from(definition.version).unwrap(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn each_saga_finishes_on_the_version_it_started_on(
            old in a_definition(),
            moves in timed_moves(),
        ) {
            let new = next_version(old.clone());
            let catalog = Catalog::default();
            catalog.know_for_test(old.clone());
            catalog.know_for_test(new.clone());
            prop_assert_eq!(catalog.current("generated").unwrap().version, 2);
            let topics = Topics::new("versions").unwrap();
            let jitter = || 0.5;
            let planner = Planner { catalog: &catalog, topics: &topics, jitter: &jitter };
            let mut sagas = [(started(1, &old), &old), (started(2, &new), &new)];
            let mut now = epoch();
            for (turn, (mv, pause_ms, _)) in moves.into_iter().enumerate() {
                now += TimeDelta::milliseconds(pause_ms);
                let (row, definition) = &mut sagas[turn % 2];
                let state = decode_state(row).unwrap();
                let input = match mv {
                    Move::Reply { step, attempt, reply } => to_input(&state, step, attempt, reply),
                    Move::Tick => Input::Tick,
                    Move::TimerFires => {
                        now = now.max(state.next_timer().unwrap_or(now));
                        Input::Tick
                    }
                    Move::Cancel => Input::CancelRequested,
                    Move::Retry => Input::RetryRequested,
                    Move::Resolve => Input::ResolveRequested,
                    Move::Signal(step) => signal_input(definition, &state, step),
                };
                let writes = planner.plan(
                    std::slice::from_ref(row),
                    vec![Arrival::new(row.id, input, "test")],
                    now,
                );
                prop_assert_eq!(writes.quarantine(), None);
                let own = commands(definition);
                for message in writes.outbox.iter().filter(|m| m.topic.contains("commands")) {
                    let name = message.payload["name"].as_str().unwrap_or_default();
                    prop_assert!(
                        own.contains(name),
                        "saga on version {} sent {} of the other version",
                        definition.version,
                        name
                    );
                }
                if let Some(change) = writes.rows.first() {
                    row.state = change.state.clone();
                    row.status = change.status.clone();
                    row.current_step = change.current_step;
                    row.version += 1;
                    let state = decode_state(row).unwrap();
                    prop_assert_eq!(state.steps.len(), definition.steps.len());
                }
            }
        }
    }
}
