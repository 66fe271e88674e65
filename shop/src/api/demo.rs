//! Random demo data: the seed's `generateRandom*` endpoints.

use chrono::{TimeDelta, Utc};
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use rand::Rng as _;
use rand::seq::IndexedRandom as _;
use uuid::Uuid;

use super::coupons::{self, Campaign, NewCampaign};
use super::users::{self, NewUser, User};
use super::vendors::{self, NewVendor, Vendor};
use engine::api::State;
use engine::api::problem::ApiResult;

pub struct DemoApi;

const FIRST_NAMES: [&str; 8] = [
    "Minji", "Jisoo", "Hyun", "Seo-yeon", "Alex", "Sam", "Noor", "Lea",
];
const LAST_NAMES: [&str; 6] = ["Kim", "Lee", "Park", "Choi", "Garcia", "Novak"];
const SHOPS: [&str; 6] = [
    "Roastery",
    "Bakery",
    "Bookshop",
    "Flower Bar",
    "Noodle House",
    "Gallery",
];
const TOWNS: [&str; 5] = ["Seongsu", "Mapo", "Itaewon", "Jongno", "Haeundae"];

/// How many to generate.
#[derive(Debug, Object)]
#[oai(example)]
struct Count {
    #[oai(
        validator(minimum(value = "1"), maximum(value = "100")),
        default = "one"
    )]
    count: u32,
}

fn one() -> u32 {
    1
}

impl poem_openapi::types::Example for Count {
    fn example() -> Self {
        Self { count: 5 }
    }
}

impl poem_openapi::types::Example for CampaignFor {
    fn example() -> Self {
        Self {
            vendor_id: Some(engine::api::example_id()),
        }
    }
}

/// Which vendor issues the random campaign (a new random vendor when absent).
#[derive(Debug, Object)]
#[oai(example)]
struct CampaignFor {
    vendor_id: Option<Uuid>,
}

#[derive(ApiResponse)]
enum Users {
    #[oai(status = 201)]
    Created(Json<Vec<User>>),
}

#[derive(ApiResponse)]
enum Vendors {
    #[oai(status = 201)]
    Created(Json<Vec<Vendor>>),
}

#[derive(ApiResponse)]
enum Campaigns {
    #[oai(status = 201)]
    Created(Json<Campaign>),
}

pub fn random_user() -> NewUser {
    let mut rng = rand::rng();
    NewUser {
        name: format!(
            "{} {}",
            FIRST_NAMES.choose(&mut rng).unwrap_or(&"Sam"),
            LAST_NAMES.choose(&mut rng).unwrap_or(&"Kim")
        ),
        balance_cents: rng.random_range(1..=500) * 1_000,
    }
}

pub fn random_vendor() -> NewVendor {
    let mut rng = rand::rng();
    NewVendor {
        name: format!(
            "{} {}",
            TOWNS.choose(&mut rng).unwrap_or(&"Mapo"),
            SHOPS.choose(&mut rng).unwrap_or(&"Bakery")
        ),
        payouts_enabled: true,
    }
}

/// A campaign of a fresh random kind, valid for 30 days.
pub fn random_campaign(vendor_id: Uuid) -> NewCampaign {
    let mut rng = rand::rng();
    let value_cents = rng.random_range(1..=20) * 500;
    NewCampaign {
        vendor_id,
        kind: format!(
            "DEMO-{}",
            &Uuid::new_v4().simple().to_string()[..8].to_uppercase()
        ),
        title: format!("{} off", value_cents / 100),
        value_cents,
        total_quantity: rng.random_range(10..=100),
        valid_from: Utc::now() - TimeDelta::minutes(1),
        valid_until: Utc::now() + TimeDelta::days(30),
    }
}

/// The generators mint users, wallets and vendors: they exist only in `dev`.
fn only_in_dev(state: &State) -> ApiResult<()> {
    if state.demo {
        return Ok(());
    }
    Err(engine::api::problem::ApiError::NotFound(
        poem_openapi::payload::Json(engine::api::problem::Problem::new(
            404,
            "not-found",
            "Not found",
            "the demo data generators exist only in `orchestrator dev`",
        )),
    ))
}

#[OpenApi(tag = "crate::api::Tag::Demo")]
impl DemoApi {
    /// Generate random users
    ///
    /// Creates `count` users with random names and wallet balances.
    #[oai(path = "/v1/demo/users", method = "post")]
    async fn users(&self, state: Data<&State>, body: Json<Count>) -> ApiResult<Users> {
        only_in_dev(&state)?;
        let mut created = Vec::new();
        for _ in 0..body.count {
            created.push(users::insert(&state, &random_user()).await?);
        }
        Ok(Users::Created(Json(created)))
    }

    /// Generate random vendors
    ///
    /// Creates `count` vendors with random names, payouts enabled.
    #[oai(path = "/v1/demo/vendors", method = "post")]
    async fn vendors(&self, state: Data<&State>, body: Json<Count>) -> ApiResult<Vendors> {
        only_in_dev(&state)?;
        let mut created = Vec::new();
        for _ in 0..body.count {
            created.push(vendors::insert(&state, &random_vendor()).await?);
        }
        Ok(Vendors::Created(Json(created)))
    }

    /// Generate a random coupon campaign
    ///
    /// Creates a campaign of a new random kind (10 to 100 coupons, valid for 30 days) for the
    /// given vendor, or for a new random vendor.
    #[oai(path = "/v1/demo/coupons", method = "post")]
    async fn coupons(&self, state: Data<&State>, body: Json<CampaignFor>) -> ApiResult<Campaigns> {
        only_in_dev(&state)?;
        let vendor_id = match body.vendor_id {
            Some(id) => id,
            None => vendors::insert(&state, &random_vendor()).await?.id,
        };
        Ok(Campaigns::Created(Json(
            coupons::create_campaign(&state, &random_campaign(vendor_id)).await?,
        )))
    }
}
