//! The seed study's "Kafka vs. direct call" experiment over the real HTTP API in `dev` mode:
//! the same coupon uses, once as sagas (`POST /v1/coupons/{id}/uses`: command, reply and
//! event traffic over Kafka, finished when the saga completes) and once directly
//! (`POST /v1/coupons/{id}/direct-uses`: claim and payout inside the request).
//!
//! cargo bench -p orchestrator --bench coupon_use [-- USES [CONCURRENCY]]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use engine::schema::sagas;
use platform::testkit::TestEnv;
use serde_json::json;
use shop::fixtures::{add_campaign, add_user, add_vendor};
use support::Orchestrator;
use uuid::Uuid;

/// Coupon uses over HTTP, as a saga and directly.
#[derive(clap::Parser)]
#[command(name = "coupon_use")]
struct Sizes {
    /// Uses of each kind.
    #[arg(default_value_t = 400)]
    uses: usize,
    /// Requests in flight at once.
    #[arg(default_value_t = 16)]
    concurrency: usize,
    /// Passed by `cargo bench` to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let Sizes {
        uses, concurrency, ..
    } = clap::Parser::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(uses, concurrency));
}

/// `uses` users and enough 100-coupon campaigns for all of them.
async fn setup(env: &TestEnv, uses: usize) -> Vec<(Uuid, Uuid)> {
    let vendor = add_vendor(&env.db.pool, true).await;
    let mut campaigns = Vec::new();
    for _ in 0..uses.div_ceil(100) {
        campaigns.push(add_campaign(&env.db.pool, vendor, 100, 1_000).await);
    }
    let mut pairs = Vec::with_capacity(uses);
    for n in 0..uses {
        pairs.push((campaigns[n / 100], add_user(&env.db.pool, 0).await));
    }
    pairs
}

/// Posts every use with `concurrency` requests in flight; returns the mean latency.
async fn post_all(
    base: &str,
    route: &str,
    pairs: &[(Uuid, Uuid)],
    concurrency: usize,
    expect: u16,
) -> Duration {
    let client = reqwest::Client::new();
    let mut total = Duration::ZERO;
    for chunk in pairs.chunks(concurrency) {
        let requests = chunk.iter().map(|(campaign, user)| {
            let client = client.clone();
            let url = format!("{base}/v1/coupons/{campaign}/{route}");
            async move {
                let sent = Instant::now();
                let response = client
                    .post(url)
                    .json(&json!({ "user_id": user }))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(
                    response.status().as_u16(),
                    expect,
                    "{}",
                    response.text().await.unwrap_or_default()
                );
                sent.elapsed()
            }
        });
        for latency in futures_util::future::join_all(requests).await {
            total += latency;
        }
    }
    total / pairs.len().max(1) as u32
}

async fn completed_sagas(env: &TestEnv) -> i64 {
    let mut conn = env.db.pool.get().await.expect("connection");
    sagas::table
        .filter(sagas::status.eq("COMPLETED"))
        .count()
        .get_result(&mut conn)
        .await
        .expect("count")
}

async fn run(uses: usize, concurrency: usize) {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::dev(&env).await;
    let base = orchestrator.base();
    let broker = if env.kafka.cluster.is_embedded() {
        "embedded"
    } else {
        "KAFKA_BROKERS"
    };
    println!("coupon use: {uses} uses, {concurrency} concurrent requests, {broker} broker");

    // Warm-up: consumer groups joined, one saga through.
    let warm = setup(&env, 1).await;
    post_all(&base, "uses", &warm, 1, 202).await;
    while completed_sagas(&env).await < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let direct = setup(&env, uses).await;
    let started = Instant::now();
    let latency = post_all(&base, "direct-uses", &direct, concurrency, 200).await;
    let elapsed = started.elapsed();
    println!(
        "  direct   {:>7.0} ms  {:>6.0} uses/s  mean request {:>5.1} ms (claim and payout done)",
        elapsed.as_secs_f64() * 1000.0,
        uses as f64 / elapsed.as_secs_f64(),
        latency.as_secs_f64() * 1000.0
    );

    let saga = setup(&env, uses).await;
    let started = Instant::now();
    let latency = post_all(&base, "uses", &saga, concurrency, 202).await;
    let accepted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while completed_sagas(&env).await < 1 + uses as i64 {
        assert!(
            Instant::now() < deadline,
            "sagas did not complete in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "  saga     {:>7.0} ms  {:>6.0} uses/s  mean request {:>5.1} ms (202 accepted; all accepted after {:.0} ms)",
        elapsed.as_secs_f64() * 1000.0,
        uses as f64 / elapsed.as_secs_f64(),
        latency.as_secs_f64() * 1000.0,
        accepted.as_secs_f64() * 1000.0
    );
    orchestrator.stop().await;
}
