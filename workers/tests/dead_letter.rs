//! A malformed command lands on the dead-letter topic and the next command is processed.

mod support;

use std::time::Duration;

use platform::contract::{Outcome, Reply, Role};
use platform::testkit::TestEnv;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use serde_json::json;
use support::{add_product, forward};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_command_is_dead_lettered_and_the_next_one_processed() {
    let env = TestEnv::start().await;
    add_product(&env.db.pool, "A", 5, 100).await;
    let cluster = env.kafka.cluster.clone();
    let producer = cluster.producer().unwrap();
    let deps = workers::Deps {
        database: env.db.pool.clone(),
        redis: env.redis.pool.clone(),
        cluster: cluster.clone(),
        producer: producer.clone(),
        runtime: workers::runtime::RuntimeOptions::default(),
    };
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    workers::spawn_roles(&[Role::Inventory], &deps, &tasks, &shutdown).unwrap();

    let topic = cluster.topics().commands(Role::Inventory);
    producer
        .send(&topic, "x", b"{\"id\": 42", &[])
        .await
        .unwrap();
    let command = forward(
        Uuid::now_v7(),
        0,
        "inventory.reserve",
        json!({ "lines": [{ "sku": "A", "quantity": 2 }] }),
    );
    producer
        .send_json(&topic, &command.saga_id.to_string(), &command)
        .await
        .unwrap();

    let reader: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.brokers())
        .set("group.id", format!("{}.reader", cluster.topics().prefix()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader
        .subscribe(&[&cluster.topics().replies(), &cluster.topics().dead_letter()])
        .unwrap();
    let (mut reply, mut dead) = (None, None);
    while reply.is_none() || dead.is_none() {
        let message = tokio::time::timeout(Duration::from_secs(60), reader.recv())
            .await
            .expect("reply and dead letter within 60 s")
            .unwrap();
        let payload = message.payload().unwrap_or_default().to_vec();
        if message.topic() == cluster.topics().dead_letter() {
            dead = Some(payload);
        } else {
            reply = Some(serde_json::from_slice::<Reply>(&payload).unwrap());
        }
    }
    assert_eq!(dead.unwrap(), b"{\"id\": 42");
    let reply = reply.unwrap();
    assert_eq!(reply.command_id, command.id);
    assert!(matches!(reply.outcome, Outcome::Succeeded { .. }));

    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}
