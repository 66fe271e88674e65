//! The shop's flows as definition documents (`shop/definitions/*.json`), embedded so that
//! `dev` needs no files. The composition point hands them to the engine's catalog, which
//! stores them as the built-in versions, with the flows the shop fronts and the versions it
//! no longer starts.

use engine::shell::catalog::BuiltIn;

/// `order` (reserve stock, charge payment, prepare shipment) and `coupon_use` (claim the
/// coupon, pay the vendor). `order` starts only through `POST /v1/orders`, which prices
/// the lines; its version 1, whose input carried a `total_cents` a generic start could
/// choose, starts nothing new (its running sagas finish, charged the price all the same).
pub const BUILT_IN: BuiltIn<'static> = BuiltIn {
    documents: &[
        include_str!("../definitions/order.v1.json"),
        include_str!("../definitions/order.v2.json"),
        include_str!("../definitions/coupon_use.json"),
    ],
    fronts: &[("order", "POST /v1/orders")],
    retired: &[(
        "order",
        1,
        "its input carried a total_cents that a caller could choose; version 2 has none",
    )],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_document_passes_registration_checks() {
        for text in BUILT_IN.documents {
            let document: serde_json::Value = serde_json::from_str(text).unwrap();
            engine::saga::document::parse(&document, platform::kafka::LOST_MEMBER_COST)
                .unwrap_or_else(|faults| panic!("{}: {faults:?}", document["name"]));
        }
    }

    #[test]
    fn no_open_version_of_a_built_in_flow_takes_an_amount_from_its_input() {
        for text in BUILT_IN.documents {
            let document: serde_json::Value = serde_json::from_str(text).unwrap();
            let name = document["name"].as_str().unwrap();
            let version = document["version"].as_u64().unwrap();
            let retired = BUILT_IN
                .retired
                .iter()
                .any(|(flow, v, _)| *flow == name && u64::from(*v) == version);
            let input = document["input"].to_string();
            if !retired {
                assert!(
                    !input.contains("_cents") && !input.contains("points"),
                    "{name} v{version} takes an amount from its caller: {input}"
                );
            }
        }
    }
}
