//! The seed study's experiment: a rush of coupon claims on one campaign, under each
//! concurrency strategy, on the real Postgres and Redis. Reports wall time, claims per
//! second, and whether the invariant held (exactly `quantity` claimed).
//!
//! cargo bench -p shop --bench strategies [-- CLAIMS [QUANTITY [INSTANCES]]] [--one-by-one]
//!
//! Each instance takes the waiting claims as its consumer loop would: up to 8 batches at
//! once, each of up to 64 commands (`ConsumerOptions`' defaults). `--one-by-one` processes
//! every command on its own instead, as the workers did before batches.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::Command;
use platform::kafka::ConsumerOptions;
use platform::testkit::{TestDb, TestRedis};
use serde_json::json;
use shop::participant::Strategy;
use shop::participants::coupon::Coupon;
use shop::schema::coupon_claims;
use support::*;
use uuid::Uuid;

/// A rush of coupon claims on one campaign under each strategy.
#[derive(clap::Parser)]
#[command(name = "strategies")]
struct Rush {
    /// Claims, one per user.
    #[arg(default_value_t = 1_000)]
    claims: usize,
    /// Coupons the campaign issues.
    #[arg(default_value_t = 100)]
    quantity: usize,
    /// Worker instances sharing the claims.
    #[arg(default_value_t = 4)]
    instances: usize,
    /// Each command on its own, as the workers did before batches.
    #[arg(long)]
    one_by_one: bool,
    /// Passed by `cargo bench` to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let Rush {
        claims,
        quantity,
        instances,
        one_by_one,
        ..
    } = clap::Parser::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let defaults = ConsumerOptions::new("bench", Vec::new());
    let shape = if one_by_one {
        Shape {
            concurrency: claims.div_ceil(instances),
            max_batch: 1,
        }
    } else {
        Shape {
            concurrency: defaults.concurrency,
            max_batch: defaults.max_batch,
        }
    };
    println!(
        "{claims} claims by {claims} users on one campaign of {quantity}, {instances} worker instances, \
         each {} batches of up to {} at once",
        shape.concurrency, shape.max_batch
    );
    for strategy in [Strategy::RedisLock, Strategy::Postgres, Strategy::LuaGate] {
        runtime.block_on(rush(strategy, claims, quantity, instances, shape));
    }
}

/// How an instance takes waiting commands: `concurrency` batches at once, each of up to
/// `max_batch` commands.
#[derive(Clone, Copy)]
struct Shape {
    concurrency: usize,
    max_batch: usize,
}

async fn rush(strategy: Strategy, claims: usize, quantity: usize, instances: usize, shape: Shape) {
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
    let waiting: VecDeque<Command> = users
        .into_iter()
        .map(|user| {
            forward(
                Uuid::now_v7(),
                0,
                "coupon.claim",
                json!({ "campaign_id": campaign, "user_id": user }),
            )
        })
        .collect();
    let waiting = Arc::new(Mutex::new(waiting));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for instance in 0..instances {
        for _ in 0..shape.concurrency {
            let (runtimes, waiting) = (runtimes.clone(), waiting.clone());
            tasks.push(tokio::spawn(async move {
                let mut won = 0;
                loop {
                    let batch: Vec<Command> = {
                        let mut waiting = waiting.lock().expect("queue");
                        let take = shape.max_batch.min(waiting.len());
                        waiting.drain(..take).collect()
                    };
                    if batch.is_empty() {
                        return won;
                    }
                    let commands: Vec<&Command> = batch.iter().collect();
                    let answers = runtimes[instance]
                        .process_batch(&commands)
                        .await
                        .expect("batch");
                    for answer in answers {
                        if succeeded(&answer.expect("claim")) {
                            won += 1;
                        }
                    }
                }
            }));
        }
    }
    let mut won = 0;
    for task in tasks {
        won += task.await.expect("task");
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
