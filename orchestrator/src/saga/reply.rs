//! Replies from participants: the only inputs that carry an attempt number.
//!
//! Each handler first fences the reply (right step, latest attempt, step actually waiting
//! for this kind of reply, saga in a status where it matters) and only then moves the saga;
//! anything else is a duplicate or arrived too late and is ignored with the reason.

use serde_json::Value;

use super::action::EventKind;
use super::draft::{Draft, Ignored};
use super::input::FailureKind;
use super::state::{CompensationPhase, ForwardPhase, Status};

/// Fences replies by attempt number: only the latest attempt may change anything.
fn check_attempt(name: &str, kind: &str, received: u32, current: u32) -> Result<(), Ignored> {
    if received == current {
        Ok(())
    } else {
        Err(format!(
            "stale {kind} reply for {name} attempt {received}; the latest attempt is {current}"
        ))
    }
}

pub(super) fn step_succeeded(
    draft: &mut Draft,
    index: usize,
    attempt: u32,
    output: &Value,
) -> Result<(), Ignored> {
    let step = draft.step(index)?;
    let status = draft.state.status;
    let state = draft.step_state(index)?;
    check_attempt(step.name, "forward", attempt, state.attempt)?;
    match (status, state.forward) {
        (Status::Running, ForwardPhase::InFlight) => {
            state.forward = ForwardPhase::Succeeded;
            state.output = Some(output.clone());
            state.clear_timers();
            let message = format!("{} attempt {attempt} succeeded", step.name);
            draft.emit(EventKind::StepSucceeded, Some(index), message);
            if index + 1 < draft.definition.steps.len() {
                draft.dispatch_forward(index + 1)
            } else {
                draft.finish(Status::Completed, EventKind::SagaCompleted);
                Ok(())
            }
        }
        // Knowing the effect exists does not change the plan: the compensation undoes it
        // either way, and it tolerates "nothing to undo" if the effect was never made.
        (Status::Compensating | Status::Failed, ForwardPhase::OutcomeUnknown)
            if state.compensation != CompensationPhase::Compensated =>
        {
            state.forward = ForwardPhase::Succeeded;
            state.output = Some(output.clone());
            let message = format!(
                "late success of {} attempt {attempt} recorded; its compensation still runs",
                step.name
            );
            draft.emit(EventKind::StepSucceeded, Some(index), message);
            Ok(())
        }
        (status, phase) => Err(not_awaiting(step.name, "forward", phase, status)),
    }
}

pub(super) fn step_failed(
    draft: &mut Draft,
    index: usize,
    attempt: u32,
    kind: FailureKind,
    reason: &str,
) -> Result<(), Ignored> {
    let step = draft.step(index)?;
    let status = draft.state.status;
    let state = draft.step_state(index)?;
    check_attempt(step.name, "forward", attempt, state.attempt)?;
    if (status, state.forward) != (Status::Running, ForwardPhase::InFlight) {
        return Err(not_awaiting(step.name, "forward", state.forward, status));
    }
    if kind == FailureKind::Retryable && step.retry.allows_another_attempt(attempt) {
        let retry_at = draft.retry_time(&step.retry, attempt);
        let state = draft.step_state(index)?;
        state.forward = ForwardPhase::AwaitingRetry;
        state.retry_at = Some(retry_at);
        state.last_error = Some(reason.to_owned());
        let message = format!(
            "{} attempt {attempt} failed: {reason}; attempt {} at {retry_at}",
            step.name,
            attempt + 1
        );
        draft.emit(EventKind::StepRetryScheduled, Some(index), message);
        return Ok(());
    }
    state.forward = ForwardPhase::Failed;
    state.clear_timers();
    state.last_error = Some(reason.to_owned());
    let message = match kind {
        FailureKind::Rejected => format!("{} rejected: {reason}", step.name),
        FailureKind::Retryable => {
            format!("{} failed after {attempt} attempts: {reason}", step.name)
        }
    };
    draft.emit(EventKind::StepFailed, Some(index), message.clone());
    draft.begin_compensation(message)
}

pub(super) fn compensation_succeeded(
    draft: &mut Draft,
    index: usize,
    attempt: u32,
) -> Result<(), Ignored> {
    let step = draft.step(index)?;
    let status = draft.state.status;
    let state = draft.step_state(index)?;
    check_attempt(
        step.name,
        "compensation",
        attempt,
        state.compensation_attempt,
    )?;
    // A success that arrives after its attempt timed out is still a success: taking it
    // saves a needless retry.
    let awaiting = matches!(
        state.compensation,
        CompensationPhase::InFlight | CompensationPhase::AwaitingRetry
    );
    if status != Status::Compensating || !awaiting {
        return Err(not_awaiting(
            step.name,
            "compensation",
            state.compensation,
            status,
        ));
    }
    state.compensation = CompensationPhase::Compensated;
    state.clear_timers();
    let message = format!("{} compensation attempt {attempt} succeeded", step.name);
    draft.emit(EventKind::CompensationSucceeded, Some(index), message);
    draft.compensate_next()
}

pub(super) fn compensation_failed(
    draft: &mut Draft,
    index: usize,
    attempt: u32,
    reason: &str,
) -> Result<(), Ignored> {
    let step = draft.step(index)?;
    let status = draft.state.status;
    let state = draft.step_state(index)?;
    check_attempt(
        step.name,
        "compensation",
        attempt,
        state.compensation_attempt,
    )?;
    if (status, state.compensation) != (Status::Compensating, CompensationPhase::InFlight) {
        return Err(not_awaiting(
            step.name,
            "compensation",
            state.compensation,
            status,
        ));
    }
    draft.compensation_attempt_failed(index, reason.to_owned())
}

fn not_awaiting(name: &str, kind: &str, phase: impl std::fmt::Debug, status: Status) -> Ignored {
    format!("{name} is not awaiting a {kind} reply (phase {phase:?}, saga {status})")
}
