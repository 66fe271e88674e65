//! Coupon campaigns and coupon use.
//!
//! A kind of coupon never goes past 100 in total (the seed's rule): creating a campaign
//! that would take its kind past 100 is refused, under a per-kind advisory lock so two
//! concurrent creations cannot both slip under the limit. Using a coupon is a saga
//! (`coupon.claim` -> `vendor.payout`), or, for the seed's Kafka-vs-direct comparison, the
//! same two participant calls made synchronously in the request.

use crate::schema::{coupon_campaigns, users, vendors};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use platform::db::{Connection, prepared};
use poem::web::Data;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use engine::api::State;
use engine::api::idempotency;
use engine::api::operator::{SagaDetail, read_settling};
use engine::api::problem::{ApiError, ApiResult};
use engine::api::wait;
use engine::auth::Caller;
use engine::shell::Queued;

/// Most coupons of one kind, across all its campaigns.
pub const KIND_LIMIT: i64 = 100;

pub struct CouponsApi;

#[derive(Debug, Object)]
#[oai(example)]
pub struct NewCampaign {
    pub vendor_id: Uuid,
    /// Coupons of one kind never exceed 100 in total.
    #[oai(validator(min_length = 1, max_length = 100))]
    pub kind: String,
    #[oai(validator(min_length = 1, max_length = 200))]
    pub title: String,
    #[oai(validator(minimum(value = "1"), maximum(value = "100000000")))]
    pub value_cents: i64,
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub total_quantity: i32,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
}

impl poem_openapi::types::Example for NewCampaign {
    fn example() -> Self {
        Self {
            vendor_id: engine::api::example_id(),
            kind: "WELCOME-10".into(),
            title: "10% off your first coffee".into(),
            value_cents: 500,
            total_quantity: 100,
            // A date-time the document's own format accepts (RFC 3339, four-digit year).
            valid_from: DateTime::<Utc>::UNIX_EPOCH,
            valid_until: DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::days(365 * 80),
        }
    }
}

