//! Between stored and wire forms and the pure core's types: a saga row's definition and
//! state, and a participant's reply as an [`Input`].

use platform::contract::{Direction, Fenced, Outcome as ReplyOutcome, Reply};
use serde_json::Value;

use std::sync::Arc;

use super::Error;
use super::catalog::Catalog;
use super::store::SagaRow;
use crate::saga::{self, Definition, FailureKind, Input, SagaState};

/// The shape the saga started on: its definition at its stored version. A version the
/// catalog does not hold (removed, or unreadable by this build) makes the row unreadable.
pub(super) fn definition_of(catalog: &Catalog, row: &SagaRow) -> Result<Arc<Definition>, Error> {
    let version = u32::try_from(row.definition_version).unwrap_or_default();
    catalog
        .version(&row.definition, version)
        .ok_or_else(|| Error::Corrupt {
            id: row.id,
            reason: format!(
                "definition `{}` version {} is not registered here",
                row.definition, row.definition_version
            ),
        })
}

pub(super) fn decode_state(row: &SagaRow) -> Result<SagaState, Error> {
    serde_json::from_value(row.state.clone()).map_err(|err| Error::Corrupt {
        id: row.id,
        reason: err.to_string(),
    })
}

pub(super) fn encode_state(state: &SagaState) -> Value {
    // SagaState is plain data (strings, numbers, timestamps): serialising cannot fail.
    serde_json::to_value(state).unwrap_or(Value::Null)
}

/// The furthest step the saga has reached, for display and filtering.
pub(super) fn current_step(state: &SagaState) -> i32 {
    let reached = state
        .steps
        .iter()
        .rposition(|step| step.forward != saga::ForwardPhase::Pending)
        .unwrap_or(0);
    i32::try_from(reached).unwrap_or(i32::MAX)
}

/// What a participant's reply means to the saga.
pub(super) fn reply_input(reply: &Reply) -> Input {
    let step = reply.step as usize;
    let attempt = reply.attempt;
    match (reply.direction, &reply.outcome) {
        (Direction::Forward, ReplyOutcome::Succeeded { output }) => Input::StepSucceeded {
            step,
            attempt,
            output: output.clone(),
        },
        (Direction::Forward, ReplyOutcome::Rejected { reason }) => Input::StepFailed {
            step,
            attempt,
            kind: FailureKind::Rejected,
            reason: reason.clone(),
        },
        (Direction::Forward, ReplyOutcome::Failed { reason }) => Input::StepFailed {
            step,
            attempt,
            kind: FailureKind::Retryable,
            reason: reason.clone(),
        },
        (Direction::Compensate, ReplyOutcome::Succeeded { .. }) => {
            Input::CompensationSucceeded { step, attempt }
        }
        (
            Direction::Compensate | Direction::Fence,
            ReplyOutcome::Rejected { reason } | ReplyOutcome::Failed { reason },
        ) => Input::CompensationFailed {
            step,
            attempt,
            reason: reason.clone(),
        },
        (Direction::Fence, ReplyOutcome::Succeeded { output }) => {
            match serde_json::from_value::<Fenced>(output.clone()) {
                Ok(fenced) => Input::StepFenced {
                    step,
                    attempt,
                    applied: fenced.applied.then(|| fenced.output.unwrap_or(Value::Null)),
                },
                // Counts as a failed fence attempt: it is retried, and parks if it persists.
                Err(err) => Input::CompensationFailed {
                    step,
                    attempt,
                    reason: format!("unreadable fence reply: {err}"),
                },
            }
        }
    }
}
