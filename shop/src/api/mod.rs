//! The shop's resources: orders, products, users and their wallets, vendors, coupon
//! campaigns, and (in `dev`) the demo data generators. Clients order and use coupons;
//! admins manage the rest ([`RULES`]). The engine serves them beside its own operations
//! through [`mount`]: the shop is an application of the engine, which never names it.

// `ApiError` is the problem+json response itself (see `engine::api`).
#![allow(clippy::result_large_err)]

pub mod counters;
pub mod coupons;
pub mod demo;
pub mod orders;
pub mod products;
pub mod users;
pub mod vendors;

use engine::api::Mount;
use engine::api::problem::ApiError;
use engine::auth::policy::{ADMIN, ADMIN_OR_OPERATOR, ANY_KEY, CLIENT, OWN_OR_OPERATOR, Rule};
use poem_openapi::Tags;

use crate::adjuster::{self, Adjuster};
use crate::direct::DirectUse;

/// What the shop's handlers share beyond the engine's [`engine::api::State`].
#[derive(Clone)]
pub struct Shop {
    /// Claim and payout in the request, for the Kafka-vs-direct comparison.
    pub direct: DirectUse,
    /// Stock and balance changes under the participants' concurrency strategy.
    pub adjuster: Adjuster,
}

#[derive(Tags)]
pub enum Tag {
    /// Orders: each starts an order saga (reserve stock, charge payment, prepare shipment).
    Orders,
    /// Products and their stock.
    Products,
    /// Users and their wallets.
    Users,
    /// Vendors, their balances and payout ledgers.
    Vendors,
    /// Coupon campaigns, and using a coupon (a saga, or directly).
    Coupons,
    /// Random demo data.
    Demo,
}

/// The shop's operations.
pub type Apis = (
    orders::OrdersApi,
    products::ProductsApi,
    users::UsersApi,
    vendors::VendorsApi,
    coupons::CouponsApi,
    demo::DemoApi,
);

pub fn apis() -> Apis {
    (
        orders::OrdersApi,
        products::ProductsApi,
        users::UsersApi,
        vendors::VendorsApi,
        coupons::CouponsApi,
        demo::DemoApi,
    )
}

/// Who may call the shop's operations (joined with the engine's rows).
pub const RULES: &[Rule] = &[
    // The shop's customers (`client`) order and use coupons; they read their own orders.
    ("POST", "/v1/orders", CLIENT),
    ("GET", "/v1/orders/{id}", OWN_OR_OPERATOR),
    ("POST", "/v1/coupons/{id}/uses", CLIENT),
    ("POST", "/v1/coupons/{id}/direct-uses", CLIENT),
    ("GET", "/v1/products/{sku}", ANY_KEY),
    ("GET", "/v1/coupons/{id}", ANY_KEY),
    ("GET", "/v1/users/{id}", ADMIN_OR_OPERATOR),
    ("GET", "/v1/users/{id}/coupons", ADMIN_OR_OPERATOR),
    ("GET", "/v1/vendors/{id}", ADMIN_OR_OPERATOR),
    // Admins manage what the shop sells and who holds money.
    ("POST", "/v1/products", ADMIN),
    ("POST", "/v1/products/{sku}/stock", ADMIN),
    ("POST", "/v1/users", ADMIN),
    ("POST", "/v1/users/{id}/top-ups", ADMIN),
    ("POST", "/v1/vendors", ADMIN),
    ("POST", "/v1/coupons", ADMIN),
    ("POST", "/v1/demo/users", ADMIN),
    ("POST", "/v1/demo/vendors", ADMIN),
    ("POST", "/v1/demo/coupons", ADMIN),
];

/// The shop as the engine serves it.
pub fn mount(shop: Shop) -> Mount<Apis, Shop> {
    Mount {
        apis: apis(),
        rules: RULES,
        data: shop,
    }
}

/// Example SKU in the OpenAPI document.
fn example_sku() -> String {
    "MUG-01".to_owned()
}

impl From<adjuster::Error> for ApiError {
    fn from(err: adjuster::Error) -> Self {
        match err {
            adjuster::Error::Refused(reason) => Self::conflict(reason),
            busy @ adjuster::Error::Busy(_) => Self::unavailable(busy.to_string(), 1),
            adjuster::Error::Failed(err) => Self::internal(format!("{err:#}")),
        }
    }
}
