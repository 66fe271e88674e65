//! Property tests: random but plausible input sequences (current and stale attempts, ticks at
//! advancing times, cancels, operator retries, fence answers, signals) against the invariants
//! the engine relies on, for the shipped definitions and for generated ones: any number of
//! stages, each a task (with or without a compensation), a parallel group, a wait or a
//! signal, with or without a pivot followed by any mix of forward-only tasks and signals
//! and waits. Generated definitions are documents that registration accepts. Every run
//! ends final or parked (FAILED, then retried by an operator until final), nothing that
//! may have taken effect is left undone in a saga that ends undone (i), and a cancel is
//! honoured or refused, never half-applied (j).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use serde_json::json;

use super::super::definitions::{COUPON_USE, ORDER};
use super::super::document;
use super::super::{
    Action, CompensationPhase, Definition, FailureKind, ForwardPhase, Input, SagaState, Status,
    StepKind, start, transition,
};
use super::epoch;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Reply {
    Succeeded,
    Rejected,
    Retryable,
    CompensationSucceeded,
    CompensationFailed,
    /// A fence answer: the original never took effect, or it did before the fence.
    FenceHeld,
    FenceFoundApplied,
}

#[derive(Debug, Clone)]
pub(crate) enum Move {
    /// `step: None` aims at the step currently in progress, so most replies are relevant;
    /// `attempt: None` answers its latest attempt, `Some` may well be stale.
    Reply {
        step: Option<usize>,
        attempt: Option<u32>,
        reply: Reply,
    },
    /// A tick at whatever time has passed, often with nothing due.
    Tick,
    /// The timer loop firing: time jumps to the next timer (if any), then a tick.
    TimerFires,
    Cancel,
    Retry,
    Resolve,
    /// A signal for the signal step in progress (`None`) or for whatever step `Some` names.
    Signal(Option<usize>),
}

/// `flaky` (0..=3) sets how often compensations fail, so that some runs exhaust a budget
/// (and park as FAILED) while others mostly finish.
fn a_move(flaky: u32) -> impl Strategy<Value = Move> {
    let reply = prop_oneof![
        4 => Just(Reply::Succeeded),
        1 => Just(Reply::Rejected),
        1 + flaky => Just(Reply::Retryable),
        3 => Just(Reply::CompensationSucceeded),
        1 + 6 * flaky => Just(Reply::CompensationFailed),
        2 => Just(Reply::FenceHeld),
        1 => Just(Reply::FenceFoundApplied),
    ];
    let step = prop_oneof![3 => Just(None), 1 => (0usize..8).prop_map(Some)];
    let attempt = prop_oneof![4 => Just(None), 1 => (0u32..12).prop_map(Some)];
    prop_oneof![
        8 => (step, attempt, reply).prop_map(|(step, attempt, reply)| Move::Reply { step, attempt, reply }),
        2 => Just(Move::Tick),
        3 => Just(Move::TimerFires),
        1 => Just(Move::Cancel),
        1 => Just(Move::Retry),
        1 => Just(Move::Resolve),
        2 => prop_oneof![3 => Just(None), 1 => (0usize..8).prop_map(Some)].prop_map(Move::Signal),
    ]
}

/// Moves, each with the milliseconds that pass before it (mostly short, sometimes past a
/// deadline) and the jitter it sees.
pub(crate) fn timed_moves() -> impl Strategy<Value = Vec<(Move, i64, f64)>> {
    (0u32..4).prop_flat_map(|flaky| {
        let pause = prop_oneof![4 => 0i64..2_000, 1 => 0i64..40_000];
        prop::collection::vec((a_move(flaky), pause, 0.0f64..1.0), 1..150)
    })
}

fn step_in_progress(state: &SagaState) -> usize {
    state
        .steps
        .iter()
        .position(|step| {
            step.next_timer().is_some()
                || step.compensation == CompensationPhase::Exhausted
                || step.forward == ForwardPhase::InFlight
        })
        .unwrap_or(0)
}

/// The signal a `Move::Signal` sends: the waiting signal step's, or any step's name.
pub(crate) fn signal_input(
    definition: &Definition,
    state: &SagaState,
    step: Option<usize>,
) -> Input {
    let waiting = || {
        definition
            .steps
            .iter()
            .zip(&state.steps)
            .position(|(step, state)| {
                matches!(step.kind, StepKind::Signal(_)) && state.forward == ForwardPhase::InFlight
            })
    };
    let name = step
        .or_else(waiting)
        .and_then(|index| definition.steps.get(index))
        .map_or_else(|| "nothing".to_owned(), |step| step.name.clone());
    Input::Signal {
        name,
        payload: json!({ "signalled": true }),
    }
}

