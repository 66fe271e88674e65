//! The shop's resources: orders, products, users and their wallets, vendors, coupon
//! campaigns, and (in `dev`) the demo data generators. Clients order and use coupons;
//! admins manage the rest (see `crate::auth::policy`).

pub(super) mod counters;
pub(super) mod coupons;
pub mod demo;
pub(super) mod orders;
pub(super) mod products;
pub(super) mod users;
pub(super) mod vendors;
