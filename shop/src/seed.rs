//! `orchestrator seed`: fills a database with a realistic demo set (products with stock,
//! users with wallets, vendors, coupon campaigns), using the demo generators of the API.

use crate::schema::{coupon_campaigns, products, users, vendors};
use chrono::{TimeDelta, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::db;
use rand::Rng as _;
use uuid::Uuid;

use crate::api::demo::{random_campaign, random_user, random_vendor};

const PRODUCTS: [(&str, &str, i64); 6] = [
    ("MUG-01", "Enamel mug", 1_500),
    ("TEE-01", "Organic cotton tee", 2_900),
    ("BAG-01", "Canvas tote", 1_900),
    ("CAP-01", "Wool cap", 2_400),
    ("PEN-01", "Brass pen", 3_500),
    ("NOTE-01", "Dot-grid notebook", 1_200),
];

/// What `seed` created.
#[derive(Debug, Default)]
pub struct Seeded {
    pub products: usize,
    pub users: Vec<Uuid>,
    pub vendors: Vec<Uuid>,
    pub campaigns: Vec<Uuid>,
}

pub async fn run(pool: &db::Pool) -> anyhow::Result<Seeded> {
    let mut conn = pool.get().await?;
    let mut seeded = Seeded::default();
    let mut rng = rand::rng();
    for (sku, name, price) in PRODUCTS {
        seeded.products += diesel::insert_into(products::table)
            .values((
                products::sku.eq(sku),
                products::name.eq(name),
                products::price_cents.eq(price),
                products::stock.eq(rng.random_range(50..=200)),
            ))
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await?;
    }
    for _ in 0..10 {
        let user = random_user();
        let id = Uuid::now_v7();
        diesel::insert_into(users::table)
            .values((
                users::id.eq(id),
                users::name.eq(user.name),
                users::balance_cents.eq(user.balance_cents),
            ))
            .execute(&mut conn)
            .await?;
        seeded.users.push(id);
    }
    for _ in 0..3 {
        let vendor = random_vendor();
        let id = Uuid::now_v7();
        diesel::insert_into(vendors::table)
            .values((vendors::id.eq(id), vendors::name.eq(vendor.name)))
            .execute(&mut conn)
            .await?;
        seeded.vendors.push(id);
        let campaign = random_campaign(id);
        let campaign_id = Uuid::now_v7();
        diesel::insert_into(coupon_campaigns::table)
            .values((
                coupon_campaigns::id.eq(campaign_id),
                coupon_campaigns::vendor_id.eq(id),
                coupon_campaigns::kind.eq(campaign.kind),
                coupon_campaigns::title.eq(campaign.title),
                coupon_campaigns::value_cents.eq(campaign.value_cents),
                coupon_campaigns::total_quantity.eq(campaign.total_quantity),
                coupon_campaigns::valid_from.eq(Utc::now() - TimeDelta::minutes(1)),
                coupon_campaigns::valid_until.eq(Utc::now() + TimeDelta::days(30)),
            ))
            .execute(&mut conn)
            .await?;
        seeded.campaigns.push(campaign_id);
    }
    Ok(seeded)
}
