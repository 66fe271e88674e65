//! A worker's `GET /metrics` (`METRICS_ADDR`): after a command went through the runtime on
//! real Postgres, Redis and Kafka (and was delivered again), the commands counter by role
//! and outcome (counting it once), the command
//! latency and the lock wait are there, as OpenMetrics, with every worker series the
//! provisioned Grafana dashboard queries; and its `/healthz` turns 503 once a role loop
//! failed.

mod support;

use std::time::Duration;

use platform::kafka::{Delivery, Handler as _};
use platform::testkit::{TestEnv, poll_until};
use shop::participant::Strategy;
use shop::participants::payment::Payment;
use shop::runtime::CommandRuntime;
use support::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_serves_its_commands_latency_and_lock_waits() {
    let env = TestEnv::start().await;
    env.kafka.cluster.ensure_topics().await.unwrap();
    let producer = env.kafka.cluster.producer().unwrap();
    let options = options(Strategy::RedisLock, Duration::ZERO);
    let payments = CommandRuntime::new(
        Payment,
        env.db.pool.clone(),
        env.redis.pool.clone(),
        &env.redis.prefix,
        producer,
        env.kafka.cluster.topics(),
        options,
    );
    let user = add_user(&env.db.pool, 5_000).await;
    sell_cents(&env.db).await;
    let charge = forward(Uuid::now_v7(), 1, "payment.charge", charge_of(user, 1_000));
    let delivery = Delivery {
        message: charge,
        topic: "test.commands.payment".into(),
        partition: 0,
        offset: 0,
        key: None,
        traceparent: None,
    };
    payments
        .handle(std::slice::from_ref(&delivery))
        .await
        .unwrap();
    // A redelivery re-sends the stored reply; the command is not counted twice. It finds
    // that reply with its claim, under its lock: the lock is waited for twice.
    payments.handle(&[delivery]).await.unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stop = CancellationToken::new();
    let server = tokio::spawn(shop::metrics::serve(
        format!("127.0.0.1:{port}"),
        stop.clone(),
    ));
    let url = format!("http://127.0.0.1:{port}/metrics");
    let body = poll_until(Duration::from_secs(30), async || {
        let response = reqwest::get(&url).await.ok()?;
        response
            .status()
            .is_success()
            .then_some(response.text().await.ok()?)
    })
    .await
    .expect("the metrics server never answered");
    let lines: Vec<&str> = body.lines().collect();
    for expected in [
        "sagaflow_commands_total{role=\"payment\",outcome=\"succeeded\"} 1",
        "sagaflow_command_duration_seconds_count{role=\"payment\"} 1",
        "sagaflow_lock_wait_seconds_count{role=\"payment\"} 2",
        "# EOF",
    ] {
        assert!(
            lines.contains(&expected),
            "{expected} missing from:\n{body}"
        );
    }
    // The dashboard's worker series are all here.
    for name in platform::testkit::dashboard_series() {
        if shop::metrics::FAMILIES.iter().any(|f| name.starts_with(f)) {
            assert!(body.contains(&name), "the dashboard queries {name}: {body}");
        }
    }

    // Healthy while every role loop runs; 503 once one stopped with an error.
    let health = format!("http://127.0.0.1:{port}/healthz");
    assert_eq!(reqwest::get(&health).await.unwrap().status(), 200);
    shop::metrics::role_failed();
    assert_eq!(reqwest::get(&health).await.unwrap().status(), 503);

    stop.cancel();
    server.await.unwrap().unwrap();
}
