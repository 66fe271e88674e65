//! Trust: who may start what, and money only from state the server owns. Against the real
//! app in `dev` mode (every real participant) with access control on: a client key tries
//! what an attacker would through the generic start and a signal.

mod support;

use orchestrator::app::{Mode, Options};
use platform::testkit::TestEnv;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::http::{Http, answer, problem};
use support::*;
use uuid::Uuid;

const KEYS: &str = "shop:client:shop-secret-0000000001,\
    other:client:other-secret-000000002,\
    ops:operator:ops-secret-00000000003,\
    boss:admin:boss-secret-0000000004";

struct Callers {
    orchestrator: Orchestrator,
    client: Http,
    other: Http,
    ops: Http,
    boss: Http,
}

impl Callers {
    async fn start(env: &TestEnv) -> Self {
        Self::start_with(env, &[]).await
    }

    async fn start_with(env: &TestEnv, vars: &[(&str, &str)]) -> Self {
        let mut all = vec![("AUTH", "on"), ("API_KEYS", KEYS)];
        all.extend_from_slice(vars);
        let orchestrator =
            Orchestrator::start_with_vars(env, Mode::Dev, Options::default(), &all).await;
        let base = orchestrator.base();
        Self {
            client: Http::with_key(base.clone(), "shop-secret-0000000001"),
            other: Http::with_key(base.clone(), "other-secret-000000002"),
            ops: Http::with_key(base.clone(), "ops-secret-00000000003"),
            boss: Http::with_key(base, "boss-secret-0000000004"),
            orchestrator,
        }
    }

