//! The coupon-use saga: a user claims a coupon, then the vendor is paid for it.
//!
//! The payout has no compensation: it is the last step, so when it succeeds the saga is done
//! and nothing after it can fail. If it is rejected or times out, only the claim is undone; a
//! payout whose outcome is unknown is left for the vendor ledger to reconcile, since clawing
//! money back from a vendor is a business process, not an automatic one.

use platform::contract::{Role, commands};

use super::super::definition::{Definition, Step};

pub static COUPON_USE: Definition = Definition {
    name: "coupon_use",
    version: 1,
    steps: &[
        Step::new(
            "claim_coupon",
            Role::Coupon,
            commands::COUPON_CLAIM,
            Some(commands::COUPON_UNCLAIM),
        ),
        Step::new("vendor_payout", Role::Vendor, commands::VENDOR_PAYOUT, None),
    ],
};
