//! Outages are not business failures: a dependency that stops answering delays sagas, and
//! none of them compensates or parks because of it (`platform::fault`).

mod support;

use std::time::{Duration, Instant};

use orchestrator::app::{Mode, Options};
use platform::testkit::{self, PrivateRedis, TestEnv};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::http::{Http, answer};
use support::*;
use uuid::Uuid;

/// Waits until the saga has finished, whichever way, and returns its status.
async fn finished(env: &TestEnv, id: Uuid) -> String {
    testkit::poll_until(WAIT, async || {
        let row = load(env, id).await;
        [
            "COMPLETED",
            "COMPENSATED",
            "FAILED",
            "CANCELLED",
            "RESOLVED",
        ]
        .contains(&row.status.as_str())
        .then_some(row.status)
    })
    .await
    .unwrap_or_else(|| panic!("saga {id} never finished"))
}

/// A product with plenty of stock and a rich user (made by the admin API), and an order of
/// one item of it for that user.
async fn stocked_order(api: &Http) -> Value {
    let sku = format!("MUG-{}", Uuid::now_v7().simple());
    answer(
        api.post(
            "/v1/products",
            &json!({ "sku": sku, "name": "Mug", "price_cents": 500, "stock": 1000 }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let user = answer(
        api.post(
            "/v1/users",
            &json!({ "name": "Kim", "balance_cents": 10_000_000 }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    json!({
        "user_id": user["id"],
        "lines": [{ "sku": sku, "quantity": 1 }],
        "shipping_address": { "country": "KR", "city": "Seoul", "line1": "1 Main St", "postal_code": "04524" },
    })
}

/// Places `order`; the saga it started.
async fn place(api: &Http, order: &Value) -> Uuid {
    let accepted: Value = answer(api.post("/v1/orders", order).await, StatusCode::ACCEPTED).await;
    accepted["saga_id"].as_str().unwrap().parse().unwrap()
}

/// Redis stopped for 15 s while orders arrive: the participants cannot lock, so every
/// command waits for Redis instead of answering `Failed`; once it is back, every accepted
/// order completes, and none compensated or parked.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_delays_orders_and_compensates_none() {
    let env = TestEnv::start().await;
    let mut redis = PrivateRedis::start();
    let orchestrator = Orchestrator::start_with_vars(
        &env,
        Mode::Dev,
        Options::default(),
        &[
            ("REDIS_URL", redis.url.as_str()),
            ("CONCURRENCY_STRATEGY", "redis-lock"),
        ],
    )
    .await;
    let api = Http::new(orchestrator.base());
    let order = stocked_order(&api).await;
    let before = place(&api, &order).await;
    assert_eq!(finished(&env, before).await, "COMPLETED");

    redis.stop();
    let outage_ends = Instant::now() + Duration::from_secs(15);
    let mut during = Vec::new();
    while Instant::now() < outage_ends {
        during.push(place(&api, &order).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Nothing moved past its first locked step while Redis was away.
    for id in &during {
        assert_ne!(load(&env, *id).await.status, "COMPENSATING", "saga {id}");
    }
    redis.restart();

    for id in &during {
        assert_eq!(finished(&env, *id).await, "COMPLETED", "saga {id}");
    }
    assert!(during.len() >= 10, "orders arrived during the outage");
    orchestrator.stop().await;
}

/// Every worker role as one process, a static group member named `instance` (what
/// `KAFKA_INSTANCE_ID` makes of a `worker` process).
struct Workers {
    tasks: tokio_util::task::TaskTracker,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Workers {
    fn start(env: &TestEnv, instance: &str) -> Self {
        let cluster = env
            .kafka
            .cluster
            .clone()
            .with_instance_id(Some(instance.to_owned()));
        let deps = shop::Deps {
            database: env.db.pool.clone(),
            redis: env.redis.pool.clone(),
            producer: cluster.producer().unwrap(),
            cluster,
            runtime: shop::runtime::RuntimeOptions::default(),
        };
        let tasks = tokio_util::task::TaskTracker::new();
        let shutdown = tokio_util::sync::CancellationToken::new();
        shop::spawn_roles(&platform::contract::Role::ALL, &deps, &tasks, &shutdown).unwrap();
        Self { tasks, shutdown }
    }

    /// Gone for good: its consumers close as a killed process's would, without leaving
    /// their groups (static members send no LeaveGroup), so their partitions stay theirs
    /// until the broker gives up on them.
    async fn kill(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A worker process that dies and is never restarted; a replacement under another
/// instance id joins. The dead member holds its partitions until its session times out
/// (45 s) and a rebalance hands them over: the step deadlines (90 s) outlast that, so the
/// orders sent meanwhile complete, and none compensates because a process was lost.
///
/// Runs on the embedded broker (and would on Apache Kafka). tansu 0.6.0 never hands a dead
/// static member's partitions to a member with another id (it evicts a member only while
/// the group's other members heartbeat, and the newcomer cannot finish joining while the
/// dead one is listed): there the orders never finish at all, whatever the deadlines.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_lost_for_good_and_replaced_costs_no_saga_a_compensation() {
    let env = TestEnv::start().await;
    if !env.kafka.cluster.is_embedded() {
        eprintln!("skipped on KAFKA_BROKERS: tansu 0.6.0 never evicts a dead static member");
        return;
    }
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let api = Http::new(orchestrator.base());
    let order = stocked_order(&api).await;

    let first = Workers::start(&env, "worker-a");
    let before = place(&api, &order).await;
    assert_eq!(finished(&env, before).await, "COMPLETED");
    first.kill().await;

    let mut during = Vec::new();
    for _ in 0..5 {
        during.push(place(&api, &order).await);
    }
    let replacement = Workers::start(&env, "worker-b");
    for id in &during {
        assert_eq!(finished(&env, *id).await, "COMPLETED", "saga {id}");
    }
    replacement.kill().await;
    orchestrator.stop().await;
}