pub(crate) fn to_input(
    state: &SagaState,
    step: Option<usize>,
    attempt: Option<u32>,
    reply: Reply,
) -> Input {
    let step = step.unwrap_or_else(|| step_in_progress(state));
    let current = state.steps.get(step);
    let forward = attempt.unwrap_or_else(|| current.map_or(1, |s| s.attempt));
    let compensation = attempt.unwrap_or_else(|| current.map_or(1, |s| s.compensation_attempt));
    let reason = "random".to_owned();
    match reply {
        Reply::Succeeded => Input::StepSucceeded {
            step,
            attempt: forward,
            output: json!({ "n": forward }),
        },
        Reply::Rejected => Input::StepFailed {
            step,
            attempt: forward,
            kind: FailureKind::Rejected,
            reason,
        },
        Reply::Retryable => Input::StepFailed {
            step,
            attempt: forward,
            kind: FailureKind::Retryable,
            reason,
        },
        Reply::CompensationSucceeded => Input::CompensationSucceeded {
            step,
            attempt: compensation,
        },
        Reply::CompensationFailed => Input::CompensationFailed {
            step,
            attempt: compensation,
            reason,
        },
        Reply::FenceHeld => Input::StepFenced {
            step,
            attempt: compensation,
            applied: None,
        },
        Reply::FenceFoundApplied => Input::StepFenced {
            step,
            attempt: compensation,
            applied: Some(json!({ "late": true })),
        },
    }
}

