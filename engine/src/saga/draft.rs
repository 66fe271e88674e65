//! A transition under construction: a private copy of the state plus the actions produced so
//! far, with the moves shared by several inputs (starting a stage, dispatching, starting and
//! continuing compensation, parking, finishing).
//!
//! Input handlers may mutate the draft and then still decide to ignore the input: the draft
//! is simply dropped and the caller keeps the original state, so a half-applied input can
//! never escape.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::action::{Action, Event, EventKind};
use super::definition::{Definition, RetryPolicy, Step, StepKind, Task, Wake};
use super::state::{CompensationPhase, ForwardPhase, SagaState, Status, StepState};
use super::transition::{Outcome, Transition};

/// Why an input does not fit the state; becomes `Outcome::Ignored`.
pub(super) type Ignored = String;

pub(super) struct Draft<'a> {
    pub(super) definition: &'a Definition,
    pub(super) state: SagaState,
    pub(super) now: DateTime<Utc>,
    jitter: f64,
    actions: Vec<Action>,
}

impl<'a> Draft<'a> {
    pub(super) fn new(
        definition: &'a Definition,
        state: SagaState,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> Draft<'a> {
        Draft {
            definition,
            state,
            now,
            jitter,
            actions: Vec::new(),
        }
    }

    /// Seals an applied draft. The timer action is derived here, by comparing timers before and
    /// after, so no handler can forget it.
    pub(super) fn into_transition(mut self, previous_timer: Option<DateTime<Utc>>) -> Transition {
        if let Some(at) = self
            .state
            .next_timer()
            .filter(|at| Some(*at) != previous_timer)
        {
            // A finished saga has no timers, so this never lands after `Finish`.
            self.actions.push(Action::ScheduleTimer { at });
        }
        Transition {
            state: self.state,
            actions: self.actions,
            outcome: Outcome::Applied,
        }
    }

