//! The sagaflow orchestrator.
//!
//! # Layout
//! - [`config`]: environment variables of the `orchestrator` binary.
//! - [`app`]: wiring of pools, clients, the HTTP server and the background loops.
//! - [`api`]: the REST API (poem-openapi) and its problem+json errors.

pub mod api;
pub mod app;
pub mod config;
