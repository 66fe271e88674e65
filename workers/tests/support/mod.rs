//! Fixtures for the workers' tests: business rows inserted directly, commands built as the
//! engine builds them, and participant runtimes on the test's database and Redis prefix.

#![allow(dead_code)]

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Direction, Outcome, Reply, Topics};
use platform::db;
use platform::kafka::Producer;
use platform::testkit::{TestDb, TestRedis};
use serde_json::{Value, json};
use uuid::Uuid;
use workers::participant::{Participant, Strategy};
use workers::runtime::{CommandRuntime, RuntimeOptions};
use workers::schema::{coupon_campaigns, products, users, vendors};

pub async fn add_product(pool: &db::Pool, sku: &str, stock: i32, price_cents: i64) {
    let mut conn = pool.get().await.unwrap();
    diesel::insert_into(products::table)
        .values((
            products::sku.eq(sku),
            products::name.eq(format!("product {sku}")),
            products::price_cents.eq(price_cents),
            products::stock.eq(stock),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
}

pub async fn add_user(pool: &db::Pool, balance_cents: i64) -> Uuid {
    let id = Uuid::now_v7();
    let mut conn = pool.get().await.unwrap();
    diesel::insert_into(users::table)
        .values((
            users::id.eq(id),
            users::name.eq("test user"),
            users::balance_cents.eq(balance_cents),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    id
}

pub async fn add_vendor(pool: &db::Pool, payouts_enabled: bool) -> Uuid {
    let id = Uuid::now_v7();
    let mut conn = pool.get().await.unwrap();
    diesel::insert_into(vendors::table)
        .values((
            vendors::id.eq(id),
            vendors::name.eq("test vendor"),
            vendors::payouts_enabled.eq(payouts_enabled),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    id
}

pub async fn add_campaign(pool: &db::Pool, vendor: Uuid, quantity: i32, value_cents: i64) -> Uuid {
    let id = Uuid::now_v7();
    let mut conn = pool.get().await.unwrap();
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
        .unwrap();
    id
}

/// A command as the engine would send it.
pub fn command(
    saga_id: Uuid,
    step: u32,
    direction: Direction,
    name: &str,
    input: Value,
    outputs: Value,
) -> Command {
    Command {
        id: Uuid::now_v7(),
        saga_id,
        saga: "test".into(),
        step,
        attempt: 1,
        direction,
        name: name.into(),
        payload: json!({ "input": input, "outputs": outputs }),
        issued_at: Utc::now(),
    }
}

pub fn forward(saga_id: Uuid, step: u32, name: &str, input: Value) -> Command {
    command(saga_id, step, Direction::Forward, name, input, json!({}))
}

pub fn compensate(saga_id: Uuid, step: u32, name: &str, input: Value) -> Command {
    command(saga_id, step, Direction::Compensate, name, input, json!({}))
}

/// A participant runtime, as one worker process would run it.
pub fn runtime<P: Participant>(
    participant: P,
    db: &TestDb,
    redis: &TestRedis,
    producer: &Producer,
    options: RuntimeOptions,
) -> CommandRuntime<P> {
    CommandRuntime::new(
        participant,
        db.pool.clone(),
        redis.pool.clone(),
        &redis.prefix,
        producer.clone(),
        &Topics::new("unused").unwrap(),
        options,
    )
}

/// Runtime options for a strategy; `think` widens the read-to-write window.
pub fn options(strategy: Strategy, think: Duration) -> RuntimeOptions {
    RuntimeOptions {
        strategy,
        lock_wait: Duration::from_secs(30),
        lock_lease: Duration::from_secs(10),
        think_time: think,
    }
}

pub fn succeeded(reply: &Reply) -> bool {
    matches!(reply.outcome, Outcome::Succeeded { .. })
}

pub fn rejection(reply: &Reply) -> Option<&str> {
    match &reply.outcome {
        Outcome::Rejected { reason } => Some(reason),
        _ => None,
    }
}

/// A producer that is never used to send (the tests call `process`, which does not publish).
pub fn idle_producer() -> Producer {
    Producer::connect("127.0.0.1:9").unwrap()
}
