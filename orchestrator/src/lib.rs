//! The sagaflow orchestrator.
//!
//! # Layout
//! - [`saga`]: the pure core: definitions and the transition function (no I/O).
//! - [`engine`]: runs the core against Postgres (state, history, outbox in one transaction).
//! - [`relay`]: publishes the outbox to Kafka after commit.
//! - [`replies`]: applies participants' replies.
//! - [`timers`]: fires deadlines and retry times.
//! - [`dead_letters`]: records the dead-letter topic for operators.
//! - [`bulk`]: works through bulk operator jobs.
//! - [`api`]: the REST API (poem-openapi) and its problem+json errors.
//! - [`auth`]: API keys, scopes, and what each operation needs.
//! - [`console`]: the operator console at `/ui`, a page over the same API.
//! - [`retention`]: the orchestrator's tables that age out.
//! - [`seed`]: the demo data set of `orchestrator seed`.
//! - [`app`]: wiring of pools, clients, the HTTP server and the loops; [`config`]: environment.

pub mod api;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod console;
pub mod engine;
pub mod loops;
pub mod saga;
pub mod schema;
pub mod seed;
