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

/// Whether python3 has confluent-kafka; CI must have it, elsewhere the test says so.
fn python_ready() -> bool {
    if python_with_kafka() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the Python participant: pip install confluent-kafka"
    );
    eprintln!("python participant test skipped: python3 -m pip install confluent-kafka");
    false
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
    if !python_ready() {
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

/// The third flow is only data and a participant outside Rust: click-and-collect
/// (`participants/python/click_and_collect.json`) registered over the API, run by the real
/// inventory and payment participants (`dev`) and the Python loyalty role. It completes
/// through a loyalty service that fails twice first (the forward-only award is retried
/// until it lands), and a pickup that never comes refunds and releases.
#[tokio::test(flavor = "multi_thread")]
async fn click_and_collect_is_data_and_a_python_participant_retried_until_it_recovers() {
    use reqwest::StatusCode;
    use support::http::{Http, answer};
    if !python_ready() {
        return;
    }
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::dev(&env).await;
    let http = Http::new(orchestrator.base());
    let sku = format!("BOX-{}", &Uuid::now_v7().simple().to_string()[20..]);
    let product = json!({ "sku": sku, "name": "Box", "price_cents": 1500, "stock": 5 });
    answer(
        http.post("/v1/products", &product).await,
        StatusCode::CREATED,
    )
    .await;
    let user = json!({ "name": "Jiwoo", "balance_cents": 10_000 });
    let user = answer(http.post("/v1/users", &user).await, StatusCode::CREATED).await;
    let user_id = user["id"].as_str().unwrap().to_owned();

    // The shipped document, with the waits of a test rather than of a shop.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../participants/python/click_and_collect.json"
    );
    let mut document: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    document["steps"][1]["timeout_ms"] = json!(120_000);
    document["steps"][2]["duration_ms"] = json!(200);
    answer(
        http.post("/v1/saga-definitions", &document).await,
        StatusCode::CREATED,
    )
    .await;

    let dir = std::env::temp_dir().join(format!("sagaflow-loyalty-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("handled.jsonl");
    let _python = Python(
        Process::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../participants/python/loyalty.py"
            ))
            .env("KAFKA_BROKERS", env.kafka.cluster.brokers())
            .env("TOPIC_PREFIX", env.kafka.cluster.topics().prefix())
            .env("INBOX_DB", dir.join("inbox.db"))
            .env("PARTICIPANT_LOG", &log)
            .env("LOYALTY_FAIL_FIRST", "2")
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 starts"),
    );
    // A caller naming its own price and points: the charge is the box's price, the award
    // derived from that charge.
    let input = json!({
        "user_id": user_id, "lines": [{ "sku": sku, "quantity": 1 }],
        "total_cents": 1, "points": 1_000_000
    });
    let start = json!({ "definition": "click_and_collect", "input": input });
    let started = answer(http.post("/v1/sagas", &start).await, StatusCode::ACCEPTED).await;
    let id: Uuid = started["saga_id"].as_str().unwrap().parse().unwrap();
    eventually("the saga waits for the pickup", async || {
        load(&env, id).await.state["steps"][2]["forward"] == "in_flight"
    })
    .await;
    let signal = format!("/v1/sagas/{id}/signals/picked_up");
    answer(
        http.post(&signal, &json!({ "desk": 4 })).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let row = wait_for_status(&env, id, "COMPLETED").await;
    assert_eq!(
        row.state["steps"][4]["output"]["points"], 2,
        "1 point per started 10.00 of the 15.00 charged: {}",
        row.state
    );
    let charged = answer(
        http.get(&format!("/v1/users/{user_id}")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        charged["balance_cents"], 8_500,
        "charged the price, not 1 cent"
    );
    let outcomes: Vec<String> = log_entries(&log)
        .iter()
        .map(|entry| entry["outcome"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(outcomes, ["failed", "failed", "succeeded"], "{outcomes:?}");
    let stock = answer(
        http.get(&format!("/v1/products/{sku}")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(stock["stock"], 4);

    // No pickup in time: the charge is refunded and the stock released.
    let next = document["version"].as_u64().unwrap() + 1;
    document["version"] = json!(next);
    document["steps"][1]["timeout_ms"] = json!(1_000);
    answer(
        http.post("/v1/saga-definitions", &document).await,
        StatusCode::CREATED,
    )
    .await;
    let started = answer(http.post("/v1/sagas", &start).await, StatusCode::ACCEPTED).await;
    let late: Uuid = started["saga_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(started["version"], next);
    wait_for_status(&env, late, "COMPENSATED").await;
    let stock = answer(
        http.get(&format!("/v1/products/{sku}")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(stock["stock"], 4, "released");
    let user = answer(
        http.get(&format!("/v1/users/{user_id}")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        user["balance_cents"], 8_500,
        "the second saga charged once, refunded once"
    );
    orchestrator.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
