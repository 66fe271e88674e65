//! The shop's flows as definition documents (`shop/definitions/*.json`), embedded so that
//! `dev` needs no files. The composition point hands them to the engine's catalog, which
//! stores them as the built-in versions.

/// `order` (reserve stock, charge payment, prepare shipment) and `coupon_use` (claim the
/// coupon, pay the vendor).
pub const BUILT_IN: [&str; 2] = [
    include_str!("../definitions/order.json"),
    include_str!("../definitions/coupon_use.json"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_document_passes_registration_checks() {
        for text in BUILT_IN {
            let document: serde_json::Value = serde_json::from_str(text).unwrap();
            let definition =
                engine::saga::document::parse(&document, platform::kafka::LOST_MEMBER_COST)
                    .unwrap_or_else(|faults| panic!("{}: {faults:?}", document["name"]));
            assert_eq!(definition.version, 1, "{} is version 1", definition.name);
        }
    }
}
