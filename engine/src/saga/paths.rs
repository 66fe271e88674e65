//! The compensation paths of a definition: for every point where the flow can fail, what
//! the saga undoes and how it ends, found by running the transition function itself with
//! a scripted participant (every step before the failure succeeds, every compensation and
//! fence succeeds). So the paths shown are the ones the engine takes, not a second model.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value, json};

use super::action::Action;
use super::definition::{Definition, StepKind, Wake};
use super::input::{FailureKind, Input};
use super::state::{CompensationPhase, ForwardPhase, SagaState, Status};
use super::transition::{start, transition};

/// What follows one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The step that fails.
    pub step: String,
    /// How it fails: `rejected` (a task's participant refuses) or `timed_out` (no signal).
    pub failure: &'static str,
    /// What the saga sends to undo, in order.
    pub undo: Vec<Undo>,
    /// How the saga ends.
    pub ends: Status,
}

/// One compensation (or fence) the saga sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undo {
    pub step: String,
    /// The compensation command, or `fence` for a task without one.
    pub command: String,
}

/// Every failure point of `definition` with its path. Steps past the pivot cannot fail
/// (they are retried until they succeed), and waits cannot fail: neither has a path.
pub fn paths(definition: &Definition) -> Vec<Path> {
    let mut found = Vec::new();
    let mut past_pivot = false;
    for (index, step) in definition.steps.iter().enumerate() {
        if step.forward_only || past_pivot {
            continue;
        }
        let failure = match &step.kind {
            StepKind::Task(_) => "rejected",
            StepKind::Signal(signal) if signal.timeout.is_some() => "timed_out",
            StepKind::Signal(_) | StepKind::Wait(_) => continue,
        };
        if let Some(path) = run(definition, index, failure) {
            found.push(path);
        }
        past_pivot |= step.pivot;
    }
    found
}

fn epoch() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0)
        .single()
        .unwrap_or_default()
}

/// An input that satisfies the waits' pointers (the schema is not needed to simulate).
fn stub_input(definition: &Definition) -> Value {
    let mut input = Value::Object(Map::new());
    for step in &definition.steps {
        if let StepKind::Wait(Wake::At(pointer)) = &step.kind {
            let mut at = &mut input;
            let segments: Vec<&str> = pointer.split('/').skip(1).collect();
            for (position, segment) in segments.iter().enumerate() {
                let Value::Object(map) = at else { break };
                let value = if position + 1 == segments.len() {
                    json!(epoch().to_rfc3339())
                } else {
                    Value::Object(Map::new())
                };
                at = map.entry((*segment).to_owned()).or_insert(value);
            }
        }
    }
    input
}

fn run(definition: &Definition, failing: usize, failure: &'static str) -> Option<Path> {
    let mut now = epoch();
    let started = start(definition, &stub_input(definition), now);
    let mut state = started.state;
    let mut undo = Vec::new();
    // Every step is visited at most a few times; the bound only guards against a bug.
    for _ in 0..definition.steps.len() * 8 + 8 {
        if state.status.is_terminal() || state.status == Status::Failed {
            return Some(Path {
                step: definition.steps[failing].name.clone(),
                failure,
                undo,
                ends: state.status,
            });
        }
        let input = next_input(definition, &state, failing, &mut now)?;
        let result = transition(definition, &state, &input, now, 0.0);
        for action in &result.actions {
            match action {
                Action::Compensate { step, command, .. } => undo.push(Undo {
                    step: definition.steps[*step].name.clone(),
                    command: command.clone(),
                }),
                Action::Fence { step, .. } => undo.push(Undo {
                    step: definition.steps[*step].name.clone(),
                    command: "fence".to_owned(),
                }),
                _ => {}
            }
        }
        state = result.state;
    }
    None
}

