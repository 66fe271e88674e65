//! The pure core of the orchestrator: saga definitions and the transition function.
//!
//! No I/O, no clock, no randomness: `(definition, state, input, now, jitter)` goes in, a new
//! state and a list of actions come out. The engine stores the state and the actions in one
//! transaction and performs the actions only after the commit; because the core is
//! deterministic, every behaviour below is pinned by unit and property tests.
//!
//! # The model
//! A saga runs its definition's steps one at a time (`Status::Running`). Each step is a
//! command sent to a participant role; the reply names the attempt it answers, and only the
//! latest attempt counts. A retryable failure is retried with backoff within the step's
//! attempt budget and deadline.
//!
//! When a step is rejected, runs out of attempts or deadline, or the saga is cancelled, the
//! saga turns `Compensating` and undoes, newest first and one at a time, every step whose
//! effect may exist: steps that succeeded and steps whose outcome is unknown (no reply).
//! Steps that replied with a failure rolled themselves back and are not compensated; steps
//! without a compensation command are skipped. Compensations retry with backoff; when one
//! exhausts its budget the saga parks as `Failed` until an operator retries it.
//!
//! Ends: `Completed` (every step succeeded), `Compensated` (undone after a failure),
//! `Cancelled` (undone after a cancel request). These three are final.
//!
//! # Layout
//! - [`definition`]: the static shape of a saga kind; [`definitions`]: the registry.
//! - [`state`]: what is persisted per saga; [`input`] and [`action`]: what goes in and out.
//! - [`transition`]: the state machine; `reply` fences and applies participant replies,
//!   `draft` holds the moves several inputs share.

pub mod action;
pub mod definition;
pub mod definitions;
mod draft;
pub mod error;
pub mod input;
mod reply;
pub mod state;
pub mod transition;

#[cfg(test)]
mod tests;

pub use action::{Action, Event, EventKind};
pub use definition::{Definition, RetryPolicy, Step};
pub use error::Error;
pub use input::{FailureKind, Input};
pub use state::{CompensationPhase, ForwardPhase, SagaState, Status, StepState};
pub use transition::{Outcome, Transition, start, transition};
