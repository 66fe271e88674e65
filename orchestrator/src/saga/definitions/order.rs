//! The order saga: stock is reserved before money moves, and money moves before anything
//! physical happens, so the costliest effects come last and are the least often undone.

use super::super::definition::{Definition, Step};

pub static ORDER: Definition = Definition {
    name: "order",
    steps: &[
        Step::new(
            "reserve_stock",
            "inventory",
            "inventory.reserve",
            Some("inventory.release"),
        ),
        Step::new(
            "charge_payment",
            "payment",
            "payment.charge",
            Some("payment.refund"),
        ),
        Step::new(
            "prepare_shipment",
            "shipment",
            "shipment.prepare",
            Some("shipment.cancel"),
        ),
    ],
};
