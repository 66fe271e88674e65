//! Dead letters end to end on the real broker: an undecodable reply is dead-lettered by the
//! reply consumer and recorded with its origin and reason; a replayed reply letter re-sends
//! the command it answers, never its own bytes (and cannot be replayed twice); a discard
//! needs a reason; forged payouts and forged replies pay nobody.

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
    // its origin: replayed, the command it answers goes out again (the participant's inbox
    // answers it with the reply it stored); the letter itself is never republished.
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
    let (reserves, replies) = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use engine::schema::outbox;
        let mut conn = env.db.pool.get().await.unwrap();
        let reserves: Vec<Value> = outbox::table
            .filter(outbox::topic.eq(topics.commands("inventory")))
            .filter(outbox::message_key.eq(saga.to_string()))
            .select(outbox::payload)
            .load(&mut conn)
            .await
            .unwrap();
        let replies: i64 = outbox::table
            .filter(outbox::topic.eq(topics.replies()))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap();
        (reserves, replies)
    };
    assert_eq!(reserves.len(), 2, "the reservation, sent and re-sent");
    assert!(
        reserves
            .iter()
            .all(|c| c["id"] == reply.command_id.to_string()),
        "the same command, under its id: {reserves:?}"
    );
    assert_eq!(replies, 0, "no reply is ever republished");
    assert_eq!(
        load(&env, saga).await.current_step,
        0,
        "the letter's outcome was not applied"
    );

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