    /// Each key with the scope it holds.
    fn keys(&self) -> [(&'static str, &Http); 3] {
        [
            ("client", &self.client),
            ("operator", &self.ops),
            ("admin", &self.boss),
        ]
    }

    async fn register(&self, document: &Value) {
        answer(
            self.boss.post("/v1/saga-definitions", document).await,
            StatusCode::CREATED,
        )
        .await;
    }
}

/// Reserve and charge, startable by clients: the charge must be the lines' price whatever
/// the input says.
fn quick_order() -> Value {
    json!({
        "name": "quick_order",
        "version": 1,
        "start_scopes": ["client", "operator"],
        "input": {
            "type": "object",
            "required": ["user_id", "lines"],
            "properties": {
                "user_id": { "type": "string", "format": "uuid" },
                "lines": { "type": "array", "minItems": 1 }
            }
        },
        "steps": [
            { "name": "reserve_stock", "kind": "task", "role": "inventory",
              "command": "inventory.reserve", "compensation": "inventory.release" },
            { "name": "charge_payment", "kind": "task", "role": "payment",
              "command": "payment.charge", "compensation": "payment.refund" }
        ]
    })
}

/// A client-scope signal named like the coupon flow's claim step, then a payout: the
/// signal's body must never be read as a claim.
fn signal_payout() -> Value {
    json!({
        "name": "signal_payout",
        "version": 1,
        "start_scopes": ["client"],
        "input": { "type": "object" },
        "steps": [
            { "name": "claim_coupon", "kind": "signal", "scope": "client", "timeout_ms": 120000 },
            { "name": "vendor_payout", "kind": "task", "role": "vendor",
              "command": "vendor.payout", "pivot": true }
        ]
    })
}

/// Every registered definition, tried by every key through `POST /v1/sagas` on an input
/// no schema here accepts: a fronted flow is refused for everyone and names its front; a
/// key with one of the flow's start scopes gets past access (to the input's 400); any
/// other key is 403 naming `definition`. Nothing starts.
#[tokio::test(flavor = "multi_thread")]
async fn every_definition_is_started_only_by_the_keys_it_names_and_fronted_ones_by_none() {
    let env = TestEnv::start().await;
    let callers = Callers::start(&env).await;
    callers.register(&quick_order()).await;
    callers.register(&signal_payout()).await;
    let flows = answer(
        callers.boss.get("/v1/saga-definitions").await,
        StatusCode::OK,
    )
    .await;
    let mut tried = 0;
    for flow in flows.as_array().unwrap() {
        let name = flow["name"].as_str().unwrap();
        let version = flow["version"].as_u64().unwrap();
        let detail = answer(
            callers
                .boss
                .get(&format!("/v1/saga-definitions/{name}/versions/{version}"))
                .await,
            StatusCode::OK,
        )
        .await;
        let scopes: Vec<&str> = detail["start_scopes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let front = detail["front"].as_str();
        for (scope, key) in callers.keys() {
            let start = json!({ "definition": name, "input": [] });
            let response = key.post("/v1/sagas", &start).await;
            tried += 1;
            if let Some(front) = front {
                let body = problem(response, 403, Some("definition")).await;
                assert!(
                    body["detail"].as_str().unwrap().contains(front),
                    "{name} by {scope}: {body}"
                );
            } else if scopes.contains(&scope) {
                problem(response, 400, Some("input")).await;
            } else {
                problem(response, 403, Some("definition")).await;
            }
        }
    }
    assert!(
        tried >= 12,
        "order, coupon_use and the two registered, by 3 keys"
    );
    let order = answer(
        callers
            .boss
            .get("/v1/saga-definitions/order/versions/2")
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(order["front"], "POST /v1/orders");
    // Version 1 of `order`, whose input carried a total, starts nothing, even pinned.
    let v1 = answer(
        callers
            .boss
            .get("/v1/saga-definitions/order/versions/1")
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v1["retired"]["retired_by"], "built-in", "{v1}");
    problem(
        callers
            .ops
            .post(
                "/v1/sagas",
                &json!({ "definition": "order", "version": 1, "input": {} }),
            )
            .await,
        409,
        Some("version"),
    )
    .await;
    let live: i64 = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut conn = env.db.pool.get().await.unwrap();
        engine::schema::sagas::table
            .count()
            .get_result(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(live, 0, "no refused start left a saga behind");
    callers.orchestrator.stop().await;
}

/// A retired version starts no new saga through any door, and an admin can reinstate it;
/// one the application retired stays retired.
#[tokio::test(flavor = "multi_thread")]
async fn a_retired_version_starts_nothing_until_reinstated() {
    let env = TestEnv::start().await;
    let callers = Callers::start(&env).await;
    callers.register(&quick_order()).await;
    let path = "/v1/saga-definitions/quick_order/versions/1/retirement";
    let retired = answer(
        callers
            .boss
            .put(path, &json!({ "reason": "superseded" }))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(retired["retired"]["reason"], "superseded");
    let flows = answer(
        callers.boss.get("/v1/saga-definitions/quick_order").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(flows["versions"][0]["retired"]["retired_by"], "boss");
    let start =
        json!({ "definition": "quick_order", "input": { "user_id": Uuid::nil(), "lines": [1] } });
    problem(
        callers.client.post("/v1/sagas", &start).await,
        409,
        Some("version"),
    )
    .await;
    problem(callers.ops.put(path, &json!({})).await, 403, None).await;
    answer(callers.boss.delete(path).await, StatusCode::OK).await;
    // Reinstated: the start gets past the version to the participants.
    answer(
        callers.client.post("/v1/sagas", &start).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let built_in = "/v1/saga-definitions/order/versions/1/retirement";
    problem(callers.boss.delete(built_in).await, 409, None).await;
    callers.orchestrator.stop().await;
}

/// A client key starts a flow that reserves and charges, with 5 televisions at 2 000.00
/// and a `total_cents` of 1 in its input: the wallet pays 10 000.00 (or the charge is
/// refused), never one cent. And a signal named like the coupon claim, carrying a vendor
/// and a payout of 10 000 000.00, pays nobody: the payout looks for the coupon role's
/// answer to `coupon.claim`, which no signal is.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_names_no_price_and_no_payout() {
    let env = TestEnv::start().await;
    let callers = Callers::start(&env).await;
    callers.register(&quick_order()).await;
    callers.register(&signal_payout()).await;
    let sku = format!("TV-{}", &Uuid::now_v7().simple().to_string()[20..]);
    let product =
        json!({ "sku": sku, "name": "Television", "price_cents": 200_000, "stock": 1000 });
    answer(
        callers.boss.post("/v1/products", &product).await,
        StatusCode::CREATED,
    )
    .await;
    let user = json!({ "name": "Kim", "balance_cents": 5_000_000 });
    let user = answer(
        callers.boss.post("/v1/users", &user).await,
        StatusCode::CREATED,
    )
    .await;
    let input = json!({
        "user_id": user["id"], "lines": [{ "sku": sku, "quantity": 5 }], "total_cents": 1
    });
    let started = answer(
        callers
            .client
            .post(
                "/v1/sagas",
                &json!({ "definition": "quick_order", "input": input }),
            )
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let saga: Uuid = started["saga_id"].as_str().unwrap().parse().unwrap();
    wait_for_status(&env, saga, "COMPLETED").await;
    let paid = answer(
        callers
            .boss
            .get(&format!("/v1/users/{}", user["id"].as_str().unwrap()))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        paid["balance_cents"],
        5_000_000 - 5 * 200_000,
        "charged the lines' price"
    );

    let vendor = answer(
        callers
            .boss
            .post("/v1/vendors", &json!({ "name": "Roastery" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let started = answer(
        callers
            .client
            .post(
                "/v1/sagas",
                &json!({ "definition": "signal_payout", "input": {} }),
            )
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let saga: Uuid = started["saga_id"].as_str().unwrap().parse().unwrap();
    let forged = json!({ "vendor_id": vendor["id"], "payout_cents": 1_000_000_000 });
    answer(
        callers
            .client
            .post(&format!("/v1/sagas/{saga}/signals/claim_coupon"), &forged)
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let row = wait_for_status(&env, saga, "COMPENSATED").await;
    assert!(
        row.state["failure"]
            .as_str()
            .is_some_and(|why| why.contains("coupon.claim")),
        "{}",
        row.state
    );
    let vendor = answer(
        callers
            .boss
            .get(&format!("/v1/vendors/{}", vendor["id"].as_str().unwrap()))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(vendor["balance_cents"], 0, "nobody was paid by a signal");
    callers.orchestrator.stop().await;
}

/// One client crowds the server: as many waiting reads of its own saga as it may, one
/// more, and a flood of signals at it. Its excess is 429; the other client's wait and
/// start are served; and the engine's pool never has a loop waiting for a connection
/// (signals run on the API's pool). Latency under crowding is the load benchmark's.
#[tokio::test(flavor = "multi_thread")]
async fn one_client_crowds_out_no_other_and_never_the_engine() {
    let env = TestEnv::start().await;
    let callers = Callers::start_with(
        &env,
        &[
            ("HTTP_MAX_WAITS_PER_KEY", "4"),
            ("HTTP_MAX_SIGNALS_PER_KEY", "4"),
        ],
    )
    .await;
    callers.register(&signal_payout()).await;
    let start = json!({ "definition": "signal_payout", "input": {} });
    let crowded = answer(
        callers.client.post("/v1/sagas", &start).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let crowded: Uuid = crowded["saga_id"].as_str().unwrap().parse().unwrap();
    let base = callers.orchestrator.base();
    let wait = |key: &'static str, id: Uuid| {
        let http = Http::with_key(base.clone(), key);
        tokio::spawn(async move { http.get(&format!("/v1/sagas/{id}?wait=25")).await })
    };
    // Its own places, held (each waits for a saga that will not settle soon).
    let held: Vec<_> = (0..4)
        .map(|_| wait("shop-secret-0000000001", crowded))
        .collect();
    let waiting = &callers.orchestrator.running;
    eventually("the crowd's waits to be registered", async || {
        waiting.waiters.waiting() >= 4
    })
    .await;
    let past = callers
        .client
        .get(&format!("/v1/sagas/{crowded}?wait=25"))
        .await;
    problem(past, 429, None).await;

    // A flood of signals at its saga, on every connection it can open.
    let engine_pool = waiting.engine.pool().clone();
    let flood: Vec<_> = (0..60)
        .map(|n| {
            let http = Http::with_key(base.clone(), "shop-secret-0000000001");
            let path = format!("/v1/sagas/{crowded}/signals/claim_coupon");
            tokio::spawn(
                async move { http.post(&path, &json!({ "n": n })).await.status().as_u16() },
            )
        })
        .collect();
    let watcher = {
        let pool = engine_pool.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..200 {
                most = most.max(pool.status().waiting);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            most
        })
    };
    // The other client is served all the while.
    let others = answer(
        callers.other.post("/v1/sagas", &start).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let others: Uuid = others["saga_id"].as_str().unwrap().parse().unwrap();
    let served = callers
        .other
        .get(&format!("/v1/sagas/{others}?wait=1"))
        .await;
    assert_eq!(
        served.status(),
        StatusCode::OK,
        "the other client waits too"
    );
    let mut statuses = Vec::new();
    for signal in flood {
        statuses.push(signal.await.unwrap());
    }
    let engine_waited = watcher.await.unwrap();
    assert!(
        statuses.iter().all(|s| [202, 409, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "past its bound: {statuses:?}");
    assert_eq!(engine_waited, 0, "no engine loop waited for a connection");
    for handle in held {
        handle.abort();
    }
    callers.orchestrator.stop().await;
}

/// A stream of a saga that does not end (it waits for a signal) still ends at
/// `HTTP_MAX_STREAM_SECONDS`: a key's streams cannot be held for ever. The client resumes
/// with `Last-Event-ID`.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_at_its_lifetime_though_its_saga_goes_on() {
    let env = TestEnv::start().await;
    let callers = Callers::start_with(&env, &[("HTTP_MAX_STREAM_SECONDS", "2")]).await;
    callers.register(&signal_payout()).await;
    let start = json!({ "definition": "signal_payout", "input": {} });
    let started = answer(
        callers.client.post("/v1/sagas", &start).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let saga = started["saga_id"].as_str().unwrap().to_owned();
    let stream = callers
        .client
        .get(&format!("/v1/sagas/{saga}/events"))
        .await;
    assert_eq!(stream.status(), StatusCode::OK);
    let body = tokio::time::timeout(std::time::Duration::from_secs(60), stream.text())
        .await
        .expect("the stream ended at its lifetime")
        .unwrap();
    assert!(
        body.contains("saga.start"),
        "its entries came first: {body}"
    );
    let row = load(&env, saga.parse().unwrap()).await;
    assert_eq!(row.status, "RUNNING", "the saga itself goes on");
    callers.orchestrator.stop().await;
}
