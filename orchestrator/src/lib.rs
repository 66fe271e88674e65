//! sagaflow's composition point: the one place that joins the engine ([`engine`], which
//! knows no application) and the shop ([`shop`], its first application). The
//! `orchestrator` binary serves the engine with the shop's API mounted beside it (and in
//! `dev` runs the shop's participants in the same process); the `worker` binary runs the
//! shop's participant roles.
//!
//! - [`app`]: starts an orchestrator (`serve` or `dev`);
//! - [`config`]: the settings of both.

pub mod app;
pub mod config;