/// Anything that can write to the dead-letter topic can claim any origin. A genuine
/// `vendor.payout`, copied with a fresh saga and command id and a thousand times the
/// amount, or kept under its own ids with the amount changed, is listed but refused, stays
/// waiting, and pays no vendor: a replay is the engine's own command or nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_payout_in_the_dead_letter_topic_is_listed_refused_and_pays_nobody() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::dev(&env).await;
    let api = Http::new(orchestrator.base());
    let topics = env.kafka.cluster.topics().clone();
    let producer = env.kafka.cluster.producer().unwrap();

    let vendor = answer(
        api.post("/v1/vendors", &json!({ "name": "Roastery" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let vendor_id = vendor["id"].as_str().unwrap().to_owned();
    let campaign = answer(
        api.post(
            "/v1/coupons",
            &json!({
                "vendor_id": vendor_id, "kind": "WELCOME", "title": "Welcome", "value_cents": 1000,
                "total_quantity": 10, "valid_from": "2020-01-01T00:00:00Z",
                "valid_until": "2100-01-01T00:00:00Z",
            }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let user = answer(
        api.post("/v1/users", &json!({ "name": "Minji", "balance_cents": 0 }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let used = answer(
        api.post(
            &format!("/v1/coupons/{}/uses", campaign["id"].as_str().unwrap()),
            &json!({ "user_id": user["id"] }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let saga: Uuid = used["saga_id"].as_str().unwrap().parse().unwrap();
    wait_for_status(&env, saga, "COMPLETED").await;
    let balance = async || {
        answer(
            api.get(&format!("/v1/vendors/{vendor_id}")).await,
            StatusCode::OK,
        )
        .await["balance_cents"]
            .as_i64()
            .unwrap()
    };
    let paid = balance().await;
    assert!(paid > 0, "the genuine payout was paid");

    // The genuine command, as the relay published it.
    let vendor_topic = topics.commands(platform::contract::Role::Vendor);
    let genuine: Value = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use engine::schema::outbox;
        let mut conn = env.db.pool.get().await.unwrap();
        outbox::table
            .filter(outbox::topic.eq(&vendor_topic))
            .filter(outbox::message_key.eq(saga.to_string()))
            .select(outbox::payload)
            .first(&mut conn)
            .await
            .unwrap()
    };
    let inflate = |mut command: Value| {
        let cents = &mut command["payload"]["outputs"]["claim_coupon"]["output"]["payout_cents"];
        *cents = json!(cents.as_i64().unwrap() * 1000);
        command
    };
    let fresh_saga = Uuid::now_v7();
    let mut copied = inflate(genuine.clone());
    copied["saga_id"] = json!(fresh_saga);
    copied["id"] = json!(Uuid::now_v7());
    let changed = inflate(genuine.clone());
    for (key, forged) in [(fresh_saga, &copied), (saga, &changed)] {
        let headers = [
            ("x-original-topic", vendor_topic.as_str()),
            ("x-error", "gave up"),
        ];
        producer
            .send(
                &topics.dead_letter(),
                &key.to_string(),
                &serde_json::to_vec(forged).unwrap(),
                &headers,
            )
            .await
            .unwrap();
    }
    let mut listed = Vec::new();
    eventually("both forged letters to be listed", async || {
        listed = letters(&api, "state=waiting")
            .await
            .into_iter()
            .filter(|l| l["origin_topic"] == vendor_topic.as_str())
            .collect();
        listed.len() == 2
    })
    .await;
    let ids: Vec<i64> = listed.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    let settled = answer(
        api.post(
            "/v1/dead-letters/replay",
            &json!({ "ids": ids, "reason": "looks fine" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(settled["done"], json!([]), "{settled}");
    let reasons: Vec<&str> = settled["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("no saga {fresh_saga}"))),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("nothing waits")),
        "{reasons:?}"
    );
    assert_eq!(
        letters(&api, "state=waiting")
            .await
            .iter()
            .filter(|l| l["origin_topic"] == vendor_topic.as_str())
            .count(),
        2,
        "refused letters stay waiting"
    );
    // Nothing was enqueued for the vendor role, so nothing can pay later either.
    let vendor_messages: i64 = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use engine::schema::outbox;
        let mut conn = env.db.pool.get().await.unwrap();
        outbox::table
            .filter(outbox::topic.eq(&vendor_topic))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(vendor_messages, 1, "only the genuine payout was ever sent");
    assert_eq!(balance().await, paid, "no vendor was paid by a forgery");
    orchestrator.stop().await;
}

/// A `succeeded` reply to a coupon claim that is still in flight, written as the AsyncAPI
/// document describes but naming another vendor and 900 000 000 cents, is put on the
/// dead-letter topic and replayed by an operator. The replay re-asks the coupon role, whose
/// genuine answer pays the campaign's vendor the coupon's value, and nobody else anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_reply_replayed_re_asks_its_participant_and_pays_only_the_coupons_value() {
    use shop::fixtures::{add_campaign, add_user, add_vendor};
    let env = TestEnv::start().await;
    let vendor = add_vendor(&env.db.pool, true).await;
    let attacker = add_vendor(&env.db.pool, true).await;
    let campaign = add_campaign(&env.db.pool, vendor, 10, 1_000).await;
    let user = add_user(&env.db.pool, 0).await;
    // The API and the engine only: the claim waits on its topic, in flight.
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let api = Http::new(orchestrator.base());
    let topics = env.kafka.cluster.topics().clone();
    let input = json!({ "campaign_id": campaign, "user_id": user });
    let saga = orchestrator
        .running
        .engine
        .start("coupon_use", &input, None)
        .await
        .unwrap()
        .id;
    let forged = Reply {
        id: Uuid::now_v7(),
        command_id: command_id(saga, Direction::Forward, 0, 1),
        saga_id: saga,
        step: 0,
        attempt: 1,
        direction: Direction::Forward,
        outcome: Outcome::Succeeded {
            output: json!({ "vendor_id": attacker, "payout_cents": 900_000_000 }),
        },
        command_issued_at: Utc::now(),
        replied_at: Utc::now(),
    };
    let headers = [
        ("x-original-topic", topics.replies()),
        ("x-error", "gave up".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.kafka
        .cluster
        .producer()
        .unwrap()
        .send(
            &topics.dead_letter(),
            &saga.to_string(),
            &serde_json::to_vec(&forged).unwrap(),
            &headers,
        )
        .await
        .unwrap();
    let mut letter = Value::Null;
    eventually("the forged reply to be listed", async || {
        letter = letters(&api, "state=waiting")
            .await
            .into_iter()
            .find(|l| l["message_key"] == saga.to_string())
            .unwrap_or_default();
        !letter.is_null()
    })
    .await;
    let replay = json!({ "ids": [letter["id"]], "reason": "looks genuine" });
    let settled = answer(
        api.post("/v1/dead-letters/replay", &replay).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(settled["done"], json!([letter["id"]]), "{settled}");
    orchestrator.stop().await;

    // Now the real participants: they answer the claim (sent, and re-sent by the replay).
    let orchestrator = Orchestrator::dev(&env).await;
    let row = wait_for_status(&env, saga, "COMPLETED").await;
    assert_ne!(
        row.state["steps"][0]["output"]["payout_cents"], 900_000_000,
        "{}",
        row.state
    );
    let balance = async |id: Uuid| {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use shop::schema::vendors;
        let mut conn = env.db.pool.get().await.unwrap();
        vendors::table
            .find(id)
            .select(vendors::balance_cents)
            .first::<i64>(&mut conn)
            .await
            .unwrap()
    };
    let paid = balance(vendor).await;
    assert!(
        paid > 0 && paid <= 1_000,
        "the campaign's vendor is paid at most the coupon's value: {paid}"
    );
    assert_eq!(balance(attacker).await, 0, "nobody else is paid");
    orchestrator.stop().await;
}
