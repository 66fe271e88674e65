//! The operator API: sagas (status, steps, history, retry and cancel), the saga
//! definitions, and the notifications the lifecycle events left. Handlers stay thin: the engine decides what an
//! operator action may do.

pub(super) mod bulk_jobs;
pub(super) mod dead_letters;
pub(super) mod events;
pub(super) mod lag;
pub(super) mod notifications;
pub(super) mod sagas;
pub(super) mod stats;

pub use sagas::{SagaDetail, read_settling};
