//! Dead letters end to end on the real broker: an undecodable reply is dead-lettered by the
//! reply consumer and recorded with its origin and reason; a dead letter replayed onto its
//! origin topic is applied (and cannot be replayed twice); a discard needs a reason.

mod support;

use chrono::Utc;
use orchestrator::app::Options;
use platform::contract::{Direction, Outcome, Reply, command_id};
use platform::testkit::TestEnv;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::http::{Http, answer, problem};
use support::*;
use uuid::Uuid;

async fn letters(api: &Http, query: &str) -> Vec<Value> {
    let page = answer(
        api.get(&format!("/v1/dead-letters?{query}")).await,
        StatusCode::OK,
    )
    .await;
    page["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_recorded_replayed_onto_their_origin_or_discarded_with_a_reason() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let api = Http::new(orchestrator.base());
    let topics = env.kafka.cluster.topics().clone();
    let producer = env.kafka.cluster.producer().unwrap();

    // A reply nobody can read: the reply consumer dead-letters it, the orchestrator records it.
    producer
        .send(&topics.replies(), "poison", b"not json", &[])
        .await
        .unwrap();
    let mut poison = Value::Null;
    eventually("the undecodable reply to be recorded", async || {
        poison = letters(&api, "state=waiting")
            .await
            .into_iter()
            .find(|l| l["payload"] == "not json")
            .unwrap_or_default();
        !poison.is_null()
    })
    .await;
    assert_eq!(poison["origin_topic"], topics.replies());
    assert!(
        poison["error"].as_str().unwrap().contains("undecodable"),
        "{poison}"
    );

    // A reply that (say) failed its budget while the database was down, dead-lettered with
    // its origin: replayed, the engine applies it.
    let engine = &orchestrator.running.engine;
    let payload = json!({ "user_id": Uuid::nil(), "lines": [{ "sku": "MUG-01", "quantity": 1 }] });
    let saga = engine.start("order", &payload, None).await.unwrap().id;
    let reply = Reply {
        id: Uuid::now_v7(),
        command_id: command_id(saga, Direction::Forward, 0, 1),
        saga_id: saga,
        step: 0,
        attempt: 1,
        direction: Direction::Forward,
        outcome: Outcome::Succeeded {
            output: json!({ "reserved": [] }),
        },
        command_issued_at: Utc::now(),
        replied_at: Utc::now(),
    };
    let headers = [
        ("x-original-topic", topics.replies()),
        ("x-original-partition", "0".to_owned()),
        ("x-original-offset", "7".to_owned()),
        ("x-error", "database down for the whole budget".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    producer
        .send(
            &topics.dead_letter(),
            &saga.to_string(),
            &serde_json::to_vec(&reply).unwrap(),
            &headers,
        )
        .await
        .unwrap();
    let mut letter = Value::Null;
    eventually("the dead-lettered reply to be recorded", async || {
        letter = letters(&api, "state=waiting")
            .await
            .into_iter()
            .find(|l| l["message_key"] == saga.to_string())
            .unwrap_or_default();
        !letter.is_null()
    })
    .await;
    assert_eq!(letter["error"], "database down for the whole budget");
    let id = letter["id"].as_i64().unwrap();
    let replay = json!({ "ids": [id], "reason": "database is back" });
    let settled = answer(
        api.post("/v1/dead-letters/replay", &replay).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(settled["done"], json!([id]));
    let again = answer(
        api.post("/v1/dead-letters/replay", &replay).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        again["skipped"][0]["id"], id,
        "a replayed letter is not replayed twice"
    );
    eventually("the replayed reply to move the saga on", async || {
        load(&env, saga).await.current_step >= 1
    })
    .await;

    // Discarding needs a reason, and records it with the key's name.
    let poison_id = poison["id"].as_i64().unwrap();
    let no_reason = api
        .post("/v1/dead-letters/discard", &json!({ "ids": [poison_id] }))
        .await;
    problem(no_reason, 400, Some("reason")).await;
    let discard = json!({ "ids": [poison_id], "reason": "garbage from a test producer" });
    answer(
        api.post("/v1/dead-letters/discard", &discard).await,
        StatusCode::OK,
    )
    .await;
    let discarded = letters(&api, "state=discarded").await;
    assert_eq!(discarded.len(), 1);
    assert_eq!(
        discarded[0]["settled_reason"],
        "garbage from a test producer"
    );
    assert_eq!(discarded[0]["settled_by"], "anonymous");
    problem(
        api.get("/v1/dead-letters?state=lost").await,
        400,
        Some("state"),
    )
    .await;
    orchestrator.stop().await;
}
