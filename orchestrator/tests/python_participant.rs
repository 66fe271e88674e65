//! A participant outside Rust: `participants/python/shipment.py`, written from the AsyncAPI
//! document alone, runs the shipment role against the real orchestrator and broker. Orders
//! complete through it, a rejection it sends compensates the saga, and a redelivered
//! command is answered with its stored reply and applied once. Needs python3 with
//! `confluent-kafka` (`.ci/run` installs it); outside CI the test says so and passes when
//! it is missing.

mod support;

use std::process::{Child, Command as Process, Stdio};

use orchestrator::app::Options;
use platform::testkit::TestEnv;
use serde_json::{Value, json};
use support::*;
use uuid::Uuid;

struct Python(Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_with_kafka() -> bool {
    Process::new("python3")
        .args(["-c", "import confluent_kafka"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn order(country: &str) -> Value {
    json!({
        "order_id": Uuid::now_v7(),
        "user_id": Uuid::now_v7(),
        "lines": [{ "sku": "MUG-01", "quantity": 1 }],
        "total_cents": 1500,
        "shipping_address": { "country": country, "city": "Seoul", "line1": "1 Main St", "postal_code": "04524" },
    })
}

fn log_entries(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sagas_complete_through_a_python_participant_that_applies_a_redelivered_command_once() {
    if !python_with_kafka() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the Python participant: pip install confluent-kafka"
        );
        eprintln!("python participant test skipped: python3 -m pip install confluent-kafka");
        return;
    }
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    // Inventory and payment answer from the test; shipment is Python's alone.
    let participants = Participants::start(
        &env.kafka.cluster,
        script(|command| {
            if command.name.starts_with("shipment.") {
                Reaction::Silence
            } else {
                succeed()
            }
        }),
    );
    let dir = std::env::temp_dir().join(format!("sagaflow-python-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("handled.jsonl");
    let script_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../participants/python/shipment.py"
    );
    let _python = Python(
        Process::new("python3")
            .arg(script_path)
            .env("KAFKA_BROKERS", env.kafka.cluster.brokers())
            .env("TOPIC_PREFIX", env.kafka.cluster.topics().prefix())
            .env("INBOX_DB", dir.join("inbox.db"))
            .env("PARTICIPANT_LOG", &log)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 starts"),
    );
    let engine = &orchestrator.running.engine;

    let shipped = engine.start("order", &order("KR"), None).await.unwrap().id;
    let row = wait_for_status(&env, shipped, "COMPLETED").await;
    let tracking = row.state["steps"][2]["output"]["tracking_number"].clone();
    assert!(
        tracking.as_str().is_some_and(|t| t.starts_with("PY")),
        "the shipment was prepared by the Python participant: {}",
        row.state
    );

    let refused = engine.start("order", &order("AQ"), None).await.unwrap().id;
    let row = wait_for_status(&env, refused, "COMPENSATED").await;
    assert!(
        row.state["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("we do not ship to AQ"),
        "{}",
        row.state
    );

    // The first order's shipment command again, as a redelivery would bring it.
    let command = participants
        .deliveries_for(shipped)
        .into_iter()
        .find(|command| command.name == "shipment.prepare")
        .expect("the shipment command went out");
    let producer = env.kafka.cluster.producer().unwrap();
    let topic = env
        .kafka
        .cluster
        .topics()
        .commands(platform::contract::Role::Shipment);
    producer
        .send_json(&topic, &command.saga_id.to_string(), &command)
        .await
        .unwrap();
    let id = command.id.to_string();
    eventually("the redelivered command to be answered again", async || {
        log_entries(&log)
            .iter()
            .any(|entry| entry["command_id"] == id.as_str() && entry["handled"] == "redelivered")
    })
    .await;
    let entries: Vec<Value> = log_entries(&log)
        .into_iter()
        .filter(|entry| entry["command_id"] == id.as_str())
        .collect();
    let applied = entries.iter().filter(|e| e["handled"] == "applied").count();
    assert_eq!(applied, 1, "applied once: {entries:?}");
    let reply_ids: std::collections::HashSet<&Value> =
        entries.iter().map(|e| &e["reply_id"]).collect();
    assert_eq!(reply_ids.len(), 1, "the stored reply, same id: {entries:?}");
    assert_eq!(load(&env, shipped).await.status, "COMPLETED");

    participants.stop().await;
    orchestrator.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
