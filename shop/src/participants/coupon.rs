//! coupon: `coupon.claim` attaches one coupon of a campaign to a user: the campaign is
//! active, has coupons left (a campaign holds at most 100, so a kind never passes the
//! seed's limit), and the user holds none of it yet. `coupon.unclaim` undoes it, once.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Role, commands};
use platform::db::Connection;
use serde_json::{Value, json};
use uuid::Uuid;

use super::missing;
use crate::gate::Want;
use crate::guarded::{self, Adjusted};
use crate::inputs::CouponUse;
use crate::participant::{Context, Failure, Participant, input, unknown_command};
use crate::schema::{coupon_campaigns, coupon_claims, users};

/// The share of a coupon's value paid to its vendor when the coupon is used.
pub const DEFAULT_PAYOUT_PERCENT: i64 = 90;

pub struct Coupon {
    pub payout_percent: i64,
}

impl Default for Coupon {
    fn default() -> Self {
        Self {
            payout_percent: DEFAULT_PAYOUT_PERCENT,
        }
    }
}

fn resource(campaign: Uuid) -> String {
    format!("coupon:{campaign}")
}

impl Participant for Coupon {
    fn role(&self) -> Role {
        Role::Coupon
    }

    fn resources(&self, command: &Command) -> Result<Vec<String>, Failure> {
        let coupon_use: CouponUse = input(command)?;
        Ok(vec![resource(coupon_use.campaign_id)])
    }

    fn gate(&self, command: &Command) -> Result<Vec<Want>, Failure> {
        let coupon_use: CouponUse = input(command)?;
        Ok(vec![Want {
            resource: resource(coupon_use.campaign_id),
            counter: guarded::COUPONS_CLAIMED,
            key: coupon_use.campaign_id.to_string(),
            amount: 1,
        }])
    }

    async fn apply(
        &self,
        conn: &mut Connection,
        command: &Command,
        context: &Context,
    ) -> Result<Value, Failure> {
        match command.name.as_str() {
            commands::COUPON_CLAIM => self.claim(conn, command, context).await,
            commands::COUPON_UNCLAIM => unclaim(conn, command, context).await,
            _ => Err(unknown_command(command)),
        }
    }
}

impl Coupon {
    async fn claim(
        &self,
        conn: &mut Connection,
        command: &Command,
        context: &Context,
    ) -> Result<Value, Failure> {
        let CouponUse {
            campaign_id,
            user_id,
        } = input(command)?;
        let campaign: Option<(Uuid, i64, DateTime<Utc>, DateTime<Utc>)> = coupon_campaigns::table
            .find(campaign_id)
            .select((
                coupon_campaigns::vendor_id,
                coupon_campaigns::value_cents,
                coupon_campaigns::valid_from,
                coupon_campaigns::valid_until,
            ))
            .first(conn)
            .await
            .optional()?;
        let Some((vendor_id, value_cents, valid_from, valid_until)) = campaign else {
            return Err(missing("coupon campaign", &campaign_id.to_string()));
        };
        if context.now < valid_from || context.now >= valid_until {
            return Err(Failure::rejected(format!(
                "campaign is valid from {valid_from} until {valid_until}"
            )));
        }
        let user_known: i64 = users::table
            .filter(users::id.eq(user_id))
            .count()
            .get_result(conn)
            .await?;
        if user_known == 0 {
            return Err(missing("user", &user_id.to_string()));
        }
        let holds: i64 = coupon_claims::table
            .filter(coupon_claims::campaign_id.eq(campaign_id))
            .filter(coupon_claims::user_id.eq(user_id))
            .filter(coupon_claims::unclaimed_at.is_null())
            .count()
            .get_result(conn)
            .await?;
        if holds > 0 {
            return Err(already_holds());
        }
        let key = campaign_id.to_string();
        match guarded::adjust(
            conn,
            context,
            guarded::COUPONS_CLAIMED,
            &resource(campaign_id),
            &key,
            1,
        )
        .await?
        {
            Adjusted::Done { .. } => {}
            Adjusted::Missing => return Err(missing("coupon campaign", &key)),
            Adjusted::OutOfBounds { limit, .. } => {
                return Err(Failure::rejected(format!(
                    "no coupons left: all {} claimed",
                    limit.unwrap_or_default()
                )));
            }
        }
        let inserted = diesel::insert_into(coupon_claims::table)
            .values((
                coupon_claims::campaign_id.eq(campaign_id),
                coupon_claims::user_id.eq(user_id),
                coupon_claims::saga_id.eq(command.saga_id),
                coupon_claims::claimed_at.eq(context.now),
            ))
            .returning(coupon_claims::id)
            .get_result::<i64>(conn)
            .await;
        let claim_id = match inserted {
            Ok(id) => id,
            // Without a lock, a concurrent claim by the same user can pass the check above;
            // the unique index is the last word.
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                return Err(already_holds());
            }
            Err(err) => return Err(err.into()),
        };
        Ok(json!({
            "claim_id": claim_id,
            "campaign_id": campaign_id,
            "vendor_id": vendor_id,
            "value_cents": value_cents,
            "payout_cents": value_cents * self.payout_percent / 100,
        }))
    }
}

fn already_holds() -> Failure {
    Failure::rejected("the user already holds a coupon of this campaign")
}

async fn unclaim(
    conn: &mut Connection,
    command: &Command,
    context: &Context,
) -> Result<Value, Failure> {
    let CouponUse { campaign_id, .. } = input(command)?;
    let undone = diesel::update(
        coupon_claims::table
            .filter(coupon_claims::saga_id.eq(command.saga_id))
            .filter(coupon_claims::unclaimed_at.is_null()),
    )
    .set(coupon_claims::unclaimed_at.eq(Some(context.now)))
    .execute(conn)
    .await?;
    if undone == 0 {
        return Ok(json!({ "unclaimed": false })); // never claimed, or undone already
    }
    let key = campaign_id.to_string();
    match guarded::adjust(
        conn,
        context,
        guarded::COUPONS_CLAIMED,
        &resource(campaign_id),
        &key,
        -1,
    )
    .await?
    {
        Adjusted::Done { .. } => Ok(json!({ "unclaimed": true })),
        other => Err(Failure::Retry(anyhow::anyhow!(
            "returning a coupon to {key} failed: {other:?}"
        ))),
    }
}
