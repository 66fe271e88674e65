//! payment: `payment.charge` debits the price of the saga's lines from the user's wallet or
//! rejects with insufficient funds; `payment.refund` credits it back, once. One payment row
//! per saga makes "charged at most once, refunded at most once" a property of the data.
//!
//! The amount is never read from the saga's input, which a caller writes: it is the total
//! the order front priced and stored in `orders` for this saga, or, in any other flow, the
//! lines at the products' prices now. So a flow started through the generic door, or a
//! saga of a version whose input still carries a `total_cents`, pays the price.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Role, commands};
use platform::db::Connection;
use serde_json::{Value, json};
use uuid::Uuid;

use super::missing;
use crate::guarded::{self, Adjusted};
use crate::inputs::{Charge, OrderLine};
use crate::participant::{Context, Failure, Participant, input, unknown_command};
use crate::schema::{orders, payments};

pub struct Payment;

fn resource(user: Uuid) -> String {
    format!("user:{user}")
}

impl Participant for Payment {
    fn role(&self) -> Role {
        Role::Payment
    }

    fn resources(&self, command: &Command) -> Result<Vec<String>, Failure> {
        let charge: Charge = input(command)?;
        Ok(vec![resource(charge.user_id)])
    }

    async fn apply(
        &self,
        conn: &mut Connection,
        command: &Command,
        context: &Context,
    ) -> Result<Value, Failure> {
        match command.name.as_str() {
            commands::PAYMENT_CHARGE => charge(conn, command, context).await,
            commands::PAYMENT_REFUND => refund(conn, command, context).await,
            _ => Err(unknown_command(command)),
        }
    }
}

async fn charge(
    conn: &mut Connection,
    command: &Command,
    context: &Context,
) -> Result<Value, Failure> {
    let Charge { user_id, lines } = input(command)?;
    let existing: Option<i64> = payments::table
        .find(command.saga_id)
        .select(payments::amount_cents)
        .first(conn)
        .await
        .optional()?;
    if let Some(amount) = existing {
        // An earlier attempt of this saga charged already: never twice.
        return Ok(json!({ "user_id": user_id, "amount_cents": amount }));
    }
    let total_cents = price(conn, command, &lines).await?;
    if total_cents <= 0 {
        return Err(Failure::rejected("order total must be positive"));
    }
    let user = user_id.to_string();
    match guarded::adjust(
        conn,
        context,
        guarded::USER_BALANCE,
        &resource(user_id),
        &user,
        -total_cents,
    )
    .await?
    {
        Adjusted::Done { .. } => {}
        Adjusted::Missing => return Err(missing("user", &user)),
        Adjusted::OutOfBounds { current, .. } => {
            return Err(Failure::rejected(format!(
                "insufficient funds: balance {current}, total {total_cents}"
            )));
        }
    }
    diesel::insert_into(payments::table)
        .values((
            payments::saga_id.eq(command.saga_id),
            payments::user_id.eq(user_id),
            payments::amount_cents.eq(total_cents),
            payments::charged_at.eq(context.now),
        ))
        .execute(conn)
        .await?;
    Ok(json!({ "user_id": user_id, "amount_cents": total_cents }))
}

/// What the saga's lines cost, from the server's tables: the order front's stored total when
/// this saga is an order's (the price the customer was shown), else each line at its
/// product's price now. An unknown product, or a total past `i64`, is a rejection.
async fn price(
    conn: &mut Connection,
    command: &Command,
    lines: &[OrderLine],
) -> Result<i64, Failure> {
    let fronted: Option<i64> = orders::table
        .filter(orders::saga_id.eq(command.saga_id))
        .select(orders::total_cents)
        .first(conn)
        .await
        .optional()?;
    if let Some(total) = fronted {
        return Ok(total);
    }
    crate::pricing::total(conn, lines)
        .await?
        .map_err(|unpriced| Failure::rejected(unpriced.to_string()))
}

async fn refund(
    conn: &mut Connection,
    command: &Command,
    context: &Context,
) -> Result<Value, Failure> {
    let open: Option<(Uuid, i64, Option<DateTime<Utc>>)> = payments::table
        .find(command.saga_id)
        .select((
            payments::user_id,
            payments::amount_cents,
            payments::refunded_at,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some((user_id, amount, None)) = open else {
        return Ok(json!({ "refunded_cents": 0 })); // nothing charged, or refunded already
    };
    diesel::update(payments::table.find(command.saga_id))
        .set(payments::refunded_at.eq(context.now))
        .execute(conn)
        .await?;
    let user = user_id.to_string();
    match guarded::adjust(
        conn,
        context,
        guarded::USER_BALANCE,
        &resource(user_id),
        &user,
        amount,
    )
    .await?
    {
        Adjusted::Done { .. } => Ok(json!({ "refunded_cents": amount })),
        other => Err(Failure::Retry(anyhow::anyhow!(
            "refunding {amount} to {user} failed: {other:?}"
        ))),
    }
}
