//! Runs sagaflow as separate processes and drives it through its HTTP API: the chaos run
//! (`chaos` binary) and the load generator (`cargo bench -p orchestrator --bench load`).

pub mod check;
pub mod cluster;
pub mod load;
pub mod system;
