//! coupon: `coupon.claim` attaches one coupon of a campaign to a user: the campaign is
//! active, has coupons left (a campaign holds at most 100, so a kind never passes the
//! seed's limit), and the user holds none of it yet. `coupon.unclaim` undoes it, once.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Role, commands};
use platform::db::{Connection, prepared};
use serde_json::{Value, json};
use uuid::Uuid;

use super::missing;
use crate::gate::Want;
use crate::guarded::{self, Adjusted};
use crate::inputs::CouponUse;
use crate::participant::{Context, Failure, Participant, Strategy, input, unknown_command};
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

    /// Claims are decided as a set whenever a write can be one conditional statement or a
    /// lock guards it; not in the unprotected test mode, whose point is to race.
    fn settable(&self, command: &Command, context: &Context) -> bool {
        command.name == commands::COUPON_CLAIM
            && context.strategy != Strategy::Unprotected
            && context.think_time.is_zero()
    }

    async fn apply_set(
        &self,
        conn: &mut Connection,
        commands: &[&Command],
        context: &Context,
    ) -> anyhow::Result<Vec<Result<Value, String>>> {
        let mut answers: Vec<Option<Result<Value, String>>> = vec![None; commands.len()];
        // Campaign by campaign, in key order: two sets lock their campaigns in one order.
        let mut campaigns: BTreeMap<Uuid, Vec<Wanted>> = BTreeMap::new();
        for (at, command) in commands.iter().enumerate() {
            match input::<CouponUse>(command) {
                Ok(CouponUse {
                    campaign_id,
                    user_id,
                }) => campaigns.entry(campaign_id).or_default().push(Wanted {
                    at,
                    saga_id: command.saga_id,
                    user_id,
                }),
                Err(failure) => answers[at] = Some(Err(reason(failure)?)),
            }
        }
        for (campaign, wanted) in campaigns {
            let decided = self.claim_set(conn, campaign, &wanted, context).await?;
            for (one, answer) in wanted.iter().zip(decided) {
                answers[one.at] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|answer| answer.context("a claim of the set was not decided"))
            .collect()
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
        if let Some(outside) = outside(context, valid_from, valid_until) {
            return Err(outside);
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
            Adjusted::OutOfBounds { limit, .. } => return Err(no_coupons_left(limit)),
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
        Ok(self.claimed(claim_id, campaign_id, vendor_id, value_cents))
    }
}

/// One claim of a set: its place in the set, its saga and its user.
struct Wanted {
    at: usize,
    saga_id: Uuid,
    user_id: Uuid,
}

/// The campaign as a set of claims finds it, its row locked for the transaction.
#[derive(QueryableByName)]
struct Campaign {
    #[diesel(sql_type = SqlUuid)]
    vendor_id: Uuid,
    #[diesel(sql_type = BigInt)]
    value_cents: i64,
    #[diesel(sql_type = Timestamptz)]
    valid_from: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    valid_until: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    total_quantity: i64,
}

/// How a claim of a set was judged.
#[derive(QueryableByName)]
struct Judged {
    /// The user exists.
    #[diesel(sql_type = Bool)]
    known: bool,
    /// The user held a coupon of the campaign before the set.
    #[diesel(sql_type = Bool)]
    holds: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    claim_id: Option<i64>,
    /// Whether the campaign's counter took the set's claims (always, with its row locked).
    #[diesel(sql_type = Bool)]
    counted: bool,
}

/// Takes the campaign's row for the rest of the transaction (the set's insert then sees
/// every claim committed before it). Under Redis locks this is also the fenced read: it
/// registers the lock's token on the row, so an older holder can no longer write.
const TAKE_CAMPAIGN: &str = "UPDATE coupon_campaigns SET fence = COALESCE($2, fence) \
     WHERE id = $1 AND ($2::bigint IS NULL OR fence <= $2) \
     RETURNING vendor_id, value_cents, valid_from, valid_until, total_quantity::bigint";

/// Inserts the claims of the set that the rules allow, in the set's order, while coupons
/// last, counts them on the campaign, and judges every claim: the user is known, does not
/// hold a coupon of the campaign, and is the first of the set to ask.
const CLAIM_SET: &str = "WITH wanted AS ( \
         SELECT * FROM unnest($2::uuid[], $3::uuid[]) WITH ORDINALITY AS w(saga_id, user_id, ord) \
     ), judged AS ( \
         SELECT w.ord, w.saga_id, w.user_id, \
                EXISTS (SELECT 1 FROM users u WHERE u.id = w.user_id) AS known, \
                EXISTS (SELECT 1 FROM coupon_claims h WHERE h.campaign_id = $1 \
                        AND h.user_id = w.user_id AND h.unclaimed_at IS NULL) AS holds, \
                row_number() OVER (PARTITION BY w.user_id ORDER BY w.ord) AS nth \
         FROM wanted w \
     ), winners AS ( \
         SELECT saga_id, user_id FROM judged WHERE known AND NOT holds AND nth = 1 \
         ORDER BY ord \
         LIMIT (SELECT GREATEST(total_quantity - claimed, 0) FROM coupon_campaigns WHERE id = $1) \
     ), inserted AS ( \
         INSERT INTO coupon_claims (campaign_id, user_id, saga_id, claimed_at) \
         SELECT $1, user_id, saga_id, $4 FROM winners \
         RETURNING id, saga_id \
     ), counted AS ( \
         UPDATE coupon_campaigns SET claimed = claimed + (SELECT count(*) FROM inserted), \
                updated_at = now() \
         WHERE id = $1 AND claimed + (SELECT count(*) FROM inserted) <= total_quantity \
         RETURNING 1 \
     ) \
     SELECT j.known, j.holds, i.id AS claim_id, EXISTS (SELECT 1 FROM counted) AS counted \
     FROM judged j LEFT JOIN inserted i ON i.saga_id = j.saga_id \
     ORDER BY j.ord";

impl Coupon {
    /// The claims of one campaign in a set: one statement takes the campaign, one decides
    /// every claim.
    async fn claim_set(
        &self,
        conn: &mut Connection,
        campaign_id: Uuid,
        wanted: &[Wanted],
        context: &Context,
    ) -> anyhow::Result<Vec<Result<Value, String>>> {
        let all = |reason: String| Ok(vec![Err(reason); wanted.len()]);
        let fence = context.fence(&resource(campaign_id));
        let campaign: Option<Campaign> = prepared(TAKE_CAMPAIGN)
            .bind::<SqlUuid, _>(campaign_id)
            .bind::<Nullable<BigInt>, _>(fence)
            .get_result(conn)
            .await
            .optional()?;
        let Some(campaign) = campaign else {
            let known: i64 = coupon_campaigns::table
                .find(campaign_id)
                .count()
                .get_result(conn)
                .await?;
            anyhow::ensure!(
                known == 0,
                "stale fencing token {fence:?} for {}: a newer lock holder has the row",
                resource(campaign_id)
            );
            return all(reason(missing(
                "coupon campaign",
                &campaign_id.to_string(),
            ))?);
        };
        if let Some(outside) = outside(context, campaign.valid_from, campaign.valid_until) {
            return all(reason(outside)?);
        }
        let sagas: Vec<Uuid> = wanted.iter().map(|one| one.saga_id).collect();
        let users: Vec<Uuid> = wanted.iter().map(|one| one.user_id).collect();
        let judged: Vec<Judged> = prepared(CLAIM_SET)
            .bind::<SqlUuid, _>(campaign_id)
            .bind::<Array<SqlUuid>, _>(&sagas)
            .bind::<Array<SqlUuid>, _>(&users)
            .bind::<Timestamptz, _>(context.now)
            .load(conn)
            .await?;
        anyhow::ensure!(
            judged.len() == wanted.len() && judged.iter().all(|one| one.counted),
            "the set's claims on {campaign_id} were not all judged and counted"
        );
        let mut winners = HashSet::new();
        let mut answers = Vec::with_capacity(wanted.len());
        for (one, judged) in wanted.iter().zip(judged) {
            answers.push(match judged.claim_id {
                Some(claim_id) => {
                    winners.insert(one.user_id);
                    Ok(self.claimed(
                        claim_id,
                        campaign_id,
                        campaign.vendor_id,
                        campaign.value_cents,
                    ))
                }
                None if !judged.known => Err(reason(missing("user", &one.user_id.to_string()))?),
                None if judged.holds || winners.contains(&one.user_id) => {
                    Err(reason(already_holds())?)
                }
                None => Err(reason(no_coupons_left(Some(campaign.total_quantity)))?),
            });
        }
        Ok(answers)
    }

    /// A claim's output: what the vendor's payout needs.
    fn claimed(
        &self,
        claim_id: i64,
        campaign_id: Uuid,
        vendor_id: Uuid,
        value_cents: i64,
    ) -> Value {
        json!({
            "claim_id": claim_id,
            "campaign_id": campaign_id,
            "vendor_id": vendor_id,
            "value_cents": value_cents,
            "payout_cents": value_cents * self.payout_percent / 100,
        })
    }
}

/// A rejection's reason; any other failure is an error of the whole set.
fn reason(failure: Failure) -> anyhow::Result<String> {
    match failure {
        Failure::Rejected(reason) => Ok(reason),
        Failure::Retry(err) => Err(err),
    }
}

/// The rejection of a claim outside the campaign's validity, if it is.
fn outside(
    context: &Context,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
) -> Option<Failure> {
    (context.now < valid_from || context.now >= valid_until).then(|| {
        Failure::rejected(format!(
            "campaign is valid from {valid_from} until {valid_until}"
        ))
    })
}

fn no_coupons_left(limit: Option<i64>) -> Failure {
    Failure::rejected(format!(
        "no coupons left: all {} claimed",
        limit.unwrap_or_default()
    ))
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
