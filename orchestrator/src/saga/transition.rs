//! The transition function: `(definition, state, input, now, jitter) -> (state, actions)`.
//!
//! It is total: an input that does not fit the state (a stale attempt, a reply for a step
//! that is not waiting, anything sent to a finished saga) comes back `Ignored` with a reason
//! and the state untouched, because redelivered and late messages are normal in a system
//! built on at-least-once delivery. Time and randomness are arguments so that every outcome
//! can be replayed in a test.

use chrono::{DateTime, Utc};

use super::action::{Action, EventKind};
use super::definition::Definition;
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

/// Creates a saga of kind `definition` and dispatches its first step.
pub fn start(definition: &Definition, now: DateTime<Utc>) -> Transition {
    let initial = SagaState {
        status: Status::Running,
        steps: vec![StepState::new(); definition.steps.len()],
        cancel_requested: false,
        failure: None,
    };
    let mut draft = Draft::new(definition, initial.clone(), now, 0.0);
    draft.emit(
        EventKind::SagaStarted,
        None,
        format!("saga {} started", definition.name),
    );
    let result = if definition.steps.is_empty() {
        draft.finish(Status::Completed, EventKind::SagaCompleted);
        Ok(())
    } else {
        draft.dispatch_forward(0)
    };
    match result {
        Ok(()) => draft.into_transition(None),
        Err(reason) => Transition::ignored(&initial, reason),
    }
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

/// Handles the earliest timer that is due. Only one step is ever active, so at most one
/// timer can be due; the next one is scheduled from `now` and waits for its own tick.
fn tick(draft: &mut Draft) -> Result<(), Ignored> {
    let now = draft.now;
    let due = draft
        .state
        .steps
        .iter()
        .enumerate()
        .filter_map(|(index, state)| state.next_timer().map(|at| (at, index)))
        .filter(|(at, _)| *at <= now)
        .min();
    let Some((_, index)) = due else {
        return Err(match draft.state.next_timer() {
            Some(at) => format!("nothing due: next timer at {at}"),
            None => format!("nothing due: no timer set while {}", draft.state.status),
        });
    };
    let step = draft.step(index)?;
    let state = draft.step_state(index)?;
    let deadline_passed = state.deadline_at.is_some_and(|at| at <= now);
    let resend_due = state.resend_at.is_some_and(|at| at <= now);
    match (state.forward, state.compensation) {
        (ForwardPhase::InFlight, _) if deadline_passed => {
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
        (ForwardPhase::InFlight, _) if resend_due => draft.resend_forward(index),
        // Every attempt so far replied with a failure, so nothing is left to undo here.
        (ForwardPhase::AwaitingRetry, _) if deadline_passed => {
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
        (ForwardPhase::AwaitingRetry, _) => draft.dispatch_forward(index),
        (_, CompensationPhase::InFlight) if deadline_passed => {
            let reason = "no reply before the compensation deadline".to_owned();
            draft.compensation_attempt_failed(index, reason)
        }
        (_, CompensationPhase::AwaitingRetry) => draft.dispatch_compensation(index),
        // A timer that belongs to no waiting phase (a state written by older code, say):
        // dropping it beats a timer loop that fires for ever.
        _ => {
            state.clear_timers();
            Ok(())
        }
    }
}

/// Cancelling turns the saga around on the spot: the step in flight counts as
/// outcome-unknown (its reply may still come), a pending retry is simply dropped.
fn cancel(draft: &mut Draft) -> Result<(), Ignored> {
    if draft.state.status != Status::Running {
        return Err(format!(
            "cancel applies only to a RUNNING saga; this one is {}",
            draft.state.status
        ));
    }
    draft.state.cancel_requested = true;
    for state in &mut draft.state.steps {
        match state.forward {
            ForwardPhase::InFlight => state.forward = ForwardPhase::OutcomeUnknown,
            ForwardPhase::AwaitingRetry => state.forward = ForwardPhase::Failed,
            _ => continue,
        }
        state.clear_timers();
    }
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
