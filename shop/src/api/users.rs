//! Users and their wallets, and the coupons they hold.

use crate::guarded::{self, Adjusted};
use crate::schema::{coupon_campaigns, coupon_claims, users};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use poem::web::Data;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::counters::{self, Change};
use engine::api::State;
use engine::api::idempotency;
use engine::api::problem::{ApiError, ApiResult};
use engine::auth::Caller;

pub struct UsersApi;

/// A new user with an opening wallet balance.
#[derive(Debug, Object)]
#[oai(example)]
pub struct NewUser {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    /// Opening balance in cents.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub balance_cents: i64,
}

impl poem_openapi::types::Example for NewUser {
    fn example() -> Self {
        Self {
            name: "Minji Kim".into(),
            balance_cents: 50_000,
        }
    }
}

#[derive(Debug, Object, Queryable, Selectable, Serialize, Deserialize)]
#[diesel(table_name = users)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub balance_cents: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Money added to a wallet.
#[derive(Debug, Object, Serialize)]
#[oai(example)]
struct TopUp {
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000")))]
    amount_cents: i64,
}

impl poem_openapi::types::Example for TopUp {
    fn example() -> Self {
        Self {
            amount_cents: 10_000,
        }
    }
}

/// A coupon the user holds.
#[derive(Debug, Object, Queryable)]
struct HeldCoupon {
    campaign_id: Uuid,
    kind: String,
    title: String,
    value_cents: i64,
    valid_until: DateTime<Utc>,
    claimed_at: DateTime<Utc>,
}

#[derive(ApiResponse)]
enum ToppedUp {
    /// The wallet after the top-up.
    #[oai(status = 200)]
    Ok(
        Json<User>,
        #[oai(header = "Idempotent-Replayed")] Option<bool>,
    ),
}

#[derive(ApiResponse)]
enum Created {
    #[oai(status = 201)]
    Created(Json<User>),
}

#[derive(ApiResponse)]
enum Found {
    #[oai(status = 200)]
    Ok(Json<User>),
}

#[derive(ApiResponse)]
enum Coupons {
    #[oai(status = 200)]
    Ok(Json<Vec<HeldCoupon>>),
}

pub async fn insert(state: &State, new: &NewUser) -> ApiResult<User> {
    let mut conn = state.database.get().await?;
    Ok(diesel::insert_into(users::table)
        .values((
            users::id.eq(Uuid::now_v7()),
            users::name.eq(&new.name),
            users::balance_cents.eq(new.balance_cents),
        ))
        .returning(User::as_returning())
        .get_result(&mut conn)
        .await?)
}

pub async fn find(state: &State, id: Uuid) -> ApiResult<User> {
    let mut conn = state.database.get().await?;
    users::table
        .find(id)
        .select(User::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("user", id))
}

#[OpenApi(tag = "crate::api::Tag::Users")]
impl UsersApi {
    /// Create a user
    ///
    /// Adds a user with an opening wallet balance.
    #[oai(path = "/v1/users", method = "post")]
    async fn create(&self, state: Data<&State>, body: Json<NewUser>) -> ApiResult<Created> {
        Ok(Created::Created(Json(insert(&state, &body).await?)))
    }

    /// Get a user
    ///
    /// The user with the current wallet balance.
    #[oai(path = "/v1/users/:id", method = "get")]
    async fn get(
        &self,
        state: Data<&State>,
        #[oai(example = "engine::api::example_id")] id: Path<Uuid>,
    ) -> ApiResult<Found> {
        Ok(Found::Ok(Json(find(&state, id.0).await?)))
    }

    /// Top up a wallet
    ///
    /// Credits the wallet under the same lock the payment participant uses. With an
    /// `Idempotency-Key`, a repeated request credits once and answers as the first did
    /// (marked `Idempotent-Replayed: true`); the same key with another request is 422.
    /// 409 when the balance would pass its maximum; 503 with `Retry-After` when the wallet
    /// is busy.
    #[oai(path = "/v1/users/:id/top-ups", method = "post")]
    async fn top_up(
        &self,
        state: Data<&State>,
        shop: Data<&super::Shop>,
        #[oai(example = "engine::api::example_id")] id: Path<Uuid>,
        body: Json<TopUp>,
        /// Makes retries safe: the same key always answers with the same top-up.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 200))]
        idempotency_key: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<ToppedUp> {
        let path = format!("/v1/users/{}/top-ups", id.0);
        let key =
            idempotency::Key::of(&caller, idempotency_key.0.as_deref(), "POST", &path, &*body)?;
        let row = id.0.to_string();
        let change = Change {
            counter: guarded::USER_BALANCE,
            resource: &format!("user:{row}"),
            row: &row,
            delta: body.amount_cents,
        };
        let amount = body.amount_cents;
        let (user, replayed) = counters::adjust(&state, &shop, key, change, |conn, adjusted| {
            Box::pin(async move {
                match adjusted {
                    Adjusted::Done { .. } => Ok(users::table
                        .find(id.0)
                        .select(User::as_select())
                        .first(conn)
                        .await?),
                    Adjusted::Missing => Err(ApiError::not_found("user", id.0)),
                    Adjusted::OutOfBounds { current, limit } => Err(ApiError::conflict(format!(
                        "the balance is {current}; adding {amount} would pass its maximum of {}",
                        limit.unwrap_or(i64::MAX)
                    ))),
                }
            })
        })
        .await?;
        Ok(ToppedUp::Ok(Json(user), replayed.then_some(true)))
    }

    /// A user's coupons
    ///
    /// The coupons the user holds now (claimed and not returned), newest first.
    #[oai(path = "/v1/users/:id/coupons", method = "get")]
    async fn coupons(
        &self,
        state: Data<&State>,
        #[oai(example = "engine::api::example_id")] id: Path<Uuid>,
    ) -> ApiResult<Coupons> {
        find(&state, id.0).await?;
        let mut conn = state.database.get().await?;
        let held: Vec<HeldCoupon> = coupon_claims::table
            .inner_join(coupon_campaigns::table)
            .filter(coupon_claims::user_id.eq(id.0))
            .filter(coupon_claims::unclaimed_at.is_null())
            .order(coupon_claims::id.desc())
            .select((
                coupon_campaigns::id,
                coupon_campaigns::kind,
                coupon_campaigns::title,
                coupon_campaigns::value_cents,
                coupon_campaigns::valid_until,
                coupon_claims::claimed_at,
            ))
            .load(&mut conn)
            .await?;
        Ok(Coupons::Ok(Json(held)))
    }
}
