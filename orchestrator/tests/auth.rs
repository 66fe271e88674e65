//! Access control over HTTP, against the real app in `serve` mode: who may call what, what a
//! client may read, whose idempotency keys are whose, and what the history records of an
//! operator's action.

mod support;

use orchestrator::app::{self, Mode, Options};
use orchestrator::config::Config;
use platform::env::Vars;
use platform::testkit::TestEnv;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::http::{Http, answer, problem};
use support::*;
use tokio_util::sync::CancellationToken;

const KEYS: &str = "shop:client:shop-secret-0000000001,\
    other:client:other-secret-000000002,\
    ops:operator:ops-secret-00000000003,\
    boss:admin:boss-secret-0000000004";

struct Callers {
    orchestrator: Orchestrator,
    nobody: Http,
    shop: Http,
    other: Http,
    ops: Http,
    boss: Http,
}

impl Callers {
    async fn start(env: &TestEnv) -> Self {
        let orchestrator = Orchestrator::start_with_vars(
            env,
            Mode::Serve,
            Options::default(),
            &[("AUTH", "on"), ("API_KEYS", KEYS)],
        )
        .await;
        let base = orchestrator.base();
        Self {
            nobody: Http::new(base.clone()),
            shop: Http::with_key(base.clone(), "shop-secret-0000000001"),
            other: Http::with_key(base.clone(), "other-secret-000000002"),
            ops: Http::with_key(base.clone(), "ops-secret-00000000003"),
            boss: Http::with_key(base, "boss-secret-0000000004"),
            orchestrator,
        }
    }

