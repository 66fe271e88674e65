//! The engine's own room: flows as data (register, version, inspect) and the generic
//! saga start and signals, which know nothing of the shop, and the live Kafka contract.

pub mod asyncapi;
pub mod definitions;
pub mod signals;
pub mod start;
