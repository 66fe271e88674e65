//! What the engine must do after committing a transition.
//!
//! Actions are data, not calls: the caller writes the new state and these actions (as outbox
//! rows, history entries, the timer) in one transaction and only then performs them,
//! so a crash can never leave a state without its messages or the other way round.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use super::state::Status;

/// Serialized adjacently tagged (`{"type": "dispatch", "data": {...}}`), which keeps the
/// newtype variants (`Emit`, `Finish`) as readable as the struct ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Action {
    /// Send a forward command; `(step, attempt)` is unique for the life of the saga.
    Dispatch {
        step: usize,
        attempt: u32,
        command: String,
        role: String,
    },
    /// Send the forward command of `(step, attempt)` again, unchanged (same command id): the
    /// attempt's start-to-close timeout passed without a reply.
    Resend {
        step: usize,
        attempt: u32,
        command: String,
        role: String,
    },
    /// Fence a step that has no compensation and whose outcome is unknown: the participant
    /// must refuse the original command from now on, or report that it already took effect.
    /// `attempt` counts with the step's compensation attempts.
    Fence {
        step: usize,
        attempt: u32,
        command: String,
        role: String,
    },
    /// Send a compensation command; `(step, attempt)` is unique for the life of the saga.
    Compensate {
        step: usize,
        attempt: u32,
        command: String,
        role: String,
    },
    /// The earliest timer moved to `at` (same as the new `SagaState::next_timer`). A timer
    /// that disappears is not announced: the state's `next_timer()` is the authority.
    ScheduleTimer {
        at: DateTime<Utc>,
    },
    Emit(Event),
    /// The saga reached a terminal status, or parked as `Failed`. Always the last action.
    Finish(Status),
}

/// A lifecycle event for history and notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub kind: EventKind,
    pub step: Option<usize>,
    /// Human-readable detail (reason, attempt, retry time); not meant to be parsed.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    SagaStarted,
    StepDispatched,
    StepSucceeded,
    StepFailed,
    StepRetryScheduled,
    StepTimedOut,
    StepRedelivered,
    FenceDispatched,
    StepFenced,
    CompensationStarted,
    CompensationDispatched,
    CompensationSucceeded,
    CompensationFailed,
    SagaCompleted,
    SagaCompensated,
    SagaCancelled,
    SagaFailed,
    SagaRetried,
    SagaResolved,
}

impl EventKind {
    pub const ALL: [EventKind; 19] = [
        EventKind::SagaStarted,
        EventKind::StepDispatched,
        EventKind::StepSucceeded,
        EventKind::StepFailed,
        EventKind::StepRetryScheduled,
        EventKind::StepTimedOut,
        EventKind::StepRedelivered,
        EventKind::FenceDispatched,
        EventKind::StepFenced,
        EventKind::CompensationStarted,
        EventKind::CompensationDispatched,
        EventKind::CompensationSucceeded,
        EventKind::CompensationFailed,
        EventKind::SagaCompleted,
        EventKind::SagaCompensated,
        EventKind::SagaCancelled,
        EventKind::SagaFailed,
        EventKind::SagaRetried,
        EventKind::SagaResolved,
    ];

    /// The wire name, also used as the notification type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SagaStarted => "saga.started",
            EventKind::StepDispatched => "step.dispatched",
            EventKind::StepSucceeded => "step.succeeded",
            EventKind::StepFailed => "step.failed",
            EventKind::StepRetryScheduled => "step.retry_scheduled",
            EventKind::StepTimedOut => "step.timed_out",
            EventKind::StepRedelivered => "step.redelivered",
            EventKind::FenceDispatched => "fence.dispatched",
            EventKind::StepFenced => "step.fenced",
            EventKind::CompensationStarted => "compensation.started",
            EventKind::CompensationDispatched => "compensation.dispatched",
            EventKind::CompensationSucceeded => "compensation.succeeded",
            EventKind::CompensationFailed => "compensation.failed",
            EventKind::SagaCompleted => "saga.completed",
            EventKind::SagaCompensated => "saga.compensated",
            EventKind::SagaCancelled => "saga.cancelled",
            EventKind::SagaFailed => "saga.failed",
            EventKind::SagaRetried => "saga.retried",
            EventKind::SagaResolved => "saga.resolved",
        }
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn event_names_are_unique_and_dotted() {
        let names: HashSet<_> = EventKind::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        assert!(names.iter().all(|name| name.split('.').count() == 2));
    }

    #[test]
    fn actions_serialize_with_wire_names() {
        let emit = Action::Emit(Event {
            kind: EventKind::StepRetryScheduled,
            step: Some(1),
            message: "later".into(),
        });
        assert_eq!(
            serde_json::to_value(&emit).ok(),
            Some(serde_json::json!({
                "type": "emit",
                "data": { "kind": "step.retry_scheduled", "step": 1, "message": "later" }
            }))
        );
        assert_eq!(
            serde_json::to_value(Action::Finish(Status::Failed)).ok(),
            Some(serde_json::json!({ "type": "finish", "data": "FAILED" }))
        );
    }
}
