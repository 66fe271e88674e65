//! The persisted state of one saga instance (stored as jsonb).
//!
//! Each step keeps its forward progress and its compensation progress as two separate
//! phases: whether a step must be undone depends on what is known about its forward effect,
//! and that knowledge can still improve (a late success) while its compensation is pending.
//! Timers live on the step they belong to, so the whole state has one source of truth for
//! [`SagaState::next_timer`].

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Running,
    Compensating,
    Completed,
    Compensated,
    Cancelled,
    /// A compensation exhausted its budget. Parked rather than terminal: effects may still be
    /// in place, so an operator can retry.
    Failed,
    /// An operator ended a `Failed` saga by hand, because its compensation can never
    /// succeed (the reason is in the history). Terminal; the effects left in place are the
    /// operator's to settle.
    Resolved,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Running,
        Status::Compensating,
        Status::Completed,
        Status::Compensated,
        Status::Cancelled,
        Status::Failed,
        Status::Resolved,
    ];

    /// Final: no input changes the saga any more. `Failed` is not terminal.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Compensated | Status::Cancelled | Status::Resolved
        )
    }

    /// Nothing moves it without an operator: final, or FAILED. What a request waiting
    /// with `Prefer: wait` waits for.
    pub fn is_settled(self) -> bool {
        self.is_terminal() || self == Status::Failed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Compensating => "COMPENSATING",
            Status::Completed => "COMPLETED",
            Status::Compensated => "COMPENSATED",
            Status::Cancelled => "CANCELLED",
            Status::Failed => "FAILED",
            Status::Resolved => "RESOLVED",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = Error;

    fn from_str(value: &str) -> Result<Status, Error> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or_else(|| Error::UnknownStatus(value.to_owned()))
    }
}

/// What is known about a step's forward command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardPhase {
    /// Never dispatched: nothing to undo.
    Pending,
    /// An attempt is out and its reply is awaited (until `deadline_at`).
    InFlight,
    /// The last attempt failed retryably; the next one goes out at `retry_at`.
    AwaitingRetry,
    Succeeded,
    /// A failure reply ended the step: the participant rolled back, so there is nothing to undo.
    Failed,
    /// No reply came (deadline passed, or the saga was cancelled meanwhile): the effect may
    /// exist, so the step is compensated, or fenced when it has no compensation.
    OutcomeUnknown,
    /// The participant confirmed a fence before the command took effect: it never will.
    Fenced,
}

/// Progress of undoing a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationPhase {
    NotStarted,
    /// An attempt is out and its reply is awaited (until `deadline_at`).
    InFlight,
    /// The last attempt failed or timed out; the next one goes out at `retry_at`.
    AwaitingRetry,
    Compensated,
    /// The budget ran out; the saga is `Failed` until an operator retries.
    Exhausted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub forward: ForwardPhase,
    /// Number of the latest forward attempt dispatched (0 = never).
    pub attempt: u32,
    /// How many times the latest forward attempt was sent (re-sends keep its command id).
    #[serde(default)]
    pub deliveries: u32,
    pub output: Option<Value>,
    pub compensation: CompensationPhase,
    /// Number of the latest compensation attempt dispatched (0 = never). Never reset, so
    /// attempts stay unique across operator retries.
    pub compensation_attempt: u32,
    /// Compensation attempts counted against the budget; an operator retry resets it.
    pub compensation_attempts_in_budget: u32,
    /// The forward attempt after which the current forward budget began: 0, or the last
    /// attempt before an operator's retry of a parked forward-only step.
    #[serde(default)]
    pub forward_budget_from: u32,
    pub deadline_at: Option<DateTime<Utc>>,
    pub retry_at: Option<DateTime<Utc>>,
    /// When the forward attempt in flight is sent again if no reply came (its
    /// start-to-close timeout).
    #[serde(default)]
    pub resend_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// A wait that ends at a time from the saga's input: that time, read when the saga
    /// started (so a later change of the input cannot move it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<DateTime<Utc>>,
}

impl StepState {
    pub fn new() -> StepState {
        StepState {
            forward: ForwardPhase::Pending,
            attempt: 0,
            deliveries: 0,
            output: None,
            compensation: CompensationPhase::NotStarted,
            compensation_attempt: 0,
            compensation_attempts_in_budget: 0,
            forward_budget_from: 0,
            deadline_at: None,
            retry_at: None,
            resend_at: None,
            last_error: None,
            wake_at: None,
        }
    }

    /// Whether the forward command may have left an effect that compensation must undo.
    pub fn may_have_effect(&self) -> bool {
        matches!(
            self.forward,
            ForwardPhase::Succeeded | ForwardPhase::OutcomeUnknown
        )
    }

    /// The earliest moment something must happen to this step without any reply.
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        [self.deadline_at, self.retry_at, self.resend_at]
            .into_iter()
            .flatten()
            .min()
    }

    pub(super) fn clear_timers(&mut self) {
        self.deadline_at = None;
        self.retry_at = None;
        self.resend_at = None;
    }
}

impl Default for StepState {
    fn default() -> StepState {
        StepState::new()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub status: Status,
    /// One entry per step of the definition, same order.
    pub steps: Vec<StepState>,
    /// Decides whether a finished compensation ends as `Cancelled` or `Compensated`.
    pub cancel_requested: bool,
    /// Why the saga left the happy path (failed step, timeout or cancel); replaced by the
    /// exhausted compensation's reason when the saga parks as `Failed`.
    pub failure: Option<String>,
}

impl SagaState {
    /// The earliest pending deadline or retry time; the timer loop feeds `Input::Tick` once
    /// it has passed. `None` when nothing waits on time (finished, parked or idle).
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        self.steps.iter().filter_map(StepState::next_timer).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn status_names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(Value::from(status.as_str()))
            );
        }
        assert_eq!(
            "running".parse::<Status>(),
            Err(Error::UnknownStatus("running".into()))
        );
    }

    #[test]
    fn only_completed_compensated_cancelled_and_resolved_are_terminal() {
        let terminal: Vec<_> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                Status::Completed,
                Status::Compensated,
                Status::Cancelled,
                Status::Resolved
            ]
        );
    }

    #[test]
    fn next_timer_is_the_earliest_of_all_steps() {
        let at = |secs| Utc.timestamp_opt(secs, 0).single();
        let mut state = SagaState {
            status: Status::Running,
            steps: vec![StepState::new(), StepState::new()],
            cancel_requested: false,
            failure: None,
        };
        assert_eq!(state.next_timer(), None);
        state.steps[0].deadline_at = at(50);
        state.steps[1].retry_at = at(20);
        state.steps[1].deadline_at = at(40);
        assert_eq!(state.next_timer(), at(20));
    }

    #[test]
    fn state_survives_json() {
        let mut state = SagaState {
            status: Status::Compensating,
            steps: vec![StepState::new()],
            cancel_requested: true,
            failure: Some("out of stock".into()),
        };
        state.steps[0].forward = ForwardPhase::OutcomeUnknown;
        state.steps[0].output = Some(serde_json::json!({"reservation": 7}));
        state.steps[0].deadline_at = Utc.timestamp_opt(1_700_000_000, 0).single();
        let json = serde_json::to_value(&state).expect("serializes");
        assert_eq!(json["status"], "COMPENSATING");
        assert_eq!(json["steps"][0]["forward"], "outcome_unknown");
        let back: SagaState = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, state);
    }
}
