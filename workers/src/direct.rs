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
use platform::contract::{Command, Direction};
use platform::db::{self, Connection};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::lock::{Guard, Locks};
use crate::participant::{Context, Failure, Participant, Strategy};
use crate::participants::{coupon::Coupon, vendor::Vendor};
use crate::runtime::RuntimeOptions;

/// A coupon used directly.
#[derive(Debug, Clone, PartialEq)]
pub struct Used {
    pub use_id: Uuid,
    pub claim: Value,
    pub payout: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A business rule refused the use; nothing changed.
    #[error("{0}")]
    Refused(String),
    /// A resource's lock was not had in time; nothing changed, the caller may retry.
    #[error("{0} is busy; try again")]
    Busy(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

#[derive(Clone)]
pub struct DirectUse {
    database: db::Pool,
    locks: Locks,
    options: RuntimeOptions,
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

    /// Claims a coupon of `campaign` (issued by `vendor`) for `user` and pays the vendor.
    pub async fn run(&self, campaign: Uuid, vendor: Uuid, user: Uuid) -> Result<Used, Error> {
        let use_id = Uuid::now_v7();
        let input = json!({ "campaign_id": campaign, "user_id": user });
        let claim = command(use_id, 0, "coupon.claim", &input, json!({}));
        let planned_payout = command(
            use_id,
            1,
            "vendor.payout",
            &input,
            json!({ "claim_coupon": { "vendor_id": vendor, "payout_cents": 0 } }),
        );
        let mut resources = refused(Coupon::default().resources(&claim))?;
        resources.extend(refused(Vendor.resources(&planned_payout))?);
        let guards = self.lock(&resources).await?;
        let context = Context {
            strategy: self.options.strategy,
            fences: guards
                .iter()
                .map(|guard| (guard.resource().to_owned(), guard.fence()))
                .collect::<HashMap<_, _>>(),
            now: Utc::now(),
            think_time: self.options.think_time,
        };
        let result = self.transact(&claim, &input, &context).await;
        for guard in guards {
            if let Err(err) = guard.release().await {
                tracing::warn!(error = %err, "lock release failed");
            }
        }
        let (claim, payout) = result?;
        Ok(Used {
            use_id,
            claim,
            payout,
        })
    }

    async fn lock(&self, resources: &[String]) -> Result<Vec<Guard>, Error> {
        if self.options.strategy != Strategy::RedisLock {
            return Ok(Vec::new());
        }
        self.locks
            .lock_all(resources, self.options.lock_wait, self.options.lock_lease)
            .await
            .map_err(anyhow::Error::from)?
            .ok_or_else(|| Error::Busy(resources.join(", ")))
    }

    async fn transact(
        &self,
        claim: &Command,
        input: &Value,
        context: &Context,
    ) -> Result<(Value, Value), Error> {
        let mut pooled = self.database.get().await.map_err(anyhow::Error::from)?;
        let conn: &mut Connection = &mut pooled;
        let result = conn
            .transaction::<_, Failure, _>(async |conn: &mut Connection| {
                let claimed = Coupon::default().apply(conn, claim, context).await?;
                let payout = command(
                    claim.saga_id,
                    1,
                    "vendor.payout",
                    input,
                    json!({ "claim_coupon": claimed }),
                );
                let paid = Vendor.apply(conn, &payout, context).await?;
                Ok((claimed, paid))
            })
            .await;
        match result {
            Ok(used) => Ok(used),
            Err(Failure::Rejected(reason)) => Err(Error::Refused(reason)),
            Err(Failure::Retry(err)) => Err(Error::Failed(err)),
        }
    }
}

fn refused<T>(result: Result<T, Failure>) -> Result<T, Error> {
    result.map_err(|failure| match failure {
        Failure::Rejected(reason) => Error::Refused(reason),
        Failure::Retry(err) => Error::Failed(err),
    })
}

fn command(use_id: Uuid, step: u32, name: &str, input: &Value, outputs: Value) -> Command {
    Command {
        id: Uuid::now_v7(),
        saga_id: use_id,
        saga: "coupon_use_direct".into(),
        step,
        attempt: 1,
        direction: Direction::Forward,
        name: name.into(),
        payload: json!({ "input": input, "outputs": outputs }),
        issued_at: Utc::now(),
    }
}
