//! The saga inputs of the shop's flows, one type each: the API fronts build them, the engine
//! stores them as the saga's input (checked against the flow's input schema), and the
//! participants read back the part their command needs ([`Charge`], [`Lines`], [`ShipTo`],
//! [`CouponUse`]) with [`crate::participant::input`]. A participant reads a view, not the
//! whole order, because a role serves every flow that names it (click-and-collect charges
//! and reserves without an address). Tests keep the views, the inputs and the documents'
//! input schemas in step.

use poem_openapi::Object;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `order` saga's input (version 2: no amount; the front's total is in `orders`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderInput {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub lines: Vec<OrderLine>,
    pub shipping_address: Address,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
pub struct OrderLine {
    #[oai(validator(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub sku: String,
    #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
    pub quantity: i32,
}

/// Where an order ships: the API's request field and the shipment participant's input.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
pub struct Address {
    /// ISO 3166-1 alpha-2 country code.
    #[oai(validator(pattern = r"^[A-Za-z]{2}$"))]
    pub country: String,
    #[oai(validator(min_length = 1, max_length = 100))]
    pub city: String,
    #[oai(validator(min_length = 1, max_length = 200))]
    pub line1: String,
    #[oai(validator(min_length = 1, max_length = 20))]
    pub postal_code: String,
}

/// The `coupon_use` saga's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CouponUse {
    pub campaign_id: Uuid,
    pub user_id: Uuid,
}

/// What the payment participant reads: who pays, and for which lines. Never an amount: a
/// caller may write any total into a saga's input, so the charge is priced from the
/// server's own tables (`participants::payment`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Charge {
    pub user_id: Uuid,
    pub lines: Vec<OrderLine>,
}

/// What the inventory participant reads: the lines to reserve.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Lines {
    pub lines: Vec<OrderLine>,
}

/// What the shipment participant reads: where to ship.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ShipTo {
    pub shipping_address: Address,
}

/// A typed input as the JSON the engine stores.
pub fn to_value<T: Serialize>(input: &T) -> serde_json::Value {
    serde_json::to_value(input).expect("a saga input serialises to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input schema of the version of `name` that new sagas start on (the highest).
    fn input_schema(name: &str) -> serde_json::Value {
        crate::definitions::BUILT_IN
            .documents
            .iter()
            .map(|text| serde_json::from_str::<serde_json::Value>(text).unwrap())
            .filter(|document| document["name"] == name)
            .max_by_key(|document| document["version"].as_u64())
            .unwrap_or_else(|| panic!("no document {name}"))["input"]
            .clone()
    }

    fn accepts(schema: &serde_json::Value, value: &serde_json::Value) -> bool {
        jsonschema::validator_for(schema).unwrap().is_valid(value)
    }

    #[test]
    fn the_typed_inputs_satisfy_their_flows_input_schemas() {
        let order = OrderInput {
            order_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            lines: vec![OrderLine {
                sku: "MUG-01".into(),
                quantity: 2,
            }],
            shipping_address: Address {
                country: "KR".into(),
                city: "Seoul".into(),
                line1: "1 Seongsu-ro".into(),
                postal_code: "04790".into(),
            },
        };
        let schema = input_schema("order");
        let stored = to_value(&order);
        assert!(accepts(&schema, &stored));
        // Every participant of the flow finds its view in the stored input.
        let charge: Charge = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(
            (charge.user_id, &charge.lines),
            (order.user_id, &order.lines)
        );
        let lines: Lines = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(lines.lines, order.lines);
        let ship_to: ShipTo = serde_json::from_value(stored).unwrap();
        assert_eq!(ship_to.shipping_address, order.shipping_address);
        let mut renamed = to_value(&order);
        renamed["shipping"] = renamed["shipping_address"].take();
        renamed.as_object_mut().unwrap().remove("shipping_address");
        assert!(
            !accepts(&schema, &renamed),
            "the schema names the fields the type writes"
        );
        let coupon_use = CouponUse {
            campaign_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
        };
        assert!(accepts(&input_schema("coupon_use"), &to_value(&coupon_use)));
    }
}
