//! sagaflow's engine: the product. It runs any flow registered as a definition document,
//! and knows no application: the shop mounts its API beside the engine's and runs its
//! participants as roles, but nothing here names it. Depends on `platform` only.
//!
//! # Layout
//! - [`saga`]: the pure core: definitions, documents and the transition function (no I/O).
//! - [`shell`]: runs the core against Postgres (state, history, outbox in one transaction);
//!   the catalog of registered flows.
//! - [`loops`]: the background loops (relay, replies, timers, bulk, dead letters,
//!   retention, definitions), one shape, spawned from one list.
//! - [`api`]: the REST API (poem-openapi) and its problem+json errors; an application's
//!   operations join through [`api::Mount`].
//! - [`auth`]: API keys, scopes, and what each operation needs.
//! - [`console`]: the operator console at `/ui`, a page over the same API.
//! - [`app`]: wiring of pools, clients, loops and the HTTP server; [`config`]: environment.
//! - [`schema`]: the engine's tables.

pub mod api;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod console;
pub mod loops;
pub mod saga;
pub mod schema;
pub mod shell;
