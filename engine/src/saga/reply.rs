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
    let (step, _) = draft.task(index)?;
    let status = draft.state.status;
    let state = draft.step_state(index)?;
    check_attempt(&step.name, "forward", attempt, state.attempt)?;
    match (status, state.forward) {
        (Status::Running, ForwardPhase::InFlight) => {
            state.forward = ForwardPhase::Succeeded;
            state.output = Some(output.clone());
            state.clear_timers();
            let message = format!("{} attempt {attempt} succeeded", step.name);
            draft.emit(EventKind::StepSucceeded, Some(index), message);
            draft.step_done(index)
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
        (status, phase) => Err(not_awaiting(&step.name, "forward", phase, status)),
    }
}

pub(super) fn step_failed(
    draft: &mut Draft,
    index: usize,
    attempt: u32,
    kind: FailureKind,
    reason: &str,
) -> Result<(), Ignored> {
    let (step, task) = draft.task(index)?;
    let status = draft.state.status;
    let state = draft.step_state(index)?;
    check_attempt(&step.name, "forward", attempt, state.attempt)?;
    if (status, state.forward) != (Status::Running, ForwardPhase::InFlight) {
        return Err(not_awaiting(&step.name, "forward", state.forward, status));
    }
    // A forward-only step is past the pivot: there is no going back, so it is tried
    // again whatever the answer, within its budget; past it the saga parks for an operator.
    let used = attempt.saturating_sub(state.forward_budget_from);
    let within = task.retry.allows_another_attempt(used);
    if step.forward_only && !within {
        let why = format!("{} gave up after {used} attempts: {reason}", step.name);
        return draft.park_forward(index, why);
    }
    let retry = kind == FailureKind::Retryable && within;
    if retry || step.forward_only {
        let retry_at = draft.retry_time(&task.retry, attempt);
        let state = draft.step_state(index)?;
        state.forward = ForwardPhase::AwaitingRetry;
        state.retry_at = Some(retry_at);
        state.resend_at = None;
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
    let (step, task) = draft.task(index)?;
    let status = draft.state.status;
    let state = draft.step_state(index)?;
    check_attempt(
        &step.name,
        "compensation",
        attempt,
        state.compensation_attempt,
    )?;
    // A success that arrives after its attempt timed out is still a success: taking it
    // saves a needless retry. One that arrives after the budget ran out (the saga parked as
    // FAILED) resumes the compensation: the step is undone, so nothing needs an operator.
    let awaiting = awaits_undo_reply(status, state.compensation);
    if !awaiting || task.compensation.is_none() {
        return Err(not_awaiting(
            &step.name,
            "compensation",
            state.compensation,
            status,
        ));
    }
    state.compensation = CompensationPhase::Compensated;
    state.clear_timers();
    let message = format!("{} compensation attempt {attempt} succeeded", step.name);
    draft.emit(EventKind::CompensationSucceeded, Some(index), message);
    draft.state.status = Status::Compensating;
    draft.compensate_next()
}

/// The answer to a fence of a step without compensation. Not applied: the step can never
/// take effect, so compensation moves on to older steps. Applied: the step is a pivot whose
/// effect stands and cannot be undone, so the saga turns around and goes forward (a cancel
/// that came too late is dropped).
pub(super) fn step_fenced(
    draft: &mut Draft,
    index: usize,
    attempt: u32,
    applied: Option<&Value>,
) -> Result<(), Ignored> {
    let (step, task) = draft.task(index)?;
    let status = draft.state.status;
    let state = draft.step_state(index)?;
    check_attempt(&step.name, "fence", attempt, state.compensation_attempt)?;
    let awaiting = awaits_undo_reply(status, state.compensation);
    if !awaiting || task.compensation.is_some() {
        return Err(not_awaiting(
            &step.name,
            "fence",
            state.compensation,
            status,
        ));
    }
    state.clear_timers();
    state.compensation = CompensationPhase::NotStarted;
    state.compensation_attempts_in_budget = 0;
    let Some(output) = applied else {
        state.forward = ForwardPhase::Fenced;
        let message = format!("{} fenced: it can no longer take effect", step.name);
        draft.emit(EventKind::StepFenced, Some(index), message);
        draft.state.status = Status::Compensating;
        return draft.compensate_next();
    };
    state.forward = ForwardPhase::Succeeded;
    state.output = Some(output.clone());
    state.last_error = None;
    let message = format!(
        "{} had already taken effect and cannot be undone; the saga goes forward",
        step.name
    );
    draft.emit(EventKind::StepSucceeded, Some(index), message);
    draft.state.status = Status::Running;
    draft.state.cancel_requested = false;
    draft.state.failure = None;
    draft.step_done(index)
}

pub(super) fn compensation_failed(
    draft: &mut Draft,
    index: usize,
    attempt: u32,
    reason: &str,
) -> Result<(), Ignored> {
    let (step, _) = draft.task(index)?;
    let status = draft.state.status;
    let state = draft.step_state(index)?;
    check_attempt(
        &step.name,
        "compensation",
        attempt,
        state.compensation_attempt,
    )?;
    if (status, state.compensation) != (Status::Compensating, CompensationPhase::InFlight) {
        return Err(not_awaiting(
            &step.name,
            "compensation",
            state.compensation,
            status,
        ));
    }
    draft.compensation_attempt_failed(index, reason.to_owned())
}

/// Whether a compensation or fence reply can still change the step: while it runs, or
/// after the budget ran out (the saga parked as FAILED), since a late success is a success.
fn awaits_undo_reply(status: Status, phase: CompensationPhase) -> bool {
    matches!(
        (status, phase),
        (
            Status::Compensating,
            CompensationPhase::InFlight | CompensationPhase::AwaitingRetry
        ) | (Status::Failed, CompensationPhase::Exhausted)
    )
}

fn not_awaiting(name: &str, kind: &str, phase: impl std::fmt::Debug, status: Status) -> Ignored {
    format!("{name} is not awaiting a {kind} reply (phase {phase:?}, saga {status})")
}
