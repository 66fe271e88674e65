//! The transition function: `(definition, state, input, now, jitter) -> (state, actions)`.
//!
//! It is total: an input that does not fit the state (a stale attempt, a reply for a step
//! that is not waiting, anything sent to a finished saga) comes back `Ignored` with a reason
//! and the state untouched, because redelivered and late messages are normal in a system
//! built on at-least-once delivery. Time and randomness are arguments so that every outcome
//! can be replayed in a test.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::action::{Action, EventKind};
use super::definition::{Definition, StepKind, Wake};
use super::draft::{Draft, Ignored};
use super::input::Input;
use super::reply::{
    compensation_failed, compensation_succeeded, step_failed, step_fenced, step_succeeded,
};
use super::state::{CompensationPhase, ForwardPhase, SagaState, Status, StepState};

/// The result of feeding one input: the state to store and the actions to perform after the
/// store committed. When ignored, `state` equals the input state and `actions` is empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: SagaState,
    pub actions: Vec<Action>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Ignored { reason: String },
}

impl Transition {
    pub fn is_applied(&self) -> bool {
        self.outcome == Outcome::Applied
    }

    fn ignored(state: &SagaState, reason: String) -> Transition {
        Transition {
            state: state.clone(),
            actions: Vec::new(),
            outcome: Outcome::Ignored { reason },
        }
    }
}

/// Creates a saga of kind `definition` on `input` and starts its first stage. A wait that
/// ends at a time from the input reads it here; an input without it is refused (ignored,
/// with the reason), so the caller can report it.
pub fn start(definition: &Definition, input: &Value, now: DateTime<Utc>) -> Transition {
    let mut initial = SagaState {
        status: Status::Running,
        steps: vec![StepState::new(); definition.steps.len()],
        cancel_requested: false,
        failure: None,
    };
    for (step, state) in definition.steps.iter().zip(&mut initial.steps) {
        if let StepKind::Wait(Wake::At(pointer)) = &step.kind {
            match wake_time(input, pointer, now) {
                Ok(at) => state.wake_at = Some(at),
                Err(reason) => return Transition::ignored(&initial, reason),
            }
        }
    }
    let mut draft = Draft::new(definition, initial.clone(), now, 0.0);
    draft.emit(
        EventKind::SagaStarted,
        None,
        format!("saga {} started", definition.name),
    );
    match draft.begin_stage(0) {
        Ok(()) => draft.into_transition(None),
        Err(reason) => Transition::ignored(&initial, reason),
    }
}

/// How far ahead a wait's time from the input may lie: a caller's input must not park a
/// saga (and its rows) for centuries.
pub const WAIT_HORIZON: chrono::TimeDelta = chrono::TimeDelta::days(366);

/// The RFC 3339 time at `pointer` in the input, no later than [`WAIT_HORIZON`] from `now`.
fn wake_time(input: &Value, pointer: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = input
        .pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("input{pointer}: a wait needs an RFC 3339 time here"))?;
    let at = DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|err| format!("input{pointer}: `{text}` is not an RFC 3339 time ({err})"))?;
    if at > now + WAIT_HORIZON {
        return Err(format!(
            "input{pointer}: `{text}` is more than {} days ahead (the wait horizon)",
            WAIT_HORIZON.num_days()
        ));
    }
    Ok(at)
}

/// Applies one input to a saga of kind `definition`.
///
/// `jitter` in `[0, 1)` spreads retry backoffs (see `RetryPolicy::backoff`).
pub fn transition(
    definition: &Definition,
    state: &SagaState,
    input: &Input,
    now: DateTime<Utc>,
    jitter: f64,
) -> Transition {
    if state.status.is_terminal() {
        let reason = format!("saga is {}, which is final", state.status);
        return Transition::ignored(state, reason);
    }
    if state.steps.len() != definition.steps.len() {
        let reason = format!(
            "state has {} steps but definition {} has {}",
            state.steps.len(),
            definition.name,
            definition.steps.len()
        );
        return Transition::ignored(state, reason);
    }
    let mut draft = Draft::new(definition, state.clone(), now, jitter);
    let result = match input {
        Input::StepSucceeded {
            step,
            attempt,
            output,
        } => step_succeeded(&mut draft, *step, *attempt, output),
        Input::StepFailed {
            step,
            attempt,
            kind,
            reason,
        } => step_failed(&mut draft, *step, *attempt, *kind, reason),
        Input::CompensationSucceeded { step, attempt } => {
            compensation_succeeded(&mut draft, *step, *attempt)
        }
        Input::CompensationFailed {
            step,
            attempt,
            reason,
        } => compensation_failed(&mut draft, *step, *attempt, reason),
        Input::StepFenced {
            step,
            attempt,
            applied,
        } => step_fenced(&mut draft, *step, *attempt, applied.as_ref()),
        Input::Signal { name, payload } => signal(&mut draft, name, payload),
        Input::Tick => tick(&mut draft),
        Input::CancelRequested => cancel(&mut draft),
        Input::RetryRequested => retry(&mut draft),
        Input::ResolveRequested => resolve(&mut draft),
    };
    match result {
        Ok(()) => draft.into_transition(state.next_timer()),
        Err(reason) => Transition::ignored(state, reason),
    }
}

