//! The direct coupon use: the coupon claim and the vendor payout in ONE Postgres transaction,
//! in the request, without Kafka (the seed's "direct call" variant, kept for comparison).
//!
//! Both run the participants' own business code, under the same concurrency strategy as the
//! workers. The locks of both resources are taken first, in sorted order, and only then is a
//! pooled connection taken, so a request waiting for a busy lock holds no connection. Either
//! both changes commit or neither does: a refused payout, an error or a dropped request
//! leaves no claim behind, and the user may simply try again.

use std::collections::HashMap;

use chrono::Utc;
use diesel_async::AsyncConnection as _;
use platform::cache;
use platform::contract::{
    Command, CommandPayload, Direction, Dispatch, Producer, Role, StepOutput, commands,
};
use platform::db::{self, Connection};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::lock::{Guard, Locks};
use crate::participant::{Context, Participant, Strategy};
use crate::participants::{coupon::Coupon, vendor::Vendor};
use crate::runtime::RuntimeOptions;

/// A coupon used directly.
#[derive(Debug, Clone, PartialEq)]
pub struct Used {
    pub use_id: Uuid,
    pub claim: Value,
    pub payout: Value,
}

pub use crate::adjuster::Error;

#[derive(Clone)]
pub struct DirectUse {
    database: db::Pool,
    locks: Locks,
    options: RuntimeOptions,
}

/// The locks of one direct use, held while its transaction runs.
pub struct Held {
    context: Context,
    guards: Vec<Guard>,
}

impl DirectUse {
    pub fn new(
        database: db::Pool,
        redis: cache::Pool,
        redis_prefix: &str,
        options: RuntimeOptions,
    ) -> Self {
        Self {
            database,
            locks: Locks::new(redis, redis_prefix),
            options,
        }
    }

    /// Claims a coupon of `campaign` (issued by `vendor`) for `user` and pays the vendor, in
    /// a transaction of its own.
    pub async fn run(&self, campaign: Uuid, vendor: Uuid, user: Uuid) -> Result<Used, Error> {
        let held = self.hold(campaign, vendor, user).await?;
        let result = async {
            let mut pooled = self.database.get().await.map_err(anyhow::Error::from)?;
            let conn: &mut Connection = &mut pooled;
            conn.transaction::<_, Error, _>(async |conn: &mut Connection| {
                self.apply(conn, &held, campaign, user).await
            })
            .await
        }
        .await;
        self.release(held).await;
        result
    }

    /// Takes the locks of the campaign and the vendor (sorted), before any connection.
    pub async fn hold(&self, campaign: Uuid, vendor: Uuid, user: Uuid) -> Result<Held, Error> {
        let input = json!({ "campaign_id": campaign, "user_id": user });
        let claim = command(Uuid::nil(), 0, commands::COUPON_CLAIM, &input, Vec::new());
        let claimed = json!({ "vendor_id": vendor, "payout_cents": 0 });
        let payout = command(
            Uuid::nil(),
            1,
            commands::VENDOR_PAYOUT,
            &input,
            vec![("claim_coupon", claim_output(claimed))],
        );
        let mut resources = Coupon::default().resources(&claim)?;
        resources.extend(Vendor.resources(&payout)?);
        let guards = if self.options.strategy == Strategy::RedisLock {
            self.locks
                .lock_all(&resources, self.options.lock_wait, self.options.lock_lease)
                .await
                .map_err(anyhow::Error::from)?
                .ok_or_else(|| Error::Busy(resources.join(", ")))?
        } else {
            Vec::new()
        };
        let context = Context {
            strategy: self.options.strategy,
            fences: guards
                .iter()
                .map(|guard| (guard.resource().to_owned(), guard.fence()))
                .collect::<HashMap<_, _>>(),
            now: Utc::now(),
            think_time: self.options.think_time,
        };
        Ok(Held { context, guards })
    }

    /// The claim and the payout, inside the caller's transaction: an `Err` must roll it back.
    pub async fn apply(
        &self,
        conn: &mut Connection,
        held: &Held,
        campaign: Uuid,
        user: Uuid,
    ) -> Result<Used, Error> {
        let use_id = Uuid::now_v7();
        let input = json!({ "campaign_id": campaign, "user_id": user });
        let claim = command(use_id, 0, commands::COUPON_CLAIM, &input, Vec::new());
        let claimed = Coupon::default().apply(conn, &claim, &held.context).await?;
        let payout = command(
            use_id,
            1,
            commands::VENDOR_PAYOUT,
            &input,
            vec![("claim_coupon", claim_output(claimed.clone()))],
        );
        let paid = Vendor.apply(conn, &payout, &held.context).await?;
        Ok(Used {
            use_id,
            claim: claimed,
            payout: paid,
        })
    }

    pub async fn release(&self, held: Held) {
        for guard in held.guards {
            if let Err(err) = guard.release().await {
                tracing::warn!(error = %err, "lock release failed");
            }
        }
    }
}

/// The claim's answer as a payout's command carries it: produced by the coupon role.
fn claim_output(output: Value) -> StepOutput {
    StepOutput {
        by: Producer::Command {
            role: Role::Coupon.as_str().to_owned(),
            command: commands::COUPON_CLAIM.to_owned(),
        },
        output,
    }
}

fn command(
    use_id: Uuid,
    step: u32,
    name: &str,
    input: &Value,
    outputs: Vec<(&str, StepOutput)>,
) -> Command {
    let dispatch = Dispatch {
        step,
        attempt: 1,
        direction: Direction::Forward,
    };
    let payload = CommandPayload {
        input: input.clone(),
        outputs: outputs
            .into_iter()
            .map(|(step, output)| (step.to_owned(), output))
            .collect(),
    };
    Command::new(
        use_id,
        "coupon_use_direct",
        dispatch,
        name,
        payload,
        Utc::now(),
    )
}
