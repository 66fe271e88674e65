//! Everything that can happen to a saga, as seen by the pure core.
//!
//! Replies carry the attempt number they answer: that is the fencing token that lets the
//! transition function recognise duplicates and replies to attempts it has given up on.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    StepSucceeded {
        step: usize,
        attempt: u32,
        output: Value,
    },
    /// The participant refused or failed and rolled back: its effect is absent either way.
    StepFailed {
        step: usize,
        attempt: u32,
        kind: FailureKind,
        reason: String,
    },
    CompensationSucceeded {
        step: usize,
        attempt: u32,
    },
    CompensationFailed {
        step: usize,
        attempt: u32,
        reason: String,
    },
    /// The participant answered a fence of a step without compensation: `applied` holds the
    /// step's output when the original command took effect before the fence, `None` when it
    /// never will. `attempt` is the fence's (counted with compensation attempts).
    StepFenced {
        step: usize,
        attempt: u32,
        applied: Option<Value>,
    },
    /// `POST /v1/sagas/{id}/signals/{name}`: the signal step `name` gets `payload` as its
    /// output.
    Signal {
        name: String,
        payload: Value,
    },
    /// Time has passed; whichever deadline or retry is due by `now` is handled.
    Tick,
    CancelRequested,
    /// An operator asks a `Failed` saga to try its compensation again.
    RetryRequested,
    /// An operator ends a `Failed` saga by hand: its compensation can never succeed.
    ResolveRequested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A business refusal (out of stock, insufficient funds): retrying cannot help.
    Rejected,
    /// A transient failure (lock not acquired, dependency down): another attempt may succeed.
    Retryable,
}
