//! Engine throughput: how many sagas per second the engine finishes when participants
//! answer instantly. Real Postgres and Kafka (`KAFKA_BROKERS`, else the embedded cluster).
//!
//! cargo bench -p orchestrator --bench engine [-- SAGAS [CONCURRENCY]]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use engine::schema::sagas;
use orchestrator::app::Options;
use platform::testkit::TestEnv;
use support::{Orchestrator, Participants, script, succeed};

/// The engine runs in this process: with the allocator the orchestrator's binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Order sagas through the engine with participants that answer at once.
#[derive(clap::Parser)]
#[command(name = "engine")]
struct Sizes {
    /// Sagas to run.
    #[arg(default_value_t = 2_000)]
    total: usize,
    /// Sagas in flight at once.
    #[arg(default_value_t = 32)]
    concurrency: usize,
    /// Passed by `cargo bench` to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let Sizes {
        total, concurrency, ..
    } = clap::Parser::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(total, concurrency));
}

async fn run(total: usize, concurrency: usize) {
    let env = TestEnv::start().await;
    let broker = if env.kafka.cluster.is_embedded() {
        "embedded"
    } else {
        "KAFKA_BROKERS"
    };
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));
    let engine = orchestrator.running.engine.clone();

    // Warm-up: consumer groups join and the first saga completes end to end.
    let warm = engine
        .start("order", &serde_json::json!({}), None)
        .await
        .expect("start");
    support::wait_for_status(&env, warm.id, "COMPLETED").await;
    let baseline = support::completed(&engine);

    let payload = serde_json::json!({ "user_id": 1, "lines": [{ "sku": "A", "quantity": 1 }] });
    let started = Instant::now();
    let starters: Vec<_> = (0..concurrency)
        .map(|worker| {
            let engine = engine.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut n = worker;
                while n < total {
                    engine.start("order", &payload, None).await.expect("start");
                    n += concurrency;
                }
            })
        })
        .collect();
    for starter in starters {
        starter.await.expect("starter");
    }
    let all_started = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while support::completed(&engine) - baseline < total as u64 {
        assert!(
            Instant::now() < deadline,
            "sagas did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();

    let mut conn = env.db.pool.get().await.expect("connection");
    let completed: i64 = sagas::table
        .filter(sagas::status.eq("COMPLETED"))
        .select(count_star())
        .first(&mut conn)
        .await
        .expect("count");
    assert_eq!(completed as usize, total + 1, "every saga completed");

    println!(
        "engine: {total} order sagas (3 steps each, {broker} broker), {concurrency} concurrent starters"
    );
    println!("  started all in   {:>8.2} s", all_started.as_secs_f64());
    println!("  finished all in  {:>8.2} s", elapsed.as_secs_f64());
    println!(
        "  throughput       {:>8.1} sagas/s ({:.1} commands/s)",
        total as f64 / elapsed.as_secs_f64(),
        3.0 * total as f64 / elapsed.as_secs_f64()
    );
    drop(conn);
    participants.stop().await;
    orchestrator.stop().await;
}