    /// A product and a user to order with, made by the admin.
    async fn shop_floor(&self) -> Value {
        let sku = format!("MUG-{}", uuid::Uuid::now_v7().simple());
        let product = json!({ "sku": sku, "name": "Mug", "price_cents": 500, "stock": 10 });
        answer(
            self.boss.post("/v1/products", &product).await,
            StatusCode::CREATED,
        )
        .await;
        let user = json!({ "name": "Kim", "balance_cents": 10_000 });
        let user = answer(
            self.boss.post("/v1/users", &user).await,
            StatusCode::CREATED,
        )
        .await;
        json!({
            "user_id": user["id"],
            "lines": [{ "sku": sku, "quantity": 1 }],
            "shipping_address": { "country": "KR", "city": "Seoul", "line1": "1 Main St", "postal_code": "04524" },
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_to_start_without_keys_unless_auth_is_off() {
    let env = TestEnv::start().await;
    let config = Config::from_vars(&Vars::from_pairs([
        ("DATABASE_URL", env.db.url.as_str()),
        ("HTTP_ADDR", "127.0.0.1:0"),
    ]))
    .unwrap();
    let refused = app::start(
        &config,
        env.kafka.cluster.clone(),
        Mode::Serve,
        CancellationToken::new(),
    )
    .await;
    let err = format!(
        "{:#}",
        refused.err().expect("serve without keys must not start")
    );
    assert!(
        err.contains("API_KEYS") && err.contains("AUTH=off"),
        "{err}"
    );

    let bad = Config::from_vars(&Vars::from_pairs([("API_KEYS", "shop:client:short")]));
    assert_eq!(bad.unwrap_err().name, "API_KEYS");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_needs_a_scope_the_operation_accepts() {
    let env = TestEnv::start().await;
    let callers = Callers::start(&env).await;

    let missing = callers.nobody.get("/v1/sagas").await;
    assert_eq!(
        missing.headers()["www-authenticate"],
        r#"Bearer realm="sagaflow""#
    );
    problem(missing, 401, None).await;
    let wrong = Http::with_key(callers.orchestrator.base(), "not-a-key-at-all-0000");
    let invalid = wrong.get("/v1/sagas").await;
    assert!(
        invalid.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(r#"error="invalid_token""#)
    );
    problem(invalid, 401, None).await;

    // A client may not list sagas, mint money or create products; an operator may not
    // either of the latter; the admin may.
    problem(callers.shop.get("/v1/sagas").await, 403, None).await;
    let user = json!({ "name": "Mallory", "balance_cents": 1_000_000 });
    problem(callers.shop.post("/v1/users", &user).await, 403, None).await;
    problem(callers.ops.post("/v1/users", &user).await, 403, None).await;
    answer(
        callers.boss.post("/v1/users", &user).await,
        StatusCode::CREATED,
    )
    .await;
    answer(callers.ops.get("/v1/sagas").await, StatusCode::OK).await;

    // Health stays open; the demo generators do not exist outside `dev`, for anyone.
    answer(callers.nobody.get("/healthz").await, StatusCode::OK).await;
    problem(
        callers
            .boss
            .post("/v1/demo/users", &json!({ "count": 1 }))
            .await,
        404,
        None,
    )
    .await;

    // The document says so.
    let spec = answer(callers.nobody.get("/openapi.json").await, StatusCode::OK).await;
    assert_eq!(
        spec["components"]["securitySchemes"]["apiKey"]["scheme"],
        "bearer"
    );
    let list = &spec["paths"]["/v1/sagas"]["get"];
    assert_eq!(list["x-scopes"], json!(["operator"]));
    assert_eq!(list["security"], json!([{ "apiKey": [] }]));
    assert!(list["responses"]["401"].is_object() && list["responses"]["403"].is_object());
    callers.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_reads_only_what_it_started_and_its_idempotency_keys_are_its_own() {
    let env = TestEnv::start().await;
    let callers = Callers::start(&env).await;
    let order = callers.shop_floor().await;

    let placed = callers
        .shop
        .post_keyed("/v1/orders", "checkout-1", &order)
        .await;
    let placed = answer(placed, StatusCode::ACCEPTED).await;
    let (order_id, saga_id) = (&placed["order_id"], &placed["saga_id"]);
    let order_path = format!("/v1/orders/{}", order_id.as_str().unwrap());
    let saga_path = format!("/v1/sagas/{}", saga_id.as_str().unwrap());
    answer(callers.shop.get(&order_path).await, StatusCode::OK).await;
    answer(callers.shop.get(&saga_path).await, StatusCode::OK).await;
    problem(callers.other.get(&order_path).await, 404, None).await;
    problem(callers.other.get(&saga_path).await, 404, None).await;
    answer(callers.ops.get(&order_path).await, StatusCode::OK).await;
    let saga = answer(callers.ops.get(&saga_path).await, StatusCode::OK).await;
    assert_eq!(saga["history"][0]["detail"]["started_by"], "shop");

    // The same key from another client is another key: a new order, not a 422 and never
    // the first client's order.
    let mut different = order.clone();
    different["lines"][0]["quantity"] = json!(2);
    let theirs = callers
        .other
        .post_keyed("/v1/orders", "checkout-1", &different)
        .await;
    let theirs = answer(theirs, StatusCode::ACCEPTED).await;
    assert_ne!(theirs["order_id"], *order_id);
    // Operators find sagas by the business keys in them.
    let ids = |page: Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|saga| saga["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let search = async |query: String| {
        ids(answer(
            callers.ops.get(&format!("/v1/sagas?{query}")).await,
            StatusCode::OK,
        )
        .await)
    };
    let both = [
        theirs["saga_id"].as_str().unwrap().to_owned(),
        saga_id.as_str().unwrap().to_owned(),
    ];
    assert_eq!(
        search(format!("user_id={}", order["user_id"].as_str().unwrap())).await,
        both
    );
    assert_eq!(
        search(format!("order_id={}", order_id.as_str().unwrap())).await,
        [both[1].clone()]
    );
    assert_eq!(search("idempotency_key=checkout-1".to_owned()).await, both);
    let an_hour_ago = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    let stuck = search(format!(
        "status=RUNNING&updated_before={}",
        an_hour_ago.replace('+', "%2B")
    ))
    .await;
    assert!(
        stuck.is_empty(),
        "nothing has been stuck for an hour: {stuck:?}"
    );
    // ... while the first client's repeat is still its replay.
    let again = callers
        .shop
        .post_keyed("/v1/orders", "checkout-1", &order)
        .await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        answer(again, StatusCode::ACCEPTED).await["order_id"],
        *order_id
    );
    callers.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_action_records_who_and_why() {
    let env = TestEnv::start().await;
    let callers = Callers::start(&env).await;
    let order = callers.shop_floor().await;
    let placed = answer(
        callers.shop.post("/v1/orders", &order).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let saga_path = format!("/v1/sagas/{}", placed["saga_id"].as_str().unwrap());
    // No participant runs here: the saga waits on its first step until cancelled.
    let cancel = format!("{saga_path}/cancel");
    problem(callers.shop.post(&cancel, &json!({})).await, 403, None).await;
    let reason = json!({ "reason": "customer called: wrong address" });
    // The saga's version is its ETag; an action on an older version is refused with 412.
    let seen = callers.ops.get(&saga_path).await;
    let etag = seen.headers()["etag"].to_str().unwrap().to_owned();
    let version = answer(seen, StatusCode::OK).await["version"]
        .as_i64()
        .unwrap();
    assert_eq!(etag, format!("\"{version}\""));
    let act = |if_match: String| {
        let request = callers
            .ops
            .client
            .post(format!("{}{cancel}", callers.ops.base));
        request.header("If-Match", if_match).json(&reason).send()
    };
    problem(
        act(format!("\"{}\"", version + 7)).await.unwrap(),
        412,
        Some("If-Match"),
    )
    .await;
    problem(
        act("seven".to_owned()).await.unwrap(),
        400,
        Some("If-Match"),
    )
    .await;
    answer(act(etag).await.unwrap(), StatusCode::ACCEPTED).await;
    let saga = answer(callers.ops.get(&saga_path).await, StatusCode::OK).await;
    let entry = saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["kind"] == "cancel.requested")
        .expect("a cancel.requested entry")
        .clone();
    assert_eq!(entry["detail"]["actor"], "ops");
    assert_eq!(entry["detail"]["reason"], "customer called: wrong address");
    callers.orchestrator.stop().await;
}

/// Every route the server's own document lists, with every method and every kind of
/// caller: a route or a method added later is judged by this test without a line changed.
/// The document is generated from the router's types, so it is the router's list.
#[tokio::test(flavor = "multi_thread")]
async fn every_method_on_every_path_is_judged_for_every_caller() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start_with_vars(
        &env,
        Mode::Serve,
        Options::default(),
        &[
            ("AUTH", "on"),
            ("API_KEYS", KEYS),
            ("METRICS_AUTH", "operator"),
        ],
    )
    .await;
    let base = orchestrator.base();
    let callers = [
        ("nobody", None, None),
        ("unknown key", Some("not-a-key-at-all-0000"), None),
        ("client", Some("shop-secret-0000000001"), Some("client")),
        ("operator", Some("ops-secret-00000000003"), Some("operator")),
        ("admin", Some("boss-secret-0000000004"), Some("admin")),
    ];
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let doc: Value = Http::new(base.clone())
        .get("/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let send = async |method: &str, path: &str, key: Option<&str>| {
        let mut request = client.request(method.parse().unwrap(), format!("{base}{path}"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if ["POST", "PUT", "PATCH"].contains(&method) {
            request = request.json(&json!({}));
        }
        request.send().await.unwrap()
    };
    let mut judged = 0;
    for (template, operations) in doc["paths"].as_object().unwrap() {
        let path = template
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{sku}", "NO-SUCH-SKU")
            .replace("{name}", "no_such_name")
            .replace("{version}", "7");
        assert!(
            !path.contains('{'),
            "a parameter this test cannot fill: {template}"
        );
        let declared: Vec<String> = operations
            .as_object()
            .unwrap()
            .keys()
            .map(|m| m.to_uppercase())
            .collect();
        for method in methods {
            let as_get = if method == "HEAD" { "GET" } else { method };
            let operation = &operations[as_get.to_lowercase()];
            for (who, key, scope) in callers {
                let response = send(method, &path, key).await;
                let status = response.status().as_u16();
                let what = format!("{method} {path} as {who}");
                judged += 1;
                if !declared.iter().any(|m| m == as_get) {
                    assert_eq!(status, 405, "{what}");
                    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
                    for m in &declared {
                        assert!(allow.contains(m.as_str()), "{what}: Allow {allow}");
                    }
                    continue;
                }
                let security = &operation["security"];
                let scopes: Vec<&str> = if security.is_null() {
                    vec![] // public
                } else if let Some(scopes) = operation["x-scopes"].as_array() {
                    scopes.iter().map(|s| s.as_str().unwrap()).collect()
                } else {
                    vec!["operator"] // /metrics under METRICS_AUTH=operator
                };
                if scopes.is_empty() {
                    assert!(![401, 403, 405].contains(&status), "{what}: {status}");
                } else if key.is_none() || scope.is_none() {
                    assert_eq!(status, 401, "{what}");
                } else if scopes.contains(&scope.unwrap()) {
                    assert!(
                        ![401, 403, 405].contains(&status) && status < 500,
                        "{what}: {status}"
                    );
                } else {
                    assert_eq!(status, 403, "{what}");
                }
            }
        }
    }
    assert!(
        judged > 7 * 5 * 30,
        "the document lists the routes ({judged})"
    );

    // Paths no operation has: under `/v1` a key comes first, and no handler runs.
    for path in [
        "/v1/nothing-here",
        "/v1/products//stock",
        "/v1/sagas/",
        "//v1/sagas",
    ] {
        for method in ["GET", "HEAD", "POST"] {
            for (who, key, scope) in callers {
                let status = send(method, path, key).await.status().as_u16();
                let expected = if scope.is_some() { 404 } else { 401 };
                assert_eq!(status, expected, "{method} {path} as {who}");
            }
        }
    }
    // Outside `/v1`: the documents and the console are public, and only readable.
    for path in ["/docs", "/openapi.json", "/ui"] {
        assert_eq!(send("GET", path, None).await.status(), 200, "{path}");
        assert_eq!(send("HEAD", path, None).await.status(), 200, "{path}");
        assert_eq!(send("DELETE", path, None).await.status(), 405, "{path}");
    }
    orchestrator.stop().await;
}