/// Everything the invariants need to remember across a run.
#[derive(Default)]
struct Observer {
    dispatched: HashSet<(usize, u32, &'static str)>,
    first_dispatch: Vec<usize>,
    first_compensation: Vec<usize>,
    terminal: Option<SagaState>,
    /// Set once the pivot succeeded: nothing may be undone from then on.
    past_pivot: bool,
}

impl Observer {
    fn check(
        &mut self,
        definition: &Definition,
        before: &SagaState,
        after: &SagaState,
        actions: &[Action],
        applied: bool,
    ) {
        if let Some(terminal) = &self.terminal {
            assert!(!applied && after == terminal, "(c) terminal state changed");
        }
        if !applied {
            assert!(
                after == before && actions.is_empty(),
                "ignored input had an effect"
            );
        }
        for (position, action) in actions.iter().enumerate() {
            match action {
                Action::Resend { step, attempt, .. } => {
                    assert!(
                        self.dispatched.contains(&(*step, *attempt, "forward")),
                        "resend of {step}#{attempt}, which was never sent"
                    );
                    assert_eq!(after.steps[*step].forward, ForwardPhase::InFlight);
                }
                Action::Dispatch { step, attempt, .. } => {
                    assert!(
                        self.dispatched.insert((*step, *attempt, "forward")),
                        "(b) forward {step}#{attempt} twice"
                    );
                    if !self.first_dispatch.contains(step) {
                        self.first_dispatch.push(*step);
                    }
                }
                Action::Compensate { step, attempt, .. } | Action::Fence { step, attempt, .. } => {
                    assert!(!self.past_pivot, "(g) compensating {step} past the pivot");
                    assert!(
                        self.dispatched.insert((*step, *attempt, "compensation")),
                        "(b) compensation {step}#{attempt} twice"
                    );
                    self.check_compensation_order(definition, after, *step);
                    check_fenced_past(definition, after, *step + 1);
                }
                Action::ScheduleTimer { at } => assert_eq!(Some(*at), after.next_timer()),
                Action::Finish(status) => {
                    if matches!(status, Status::Compensated | Status::Cancelled) {
                        check_fenced_past(definition, after, 0);
                    }
                    assert_eq!(position + 1, actions.len(), "Finish is not last");
                    assert_eq!(*status, after.status);
                }
                Action::Emit(_) => {}
            }
        }
        if after.status == Status::Running {
            // A fence that found its step applied turns the saga forward again (a pivot):
            // a later compensation starts a new newest-first sequence.
            self.first_compensation.clear();
        }
        if after.status == Status::Failed {
            let exhausted = after
                .steps
                .iter()
                .zip(&definition.steps)
                .any(|(state, step)| {
                    state.compensation == CompensationPhase::Exhausted
                        && step.task().is_some_and(|task| {
                            state.compensation_attempts_in_budget
                                >= task.compensation_retry.max_attempts
                        })
                });
            // ... or a forward-only step that spent its own budget (attempts or sends).
            let parked_forward = after
                .steps
                .iter()
                .zip(&definition.steps)
                .any(|(state, step)| {
                    step.forward_only
                        && state.forward == ForwardPhase::Failed
                        && step.task().is_some_and(|task| {
                            let used = state.attempt.saturating_sub(state.forward_budget_from);
                            !task.retry.allows_another_attempt(used)
                                || !task.retry.allows_another_attempt(state.deliveries)
                        })
                });
            assert!(
                exhausted || parked_forward,
                "(d) FAILED without an exhausted compensation or forward budget"
            );
        }
        if after.status == Status::Completed {
            assert!(
                after
                    .steps
                    .iter()
                    .all(|s| s.forward == ForwardPhase::Succeeded),
                "(e)"
            );
        }
        // One compensation at a time; forward work only in one stage, and only while RUNNING
        // (no branch is left running once the saga turned around or ended).
        let undoing = after
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    s.compensation,
                    CompensationPhase::InFlight | CompensationPhase::AwaitingRetry
                )
            })
            .count();
        assert!(undoing <= 1, "more than one compensation in progress");
        let going: HashSet<usize> = after
            .steps
            .iter()
            .zip(&definition.steps)
            .filter(|(s, _)| {
                matches!(
                    s.forward,
                    ForwardPhase::InFlight | ForwardPhase::AwaitingRetry
                )
            })
            .map(|(_, step)| step.stage)
            .collect();
        assert!(going.len() <= 1, "(h) forward work in stages {going:?}");
        if after.status != Status::Running {
            assert!(
                going.is_empty(),
                "(h) a branch left running while {}",
                after.status
            );
        }
        // Past the pivot: it succeeded while the saga was going forward. (A late success
        // that arrives while its fence is out is not yet past it: the fence's answer
        // turns the saga forward.)
        let pivot_done = definition
            .steps
            .iter()
            .zip(&after.steps)
            .any(|(step, state)| step.pivot && state.forward == ForwardPhase::Succeeded);
        if self.past_pivot || (pivot_done && after.status == Status::Running) {
            self.past_pivot = true;
            // Going forward, done, or parked on a forward-only step that spent its budget
            // (then resolved by hand, perhaps): never undoing anything.
            assert!(
                matches!(
                    after.status,
                    Status::Running | Status::Completed | Status::Failed | Status::Resolved
                ),
                "(g) past the pivot, yet {}",
                after.status
            );
            assert!(
                after
                    .steps
                    .iter()
                    .all(|s| s.compensation == CompensationPhase::NotStarted
                        || s.compensation == CompensationPhase::Compensated),
                "(g) past the pivot, a compensation is going"
            );
        }
        let stored: SagaState =
            serde_json::from_value(serde_json::to_value(after).expect("json")).expect("state");
        assert_eq!(&stored, after);
        if after.status.is_terminal() {
            assert_eq!(after.next_timer(), None);
            self.terminal = Some(after.clone());
        }
    }

    /// (a): compensations go newest dispatch first, and only once every newer step whose
    /// effect may exist has been undone.
    fn check_compensation_order(
        &mut self,
        definition: &Definition,
        after: &SagaState,
        step: usize,
    ) {
        let order: HashMap<usize, usize> = self
            .first_dispatch
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i))
            .collect();
        let rank = order[&step];
        assert!(
            after.steps[step].may_have_effect(),
            "compensating a step with no effect"
        );
        for (newer, _) in order.iter().filter(|(_, r)| **r > rank) {
            let state = &after.steps[*newer];
            if state.may_have_effect() && definition.steps[*newer].compensation().is_some() {
                assert_eq!(
                    state.compensation,
                    CompensationPhase::Compensated,
                    "(a) {step} before {newer}"
                );
            }
        }
        if !self.first_compensation.contains(&step) {
            if let Some(previous) = self.first_compensation.last() {
                assert!(
                    order[previous] > rank,
                    "(a) compensation order {:?} then {step}",
                    self.first_compensation
                );
            }
            self.first_compensation.push(step);
        }
    }
}

