//! inventory: `inventory.reserve` takes every line of an order or none, never letting
//! stock go negative; `inventory.release` returns exactly what this saga reserved, once.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Role, commands};
use platform::db::Connection;
use serde_json::{Value, json};

use super::missing;
use crate::gate::Want;
use crate::guarded::{self, Adjusted};
use crate::inputs::Lines;
use crate::participant::{Context, Failure, Participant, input, unknown_command};
use crate::schema::reservations;

pub struct Inventory;

/// The order's lines merged per SKU (sorted, so locks and writes follow one order).
fn lines(command: &Command) -> Result<BTreeMap<String, i64>, Failure> {
    let order: Lines = input(command)?;
    if order.lines.is_empty() {
        return Err(Failure::rejected("order has no lines"));
    }
    let mut merged = BTreeMap::new();
    for line in order.lines {
        if line.quantity <= 0 {
            return Err(Failure::rejected(format!(
                "quantity of {} must be positive",
                line.sku
            )));
        }
        *merged.entry(line.sku).or_insert(0) += i64::from(line.quantity);
    }
    Ok(merged)
}

fn resource(sku: &str) -> String {
    format!("sku:{sku}")
}

impl Participant for Inventory {
    fn role(&self) -> Role {
        Role::Inventory
    }

    fn resources(&self, command: &Command) -> Result<Vec<String>, Failure> {
        Ok(lines(command)?.keys().map(|sku| resource(sku)).collect())
    }

    fn gate(&self, command: &Command) -> Result<Vec<Want>, Failure> {
        Ok(lines(command)?
            .into_iter()
            .map(|(sku, quantity)| Want {
                resource: resource(&sku),
                counter: guarded::STOCK,
                key: sku,
                amount: quantity,
            })
            .collect())
    }

    async fn apply(
        &self,
        conn: &mut Connection,
        command: &Command,
        context: &Context,
    ) -> Result<Value, Failure> {
        match command.name.as_str() {
            commands::INVENTORY_RESERVE => reserve(conn, command, context).await,
            commands::INVENTORY_RELEASE => release(conn, command, context).await,
            _ => Err(unknown_command(command)),
        }
    }
}

async fn reserve(
    conn: &mut Connection,
    command: &Command,
    context: &Context,
) -> Result<Value, Failure> {
    let mut reserved = Vec::new();
    for (sku, quantity) in lines(command)? {
        match guarded::adjust(
            conn,
            context,
            guarded::STOCK,
            &resource(&sku),
            &sku,
            -quantity,
        )
        .await?
        {
            Adjusted::Done { .. } => {}
            Adjusted::Missing => return Err(missing("sku", &sku)),
            Adjusted::OutOfBounds { current, .. } => {
                return Err(Failure::rejected(format!(
                    "out of stock: {sku} has {current}, order needs {quantity}"
                )));
            }
        }
        let quantity_i32 = i32::try_from(quantity)
            .map_err(|_| Failure::rejected(format!("quantity of {sku} is too large")))?;
        diesel::insert_into(reservations::table)
            .values((
                reservations::saga_id.eq(command.saga_id),
                reservations::sku.eq(&sku),
                reservations::quantity.eq(quantity_i32),
            ))
            .execute(conn)
            .await?;
        reserved.push(json!({ "sku": sku, "quantity": quantity }));
    }
    Ok(json!({ "reserved": reserved }))
}

async fn release(
    conn: &mut Connection,
    command: &Command,
    context: &Context,
) -> Result<Value, Failure> {
    let held: Vec<(String, i32)> = reservations::table
        .filter(reservations::saga_id.eq(command.saga_id))
        .filter(reservations::released_at.is_null())
        .order(reservations::sku.asc())
        .select((reservations::sku, reservations::quantity))
        .for_update()
        .load(conn)
        .await?;
    let mut released = Vec::new();
    for (sku, quantity) in held {
        diesel::update(reservations::table.find((command.saga_id, &sku)))
            .set(reservations::released_at.eq(context.now))
            .execute(conn)
            .await?;
        match guarded::adjust(
            conn,
            context,
            guarded::STOCK,
            &resource(&sku),
            &sku,
            i64::from(quantity),
        )
        .await?
        {
            Adjusted::Done { .. } => released.push(json!({ "sku": sku, "quantity": quantity })),
            other => {
                return Err(Failure::Retry(anyhow::anyhow!(
                    "returning {quantity} of {sku} failed: {other:?}"
                )));
            }
        }
    }
    Ok(json!({ "released": released }))
}