#[derive(Debug, Object, Queryable, Selectable)]
#[diesel(table_name = coupon_campaigns)]
pub struct Campaign {
    pub id: Uuid,
    pub vendor_id: Uuid,
    pub kind: String,
    pub title: String,
    pub value_cents: i64,
    /// Coupons issued.
    pub total_quantity: i32,
    pub claimed: i32,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
struct CampaignView {
    #[oai(flatten)]
    campaign: Campaign,
    remaining: i32,
}

/// Who uses a coupon.
#[derive(Debug, Object, Serialize)]
struct CouponUse {
    user_id: Uuid,
}

#[derive(Debug, Object, Serialize, Deserialize)]
struct UseAccepted {
    saga_id: Uuid,
    saga_url: String,
}

/// The outcome of a direct (synchronous) use.
#[derive(Debug, Object, Serialize, Deserialize)]
struct DirectOutcome {
    use_id: Uuid,
    claim: Value,
    payout: Value,
}

#[derive(ApiResponse)]
enum Created {
    #[oai(status = 201)]
    Created(Json<CampaignView>),
}

#[derive(ApiResponse)]
enum Found {
    #[oai(status = 200)]
    Ok(Json<CampaignView>),
}

// The settled saga is the larger answer, and the rarer; boxing it would obscure the type
// the OpenAPI document shows.
#[allow(clippy::large_enum_variant)]
#[derive(ApiResponse)]
enum Used {
    /// The coupon_use saga started.
    #[oai(status = 202)]
    Accepted(
        Json<UseAccepted>,
        #[oai(header = "Location")] String,
        #[oai(header = "Idempotent-Replayed")] Option<bool>,
    ),
    /// With `Prefer: wait=N`: the saga settled within N seconds; here it is, as
    /// `GET /v1/sagas/{id}` shows it.
    #[oai(status = 200)]
    Settled(
        Json<SagaDetail>,
        #[oai(header = "Location")] String,
        #[oai(header = "Preference-Applied")] Option<String>,
    ),
}

#[derive(ApiResponse)]
enum UsedDirectly {
    /// Claimed and paid out.
    #[oai(status = 200)]
    Ok(
        Json<DirectOutcome>,
        #[oai(header = "Idempotent-Replayed")] Option<bool>,
    ),
}

fn view(campaign: Campaign) -> CampaignView {
    CampaignView {
        remaining: campaign.total_quantity - campaign.claimed,
        campaign,
    }
}

async fn find(state: &State, id: Uuid) -> ApiResult<Campaign> {
    let mut conn = state.database.get().await?;
    coupon_campaigns::table
        .find(id)
        .select(Campaign::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("coupon campaign", id))
}

async fn user_exists(state: &State, id: Uuid) -> ApiResult<()> {
    let mut conn = state.database.get().await?;
    let known: i64 = users::table
        .filter(users::id.eq(id))
        .count()
        .get_result(&mut conn)
        .await?;
    if known == 0 {
        return Err(ApiError::unprocessable(
            "user_id",
            format!("user {id} does not exist"),
        ));
    }
    Ok(())
}

/// Creates a campaign if its kind stays within [`KIND_LIMIT`].
pub async fn create_campaign(state: &State, new: &NewCampaign) -> ApiResult<Campaign> {
    if new.valid_until <= new.valid_from {
        return Err(ApiError::invalid(
            "valid_until",
            "valid_until must be after valid_from",
        ));
    }
    let mut pooled = state.database.get().await?;
    let conn: &mut Connection = &mut pooled;
    conn.transaction::<_, ApiError, _>(async |conn: &mut Connection| {
        let vendor: i64 = vendors::table
            .filter(vendors::id.eq(new.vendor_id))
            .count()
            .get_result(conn)
            .await?;
        if vendor == 0 {
            return Err(ApiError::unprocessable(
                "vendor_id",
                format!("vendor {} does not exist", new.vendor_id),
            ));
        }
        // Serialises creations of one kind until commit.
        prepared("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind::<Text, _>(&new.kind)
            .execute(conn)
            .await?;
        let issued: Option<i64> = coupon_campaigns::table
            .filter(coupon_campaigns::kind.eq(&new.kind))
            .select(diesel::dsl::sum(coupon_campaigns::total_quantity))
            .first(conn)
            .await?;
        let issued = issued.unwrap_or(0);
        if issued + i64::from(new.total_quantity) > KIND_LIMIT {
            return Err(ApiError::conflict(format!(
                "kind {} has {issued} coupons issued; {} more would pass the limit of {KIND_LIMIT} per kind",
                new.kind, new.total_quantity
            )));
        }
        Ok(diesel::insert_into(coupon_campaigns::table)
            .values((
                coupon_campaigns::id.eq(Uuid::now_v7()),
                coupon_campaigns::vendor_id.eq(new.vendor_id),
                coupon_campaigns::kind.eq(&new.kind),
                coupon_campaigns::title.eq(&new.title),
                coupon_campaigns::value_cents.eq(new.value_cents),
                coupon_campaigns::total_quantity.eq(new.total_quantity),
                coupon_campaigns::valid_from.eq(new.valid_from),
                coupon_campaigns::valid_until.eq(new.valid_until),
            ))
            .returning(Campaign::as_returning())
            .get_result(conn)
            .await?)
    })
    .await
}

#[OpenApi(tag = "crate::api::Tag::Coupons")]
impl CouponsApi {
    /// Create a coupon campaign
    ///
    /// A vendor issues up to 100 coupons of a kind. 409 when the kind would pass 100 coupons
    /// in total across its campaigns; 422 when the vendor does not exist.
    #[oai(path = "/v1/coupons", method = "post")]
    async fn create(&self, state: Data<&State>, body: Json<NewCampaign>) -> ApiResult<Created> {
        Ok(Created::Created(Json(view(
            create_campaign(&state, &body).await?,
        ))))
    }

    /// Get a coupon campaign
    ///
    /// Issued, claimed and remaining coupons.
    #[oai(path = "/v1/coupons/:id", method = "get")]
    async fn get(
        &self,
        state: Data<&State>,
        #[oai(example = "engine::api::example_id")] id: Path<Uuid>,
    ) -> ApiResult<Found> {
        Ok(Found::Ok(Json(view(find(&state, id.0).await?))))
    }

    /// Use a coupon (saga)
    ///
    /// Starts a coupon_use saga: claim one coupon for the user, then pay the vendor 90% of its
    /// value. 202 with the saga to follow; a refused claim or payout shows as a COMPENSATED
    /// saga. With `Prefer: wait=N` (seconds, at most 25) the answer is 200 with the saga when
    /// it settles within N seconds, else the 202.
    #[oai(path = "/v1/coupons/:id/uses", method = "post")]
    async fn use_coupon(
        &self,
        state: Data<&State>,
        #[oai(example = "engine::api::example_id")] id: Path<Uuid>,
        body: Json<CouponUse>,
        /// Makes retries safe: the same key always answers with the same saga.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 200))]
        idempotency_key: Header<Option<String>>,
        /// RFC 7240 preferences; `wait=N` waits up to N seconds for the saga to settle.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Used> {
        let wait = wait::requested(&state, prefer.0.as_deref(), None)?;
        let path = format!("/v1/coupons/{}/uses", id.0);
        let key =
            idempotency::Key::of(&caller, idempotency_key.0.as_deref(), "POST", &path, &*body)?;
        find(&state, id.0).await?;
        user_exists(&state, body.user_id).await?;
        let input = crate::inputs::CouponUse {
            campaign_id: id.0,
            user_id: body.user_id,
        };
        let payload = crate::inputs::to_value(&input);
        let engine = &state.engine;
        let mut pooled = state.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        let (accepted, replayed, queued) = conn
            .transaction::<_, ApiError, _>(async |conn: &mut Connection| {
                if let Some(key) = &key
                    && let Some(first) = idempotency::begin::<UseAccepted>(conn, key).await?
                {
                    return Ok((first, true, Queued::default()));
                }
                let started = engine
                    .start_for_in(conn, "coupon_use", &payload, caller.owner())
                    .await?;
                let accepted = UseAccepted {
                    saga_id: started.id,
                    saga_url: format!("/v1/sagas/{}", started.id),
                };
                if let Some(key) = &key {
                    idempotency::finish(conn, key, 202, &accepted).await?;
                }
                Ok((accepted, false, started.queued))
            })
            .await?;
        // Committed: the saga's first command leaves now.
        engine.publish(queued);
        let location = accepted.saga_url.clone();
        if wait.is_zero() {
            return Ok(Used::Accepted(
                Json(accepted),
                location,
                replayed.then_some(true),
            ));
        }
        let saga = accepted.saga_id;
        let read = || read_settling(&state, &caller, saga);
        let waited =
            wait::until_settled(&state.waiters, &caller.name, saga, wait, None, read).await?;
        Ok(if waited.settled {
            Used::Settled(Json(waited.value), location, waited.applied)
        } else {
            Used::Accepted(Json(accepted), location, replayed.then_some(true))
        })
    }

    /// Use a coupon (direct)
    ///
    /// Claims and pays out synchronously in the request, without Kafka: the seed's "direct
    /// call" variant, kept for comparison. The claim and the payout commit together or not
    /// at all. 200 when used; 409 with the reason when refused (none left, already held,
    /// payouts disabled); 503 with `Retry-After` when a lock stayed busy.
    #[oai(path = "/v1/coupons/:id/direct-uses", method = "post")]
    async fn use_directly(
        &self,
        state: Data<&State>,
        shop: Data<&super::Shop>,
        #[oai(example = "engine::api::example_id")] id: Path<Uuid>,
        body: Json<CouponUse>,
        /// Makes retries safe: the same key always answers with the same use.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 200))]
        idempotency_key: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<UsedDirectly> {
        let path = format!("/v1/coupons/{}/direct-uses", id.0);
        let key =
            idempotency::Key::of(&caller, idempotency_key.0.as_deref(), "POST", &path, &*body)?;
        let campaign = find(&state, id.0).await?;
        user_exists(&state, body.user_id).await?;
        let direct = &shop.direct;
        let held = direct.hold(id.0, campaign.vendor_id, body.user_id).await?;
        let result = async {
            let mut pooled = state.database.get().await?;
            let conn: &mut Connection = &mut pooled;
            conn.transaction::<_, ApiError, _>(async |conn: &mut Connection| {
                if let Some(key) = &key
                    && let Some(first) = idempotency::begin::<DirectOutcome>(conn, key).await?
                {
                    return Ok((first, true));
                }
                let used = direct.apply(conn, &held, id.0, body.user_id).await?;
                let outcome = DirectOutcome {
                    use_id: used.use_id,
                    claim: used.claim,
                    payout: used.payout,
                };
                if let Some(key) = &key {
                    idempotency::finish(conn, key, 200, &outcome).await?;
                }
                Ok((outcome, false))
            })
            .await
        }
        .await;
        direct.release(held).await;
        let (outcome, replayed) = result?;
        Ok(UsedDirectly::Ok(Json(outcome), replayed.then_some(true)))
    }
}