/// Handles every timer that is due by `now`, earliest first. Several can be due at once
/// when a parallel stage runs; handling one either clears its timer or moves it past `now`,
/// or ends the stage's forward progress, so the loop is bounded by the number of steps.
fn tick(draft: &mut Draft) -> Result<(), Ignored> {
    let now = draft.now;
    let mut handled = 0;
    while let Some(index) = due(&draft.state, now) {
        if handled > draft.state.steps.len() || draft.state.status.is_terminal() {
            break;
        }
        tick_step(draft, index)?;
        handled += 1;
    }
    if handled > 0 {
        return Ok(());
    }
    Err(match draft.state.next_timer() {
        Some(at) => format!("nothing due: next timer at {at}"),
        None => format!("nothing due: no timer set while {}", draft.state.status),
    })
}

fn due(state: &SagaState, now: DateTime<Utc>) -> Option<usize> {
    state
        .steps
        .iter()
        .enumerate()
        .filter_map(|(index, state)| state.next_timer().map(|at| (at, index)))
        .filter(|(at, _)| *at <= now)
        .min()
        .map(|(_, index)| index)
}

fn tick_step(draft: &mut Draft, index: usize) -> Result<(), Ignored> {
    let now = draft.now;
    let step = draft.step(index)?;
    let state = draft.step_state(index)?;
    let deadline_passed = state.deadline_at.is_some_and(|at| at <= now);
    let resend_due = state.resend_at.is_some_and(|at| at <= now);
    match (&step.kind, state.forward, state.compensation) {
        (StepKind::Wait(_), ForwardPhase::InFlight, _) => {
            state.forward = ForwardPhase::Succeeded;
            state.output = Some(serde_json::json!({ "woke_at": now }));
            state.clear_timers();
            draft.emit(
                EventKind::StepSucceeded,
                Some(index),
                format!("{}: wait over", step.name),
            );
            draft.step_done(index)
        }
        (StepKind::Signal(_), ForwardPhase::InFlight, _) => {
            state.forward = ForwardPhase::Failed;
            state.clear_timers();
            state.last_error = Some("no signal before the timeout".to_owned());
            let message = format!("{}: no signal before the timeout", step.name);
            draft.emit(EventKind::StepTimedOut, Some(index), message.clone());
            draft.begin_compensation(message)
        }
        (_, ForwardPhase::InFlight, _) if deadline_passed => {
            state.forward = ForwardPhase::OutcomeUnknown;
            state.clear_timers();
            state.last_error = Some("no reply before the step deadline".to_owned());
            let message = format!(
                "{} attempt {}: no reply by deadline",
                step.name, state.attempt
            );
            draft.emit(EventKind::StepTimedOut, Some(index), message.clone());
            draft.begin_compensation(message)
        }
        // Lost command or lost reply: the same command again, within the step deadline.
        (_, ForwardPhase::InFlight, _) if resend_due => draft.resend_forward(index),
        // Every attempt so far replied with a failure, so nothing is left to undo here.
        (_, ForwardPhase::AwaitingRetry, _) if deadline_passed => {
            state.forward = ForwardPhase::Failed;
            state.clear_timers();
            let message = format!(
                "{} passed its deadline before attempt {} could run",
                step.name,
                state.attempt + 1
            );
            draft.emit(EventKind::StepFailed, Some(index), message.clone());
            draft.begin_compensation(message)
        }
        (_, ForwardPhase::AwaitingRetry, _) => draft.dispatch_forward(index),
        (_, _, CompensationPhase::InFlight) if deadline_passed => {
            let reason = "no reply before the compensation deadline".to_owned();
            draft.compensation_attempt_failed(index, reason)
        }
        (_, _, CompensationPhase::AwaitingRetry) => draft.dispatch_compensation(index),
        // A timer that belongs to no waiting phase (a state written by older code, say):
        // dropping it beats a timer loop that fires for ever.
        _ => {
            state.clear_timers();
            Ok(())
        }
    }
}

