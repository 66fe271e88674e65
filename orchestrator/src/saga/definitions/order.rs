//! The order saga: stock is reserved before money moves, and money moves before anything
//! physical happens, so the costliest effects come last and are the least often undone.

use platform::contract::{Role, commands};

use super::super::definition::{Definition, Step};

pub static ORDER: Definition = Definition {
    name: "order",
    version: 1,
    steps: &[
        Step::new(
            "reserve_stock",
            Role::Inventory,
            commands::INVENTORY_RESERVE,
            Some(commands::INVENTORY_RELEASE),
        ),
        Step::new(
            "charge_payment",
            Role::Payment,
            commands::PAYMENT_CHARGE,
            Some(commands::PAYMENT_REFUND),
        ),
        Step::new(
            "prepare_shipment",
            Role::Shipment,
            commands::SHIPMENT_PREPARE,
            Some(commands::SHIPMENT_CANCEL),
        ),
    ],
};