/// (f) The fence rule: when the saga compensates past a step (undoes an older one, or ends
/// as undone), that step can no longer take effect: it was never sent, every attempt was
/// answered with a failure, its fence held, its compensation finished, or it is a known
/// success that has no compensation (a pivot whose effect stands).
fn check_fenced_past(definition: &Definition, after: &SagaState, from: usize) {
    for (index, state) in after.steps.iter().enumerate().skip(from) {
        let settled = state.attempt == 0
            || matches!(state.forward, ForwardPhase::Failed | ForwardPhase::Fenced)
            || state.compensation == CompensationPhase::Compensated
            || (state.forward == ForwardPhase::Succeeded
                && definition.steps[index].compensation().is_none());
        assert!(
            settled,
            "(f) compensating past step {index} while it may still take effect: {state:?}"
        );
    }
}

/// After the random part, a cooperative world (every reply a success, timers honoured,
/// operator retries) must bring any saga to a final status: nothing gets stuck.
fn finish_cooperatively(
    definition: &Definition,
    observer: &mut Observer,
    mut state: SagaState,
    mut now: DateTime<Utc>,
) {
    for _ in 0..200 {
        if state.status.is_terminal() {
            check_nothing_kept(definition, &state);
            return;
        }
        let index = step_in_progress(&state);
        let step = &state.steps[index];
        let kind = &definition.steps[index].kind;
        let input = match (state.status, step.forward, step.compensation) {
            (Status::Failed, _, _) => Input::RetryRequested,
            (_, ForwardPhase::InFlight, _) if matches!(kind, StepKind::Signal(_)) => {
                signal_input(definition, &state, Some(index))
            }
            (_, ForwardPhase::InFlight, _) if matches!(kind, StepKind::Task(_)) => {
                to_input(&state, Some(index), None, Reply::Succeeded)
            }
            (_, _, CompensationPhase::InFlight)
                if definition.steps[index].compensation().is_none() =>
            {
                to_input(&state, Some(index), None, Reply::FenceHeld)
            }
            (_, _, CompensationPhase::InFlight) => {
                to_input(&state, Some(index), None, Reply::CompensationSucceeded)
            }
            _ => {
                now = now.max(state.next_timer().unwrap_or(now));
                Input::Tick
            }
        };
        let result = transition(definition, &state, &input, now, 0.5);
        observer.check(
            definition,
            &state,
            &result.state,
            &result.actions,
            result.is_applied(),
        );
        assert!(
            result.is_applied(),
            "cooperative {input:?} ignored: {:?}",
            result.outcome
        );
        state = result.state;
    }
    panic!("saga did not finish: {state:?}");
}

