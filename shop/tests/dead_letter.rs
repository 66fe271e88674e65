//! A malformed command lands on the dead-letter topic and the next command is processed; a
//! command that keeps failing is answered `Failed` after its retry budget and the commands
//! behind it are processed.

mod support;

use std::time::Duration;

use platform::contract::{Outcome, Reply, Role};
use platform::testkit::TestEnv;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use serde_json::json;
use support::{add_product, compensate, forward, idle_producer, options, runtime};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_command_is_dead_lettered_and_the_next_one_processed() {
    let env = TestEnv::start().await;
    add_product(&env.db.pool, "A", 5, 100).await;
    let cluster = env.kafka.cluster.clone();
    let producer = cluster.producer().unwrap();
    let deps = shop::Deps {
        database: env.db.pool.clone(),
        redis: env.redis.pool.clone(),
        cluster: cluster.clone(),
        producer: producer.clone(),
        runtime: shop::runtime::RuntimeOptions::default(),
    };
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    shop::spawn_roles(&[Role::Inventory], &deps, &tasks, &shutdown).unwrap();

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

/// Seen in a manual run: an `inventory.release` whose stock had been raised close to the
/// integer limit overflowed on every try, and the whole inventory role waited behind it.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_that_keeps_failing_is_answered_failed_and_the_role_moves_on() {
    let env = TestEnv::start().await;
    add_product(&env.db.pool, "BIG", 10, 100).await;
    add_product(&env.db.pool, "B", 5, 100).await;
    let poisoned_saga = Uuid::now_v7();
    let lines = json!({ "lines": [{ "sku": "BIG", "quantity": 5 }] });
    let inventory = runtime(
        shop::participants::inventory::Inventory,
        &env.db,
        &env.redis,
        &idle_producer(),
        options(shop::participant::Strategy::RedisLock, Duration::ZERO),
    );
    let reserved = inventory
        .process(&forward(
            poisoned_saga,
            0,
            "inventory.reserve",
            lines.clone(),
        ))
        .await
        .unwrap();
    assert!(matches!(reserved.outcome, Outcome::Succeeded { .. }));
    {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use shop::schema::products;
        let mut conn = env.db.pool.get().await.unwrap();
        diesel::update(products::table.find("BIG"))
            .set(products::stock.eq(i32::MAX - 1))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    let cluster = env.kafka.cluster.clone();
    let producer = cluster.producer().unwrap();
    let deps = shop::Deps {
        database: env.db.pool.clone(),
        redis: env.redis.pool.clone(),
        cluster: cluster.clone(),
        producer: producer.clone(),
        runtime: shop::runtime::RuntimeOptions::default(),
    };
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    shop::spawn_roles(&[Role::Inventory], &deps, &tasks, &shutdown).unwrap();

    let topic = cluster.topics().commands(Role::Inventory);
    let release = compensate(poisoned_saga, 0, "inventory.release", lines);
    let healthy = forward(
        Uuid::now_v7(),
        0,
        "inventory.reserve",
        json!({ "lines": [{ "sku": "B", "quantity": 2 }] }),
    );
    // One key for both: the healthy command sits right behind the poisoned one.
    for command in [&release, &healthy] {
        producer
            .send_json(&topic, "same-partition", command)
            .await
            .unwrap();
    }

    let reader: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.brokers())
        .set("group.id", format!("{}.reader", cluster.topics().prefix()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&cluster.topics().replies()]).unwrap();
    let mut replies = std::collections::HashMap::new();
    while replies.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(60), reader.recv())
            .await
            .expect("both replies within 60 s")
            .unwrap();
        let reply: Reply = serde_json::from_slice(message.payload().unwrap()).unwrap();
        replies.insert(reply.command_id, reply);
    }
    assert!(matches!(
        replies[&healthy.id].outcome,
        Outcome::Succeeded { .. }
    ));
    match &replies[&release.id].outcome {
        Outcome::Failed { reason } => assert!(reason.contains("gave up"), "{reason}"),
        other => panic!("poisoned release answered {other:?}"),
    }
    // The answer is stored: a redelivery gets the same reply and changes nothing.
    let again = inventory.process(&release).await.unwrap();
    assert_eq!(again, replies[&release.id]);

    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}
