//! shipment: `shipment.prepare` creates a shipment with a tracking number, or rejects an
//! address outside the countries we ship to ([`SERVICEABLE_COUNTRIES`]);
//! `shipment.cancel` voids it. One shipment per saga, so no lock is needed.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Role, commands};
use platform::db::Connection;
use serde_json::{Value, json};

use crate::inputs::ShipTo;
use crate::participant::{Context, Failure, Participant, input, unknown_command};
use crate::schema::shipments;

/// ISO 3166-1 alpha-2 codes of the countries the carrier serves.
pub const SERVICEABLE_COUNTRIES: [&str; 8] = ["KR", "JP", "US", "CA", "GB", "DE", "FR", "NL"];

pub struct Shipment;

impl Participant for Shipment {
    fn role(&self) -> Role {
        Role::Shipment
    }

    fn resources(&self, _command: &Command) -> Result<Vec<String>, Failure> {
        Ok(Vec::new())
    }

    async fn apply(
        &self,
        conn: &mut Connection,
        command: &Command,
        context: &Context,
    ) -> Result<Value, Failure> {
        match command.name.as_str() {
            commands::SHIPMENT_PREPARE => prepare(conn, command, context).await,
            commands::SHIPMENT_CANCEL => cancel(conn, command, context).await,
            _ => Err(unknown_command(command)),
        }
    }
}

async fn prepare(
    conn: &mut Connection,
    command: &Command,
    context: &Context,
) -> Result<Value, Failure> {
    let ShipTo { shipping_address } = input(command)?;
    let country = shipping_address.country.to_ascii_uppercase();
    if !SERVICEABLE_COUNTRIES.contains(&country.as_str()) {
        return Err(Failure::rejected(format!(
            "address not serviceable: we do not ship to {country}"
        )));
    }
    let tracking = format!(
        "SF{}",
        &command.saga_id.simple().to_string()[20..].to_uppercase()
    );
    diesel::insert_into(shipments::table)
        .values((
            shipments::saga_id.eq(command.saga_id),
            shipments::tracking_number.eq(&tracking),
            shipments::address
                .eq(serde_json::to_value(&shipping_address).map_err(anyhow::Error::from)?),
            shipments::prepared_at.eq(context.now),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    let tracking: String = shipments::table
        .find(command.saga_id)
        .select(shipments::tracking_number)
        .first(conn)
        .await?;
    Ok(json!({ "tracking_number": tracking }))
}

async fn cancel(
    conn: &mut Connection,
    command: &Command,
    context: &Context,
) -> Result<Value, Failure> {
    let cancelled = diesel::update(
        shipments::table
            .find(command.saga_id)
            .filter(shipments::cancelled_at.is_null()),
    )
    .set(shipments::cancelled_at.eq(Some(context.now)))
    .returning(shipments::cancelled_at)
    .get_result::<Option<DateTime<Utc>>>(conn)
    .await
    .optional()?;
    Ok(json!({ "cancelled": cancelled.is_some() }))
}
