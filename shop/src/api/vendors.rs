//! Vendors, their balances and payout ledgers.

use crate::schema::{vendor_ledger, vendors};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use uuid::Uuid;

use engine::api::State;
use engine::api::problem::{ApiError, ApiResult};

pub struct VendorsApi;

#[derive(Debug, Object)]
#[oai(example)]
pub struct NewVendor {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    /// Whether payouts are accepted (false: e.g. verification pending; payouts are rejected).
    #[oai(default = "enabled")]
    pub payouts_enabled: bool,
}

fn enabled() -> bool {
    true
}

impl poem_openapi::types::Example for NewVendor {
    fn example() -> Self {
        Self {
            name: "Blue Bottle Seongsu".into(),
            payouts_enabled: true,
        }
    }
}

#[derive(Debug, Object, Queryable, Selectable)]
#[diesel(table_name = vendors)]
pub struct Vendor {
    pub id: Uuid,
    pub name: String,
    pub balance_cents: i64,
    pub payouts_enabled: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Object, Queryable, Selectable)]
#[diesel(table_name = vendor_ledger)]
struct LedgerEntry {
    id: i64,
    saga_id: Uuid,
    amount_cents: i64,
    created_at: DateTime<Utc>,
}

/// A vendor with its balance and its latest payouts.
#[derive(Debug, Object)]
struct VendorDetail {
    #[oai(flatten)]
    vendor: Vendor,
    /// Sum of every ledger entry; always equal to `balance_cents`.
    ledger_total_cents: i64,
    /// The latest 100 payouts, newest first.
    ledger: Vec<LedgerEntry>,
}

#[derive(ApiResponse)]
enum Created {
    #[oai(status = 201)]
    Created(Json<Vendor>),
}

#[derive(ApiResponse)]
enum Found {
    #[oai(status = 200)]
    Ok(Json<VendorDetail>),
}

pub async fn insert(state: &State, new: &NewVendor) -> ApiResult<Vendor> {
    let mut conn = state.database.get().await?;
    Ok(diesel::insert_into(vendors::table)
        .values((
            vendors::id.eq(Uuid::now_v7()),
            vendors::name.eq(&new.name),
            vendors::payouts_enabled.eq(new.payouts_enabled),
        ))
        .returning(Vendor::as_returning())
        .get_result(&mut conn)
        .await?)
}

#[OpenApi(tag = "crate::api::Tag::Vendors")]
impl VendorsApi {
    /// Create a vendor
    ///
    /// Adds a vendor that can issue coupon campaigns and receive payouts.
    #[oai(path = "/v1/vendors", method = "post")]
    async fn create(&self, state: Data<&State>, body: Json<NewVendor>) -> ApiResult<Created> {
        Ok(Created::Created(Json(insert(&state, &body).await?)))
    }

    /// Get a vendor
    ///
    /// The vendor's balance and payout ledger.
    #[oai(path = "/v1/vendors/:id", method = "get")]
    async fn get(
        &self,
        state: Data<&State>,
        #[oai(example = "engine::api::example_id")] id: Path<Uuid>,
    ) -> ApiResult<Found> {
        let mut conn = state.database.get().await?;
        let vendor = vendors::table
            .find(id.0)
            .select(Vendor::as_select())
            .first(&mut conn)
            .await
            .optional()?
            .ok_or_else(|| ApiError::not_found("vendor", id.0))?;
        let ledger = vendor_ledger::table
            .filter(vendor_ledger::vendor_id.eq(id.0))
            .order(vendor_ledger::id.desc())
            .limit(100)
            .select(LedgerEntry::as_select())
            .load(&mut conn)
            .await?;
        let total: Option<i64> = vendor_ledger::table
            .filter(vendor_ledger::vendor_id.eq(id.0))
            .select(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::BigInt>,
            >("SUM(amount_cents)::bigint"))
            .first(&mut conn)
            .await?;
        Ok(Found::Ok(Json(VendorDetail {
            vendor,
            ledger_total_cents: total.unwrap_or(0),
            ledger,
        })))
    }
}
