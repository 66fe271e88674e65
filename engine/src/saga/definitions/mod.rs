//! Sample flows for the pure core's tests: the shop's documents (`shop/definitions/`), read
//! as fixtures.

use std::sync::LazyLock;

use super::definition::Definition;
use super::document;

fn built_in(name: &str) -> Definition {
    document::samples()
        .into_iter()
        .find(|definition| definition.name == name)
        .unwrap_or_else(|| panic!("no built-in definition `{name}`"))
}

/// The order flow, version 1.
pub static ORDER: LazyLock<Definition> = LazyLock::new(|| built_in("order"));

/// The coupon-use flow, version 1.
pub static COUPON_USE: LazyLock<Definition> = LazyLock::new(|| built_in("coupon_use"));
