//! vendor: `vendor.payout` credits the vendor's balance with the payout the coupon role's
//! claim read from the coupon row (found by the command that produced it, never by a step
//! name a signal could carry too), and writes one ledger row per saga in the same
//! transaction, so a vendor's balance always equals the sum of its ledger. A vendor whose
//! payouts are disabled rejects.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Role, commands};
use platform::db::Connection;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::missing;
use crate::guarded::{self, Adjusted};
use crate::participant::{Context, Failure, Participant, output_of, unknown_command};
use crate::schema::{vendor_ledger, vendors};

pub struct Vendor;

/// What a payout is paid from: the `coupon` role's answer to `coupon.claim`.
const CLAIM: (Role, &str) = (Role::Coupon, commands::COUPON_CLAIM);

/// The part of the claim's reply a payout needs: the coupon row's vendor and value, as the
/// coupon role read them.
#[derive(Debug, Deserialize)]
struct Claimed {
    vendor_id: Uuid,
    payout_cents: i64,
}

fn resource(vendor: Uuid) -> String {
    format!("vendor:{vendor}")
}

impl Participant for Vendor {
    fn role(&self) -> Role {
        Role::Vendor
    }

    fn resources(&self, command: &Command) -> Result<Vec<String>, Failure> {
        let claimed: Claimed = output_of(command, CLAIM)?;
        Ok(vec![resource(claimed.vendor_id)])
    }

    async fn apply(
        &self,
        conn: &mut Connection,
        command: &Command,
        context: &Context,
    ) -> Result<Value, Failure> {
        match command.name.as_str() {
            commands::VENDOR_PAYOUT => payout(conn, command, context).await,
            _ => Err(unknown_command(command)),
        }
    }
}

async fn payout(
    conn: &mut Connection,
    command: &Command,
    context: &Context,
) -> Result<Value, Failure> {
    let Claimed {
        vendor_id,
        payout_cents,
    } = output_of(command, CLAIM)?;
    if payout_cents <= 0 {
        return Err(Failure::rejected("payout must be positive"));
    }
    let enabled: Option<bool> = vendors::table
        .find(vendor_id)
        .select(vendors::payouts_enabled)
        .first(conn)
        .await
        .optional()?;
    match enabled {
        None => return Err(missing("vendor", &vendor_id.to_string())),
        Some(false) => {
            return Err(Failure::rejected(format!(
                "payouts are disabled for vendor {vendor_id}"
            )));
        }
        Some(true) => {}
    }
    let entry: Option<i64> = diesel::insert_into(vendor_ledger::table)
        .values((
            vendor_ledger::vendor_id.eq(vendor_id),
            vendor_ledger::saga_id.eq(command.saga_id),
            vendor_ledger::amount_cents.eq(payout_cents),
            vendor_ledger::created_at.eq(context.now),
        ))
        .on_conflict_do_nothing()
        .returning(vendor_ledger::id)
        .get_result(conn)
        .await
        .optional()?;
    let Some(ledger_id) = entry else {
        // This saga's payout is in the ledger already: paid once.
        return Ok(json!({ "vendor_id": vendor_id, "amount_cents": payout_cents }));
    };
    let key = vendor_id.to_string();
    match guarded::adjust(
        conn,
        context,
        guarded::VENDOR_BALANCE,
        &resource(vendor_id),
        &key,
        payout_cents,
    )
    .await?
    {
        Adjusted::Done { after } => Ok(json!({
            "vendor_id": vendor_id,
            "amount_cents": payout_cents,
            "ledger_id": ledger_id,
            "balance_cents": after,
        })),
        other => Err(Failure::Retry(anyhow::anyhow!(
            "crediting vendor {key} failed: {other:?}"
        ))),
    }
}
