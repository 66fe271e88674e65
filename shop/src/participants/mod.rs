//! The participants, one file per role. Each knows its commands' resources and business
//! rules; the [runtime](crate::runtime) provides inbox, locks, transactions and replies.

pub mod coupon;
pub mod inventory;
pub mod payment;
pub mod shipment;
pub mod vendor;

use crate::participant::Failure;

/// Maps "no such row" of a guarded change to a rejection naming what was missing.
fn missing(what: &str, key: &str) -> Failure {
    Failure::rejected(format!("unknown {what} {key}"))
}