fn run_random(definition: &Definition, moves: Vec<(Move, i64, f64)>) {
    let mut now = epoch();
    let started = start(definition, &json!({ "at": epoch().to_rfc3339() }), now);
    let mut observer = Observer::default();
    observer.check(
        definition,
        &started.state,
        &started.state,
        &started.actions,
        true,
    );
    let mut state = started.state;
    for (step, pause_ms, jitter) in moves {
        now += TimeDelta::milliseconds(pause_ms);
        let input = match step {
            Move::Reply {
                step,
                attempt,
                reply,
            } => to_input(&state, step, attempt, reply),
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
        let result = transition(definition, &state, &input, now, jitter);
        observer.check(
            definition,
            &state,
            &result.state,
            &result.actions,
            result.is_applied(),
        );
        if matches!(input, Input::CancelRequested) {
            check_cancel(&state, &result.state, result.is_applied());
        }
        state = result.state;
    }
    finish_cooperatively(definition, &mut observer, state, now);
}

/// (j) A cancel is honoured (the saga turns around, and says why) or refused (nothing
/// changes), never half-applied.
fn check_cancel(before: &SagaState, after: &SagaState, applied: bool) {
    if applied {
        assert!(
            after.cancel_requested,
            "(j) a cancel applied but not recorded"
        );
        assert!(
            matches!(
                after.status,
                Status::Compensating | Status::Cancelled | Status::Failed
            ),
            "(j) a cancel applied, yet the saga is {}",
            after.status
        );
    } else {
        assert_eq!(before, after, "(j) a refused cancel changed the saga");
    }
}

/// (i) Nothing is charged without being refunded or kept: a saga that ends undone
/// (COMPENSATED or CANCELLED) has undone every step with an undo that may have taken
/// effect; a step without one is known either way (fenced before it took effect, or
/// succeeded and kept, as the flow says), never left unknown.
fn check_nothing_kept(definition: &Definition, state: &SagaState) {
    if !matches!(state.status, Status::Compensated | Status::Cancelled) {
        return;
    }
    for (step, step_state) in definition.steps.iter().zip(&state.steps) {
        match step.compensation() {
            Some(_) if step_state.may_have_effect() => assert_eq!(
                step_state.compensation,
                CompensationPhase::Compensated,
                "(i) {} may have taken effect, yet the saga ended {} without undoing it",
                step.name,
                state.status
            ),
            Some(_) => {}
            None => assert_ne!(
                step_state.forward,
                ForwardPhase::OutcomeUnknown,
                "(i) {} ended {} with its outcome unknown",
                step.name,
                state.status
            ),
        }
    }
}

/// One stage of a generated flow, before the pivot (`undoable` picks compensations).
#[derive(Debug, Clone)]
enum Stage {
    Task { undoable: bool },
    Parallel(usize),
    Wait,
    Signal,
}

fn a_stage() -> impl Strategy<Value = Stage> {
    prop_oneof![
        4 => any::<bool>().prop_map(|undoable| Stage::Task { undoable }),
        2 => (2usize..=3).prop_map(Stage::Parallel),
        1 => Just(Stage::Wait),
        1 => Just(Stage::Signal),
    ]
}

fn task(name: &str, undoable: bool, extra: serde_json::Value) -> serde_json::Value {
    let mut task = json!({
        "name": name, "kind": "task", "role": "r", "command": format!("r.{name}"),
        "deadline_ms": 30_000, "attempt_timeout_ms": 5_000
    });
    if undoable {
        task["compensation"] = json!(format!("r.undo_{name}"));
    }
    if let (Some(task), serde_json::Value::Object(extra)) = (task.as_object_mut(), extra) {
        task.extend(extra);
    }
    task
}

/// A definition of one to five stages of every kind, optionally with a pivot (a task
/// without compensation, or a signal) followed by any mix of forward-only tasks and
/// signals and waits. Built as a document and read by `document::parse`, so it is one
/// registration would accept (which refuses forward-only steps before the pivot and in
/// parallel stages: the shapes the engine cannot finish).
pub(crate) fn a_definition() -> impl Strategy<Value = Definition> {
    let before = prop::collection::vec(a_stage(), 1..=4);
    let pivot = prop_oneof![2 => Just(None), 1 => any::<bool>().prop_map(Some)];
    let after = prop::collection::vec(0u8..4, 0..=3);
    (before, pivot, after).prop_map(|(before, pivot, after)| {
        let mut steps = Vec::new();
        let mut n = 0;
        let mut name = || {
            n += 1;
            format!("s{n}")
        };
        for stage in before {
            steps.push(match stage {
                Stage::Task { undoable } => task(&name(), undoable, json!({})),
                Stage::Parallel(count) => json!({
                    "name": name(), "kind": "parallel",
                    "tasks": (0..count).map(|_| task(&name(), true, json!({}))).collect::<Vec<_>>()
                }),
                Stage::Wait => json!({ "name": name(), "kind": "wait", "until": "/at" }),
                Stage::Signal => json!({
                    "name": name(), "kind": "signal", "scope": "operator", "timeout_ms": 20_000
                }),
            });
        }
        if let Some(task_pivot) = pivot {
            steps.push(if task_pivot {
                task(&name(), false, json!({ "pivot": true }))
            } else {
                json!({
                    "name": name(), "kind": "signal", "scope": "operator",
                    "timeout_ms": 20_000, "pivot": true
                })
            });
            // Past the pivot, any mix of what the format allows there: forward-only tasks
            // (small budgets, so runs park and get retried), waits of both kinds, and
            // forward-only signals (which wait for ever).
            for kind in after {
                steps.push(match kind {
                    0 => task(
                        &name(),
                        false,
                        json!({ "forward_only": true, "retry": { "max_attempts": 2 } }),
                    ),
                    1 => json!({ "name": name(), "kind": "wait", "duration_ms": 3_000 }),
                    2 => json!({ "name": name(), "kind": "wait", "until": "/at" }),
                    _ => json!({
                        "name": name(), "kind": "signal", "scope": "client", "forward_only": true
                    }),
                });
            }
        }
        let document = json!({ "name": "generated", "version": 1, "input": {}, "steps": steps });
        document::parse(&document, std::time::Duration::ZERO)
            .unwrap_or_else(|faults| panic!("generated document refused: {faults:?}"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_definition_and_input_sequence(
        definition in a_definition(),
        moves in timed_moves(),
    ) {
        run_random(&definition, moves);
    }

    #[test]
    fn order_invariants_hold_for_any_input_sequence(moves in timed_moves()) {
        run_random(&ORDER, moves);
    }

    #[test]
    fn coupon_use_invariants_hold_for_any_input_sequence(moves in timed_moves()) {
        run_random(&COUPON_USE, moves);
    }
}