    pub(super) fn step(&self, index: usize) -> Result<&'a Step, Ignored> {
        self.definition.step(index).ok_or_else(|| {
            format!(
                "unknown step index {index}: {} has {} steps",
                self.definition.name,
                self.definition.steps.len()
            )
        })
    }

    /// The step at `index` when it is a task (only tasks send commands and get replies).
    pub(super) fn task(&self, index: usize) -> Result<(&'a Step, &'a Task), Ignored> {
        let step = self.step(index)?;
        match step.task() {
            Some(task) => Ok((step, task)),
            None => Err(format!(
                "{} is a {} step, not a task",
                step.name,
                step.kind_name()
            )),
        }
    }

    pub(super) fn step_state(&mut self, index: usize) -> Result<&mut StepState, Ignored> {
        let count = self.state.steps.len();
        self.state
            .steps
            .get_mut(index)
            .ok_or_else(|| format!("unknown step index {index}: the saga has {count} steps"))
    }

    pub(super) fn emit(&mut self, kind: EventKind, step: Option<usize>, message: String) {
        self.actions.push(Action::Emit(Event {
            kind,
            step,
            message,
        }));
    }

    /// `now + delay`, saturating: an absurd configured duration must not panic the core.
    pub(super) fn after(&self, delay: Duration) -> DateTime<Utc> {
        TimeDelta::from_std(delay)
            .ok()
            .and_then(|delta| self.now.checked_add_signed(delta))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// When the attempt after failed attempt `failed_attempt` may go out.
    pub(super) fn retry_time(&self, policy: &RetryPolicy, failed_attempt: u32) -> DateTime<Utc> {
        self.after(policy.backoff(failed_attempt, self.jitter))
    }

    /// Whether the pivot succeeded: from then on the saga only goes forward.
    pub(super) fn past_pivot(&self) -> bool {
        self.definition
            .steps
            .iter()
            .zip(&self.state.steps)
            .any(|(step, state)| step.pivot && state.forward == ForwardPhase::Succeeded)
    }

    /// Starts every step of `stage`, or completes the saga when there is no such stage.
    pub(super) fn begin_stage(&mut self, stage: usize) -> Result<(), Ignored> {
        if stage >= self.definition.stages() {
            self.finish(Status::Completed, EventKind::SagaCompleted);
            return Ok(());
        }
        for index in self.definition.members(stage) {
            self.begin_step(index)?;
        }
        Ok(())
    }

    fn begin_step(&mut self, index: usize) -> Result<(), Ignored> {
        let step = self.step(index)?;
        match &step.kind {
            StepKind::Task(_) => self.dispatch_forward(index),
            StepKind::Wait(wake) => {
                let at = match wake {
                    Wake::After(delay) => self.after(*delay),
                    // Resolved from the input at start; a time already past ends the wait
                    // at the next tick.
                    Wake::At(_) => self.step_state(index)?.wake_at.unwrap_or(self.now),
                };
                let now = self.now;
                let state = self.step_state(index)?;
                state.forward = ForwardPhase::InFlight;
                state.deadline_at = Some(at.max(now));
                let message = format!("{}: waiting until {at}", step.name);
                self.emit(EventKind::StepDispatched, Some(index), message);
                Ok(())
            }
            StepKind::Signal(signal) => {
                let timeout = signal.timeout.map(|timeout| self.after(timeout));
                let state = self.step_state(index)?;
                state.forward = ForwardPhase::InFlight;
                state.deadline_at = timeout;
                let until =
                    timeout.map_or_else(|| "for ever".to_owned(), |at| format!("until {at}"));
                let message = format!("{}: waiting for the signal {until}", step.name);
                self.emit(EventKind::StepDispatched, Some(index), message);
                Ok(())
            }
        }
    }

    /// A step of the running saga succeeded: when its whole stage has, the next one starts.
    pub(super) fn step_done(&mut self, index: usize) -> Result<(), Ignored> {
        let stage = self.step(index)?.stage;
        let stage_done = self
            .definition
            .members(stage)
            .all(|member| self.state.steps[member].forward == ForwardPhase::Succeeded);
        if stage_done {
            self.begin_stage(stage + 1)
        } else {
            Ok(())
        }
    }

    /// Sends the next forward attempt of `index`. The step deadline is set by the first
    /// attempt only, because it bounds all attempts together; forward-only steps have none.
    pub(super) fn dispatch_forward(&mut self, index: usize) -> Result<(), Ignored> {
        let (step, task) = self.task(index)?;
        let deadline = (!step.forward_only).then(|| self.after(task.deadline));
        let resend_at = self.after(task.attempt_timeout);
        let state = self.step_state(index)?;
        let attempt = next_attempt(state.attempt)?;
        state.attempt = attempt;
        state.deliveries = 1;
        state.forward = ForwardPhase::InFlight;
        state.retry_at = None;
        state.resend_at = Some(resend_at);
        if state.deadline_at.is_none() {
            state.deadline_at = deadline;
        }
        self.emit(
            EventKind::StepDispatched,
            Some(index),
            format!("{} attempt {attempt}: {}", step.name, task.command),
        );
        self.actions.push(Action::Dispatch {
            step: index,
            attempt,
            command: task.command.clone(),
            role: task.role.clone(),
        });
        Ok(())
    }

    /// A forward-only step spent its budget: nothing can undo what came before it, so the
    /// saga parks as FAILED with the reason, for an operator to retry the step or resolve
    /// the saga.
    pub(super) fn park_forward(&mut self, index: usize, reason: String) -> Result<(), Ignored> {
        let state = self.step_state(index)?;
        state.forward = ForwardPhase::Failed;
        state.clear_timers();
        state.last_error = Some(reason.clone());
        self.emit(EventKind::StepFailed, Some(index), reason.clone());
        self.state.failure = Some(reason);
        self.finish(Status::Failed, EventKind::SagaFailed);
        Ok(())
    }

    /// The attempt in flight passed its start-to-close timeout: send the same command again
    /// (a forward-only step as often as its budget allows attempts, then it parks).
    pub(super) fn resend_forward(&mut self, index: usize) -> Result<(), Ignored> {
        let (step, task) = self.task(index)?;
        let deliveries = self.step_state(index)?.deliveries;
        if step.forward_only && !task.retry.allows_another_attempt(deliveries) {
            let why = format!(
                "{} gave up: no reply after {deliveries} sends of attempt {}",
                step.name,
                self.step_state(index)?.attempt
            );
            return self.park_forward(index, why);
        }
        let resend_at = self.after(task.attempt_timeout);
        let state = self.step_state(index)?;
        state.deliveries = state.deliveries.saturating_add(1);
        state.resend_at = Some(resend_at);
        let (attempt, deliveries) = (state.attempt, state.deliveries);
        self.emit(
            EventKind::StepRedelivered,
            Some(index),
            format!(
                "{} attempt {attempt}: no reply within {:?}; sent again (delivery {deliveries})",
                step.name, task.attempt_timeout
            ),
        );
        self.actions.push(Action::Resend {
            step: index,
            attempt,
            command: task.command.clone(),
            role: task.role.clone(),
        });
        Ok(())
    }

    /// Turns the saga around. Whatever else is still going forward is settled first: a
    /// command in flight counts as outcome-unknown (its reply may still come, so it is
    /// compensated or fenced), a pending retry is dropped, a wait or signal simply ends.
    pub(super) fn begin_compensation(&mut self, reason: String) -> Result<(), Ignored> {
        for (step, state) in self.definition.steps.iter().zip(&mut self.state.steps) {
            match (state.forward, &step.kind) {
                (ForwardPhase::InFlight, StepKind::Task(_)) => {
                    state.forward = ForwardPhase::OutcomeUnknown;
                }
                (ForwardPhase::InFlight | ForwardPhase::AwaitingRetry, _) => {
                    state.forward = ForwardPhase::Failed;
                }
                _ => continue,
            }
            state.clear_timers();
        }
        self.state.status = Status::Compensating;
        self.emit(EventKind::CompensationStarted, None, reason.clone());
        self.state.failure = Some(reason);
        self.compensate_next()
    }

    /// Starts undoing the newest step whose effect may exist, or finishes when none is left.
    /// Steps are undone one at a time in reverse index order, members of a parallel stage
    /// included: the highest index is the newest dispatch or one of its stage.
    ///
    /// The fence rule: a step whose outcome is unknown is never passed over, compensation or
    /// not. A step without compensation gets a fence; the compensation of one that has it
    /// fences as well (the participant's tombstone), so no forward effect can land after the
    /// saga undid what came before it.
    pub(super) fn compensate_next(&mut self) -> Result<(), Ignored> {
        let definition = self.definition;
        let next = self
            .state
            .steps
            .iter()
            .enumerate()
            .rev()
            .find_map(|(index, state)| {
                let undoable = definition
                    .step(index)
                    .is_some_and(|step| step.compensation().is_some());
                let unknown = state.forward == ForwardPhase::OutcomeUnknown;
                let waiting = state.compensation == CompensationPhase::NotStarted;
                ((undoable || unknown) && waiting && state.may_have_effect()).then_some(index)
            });
        match next {
            Some(index) => {
                self.step_state(index)?.compensation_attempts_in_budget = 0;
                self.dispatch_compensation(index)
            }
            None if self.state.cancel_requested => {
                self.finish(Status::Cancelled, EventKind::SagaCancelled);
                Ok(())
            }
            None => {
                self.finish(Status::Compensated, EventKind::SagaCompensated);
                Ok(())
            }
        }
    }

    /// Sends the next compensation attempt of `index`, or the next fence attempt when the step
    /// has no compensation (both share the attempt counter, budget and deadline).
    pub(super) fn dispatch_compensation(&mut self, index: usize) -> Result<(), Ignored> {
        let (step, task) = self.task(index)?;
        let deadline = self.after(task.compensation_deadline);
        let state = self.step_state(index)?;
        let attempt = next_attempt(state.compensation_attempt)?;
        state.compensation_attempt = attempt;
        state.compensation_attempts_in_budget =
            state.compensation_attempts_in_budget.saturating_add(1);
        state.compensation = CompensationPhase::InFlight;
        state.deadline_at = Some(deadline);
        state.retry_at = None;
        state.resend_at = None;
        let (kind, action, what) = match &task.compensation {
            Some(command) => (
                EventKind::CompensationDispatched,
                Action::Compensate {
                    step: index,
                    attempt,
                    command: command.clone(),
                    role: task.role.clone(),
                },
                command.as_str(),
            ),
            None => (
                EventKind::FenceDispatched,
                Action::Fence {
                    step: index,
                    attempt,
                    command: task.command.clone(),
                    role: task.role.clone(),
                },
                "fence",
            ),
        };
        self.emit(
            kind,
            Some(index),
            format!("{} compensation attempt {attempt}: {what}", step.name),
        );
        self.actions.push(action);
        Ok(())
    }

    /// The in-flight compensation attempt failed or timed out: retry within budget, otherwise
    /// park the saga as `Failed` for an operator.
    pub(super) fn compensation_attempt_failed(
        &mut self,
        index: usize,
        reason: String,
    ) -> Result<(), Ignored> {
        let (_, task) = self.task(index)?;
        let policy = task.compensation_retry;
        let state = self.step_state(index)?;
        let (attempt, used) = (
            state.compensation_attempt,
            state.compensation_attempts_in_budget,
        );
        let command = task.compensation.as_deref().unwrap_or("fence");
        if policy.allows_another_attempt(used) {
            let retry_at = self.retry_time(&policy, used);
            let state = self.step_state(index)?;
            state.compensation = CompensationPhase::AwaitingRetry;
            state.deadline_at = None;
            state.retry_at = Some(retry_at);
            state.last_error = Some(reason.clone());
            self.emit(
                EventKind::CompensationFailed,
                Some(index),
                format!("{command} attempt {attempt} failed: {reason}; retry at {retry_at}"),
            );
            return Ok(());
        }
        state.compensation = CompensationPhase::Exhausted;
        state.clear_timers();
        state.last_error = Some(reason.clone());
        let failure = format!("{command} gave up after {used} attempts: {reason}");
        self.emit(EventKind::CompensationFailed, Some(index), failure.clone());
        self.state.failure = Some(failure.clone());
        self.finish(Status::Failed, EventKind::SagaFailed);
        Ok(())
    }

    pub(super) fn finish(&mut self, status: Status, kind: EventKind) {
        self.state.status = status;
        let message = match (&self.state.failure, status) {
            (Some(failure), Status::Compensated | Status::Failed) => failure.clone(),
            _ => format!("saga {} {}", self.definition.name, status.as_str()),
        };
        self.emit(kind, None, message);
        self.actions.push(Action::Finish(status));
    }
}

/// Attempt numbers are fencing tokens: they must never repeat, so overflow is refused rather
/// than wrapped.
fn next_attempt(current: u32) -> Result<u32, Ignored> {
    current
        .checked_add(1)
        .ok_or_else(|| "attempt counter exhausted".to_owned())
}