/// The scripted world: the failing step fails once every step before it (in index order)
/// has succeeded; everything else succeeds; compensations and fences succeed.
fn next_input(
    definition: &Definition,
    state: &SagaState,
    failing: usize,
    now: &mut DateTime<Utc>,
) -> Option<Input> {
    for (index, step_state) in state.steps.iter().enumerate() {
        let step = &definition.steps[index];
        if step_state.compensation == CompensationPhase::InFlight {
            let attempt = step_state.compensation_attempt;
            return Some(match step.compensation() {
                Some(_) => Input::CompensationSucceeded {
                    step: index,
                    attempt,
                },
                None => Input::StepFenced {
                    step: index,
                    attempt,
                    applied: None,
                },
            });
        }
    }
    let in_flight = |index: usize| state.steps[index].forward == ForwardPhase::InFlight;
    let candidate = (0..state.steps.len())
        .filter(|index| in_flight(*index))
        .find(|index| *index != failing)
        .filter(|index| *index < failing || !in_flight(failing));
    let index = match candidate {
        Some(index) => index,
        None if in_flight(failing) => failing,
        None => return None,
    };
    let step = &definition.steps[index];
    let attempt = state.steps[index].attempt;
    Some(match (&step.kind, index == failing) {
        (StepKind::Task(_), false) => Input::StepSucceeded {
            step: index,
            attempt,
            output: Value::Null,
        },
        (StepKind::Task(_), true) => Input::StepFailed {
            step: index,
            attempt,
            kind: FailureKind::Rejected,
            reason: "scripted failure".to_owned(),
        },
        (StepKind::Signal(_), false) => Input::Signal {
            name: step.name.clone(),
            payload: Value::Null,
        },
        (StepKind::Wait(_), _) | (StepKind::Signal(_), true) => {
            *now = state.steps[index].deadline_at.unwrap_or(*now).max(*now);
            Input::Tick
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::saga::definitions::{COUPON_USE, ORDER};
    use crate::saga::document::parse;

    fn shape(paths: &[Path]) -> Vec<String> {
        paths
            .iter()
            .map(|path| {
                let undo: Vec<String> = path
                    .undo
                    .iter()
                    .map(|undo| format!("{}:{}", undo.step, undo.command))
                    .collect();
                format!(
                    "{} {} -> [{}] {}",
                    path.step,
                    path.failure,
                    undo.join(", "),
                    path.ends
                )
            })
            .collect()
    }

    #[test]
    fn the_order_flow_undoes_newest_first_from_every_failure() {
        assert_eq!(
            shape(&paths(&ORDER)),
            [
                "reserve_stock rejected -> [] COMPENSATED",
                "charge_payment rejected -> [reserve_stock:inventory.release] COMPENSATED",
                "prepare_shipment rejected -> [charge_payment:payment.refund, reserve_stock:inventory.release] COMPENSATED",
            ]
        );
        assert_eq!(
            shape(&paths(&COUPON_USE)),
            [
                "claim_coupon rejected -> [] COMPENSATED",
                "vendor_payout rejected -> [claim_coupon:coupon.unclaim] COMPENSATED",
            ]
        );
    }

    #[test]
    fn a_parallel_sibling_in_flight_is_compensated_and_nothing_past_the_pivot_fails() {
        let document = json!({
            "name": "click_and_collect", "version": 1, "input": {},
            "steps": [
                { "name": "hold", "kind": "parallel", "tasks": [
                    { "name": "reserve", "kind": "task", "role": "inventory", "command": "inventory.reserve", "compensation": "inventory.release" },
                    { "name": "charge", "kind": "task", "role": "payment", "command": "payment.charge", "compensation": "payment.refund" }
                ]},
                { "name": "picked_up", "kind": "signal", "scope": "operator", "timeout_ms": 3600000, "pivot": true },
                { "name": "settle", "kind": "wait", "until": "/award_after" },
                { "name": "award", "kind": "task", "role": "loyalty", "command": "loyalty.award", "forward_only": true }
            ]
        });
        let definition = parse(&document, std::time::Duration::from_secs(60)).expect("valid");
        assert_eq!(
            shape(&paths(&definition)),
            [
                "reserve rejected -> [charge:payment.refund] COMPENSATED",
                "charge rejected -> [reserve:inventory.release] COMPENSATED",
                "picked_up timed_out -> [charge:payment.refund, reserve:inventory.release] COMPENSATED",
            ]
        );
    }
}
