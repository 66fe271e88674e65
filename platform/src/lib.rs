//! Shared plumbing of sagaflow, used by the orchestrator and the workers alike.
//!
//! Nothing in here knows about HTTP or about saga semantics: it is the ground both
//! processes stand on.
//!
//! # Layout
//! - [`contract`]: the wire contract (topic names, commands, replies, events). Both sides
//!   import it from here and nowhere else.
//! - [`kafka`]: idempotent producer, at-least-once consumer loop with a dead-letter topic,
//!   topic creation, and the embedded (in-process) cluster used when no broker is configured.
//! - [`db`]: the Postgres pool (diesel-async + deadpool), database creation and migrations.
//! - [`cache`]: the Redis pool.
//! - [`env`]: reading typed configuration from environment variables, failing fast.
//! - [`fault`]: infrastructure faults (wait) told from failures (spend the budget).
//! - [`health`]: dependency probes behind `/readyz`.
//! - [`liveness`]: which background loops still run, behind `/healthz`.
//! - [`retention`]: deletes old inbox, history and bookkeeping rows in batches.
//! - [`shutdown`]: the process-wide shutdown signal (SIGINT/SIGTERM).
//! - [`telemetry`]: tracing set-up (text or JSON).
//! - `testkit` (feature `testkit`): a private database, topic prefix and key prefix per test.

pub mod cache;
pub mod contract;
pub mod db;
pub mod env;
pub mod fault;
pub mod health;
pub mod kafka;
pub mod liveness;
pub mod retention;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
