//! The registry of every saga kind the orchestrator can run.
//!
//! A new kind is one file holding a `static Definition` plus its line in [`ALL`]; the
//! transition code never names a definition, so it needs no change.

mod coupon_use;
mod order;

use super::definition::Definition;

pub use coupon_use::COUPON_USE;
pub use order::ORDER;

/// Every registered definition; names must be unique (checked by a test).
pub static ALL: &[&Definition] = &[&ORDER, &COUPON_USE];

/// Looks a definition up by name: the one new sagas start on.
pub fn find(name: &str) -> Option<&'static Definition> {
    ALL.iter()
        .copied()
        .find(|definition| definition.name == name)
}

/// The exact shape a saga instance started on: its name and version as stored.
pub fn find_version(name: &str, version: i32) -> Option<&'static Definition> {
    find(name).filter(|definition| i64::from(definition.version) == i64::from(version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_found() {
        let names: HashSet<_> = ALL.iter().map(|definition| definition.name).collect();
        assert_eq!(names.len(), ALL.len());
        for definition in ALL {
            assert_eq!(find(definition.name), Some(*definition));
        }
        assert_eq!(find("no_such_saga"), None);
        assert_eq!(find_version("order", 1), Some(&ORDER));
        assert_eq!(find_version("order", 2), None);
    }

    #[test]
    fn every_definition_is_well_formed() {
        for definition in ALL {
            assert!(
                !definition.steps.is_empty(),
                "{} has no steps",
                definition.name
            );
            let step_names: HashSet<_> = definition.steps.iter().map(|step| step.name).collect();
            assert_eq!(
                step_names.len(),
                definition.steps.len(),
                "{}",
                definition.name
            );
            for step in definition.steps {
                assert!(
                    step.command.starts_with(&format!("{}.", step.role)),
                    "{}",
                    step.command
                );
                if let Some(undo) = step.compensation {
                    assert!(undo.starts_with(&format!("{}.", step.role)), "{undo}");
                }
                assert!(step.retry.max_attempts >= 1 && step.compensation_retry.max_attempts >= 1);
            }
        }
    }

    #[test]
    fn order_and_coupon_use_have_the_agreed_shape() {
        let order: Vec<_> = ORDER
            .steps
            .iter()
            .map(|step| {
                (
                    step.name,
                    step.role.as_str(),
                    step.command,
                    step.compensation,
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                (
                    "reserve_stock",
                    "inventory",
                    "inventory.reserve",
                    Some("inventory.release")
                ),
                (
                    "charge_payment",
                    "payment",
                    "payment.charge",
                    Some("payment.refund")
                ),
                (
                    "prepare_shipment",
                    "shipment",
                    "shipment.prepare",
                    Some("shipment.cancel")
                ),
            ]
        );
        let coupon_use: Vec<_> = COUPON_USE
            .steps
            .iter()
            .map(|step| {
                (
                    step.name,
                    step.role.as_str(),
                    step.command,
                    step.compensation,
                )
            })
            .collect();
        assert_eq!(
            coupon_use,
            [
                (
                    "claim_coupon",
                    "coupon",
                    "coupon.claim",
                    Some("coupon.unclaim")
                ),
                ("vendor_payout", "vendor", "vendor.payout", None),
            ]
        );
    }
}
