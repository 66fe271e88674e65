//! The pure core of the orchestrator: saga definitions and the transition function.
//!
//! No I/O, no clock, no randomness: `(definition, state, input, now, jitter)` goes in, a new
//! state and a list of actions come out. The engine stores the state and the actions in one
//! transaction and performs the actions only after the commit; because the core is
//! deterministic, every behaviour below is pinned by unit and property tests.
//!
//! # The model
//! A saga runs its definition's stages in order (`Status::Running`); a stage is one step or
//! a parallel group of tasks, and the next stage starts when every step of this one
//! succeeded. A step is a task (a command sent to a participant role; the reply names the
//! attempt it answers, and only the latest attempt counts), a durable wait, or a wait for a
//! signal. A retryable failure is retried with backoff within the step's attempt budget and
//! deadline.
//!
//! When a step is rejected, runs out of attempts or deadline, a signal does not come in
//! time, or the saga is cancelled, the saga turns `Compensating`: the steps still going
//! forward are settled (a command in flight becomes outcome-unknown), then it undoes, newest
//! first and one at a time, every task whose effect may exist: tasks that succeeded and
//! tasks whose outcome is unknown (no reply). Once a *pivot* step succeeded, nothing is
//! undone any more: the steps after it are forward-only, retried until they succeed, and a
//! cancel is refused.
//! Steps that replied with a failure rolled themselves back and are not compensated; steps
//! without a compensation command are skipped. Compensations retry with backoff; when one
//! exhausts its budget the saga parks as `Failed` until an operator retries it.
//!
//! Ends: `Completed` (every step succeeded), `Compensated` (undone after a failure),
//! `Cancelled` (undone after a cancel request). These three are final.
//!
//! # Layout
//! - [`definition`]: the shape of a saga kind; [`document`]: a flow as JSON, checked and
//!   read; `definitions`: sample flows for its tests.
//! - [`state`]: what is persisted per saga; [`input`] and [`action`]: what goes in and out.
//! - [`transition`]: the state machine; `reply` fences and applies participant replies,
//!   `draft` holds the moves several inputs share.

pub mod action;
pub mod definition;
#[cfg(test)]
pub(crate) mod definitions;
pub mod document;
mod draft;
pub mod error;
pub mod input;
pub mod paths;
mod reply;
pub mod state;
pub mod transition;

#[cfg(test)]
pub(crate) mod tests;

pub use action::{Action, Event, EventKind};
pub use definition::{Definition, RetryPolicy, Signal, Step, StepKind, Task, Wake};
pub use error::Error;
pub use input::{FailureKind, Input};
pub use state::{CompensationPhase, ForwardPhase, SagaState, Status, StepState};
pub use transition::{Outcome, Transition, start, transition};