/// A signal ends its step's wait: the payload is the step's output. One that comes at or
/// after its deadline is refused even before the timer's tick turns the saga around: the
/// wait is over whether or not the tick ran yet.
fn signal(draft: &mut Draft, name: &str, payload: &Value) -> Result<(), Ignored> {
    let index = draft
        .definition
        .signal(name)
        .ok_or_else(|| format!("{} has no signal `{name}`", draft.definition.name))?;
    let status = draft.state.status;
    let now = draft.now;
    let state = draft.step_state(index)?;
    if let Some(deadline) = state.deadline_at
        && now >= deadline
        && (status, state.forward) == (Status::Running, ForwardPhase::InFlight)
    {
        return Err(format!(
            "the signal `{name}` came after its deadline ({deadline})"
        ));
    }
    if (status, state.forward) != (Status::Running, ForwardPhase::InFlight) {
        return Err(format!(
            "the saga is not waiting for `{name}` (step {:?}, saga {status})",
            state.forward
        ));
    }
    state.forward = ForwardPhase::Succeeded;
    state.output = Some(payload.clone());
    state.clear_timers();
    draft.emit(
        EventKind::StepSucceeded,
        Some(index),
        format!("signal {name} received"),
    );
    draft.step_done(index)
}

/// Cancelling turns the saga around on the spot (see `Draft::begin_compensation` for what
/// happens to the steps still going forward), unless the pivot succeeded: from there the
/// saga can only go forward.
fn cancel(draft: &mut Draft) -> Result<(), Ignored> {
    if draft.state.status != Status::Running {
        return Err(format!(
            "cancel applies only to a RUNNING saga; this one is {}",
            draft.state.status
        ));
    }
    if draft.past_pivot() {
        return Err("the saga is past its pivot and can no longer be undone".to_owned());
    }
    draft.state.cancel_requested = true;
    draft.begin_compensation("cancel requested".to_owned())
}

/// An operator ends a parked saga by hand: nothing is sent any more, and whatever its
/// exhausted compensation could not undo stays as it is (the history says who and why).
fn resolve(draft: &mut Draft) -> Result<(), Ignored> {
    if draft.state.status != Status::Failed {
        return Err(format!(
            "resolve applies only to a FAILED saga; this one is {}",
            draft.state.status
        ));
    }
    for state in &mut draft.state.steps {
        state.clear_timers();
    }
    draft.finish(Status::Resolved, EventKind::SagaResolved);
    Ok(())
}

/// An operator retry gives the parked compensation a fresh budget; its attempt number keeps
/// counting so the new command cannot be mistaken for an old one.
fn retry(draft: &mut Draft) -> Result<(), Ignored> {
    if draft.state.status != Status::Failed {
        return Err(format!(
            "retry applies only to a FAILED saga; this one is {}",
            draft.state.status
        ));
    }
    // A forward-only step that spent its budget: sent again with a fresh one.
    let forward_parked = draft
        .definition
        .steps
        .iter()
        .zip(&draft.state.steps)
        .position(|(step, state)| step.forward_only && state.forward == ForwardPhase::Failed);
    if let Some(index) = forward_parked {
        let step = draft.step(index)?;
        let state = draft.step_state(index)?;
        state.forward_budget_from = state.attempt;
        draft.state.status = Status::Running;
        draft.state.failure = None;
        let message = format!("operator retry of {}", step.name);
        draft.emit(EventKind::SagaRetried, Some(index), message);
        return draft.dispatch_forward(index);
    }
    let parked = draft
        .state
        .steps
        .iter()
        .position(|state| state.compensation == CompensationPhase::Exhausted)
        .ok_or_else(|| "FAILED saga has no exhausted compensation to retry".to_owned())?;
    let step = draft.step(parked)?;
    draft.step_state(parked)?.compensation_attempts_in_budget = 0;
    draft.state.status = Status::Compensating;
    let message = format!("operator retry of {} compensation", step.name);
    draft.emit(EventKind::SagaRetried, Some(parked), message);
    draft.dispatch_compensation(parked)
}
