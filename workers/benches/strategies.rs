//! The seed study's experiment: a rush of coupon claims on one campaign, under each
//! concurrency strategy, on the real Postgres and Redis. Reports wall time, claims per
//! second, and whether the invariant held (exactly `quantity` claimed).
//!
//! cargo bench -p workers --bench strategies [-- CLAIMS [QUANTITY [INSTANCES]]]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::testkit::{TestDb, TestRedis};
use serde_json::json;
use support::*;
use uuid::Uuid;
use workers::participant::Strategy;
use workers::participants::coupon::Coupon;
use workers::schema::coupon_claims;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let claims = args.as_slice().first().copied().unwrap_or(1_000);
    let quantity = args.get(1).copied().unwrap_or(100);
    let instances = args.get(2).copied().unwrap_or(4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{claims} claims by {claims} users on one campaign of {quantity}, {instances} worker instances"
    );
    for strategy in [Strategy::RedisLock, Strategy::Postgres, Strategy::LuaGate] {
        runtime.block_on(rush(strategy, claims, quantity, instances));
    }
}

async fn rush(strategy: Strategy, claims: usize, quantity: usize, instances: usize) {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let vendor = add_vendor(&db.pool, true).await;
    let campaign = add_campaign(&db.pool, vendor, quantity as i32, 1_000).await;
    let mut users = Vec::with_capacity(claims);
    for _ in 0..claims {
        users.push(add_user(&db.pool, 0).await);
    }
    let producer = idle_producer();
    let runtimes: Arc<Vec<_>> = Arc::new(
        (0..instances)
            .map(|_| {
                runtime(
                    Coupon::default(),
                    &db,
                    &redis,
                    &producer,
                    options(strategy, Duration::ZERO),
                )
            })
            .collect(),
    );
    let started = Instant::now();
    let tasks: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(n, user)| {
            let runtimes = runtimes.clone();
            tokio::spawn(async move {
                let command = forward(
                    Uuid::now_v7(),
                    0,
                    "coupon.claim",
                    json!({ "campaign_id": campaign, "user_id": user }),
                );
                runtimes[n % runtimes.len()]
                    .process(&command)
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        if succeeded(&task.await.expect("task")) {
            won += 1;
        }
    }
    let elapsed = started.elapsed();
    let mut conn = db.pool.get().await.expect("connection");
    let recorded: i64 = coupon_claims::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    println!(
        "  {:<10} {:>7.0} ms  {:>7.0} claims/s  won {won}, recorded {recorded}, invariant {}",
        format!("{strategy:?}"),
        elapsed.as_secs_f64() * 1000.0,
        claims as f64 / elapsed.as_secs_f64(),
        if recorded as usize == quantity && won == quantity {
            "held"
        } else {
            "BROKEN"
        },
    );
}
