//! Business rows inserted directly, for tests of both crates (feature `testkit`). The API
//! creates them in production.

use chrono::{TimeDelta, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::db;
use uuid::Uuid;

use crate::schema::{coupon_campaigns, products, users, vendors};

pub async fn add_product(pool: &db::Pool, sku: &str, stock: i32, price_cents: i64) {
    let mut conn = pool.get().await.expect("fixture insert");
    diesel::insert_into(products::table)
        .values((
            products::sku.eq(sku),
            products::name.eq(format!("product {sku}")),
            products::price_cents.eq(price_cents),
            products::stock.eq(stock),
        ))
        .execute(&mut conn)
        .await
        .expect("fixture insert");
}

pub async fn add_user(pool: &db::Pool, balance_cents: i64) -> Uuid {
    let id = Uuid::now_v7();
    let mut conn = pool.get().await.expect("fixture insert");
    diesel::insert_into(users::table)
        .values((
            users::id.eq(id),
            users::name.eq("test user"),
            users::balance_cents.eq(balance_cents),
        ))
        .execute(&mut conn)
        .await
        .expect("fixture insert");
    id
}

pub async fn add_vendor(pool: &db::Pool, payouts_enabled: bool) -> Uuid {
    let id = Uuid::now_v7();
    let mut conn = pool.get().await.expect("fixture insert");
    diesel::insert_into(vendors::table)
        .values((
            vendors::id.eq(id),
            vendors::name.eq("test vendor"),
            vendors::payouts_enabled.eq(payouts_enabled),
        ))
        .execute(&mut conn)
        .await
        .expect("fixture insert");
    id
}

pub async fn add_campaign(pool: &db::Pool, vendor: Uuid, quantity: i32, value_cents: i64) -> Uuid {
    let id = Uuid::now_v7();
    let mut conn = pool.get().await.expect("fixture insert");
    diesel::insert_into(coupon_campaigns::table)
        .values((
            coupon_campaigns::id.eq(id),
            coupon_campaigns::vendor_id.eq(vendor),
            coupon_campaigns::kind.eq(format!("kind-{id}")),
            coupon_campaigns::title.eq("test campaign"),
            coupon_campaigns::value_cents.eq(value_cents),
            coupon_campaigns::total_quantity.eq(quantity),
            coupon_campaigns::valid_from.eq(Utc::now() - TimeDelta::hours(1)),
            coupon_campaigns::valid_until.eq(Utc::now() + TimeDelta::hours(1)),
        ))
        .execute(&mut conn)
        .await
        .expect("fixture insert");
    id
}
