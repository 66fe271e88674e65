//! The domain resources over HTTP against the real app in `dev` mode (engine and every
//! participant in-process) on real Postgres, Redis and Kafka: success paths and error paths,
//! asserting status codes and bodies.

mod support;

use platform::testkit::TestEnv;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use support::Orchestrator;
use support::http::{Http, problem};

struct Api {
    _env: TestEnv,
    orchestrator: Orchestrator,
    http: Http,
}

impl Api {
    async fn start() -> Self {
        let env = TestEnv::start().await;
        let orchestrator = Orchestrator::dev(&env).await;
        Self {
            http: Http::new(orchestrator.base()),
            _env: env,
            orchestrator,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Response {
        self.http.post(path, &body).await
    }

    async fn get(&self, path: &str) -> Response {
        self.http.get(path).await
    }

    /// Polls `path` until `field` equals `value`.
    async fn wait_for(&self, path: &str, field: &str, value: &str) -> Value {
        let reached = platform::testkit::poll_until(support::WAIT, async || {
            let body: Value = self.get(path).await.json().await.ok()?;
            (body[field] == value).then_some(body)
        })
        .await;
        reached.unwrap_or_else(|| panic!("{path}: {field} never became {value}"))
    }

    async fn stop(self) {
        self.orchestrator.stop().await;
    }
}

async fn created(response: Response) -> Value {
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

fn address(country: &str) -> Value {
    json!({ "country": country, "city": "Seoul", "line1": "1 Seongsu-ro", "postal_code": "04790" })
}

#[tokio::test(flavor = "multi_thread")]
async fn products_users_and_vendors() {
    let api = Api::start().await;

    let product = created(
        api.post(
            "/v1/products",
            json!({ "sku": "MUG-01", "name": "Mug", "price_cents": 1500, "stock": 10 }),
        )
        .await,
    )
    .await;
    assert_eq!(product["stock"], 10);
    problem(
        api.post(
            "/v1/products",
            json!({ "sku": "MUG-01", "name": "Mug", "price_cents": 1500, "stock": 10 }),
        )
        .await,
        409,
        None,
    )
    .await;
    problem(
        api.post(
            "/v1/products",
            json!({ "sku": "bad sku", "name": "x", "price_cents": 1, "stock": 1 }),
        )
        .await,
        400,
        Some("sku"),
    )
    .await;
    problem(
        api.post(
            "/v1/products",
            json!({ "sku": "NEG", "name": "x", "price_cents": 1, "stock": -1 }),
        )
        .await,
        400,
        Some("stock"),
    )
    .await;
    let adjusted: Value = api
        .post("/v1/products/MUG-01/stock", json!({ "delta": -4 }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(adjusted["stock"], 6);
    let body = problem(
        api.post("/v1/products/MUG-01/stock", json!({ "delta": -7 }))
            .await,
        409,
        None,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("below zero"));
    problem(api.get("/v1/products/NOPE").await, 404, None).await;

    let user = created(
        api.post(
            "/v1/users",
            json!({ "name": "Minji", "balance_cents": 1000 }),
        )
        .await,
    )
    .await;
    let id = user["id"].as_str().unwrap();
    let topped: Value = api
        .post(
            &format!("/v1/users/{id}/top-ups"),
            json!({ "amount_cents": 500 }),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(topped["balance_cents"], 1500);
    problem(
        api.post(
            &format!("/v1/users/{id}/top-ups"),
            json!({ "amount_cents": 0 }),
        )
        .await,
        400,
        Some("amount_cents"),
    )
    .await;
    problem(
        api.get("/v1/users/01a20f57-0000-7000-8000-000000000000")
            .await,
        404,
        None,
    )
    .await;
    problem(api.get("/v1/users/not-a-uuid").await, 400, Some("id")).await;
    problem(
        api.post("/v1/users", json!({ "name": "", "balance_cents": 1 }))
            .await,
        400,
        Some("name"),
    )
    .await;

    let vendor = created(api.post("/v1/vendors", json!({ "name": "Roastery" })).await).await;
    assert_eq!(vendor["payouts_enabled"], true);
    let detail: Value = api
        .get(&format!("/v1/vendors/{}", vendor["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            detail["balance_cents"].clone(),
            detail["ledger_total_cents"].clone()
        ),
        (json!(0), json!(0))
    );

    // Malformed bodies, unknown routes, oversized bodies: precise 4xx, problem+json.
    let raw = api
        .http
        .client
        .post(format!("{}/v1/users", api.http.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(raw, 400, None).await;
    problem(api.get("/v1/nowhere").await, 404, None).await;
    // Wrong JSON types, nulls and missing fields: 400 naming the field (nothing coerced).
    problem(
        api.post("/v1/users", json!({ "name": false, "balance_cents": 1 }))
            .await,
        400,
        Some("name"),
    )
    .await;
    problem(
        api.post("/v1/users", json!({ "name": "x" })).await,
        400,
        Some("balance_cents"),
    )
    .await;
    problem(
        api.post(
            "/v1/vendors",
            json!({ "name": "x", "payouts_enabled": null }),
        )
        .await,
        400,
        Some("payouts_enabled"),
    )
    .await;
    problem(
        api.post("/v1/orders", json!({ "user_id": id, "lines": [{ "sku": "MUG-01", "quantity": "two" }], "shipping_address": address("KR") })).await,
        400,
        Some("lines[0].quantity"),
    )
    .await;
    problem(
        api.get("/v1/users/01a20f57-0000-7000-8000-000000000000/coupons")
            .await,
        404,
        None,
    )
    .await;
    let vendors: Value = created(api.post("/v1/demo/vendors", json!({ "count": 2 })).await).await;
    assert_eq!(vendors.as_array().unwrap().len(), 2);
    let huge = json!({ "name": "x".repeat(70_000), "balance_cents": 1 });
    let too_large = api.post("/v1/users", huge).await;
    // Its body unread, the connection is closed: the next request must not reuse it.
    assert_eq!(too_large.headers()["connection"], "close");
    problem(too_large, 413, None).await;

    let users: Value = created(api.post("/v1/demo/users", json!({ "count": 3 })).await).await;
    assert_eq!(users.as_array().unwrap().len(), 3);
    let campaign = created(api.post("/v1/demo/coupons", json!({})).await).await;
    assert!(campaign["total_quantity"].as_i64().unwrap() >= 10);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_complete_compensate_and_honour_idempotency_keys() {
    let api = Api::start().await;
    created(
        api.post(
            "/v1/products",
            json!({ "sku": "MUG-01", "name": "Mug", "price_cents": 1000, "stock": 100 }),
        )
        .await,
    )
    .await;
    let user = created(
        api.post(
            "/v1/users",
            json!({ "name": "Minji", "balance_cents": 100000 }),
        )
        .await,
    )
    .await;
    let user_id = user["id"].as_str().unwrap();
    let order = |country: &str| json!({ "user_id": user_id, "lines": [{ "sku": "MUG-01", "quantity": 2 }], "shipping_address": address(country) });

    let placed = api.post("/v1/orders", order("KR")).await;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    let location = placed.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = placed.json().await.unwrap();
    assert_eq!(body["status_url"], location);
    // A waiting read instead of polls: answered when the saga settles.
    let mut done = Value::Null;
    for _ in 0..4 {
        let waited = api
            .http
            .client
            .get(format!("{}{location}?wait=25", api.http.base))
            .send()
            .await
            .unwrap();
        assert_eq!(waited.status(), StatusCode::OK);
        assert_eq!(waited.headers()["preference-applied"], "wait=25");
        done = waited.json().await.unwrap();
        if done["status"] != "PENDING" {
            break;
        }
    }
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["total_cents"], 2000);
    // Placing an order that asks to wait answers with the settled order (200).
    let settled = api
        .http
        .client
        .post(format!("{}/v1/orders", api.http.base))
        .header("Prefer", "wait=25")
        .json(&order("KR"))
        .send()
        .await
        .unwrap();
    assert_eq!(settled.status(), StatusCode::OK);
    assert_eq!(settled.headers()["preference-applied"], "wait=25");
    let settled: Value = settled.json().await.unwrap();
    assert_eq!(settled["status"], "COMPLETED", "{settled}");

    let far: Value = api
        .post("/v1/orders", order("AQ"))
        .await
        .json()
        .await
        .unwrap();
    let rejected = api
        .wait_for(far["status_url"].as_str().unwrap(), "status", "REJECTED")
        .await;
    assert!(
        rejected["reason"]
            .as_str()
            .unwrap()
            .contains("not serviceable")
    );

    // 20 concurrent requests with one key: one order, one saga, the same ids for all.
    let requests = (0..20).map(|_| {
        api.http
            .client
            .post(format!("{}/v1/orders", api.http.base))
            .header("Idempotency-Key", "order-42")
            .json(&order("KR"))
            .send()
    });
    let mut ids = Vec::new();
    let mut replays = 0;
    for response in futures_util::future::join_all(requests).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        if let Some(replayed) = response.headers().get("idempotent-replayed") {
            assert_eq!(replayed, "true");
            replays += 1;
        }
        let body: Value = response.json().await.unwrap();
        ids.push((body["order_id"].clone(), body["saga_id"].clone()));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        replays, 19,
        "every answer but the first is marked as a replay"
    );

    // The same key with another request never hands over the first one's order.
    let other_user = created(
        api.post(
            "/v1/users",
            json!({ "name": "Jun", "balance_cents": 100000 }),
        )
        .await,
    )
    .await;
    let mut theirs = order("KR");
    theirs["user_id"] = other_user["id"].clone();
    let mut bigger = order("KR");
    bigger["lines"][0]["quantity"] = json!(3);
    for different in [theirs, bigger] {
        let reused = api
            .http
            .post_keyed("/v1/orders", "order-42", &different)
            .await;
        let body = problem(reused, 422, Some("Idempotency-Key")).await;
        assert!(
            !body.to_string().contains(ids[0].0.as_str().unwrap()),
            "{body}"
        );
    }
    api.wait_for(
        &format!("/v1/orders/{}", ids[0].0.as_str().unwrap()),
        "status",
        "COMPLETED",
    )
    .await;
    let product: Value = api.get("/v1/products/MUG-01").await.json().await.unwrap();
    assert_eq!(
        product["stock"], 94,
        "three completed orders of 2 (one placed waiting), one rejected and released"
    );

    problem(
        api.post("/v1/orders", json!({ "user_id": "01a20f57-0000-7000-8000-000000000000", "lines": [{ "sku": "MUG-01", "quantity": 1 }], "shipping_address": address("KR") })).await,
        422,
        Some("user_id"),
    )
    .await;
    problem(
        api.post("/v1/orders", json!({ "user_id": user_id, "lines": [{ "sku": "MUG-01", "quantity": 1 }, { "sku": "NOPE", "quantity": 1 }], "shipping_address": address("KR") })).await,
        422,
        Some("lines[1].sku"),
    )
    .await;
    problem(
        api.post("/v1/orders", json!({ "user_id": user_id, "lines": [{ "sku": "MUG-01", "quantity": 0 }], "shipping_address": address("KR") })).await,
        400,
        Some("quantity"),
    )
    .await;
    problem(
        api.post(
            "/v1/orders",
            json!({ "user_id": user_id, "lines": [], "shipping_address": address("KR") }),
        )
        .await,
        400,
        Some("lines"),
    )
    .await;
    problem(
        api.get("/v1/orders/01a20f57-0000-7000-8000-000000000000")
            .await,
        404,
        None,
    )
    .await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn coupon_campaigns_and_their_use() {
    let api = Api::start().await;
    let vendor = created(api.post("/v1/vendors", json!({ "name": "Roastery" })).await).await;
    let vendor_id = vendor["id"].as_str().unwrap();
    let campaign = |quantity: i64| {
        json!({
            "vendor_id": vendor_id, "kind": "WELCOME", "title": "Welcome", "value_cents": 1000,
            "total_quantity": quantity, "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2100-01-01T00:00:00Z",
        })
    };
    let first = created(api.post("/v1/coupons", campaign(60)).await).await;
    assert_eq!(
        (first["remaining"].clone(), first["claimed"].clone()),
        (json!(60), json!(0))
    );
    let over = problem(api.post("/v1/coupons", campaign(41)).await, 409, None).await;
    assert!(
        over["detail"].as_str().unwrap().contains("limit of 100"),
        "{over}"
    );
    created(api.post("/v1/coupons", campaign(40)).await).await;
    problem(
        api.post("/v1/coupons", campaign(101)).await,
        400,
        Some("total_quantity"),
    )
    .await;
    let mut unknown_vendor = campaign(1);
    unknown_vendor["vendor_id"] = json!("01a20f57-0000-7000-8000-000000000000");
    problem(
        api.post("/v1/coupons", unknown_vendor).await,
        422,
        Some("vendor_id"),
    )
    .await;
    let mut backwards = campaign(1);
    backwards["kind"] = json!("OTHER");
    backwards["valid_until"] = json!("2019-01-01T00:00:00Z");
    problem(
        api.post("/v1/coupons", backwards).await,
        400,
        Some("valid_until"),
    )
    .await;

    let campaign_id = first["id"].as_str().unwrap();
    let user = created(
        api.post("/v1/users", json!({ "name": "Minji", "balance_cents": 0 }))
            .await,
    )
    .await;
    let user_id = user["id"].as_str().unwrap();

    // The saga way, asking to wait: the answer is the settled saga (200), not a 202 to
    // follow up on.
    let used = api
        .http
        .client
        .post(format!("{}/v1/coupons/{campaign_id}/uses", api.http.base))
        .header("Prefer", "wait=25")
        .json(&json!({ "user_id": user_id }))
        .send()
        .await
        .unwrap();
    assert_eq!(used.status(), StatusCode::OK);
    assert_eq!(used.headers()["preference-applied"], "wait=25");
    let location = used.headers()["location"].to_str().unwrap().to_owned();
    let used: Value = used.json().await.unwrap();
    assert_eq!(
        (&used["definition"], &used["status"]),
        (&json!("coupon_use"), &json!("COMPLETED")),
        "{used}"
    );
    assert_eq!(
        location,
        format!("/v1/sagas/{}", used["id"].as_str().unwrap())
    );
    let held: Value = api
        .get(&format!("/v1/users/{user_id}/coupons"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(held.as_array().unwrap().len(), 1);

    // The direct way: a second coupon of the same campaign is refused for this user.
    problem(
        api.post(
            &format!("/v1/coupons/{campaign_id}/direct-uses"),
            json!({ "user_id": user_id }),
        )
        .await,
        409,
        None,
    )
    .await;
    let other = created(
        api.post("/v1/users", json!({ "name": "Jisoo", "balance_cents": 0 }))
            .await,
    )
    .await;
    let direct = api
        .post(
            &format!("/v1/coupons/{campaign_id}/direct-uses"),
            json!({ "user_id": other["id"] }),
        )
        .await;
    assert_eq!(direct.status(), StatusCode::OK);
    let direct: Value = direct.json().await.unwrap();
    assert_eq!(direct["payout"]["amount_cents"], 900);

    let campaign_now: Value = api
        .get(&format!("/v1/coupons/{campaign_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            campaign_now["claimed"].clone(),
            campaign_now["remaining"].clone()
        ),
        (json!(2), json!(58))
    );
    let vendor_now: Value = api
        .get(&format!("/v1/vendors/{vendor_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(vendor_now["balance_cents"], 1800);
    assert_eq!(vendor_now["ledger_total_cents"], 1800);
    assert_eq!(vendor_now["ledger"].as_array().unwrap().len(), 2);

    problem(
        api.post(
            "/v1/coupons/01a20f57-0000-7000-8000-000000000000/uses",
            json!({ "user_id": user_id }),
        )
        .await,
        404,
        None,
    )
    .await;
    problem(
        api.post(
            &format!("/v1/coupons/{campaign_id}/uses"),
            json!({ "user_id": "01a20f57-0000-7000-8000-000000000000" }),
        )
        .await,
        422,
        Some("user_id"),
    )
    .await;
    api.stop().await;
}

/// Every value a client can send ends in a 4xx that names the field: formats and integer
/// ranges the JSON parser would reject without saying where, and counters pushed past
/// their column's range in legal steps.
#[tokio::test(flavor = "multi_thread")]
async fn bad_values_name_their_field_and_never_reach_a_500() {
    let api = Api::start().await;
    let user = created(
        api.post(
            "/v1/users",
            json!({ "name": "Minji", "balance_cents": 100 }),
        )
        .await,
    )
    .await;
    let user_id = user["id"].as_str().unwrap();
    created(
        api.post(
            "/v1/products",
            json!({ "sku": "MUG-01", "name": "Mug", "price_cents": 1000, "stock": 10 }),
        )
        .await,
    )
    .await;
    let vendor = created(api.post("/v1/vendors", json!({ "name": "Roastery" })).await).await;
    let order = |user: &str, quantity: Value| json!({ "user_id": user, "lines": [{ "sku": "MUG-01", "quantity": quantity }], "shipping_address": address("KR") });
    let cases = [
        ("/v1/orders", order("not-a-uuid", json!(1)), "user_id"),
        (
            "/v1/orders",
            order(user_id, json!(4_294_967_296u64)),
            "lines[0].quantity",
        ),
        (
            "/v1/products",
            json!({ "sku": "X", "name": "X", "price_cents": 1, "stock": 2_147_483_648u64 }),
            "stock",
        ),
        (
            "/v1/products/MUG-01/stock",
            json!({ "delta": -2_147_483_649i64 }),
            "delta",
        ),
        (
            "/v1/users",
            json!({ "name": "X", "balance_cents": 9_223_372_036_854_775_808u64 }),
            "balance_cents",
        ),
        (
            "/v1/coupons",
            json!({ "vendor_id": vendor["id"], "kind": "K", "title": "T", "value_cents": 100, "total_quantity": 1, "valid_from": "yesterday", "valid_until": "2030-01-01T00:00:00Z" }),
            "valid_from",
        ),
        // U+0000 fits the JSON but no stored text: refused at the door, never a 500.
        (
            "/v1/vendors",
            json!({ "name": "Roast\u{0}ery", "payouts_enabled": true }),
            "name",
        ),
        ("/v1/orders", order(user_id, json!(1)), "body"),
    ];
    for (index, (path, mut body, field)) in cases.into_iter().enumerate() {
        if field == "body" {
            // The order of the last case, with a NUL in its address: named by its path.
            body["shipping_address"]["city"] = json!("Seo\u{0}ul");
            let answer = problem(api.post(path, body).await, 400, None).await;
            assert_eq!(
                answer["field"], "shipping_address.city",
                "case {index}: {answer}"
            );
            continue;
        }
        problem(api.post(path, body).await, 400, Some(field)).await;
    }
    let nul_in_path = api.get("/v1/products/MUG%0001").await;
    problem(nul_in_path, 400, Some("path")).await;
    let nul_in_query = api.get("/v1/notifications?cursor=%00%ff").await;
    problem(nul_in_query, 400, Some("cursor")).await;
    // Where the schema leaves the shape open (a saga's input, a signal's body), a NUL
    // anywhere is named by its path; an integer past its type's range names its field.
    let generic = |input: Value| json!({ "definition": "coupon_use", "input": input });
    let nested = generic(json!({ "campaign_id": { "deep": ["x\u{0}"] } }));
    problem(
        api.post("/v1/sagas", nested).await,
        400,
        Some("input.campaign_id.deep[0]"),
    )
    .await;
    let huge =
        json!({ "definition": "coupon_use", "version": 9_223_372_036_854_775_808u64, "input": {} });
    problem(api.post("/v1/sagas", huge).await, 400, Some("version")).await;
    let zero = json!({ "definition": "coupon_use", "version": 0, "input": {} });
    problem(api.post("/v1/sagas", zero).await, 400, Some("version")).await;
    // The input schema's `format` is asserted at the start.
    let nil = "00000000-0000-0000-0000-000000000000";
    let not_a_uuid = generic(json!({ "campaign_id": "nope", "user_id": nil }));
    problem(
        api.post("/v1/sagas", not_a_uuid).await,
        400,
        Some("input/campaign_id"),
    )
    .await;

    // A stock raised up to its column's maximum in legal steps: the next step is a 409
    // that says why, not an integer overflow.
    {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut conn = api._env.db.pool.get().await.unwrap();
        diesel::update(shop::schema::products::table.find("MUG-01"))
            .set(shop::schema::products::stock.eq(i32::MAX - 5))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let past = api
        .post("/v1/products/MUG-01/stock", json!({ "delta": 10 }))
        .await;
    let body = problem(past, 409, None).await;
    assert!(
        body["detail"].as_str().unwrap().contains("maximum"),
        "{body}"
    );
    let product: Value = api.get("/v1/products/MUG-01").await.json().await.unwrap();
    assert_eq!(product["stock"], i32::MAX - 5, "nothing changed");
    api.stop().await;
}

/// Every POST that moves money or starts a saga takes an `Idempotency-Key`: the repeat
/// changes nothing and is marked as a replay; the key with another request is 422.
#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_guard_every_post_that_moves_money_or_starts_a_saga() {
    let api = Api::start().await;
    let user = created(
        api.post("/v1/users", json!({ "name": "Minji", "balance_cents": 0 }))
            .await,
    )
    .await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let other_user = created(
        api.post("/v1/users", json!({ "name": "Jun", "balance_cents": 0 }))
            .await,
    )
    .await;
    // The direct use claims for a user of its own: the saga use's claim for `user` may land
    // first (it runs in the background), and one user holds one coupon of a campaign.
    let direct_user = created(
        api.post("/v1/users", json!({ "name": "Seo", "balance_cents": 0 }))
            .await,
    )
    .await;
    created(
        api.post(
            "/v1/products",
            json!({ "sku": "MUG-01", "name": "Mug", "price_cents": 1000, "stock": 10 }),
        )
        .await,
    )
    .await;
    let vendor = created(api.post("/v1/vendors", json!({ "name": "Roastery" })).await).await;
    let campaign = created(
        api.post(
            "/v1/coupons",
            json!({ "vendor_id": vendor["id"], "kind": "IDEM", "title": "T", "value_cents": 1000, "total_quantity": 10, "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2099-01-01T00:00:00Z" }),
        )
        .await,
    )
    .await;
    let campaign_id = campaign["id"].as_str().unwrap();
    let keyed =
        async |path: &str, key: &str, body: Value| api.http.post_keyed(path, key, &body).await;
    let requests = [
        (
            format!("/v1/users/{user_id}/top-ups"),
            json!({ "amount_cents": 500 }),
            json!({ "amount_cents": 501 }),
        ),
        (
            "/v1/products/MUG-01/stock".to_owned(),
            json!({ "delta": 5 }),
            json!({ "delta": 6 }),
        ),
        (
            format!("/v1/coupons/{campaign_id}/uses"),
            json!({ "user_id": user_id }),
            json!({ "user_id": other_user["id"] }),
        ),
        (
            format!("/v1/coupons/{campaign_id}/direct-uses"),
            json!({ "user_id": direct_user["id"] }),
            json!({ "user_id": other_user["id"] }),
        ),
    ];
    for (index, (path, body, other)) in requests.into_iter().enumerate() {
        let key = format!("key-{index}");
        let first = keyed(&path, &key, body.clone()).await;
        assert!(first.status().is_success(), "{path}: {}", first.status());
        assert!(
            first.headers().get("idempotent-replayed").is_none(),
            "{path}"
        );
        let first: Value = first.json().await.unwrap();
        let again = keyed(&path, &key, body).await;
        assert!(again.status().is_success(), "{path}");
        assert_eq!(again.headers()["idempotent-replayed"], "true", "{path}");
        assert_eq!(again.json::<Value>().await.unwrap(), first, "{path}");
        problem(
            keyed(&path, &key, other).await,
            422,
            Some("Idempotency-Key"),
        )
        .await;
    }
    let user_now: Value = api
        .get(&format!("/v1/users/{user_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user_now["balance_cents"], 500, "credited once");
    let product: Value = api.get("/v1/products/MUG-01").await.json().await.unwrap();
    assert_eq!(product["stock"], 15, "raised once");
    let campaign_now: Value = api
        .get(&format!("/v1/coupons/{campaign_id}"))
        .await
        .json()
        .await
        .unwrap();
    // One saga use (it may still be running) and one direct use: at most two claims.
    assert!(
        campaign_now["claimed"].as_i64().unwrap() <= 2,
        "{campaign_now}"
    );
    let sagas: Value = api
        .get("/v1/sagas?definition=coupon_use")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(sagas["items"].as_array().unwrap().len(), 1, "{sagas}");
    api.stop().await;
}

/// The API cannot starve the engine: with its pool exhausted it answers 503 with
/// `Retry-After` at once, and the sagas it accepted still finish, because the engine loops
/// have a pool of their own.
#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_api_pool_answers_503_and_the_engine_keeps_going() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start_with_vars(
        &env,
        orchestrator::app::Mode::Dev,
        orchestrator::app::Options::default(),
        &[("DATABASE_POOL_SIZE", "1"), ("DATABASE_POOL_WAIT_MS", "1")],
    )
    .await;
    let http = Http::new(orchestrator.base());
    let post = |path: &str, body: Value| {
        let request = http.client.post(format!("{}{path}", http.base));
        request.json(&body).send()
    };
    let mut user = None;
    while user.is_none() {
        // Alone, a request gets the connection; retried in the rare case it did not.
        let response = post(
            "/v1/users",
            json!({ "name": "Minji", "balance_cents": 1_000_000 }),
        )
        .await
        .unwrap();
        if response.status() == StatusCode::CREATED {
            user = Some(response.json::<Value>().await.unwrap());
        }
    }
    let user_id = user.unwrap()["id"].clone();
    loop {
        let response = post(
            "/v1/products",
            json!({ "sku": "MUG-01", "name": "Mug", "price_cents": 100, "stock": 1000 }),
        )
        .await
        .unwrap();
        if response.status() == StatusCode::CREATED {
            break;
        }
    }
    let order = json!({ "user_id": user_id, "lines": [{ "sku": "MUG-01", "quantity": 1 }], "shipping_address": address("KR") });
    let responses =
        futures_util::future::join_all((0..40).map(|_| post("/v1/orders", order.clone()))).await;
    let (mut accepted, mut busy) = (Vec::new(), 0);
    for response in responses {
        let response = response.unwrap();
        match response.status() {
            StatusCode::ACCEPTED => {
                let body: Value = response.json().await.unwrap();
                accepted.push(body["saga_id"].as_str().unwrap().to_owned());
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(response.headers()["retry-after"], "1");
                problem(response, 503, None).await;
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        busy > 0,
        "40 requests on one connection that nobody may wait for"
    );
    for saga in accepted {
        let row = support::wait_for_status(&env, saga.parse().unwrap(), "COMPLETED").await;
        assert_eq!(row.status, "COMPLETED");
    }
    orchestrator.stop().await;
}
