//! The operator endpoints over HTTP (sagas, notifications, metrics) against the real app in
//! `serve` mode, with scripted participants on the real broker: no business tables are
//! touched, so each test controls exactly which sagas exist and what state they are in.

mod support;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use engine::schema::notifications;
use orchestrator::app::{Mode, Options};
use platform::contract::Outcome;
use platform::testkit::TestEnv;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use support::http::{answer, problem};
use support::*;
use uuid::Uuid;

/// An orchestrator and an HTTP client pointed at it.
struct Http {
    orchestrator: Orchestrator,
    api: support::http::Http,
}

impl Http {
    async fn start(env: &TestEnv) -> Self {
        let orchestrator = Orchestrator::start(env, Options::default()).await;
        let api = support::http::Http::new(orchestrator.base());
        Self { orchestrator, api }
    }

    async fn get(&self, path: &str) -> Response {
        self.api.get(path).await
    }

    async fn post(&self, path: &str) -> Response {
        self.api.post_empty(path).await
    }

    async fn start_saga(&self, payload: Value) -> Uuid {
        let engine = &self.orchestrator.running.engine;
        engine.start("order", &payload, None).await.unwrap().id
    }

    async fn saga(&self, id: Uuid) -> Value {
        ok(self.get(&format!("/v1/sagas/{id}")).await).await
    }

    /// Polls the saga over HTTP until it has `status`.
    async fn wait_for(&self, id: Uuid, status: &str) -> Value {
        let mut last = Value::Null;
        eventually(&format!("saga {id} to be {status}"), async || {
            last = self.saga(id).await;
            last["status"] == status
        })
        .await;
        last
    }

    /// POSTs an operator action (`retry`, `cancel`) that must be refused with 409; returns
    /// the `current_status` the problem reports.
    async fn refused(&self, id: Uuid, action: &str) -> Value {
        let response = self.post(&format!("/v1/sagas/{id}/{action}")).await;
        problem(response, 409, None).await["current_status"].clone()
    }

    /// Asserts that GET `path` is a 400 naming `field`.
    async fn rejects(&self, path: &str, field: &str) {
        problem(self.get(path).await, 400, Some(field)).await;
    }

    /// Every page from `path` (which has a query), following `next_cursor`.
    async fn pages(&self, path: &str) -> Vec<Value> {
        let mut pages = vec![ok(self.get(path).await).await];
        while let Some(cursor) = pages[pages.len() - 1]["next_cursor"].as_str() {
            let next = ok(self.get(&format!("{path}&cursor={cursor}")).await).await;
            pages.push(next);
        }
        pages
    }
}

async fn ok(response: Response) -> Value {
    answer(response, StatusCode::OK).await
}

async fn accepted(response: Response) -> Value {
    answer(response, StatusCode::ACCEPTED).await
}

/// `key` of every item of the pages, in order; strings unquoted.
fn column<'a>(pages: impl IntoIterator<Item = &'a Value>, key: &str) -> Vec<String> {
    let items = pages
        .into_iter()
        .flat_map(|page| page["items"].as_array().unwrap());
    items
        .map(|item| match &item[key] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn order() -> Value {
    json!({ "user_id": 1, "lines": [{ "sku": "A", "quantity": 2 }] })
}

/// Completes every saga except those whose input asks to `hold` at the charge.
fn succeed_unless_held() -> Script {
    script(|command| {
        if command.name == "payment.charge" && command.payload.input["hold"] == true {
            Reaction::Silence
        } else {
            succeed()
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completed_saga_shows_its_steps_and_history_and_unknown_ids_are_problems() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));

    let id = http.start_saga(order()).await;
    let saga = http.wait_for(id, "COMPLETED").await;

    assert_eq!(saga["id"], id.to_string());
    assert_eq!(saga["definition"], "order");
    assert_eq!(saga["payload"], order());
    assert!(saga.get("failure").is_none(), "{saga}");
    let steps = saga["steps"].as_array().unwrap();
    let names: Vec<_> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["reserve_stock", "charge_payment", "prepare_shipment"]
    );
    for (index, step) in steps.iter().enumerate() {
        assert_eq!(step["index"], index);
        assert_eq!(step["state"], "succeeded", "{step}");
        assert_eq!(step["attempts"], 1);
        assert_eq!(step["compensation_state"], "not_started");
        assert_eq!(step["compensation_attempts"], 0);
        assert_eq!(step["output"], json!({ "ok": true }));
    }
    assert_eq!(steps[1]["role"], "payment");
    assert_eq!(steps[1]["command"], "payment.charge");
    assert_eq!(steps[1]["compensation"], "payment.refund");
    let kinds: Vec<_> = saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "saga.start", "{kinds:?}");
    assert!(kinds.contains(&"saga.completed"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "reply.received").count(), 3);

    // The same history, five entries a page.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let page = ok(http
            .get(&format!("/v1/sagas/{id}/history?limit=5{after}"))
            .await)
        .await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 5);
        paged.extend(items.iter().map(|e| e["kind"].as_str().unwrap().to_owned()));
        match page["next_after"].as_i64() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        paged, kinds,
        "the pages add up to the whole history, in order"
    );
    problem(
        http.get(&format!("/v1/sagas/{id}/history?limit=0")).await,
        400,
        Some("limit"),
    )
    .await;

    let unknown = Uuid::now_v7();
    problem(http.get(&format!("/v1/sagas/{unknown}")).await, 404, None).await;
    for action in ["cancel", "retry"] {
        let response = http.post(&format!("/v1/sagas/{unknown}/{action}")).await;
        problem(response, 404, None).await;
    }
    http.rejects("/v1/sagas/not-a-uuid", "id").await;

    participants.stop().await;
    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sagas_are_listed_newest_first_filtered_and_paged_by_cursor() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    let participants = Participants::start(&env.kafka.cluster, succeed_unless_held());

    let held = http.start_saga(json!({ "hold": true })).await;
    let mut completed = Vec::new();
    for _ in 0..5 {
        completed.push(http.start_saga(order()).await);
    }
    for id in &completed {
        http.wait_for(*id, "COMPLETED").await;
    }
    let newest_first: Vec<String> = completed.iter().rev().map(Uuid::to_string).collect();

    let pages = http.pages("/v1/sagas?status=COMPLETED&limit=2").await;
    let sizes: Vec<_> = pages
        .iter()
        .map(|page| column([page], "id").len())
        .collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(
        column(&pages, "id"),
        newest_first,
        "no duplicates, none missed, newest first"
    );
    assert!(
        column(&pages, "status")
            .iter()
            .all(|status| status == "COMPLETED")
    );
    assert!(
        column(&pages, "definition")
            .iter()
            .all(|name| name == "order")
    );

    let running = ok(http.get("/v1/sagas?status=RUNNING").await).await;
    assert_eq!(column([&running], "id"), [held.to_string()]);
    let all = ok(http.get("/v1/sagas?definition=order").await).await;
    assert_eq!(column([&all], "id").len(), 6);
    assert_eq!(column([&all], "id")[0], newest_first[0]);
    assert!(all.get("next_cursor").is_none());
    let later = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let none = ok(http.get(&format!("/v1/sagas?created_after={later}")).await).await;
    assert!(column([&none], "id").is_empty());
    let none = ok(http.get("/v1/sagas?definition=coupon_use").await).await;
    assert!(column([&none], "id").is_empty());

    http.rejects("/v1/sagas?limit=0", "limit").await;
    http.rejects("/v1/sagas?limit=1000", "limit").await;
    http.rejects("/v1/sagas?status=BOGUS", "status").await;
    http.rejects("/v1/sagas?definition=nope", "definition")
        .await;
    let reversed =
        "/v1/sagas?created_after=2030-01-02T00:00:00Z&created_before=2030-01-01T00:00:00Z";
    http.rejects(reversed, "created_after").await;

    participants.stop().await;
    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_saga_is_cancelled_once_and_cannot_be_retried() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    let participants = Participants::start(&env.kafka.cluster, succeed_unless_held());
    let id = http.start_saga(json!({ "hold": true })).await;
    eventually("the charge command", async || {
        participants.names_for(id).len() == 2
    })
    .await;

    assert_eq!(http.refused(id, "retry").await, "RUNNING");
    let saga = accepted(http.post(&format!("/v1/sagas/{id}/cancel")).await).await;
    assert_eq!(saga["id"], id.to_string());
    assert!(
        saga["status"] == "COMPENSATING" || saga["status"] == "CANCELLED",
        "{saga}"
    );

    let saga = http.wait_for(id, "CANCELLED").await;
    // The silent charge may have happened, so it is refunded; shipment never started.
    assert_eq!(saga["steps"][1]["state"], "outcome_unknown");
    assert_eq!(saga["steps"][1]["compensation_state"], "compensated");
    assert_eq!(saga["steps"][2]["state"], "pending");
    assert_eq!(http.refused(id, "cancel").await, "CANCELLED");
    assert_eq!(http.refused(id, "retry").await, "CANCELLED");

    participants.stop().await;
    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_read_is_answered_when_the_saga_settles_and_past_the_bound_at_once() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start_with_vars(
        &env,
        Mode::Serve,
        Options::default(),
        &[("HTTP_MAX_WAITS", "1")],
    )
    .await;
    let api = support::http::Http::new(orchestrator.base());
    let participants = Participants::start(&env.kafka.cluster, succeed_unless_held());
    let engine = &orchestrator.running.engine;
    let id = engine
        .start("order", &json!({ "hold": true }), None)
        .await
        .unwrap()
        .id;
    eventually("the charge command", async || {
        participants.names_for(id).len() == 2
    })
    .await;

    let client = api.client.clone();
    let url = format!("{}/v1/sagas/{id}", api.base);
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let response = client
            .get(url)
            .header("Prefer", "respond-async, wait=25")
            .send()
            .await
            .unwrap();
        (response, started.elapsed())
    });
    eventually("the request to wait", async || {
        let metrics = api.get("/metrics").await.text().await.unwrap();
        metrics.contains("sagaflow_waiting_requests 1\n")
    })
    .await;
    // The bound (one) is reached: another request is answered at once with the current
    // state and without `Preference-Applied`.
    let refused = api.get(&format!("/v1/sagas/{id}?wait=25")).await;
    assert_eq!(refused.status(), StatusCode::OK);
    assert!(!refused.headers().contains_key("preference-applied"));
    assert!(!waiting.is_finished(), "the waiting request answered early");
    let saga = ok(api.get(&format!("/v1/sagas/{id}")).await).await;
    assert_eq!(saga["status"], "RUNNING");

    // The saga settles (cancelled: the silent charge is refunded): the waiter answers then,
    // woken through NOTIFY, not at the end of its 25 s.
    accepted(api.post_empty(&format!("/v1/sagas/{id}/cancel")).await).await;
    let (response, elapsed) = waiting.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["preference-applied"], "wait=25");
    let saga: Value = response.json().await.unwrap();
    assert_eq!(saga["status"], "CANCELLED", "{saga}");
    assert!(
        elapsed < std::time::Duration::from_secs(25),
        "answered at the deadline ({elapsed:?}), not when the saga settled"
    );

    // A settled saga answers a waiting read at once; a bad preference is a 400 naming it.
    let settled = api.get(&format!("/v1/sagas/{id}?wait=25")).await;
    assert_eq!(settled.headers()["preference-applied"], "wait=25");
    let bad = api
        .client
        .get(format!("{}/v1/sagas/{id}", api.base))
        .header("Prefer", "wait=soon")
        .send()
        .await
        .unwrap();
    problem(bad, 400, Some("Prefer")).await;
    problem(
        api.get(&format!("/v1/sagas/{id}?wait=26")).await,
        400,
        Some("wait"),
    )
    .await;

    // A start that asks to wait gets the settled saga (200), not the 202. (`order` is
    // started only through its front, which prices it.)
    let input = json!({ "campaign_id": Uuid::now_v7(), "user_id": Uuid::now_v7() });
    let started = api
        .client
        .post(format!("{}/v1/sagas", api.base))
        .header("Prefer", "wait=25")
        .json(&json!({ "definition": "coupon_use", "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::OK);
    assert_eq!(started.headers()["preference-applied"], "wait=25");
    let saga: Value = started.json().await.unwrap();
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["steps"].as_array().unwrap().len(), 2);

    participants.stop().await;
    orchestrator.stop().await;
}

/// Reads Server-Sent Events off a response: (id, event type, data) each.
struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Sse {
    fn new(response: Response) -> Self {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self) -> Option<(i64, String, Value)> {
        use futures_util::StreamExt as _;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|line| line.strip_prefix(name).map(|v| v.trim().to_owned()))
                };
                let Some(data) = field("data:") else {
                    continue; // a keep-alive comment
                };
                let id = field("id:").unwrap().parse().unwrap();
                return Some((
                    id,
                    field("event:").unwrap(),
                    serde_json::from_str(&data).unwrap(),
                ));
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("an event within the wait")?
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events up to (and including) the first of `kind`.
    async fn until(&mut self, kind: &str) -> Vec<(i64, String, Value)> {
        let mut seen = Vec::new();
        while let Some(event) = self.next().await {
            let done = event.1 == kind;
            seen.push(event);
            if done {
                return seen;
            }
        }
        panic!("the stream ended before {kind}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sagas_events_stream_as_they_happen_and_resume_after_the_last_seen() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    let participants = Participants::start(&env.kafka.cluster, succeed_unless_held());
    let sse = |path: String, last: Option<i64>| {
        let mut request = http.api.client.get(format!("{}{path}", http.api.base));
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last.to_string());
        }
        async move { Sse::new(request.send().await.unwrap()) }
    };
    // Every saga of one definition, from now on.
    let mut all = sse("/v1/saga-events?definition=order".to_owned(), None).await;
    let id = http.start_saga(json!({ "hold": true })).await;
    let mut one = sse(format!("/v1/sagas/{id}/events"), None).await;
    let start = one.until("saga.start").await;
    assert_eq!(start[0].2["saga_id"], id.to_string());
    assert_eq!(start[0].2["definition"], "order");
    let (first, _, _) = all.next().await.expect("the new saga's start");
    eventually("the charge command", async || {
        participants.names_for(id).len() == 2
    })
    .await;

    // The cancel arrives as events, the stream of a final saga ends after its last entry.
    accepted(http.post(&format!("/v1/sagas/{id}/cancel")).await).await;
    let events = one.until("saga.cancelled").await;
    let ids: Vec<i64> = events.iter().map(|(id, _, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    assert!(events.iter().any(|(_, kind, _)| kind == "cancel.requested"));
    assert_eq!(events.last().unwrap().2["status"], "CANCELLED");
    assert!(
        one.next().await.is_none(),
        "the stream ends once the saga is final"
    );

    // Resuming after an event sends exactly what came after it.
    let history = http.saga(id).await["history"].as_array().unwrap().clone();
    let middle = history[history.len() / 2]["id"].as_i64().unwrap();
    let mut resumed = sse(format!("/v1/sagas/{id}/events"), Some(middle)).await;
    let mut rest = Vec::new();
    while let Some((entry, _, _)) = resumed.next().await {
        rest.push(entry);
    }
    let expected: Vec<i64> = history
        .iter()
        .map(|entry| entry["id"].as_i64().unwrap())
        .filter(|entry| *entry > middle)
        .collect();
    assert_eq!(rest, expected);
    let mut later = vec![first];
    while later.last() != Some(ids.last().unwrap()) {
        later.push(all.next().await.unwrap().0);
    }

    let bad = http
        .api
        .client
        .get(format!("{}/v1/sagas/{id}/events", http.api.base))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    problem(bad, 400, Some("Last-Event-ID")).await;
    problem(
        http.get(&format!("/v1/sagas/{}/events", Uuid::now_v7()))
            .await,
        404,
        None,
    )
    .await;
    problem(
        http.get("/v1/saga-events?status=DONE").await,
        400,
        Some("status"),
    )
    .await;

    participants.stop().await;
    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saga_parked_as_failed_is_retried_over_http_until_compensated() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    let refund_fails = script(|command| match command.name.as_str() {
        "shipment.prepare" => Reaction::Reply(Outcome::Rejected {
            reason: "address not serviceable".into(),
        }),
        "payment.refund" => Reaction::Reply(Outcome::Failed {
            reason: "bank unavailable".into(),
        }),
        _ => succeed(),
    });
    let participants = Participants::start(&env.kafka.cluster, refund_fails);
    let id = http.start_saga(order()).await;

    // Compensation backoff grows to 30 s: move the clock past it while a retry waits, never
    // while an attempt is in flight (that would time the attempt out instead).
    let clock = http.orchestrator.running.engine.clock().clone();
    wait_for_status_with(&env, id, "FAILED", |row| skip_retry_wait(&clock, row)).await;
    let saga = http.saga(id).await;
    assert_eq!(saga["status"], "FAILED");
    assert!(
        saga["failure"]
            .as_str()
            .unwrap()
            .contains("bank unavailable"),
        "{saga}"
    );
    let refund = &saga["steps"][1];
    assert_eq!(refund["compensation_state"], "exhausted");
    assert_eq!(refund["compensation_attempts"], 8);
    assert_eq!(refund["last_error"], "bank unavailable");
    assert_eq!(http.refused(id, "cancel").await, "FAILED");

    participants.set_script(script(|_| succeed()));
    let saga = accepted(http.post(&format!("/v1/sagas/{id}/retry")).await).await;
    assert_eq!(saga["id"], id.to_string());
    assert_ne!(saga["status"], "FAILED");
    let saga = http.wait_for(id, "COMPENSATED").await;
    assert_eq!(saga["steps"][0]["compensation_state"], "compensated");
    assert_eq!(saga["steps"][1]["compensation_attempts"], 9);

    participants.stop().await;
    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_are_filtered_by_saga_and_kind_and_paged() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    // No notification worker runs in serve mode: these rows are all there is.
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let events = [
        (first, "saga.started", None),
        (second, "saga.started", None),
        (first, "step.dispatched", Some(0)),
        (first, "step.dispatched", Some(1)),
        (first, "step.dispatched", Some(2)),
        (first, "saga.completed", None),
    ];
    let rows: Vec<_> = events
        .iter()
        .map(|(saga_id, kind, step)| {
            (
                notifications::event_id.eq(Uuid::now_v7()),
                notifications::saga_id.eq(*saga_id),
                notifications::saga.eq("order"),
                notifications::kind.eq(*kind),
                notifications::step.eq(*step),
                notifications::message.eq(format!("{kind} of {saga_id}")),
                notifications::occurred_at.eq(Utc::now()),
            )
        })
        .collect();
    let mut conn = env.db.pool.get().await.unwrap();
    diesel::insert_into(notifications::table)
        .values(&rows)
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    let of_first = ok(http
        .get(&format!("/v1/notifications?saga_id={first}"))
        .await)
    .await;
    let newest_first = [
        "saga.completed",
        "step.dispatched",
        "step.dispatched",
        "step.dispatched",
        "saga.started",
    ];
    assert_eq!(column([&of_first], "kind"), newest_first);
    let newest = &of_first["items"][0];
    assert_eq!(newest["saga_id"], first.to_string());
    assert_eq!(newest["saga"], "order");
    assert_eq!(newest["message"], format!("saga.completed of {first}"));
    assert!(newest.get("step").is_none() && newest["recorded_at"].is_string());

    let dispatched = format!("/v1/notifications?saga_id={first}&kind=step.dispatched");
    let dispatched = ok(http.get(&dispatched).await).await;
    assert_eq!(column([&dispatched], "step"), ["2", "1", "0"]);
    let started = ok(http.get("/v1/notifications?kind=saga.started").await).await;
    assert_eq!(
        column([&started], "saga_id"),
        [second.to_string(), first.to_string()]
    );

    let pages = http
        .pages(&format!("/v1/notifications?saga_id={first}&limit=2"))
        .await;
    assert_eq!(pages.len(), 3);
    assert_eq!(
        column(&pages, "event_id"),
        column([&of_first], "event_id"),
        "in order, no duplicates"
    );

    http.rejects("/v1/notifications?kind=saga.exploded", "kind")
        .await;
    http.rejects("/v1/notifications?limit=201", "limit").await;

    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_expose_engine_counters_and_database_gauges() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));
    let id = http.start_saga(order()).await;
    http.wait_for(id, "COMPLETED").await;
    // Consumer lag and the database gauges are read in the background: wait for a read
    // of the reply group and one taken after the saga finished.
    eventually(
        "the reply consumer's lag and the finished saga in /metrics",
        async || {
            let body = http.get("/metrics").await.text().await.unwrap();
            body.contains("sagaflow_consumer_lag{consumer=\"orchestrator\",partition=\"0\"}")
                && body.contains("sagaflow_sagas{status=\"RUNNING\"} 0")
        },
    )
    .await;

    let response = http.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let body = response.text().await.unwrap();
    let lines: Vec<&str> = body.lines().collect();
    for expected in [
        "sagaflow_sagas_started_total 1",
        "sagaflow_sagas_completed_total 1",
        "sagaflow_replies_total 3",
        "# TYPE sagaflow_outbox_backlog gauge",
        "# TYPE sagaflow_outbox_oldest_age_seconds gauge",
        "# TYPE sagaflow_sagas gauge",
        "sagaflow_sagas{status=\"RUNNING\"} 0",
        "sagaflow_sagas{status=\"FAILED\"} 0",
        "# TYPE sagaflow_step_latency_seconds histogram",
        "sagaflow_step_latency_seconds_count 3",
        "# EOF",
    ] {
        assert!(
            lines.contains(&expected),
            "{expected} missing from:\n{body}"
        );
    }
    // Every series the provisioned Grafana dashboard queries exists here, or is a worker's
    // (the participants here are the test's own; shop/tests/metrics.rs checks those).
    for name in platform::testkit::dashboard_series() {
        let workers = shop::metrics::FAMILIES
            .iter()
            .any(|family| name.starts_with(family));
        assert!(
            body.contains(&name) || workers,
            "the dashboard queries {name}, which no /metrics exports"
        );
    }
    for prefix in [
        "sagaflow_outbox_backlog ",
        "sagaflow_db_pool_connections{pool=\"api\",state=\"in_use\"} ",
        "sagaflow_db_pool_connections{pool=\"engine\",state=\"waiting\"} ",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "{prefix}: {body}"
        );
    }

    participants.stop().await;
    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn saga_definitions_list_each_step_with_its_role_compensation_and_budgets() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    let definitions = ok(http.get("/v1/saga-definitions").await).await;
    let order = definitions
        .as_array()
        .unwrap()
        .iter()
        .find(|definition| definition["name"] == "order")
        .expect("the order definition");
    let roles: Vec<&str> = order["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["inventory", "payment", "shipment"]);
    let reserve = &order["steps"][0];
    assert_eq!(reserve["command"], "inventory.reserve");
    assert_eq!(reserve["compensation"], "inventory.release");
    assert!(reserve["retry"]["max_attempts"].as_u64().unwrap() >= 1);
    assert!(
        reserve["deadline_ms"].as_u64().unwrap() > reserve["attempt_timeout_ms"].as_u64().unwrap()
    );
    assert!(
        definitions
            .as_array()
            .unwrap()
            .iter()
            .any(|definition| definition["name"] == "coupon_use")
    );
    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_resolves_a_failed_saga_by_hand_with_a_reason() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    let refund_fails = script(|command| match command.name.as_str() {
        "shipment.prepare" => Reaction::Reply(Outcome::Rejected {
            reason: "address not serviceable".into(),
        }),
        "payment.refund" => Reaction::Reply(Outcome::Failed {
            reason: "card closed".into(),
        }),
        _ => succeed(),
    });
    let participants = Participants::start(&env.kafka.cluster, refund_fails);
    let engine = &http.orchestrator.running.engine;
    let payload = json!({ "campaign_id": Uuid::nil(), "user_id": Uuid::nil() });
    let completed = engine.start("coupon_use", &payload, None).await.unwrap().id;
    let id = http.start_saga(order()).await;
    let clock = http.orchestrator.running.engine.clock().clone();
    wait_for_status_with(&env, id, "FAILED", |row| skip_retry_wait(&clock, row)).await;

    let resolve = format!("/v1/sagas/{id}/resolve");
    let blank = http.api.post(&resolve, &json!({ "reason": "  " })).await;
    problem(blank, 400, Some("reason")).await;
    problem(
        http.api.post(&resolve, &json!({})).await,
        400,
        Some("reason"),
    )
    .await;
    let why = json!({ "reason": "refunded by bank transfer, ticket 4711" });
    let saga = accepted(http.api.post(&resolve, &why).await).await;
    assert_eq!(saga["status"], "RESOLVED");
    let saga = http.saga(id).await;
    let entry = saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["kind"] == "resolve.requested")
        .cloned()
        .expect("resolve.requested in the history");
    assert_eq!(
        entry["detail"]["reason"],
        "refunded by bank transfer, ticket 4711"
    );
    assert_eq!(entry["detail"]["actor"], "anonymous");
    let kinds: Vec<&str> = saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"saga.resolved"), "{kinds:?}");
    // Final: nothing moves it any more, and only a FAILED saga can be resolved.
    assert_eq!(http.refused(id, "retry").await, "RESOLVED");
    assert_eq!(
        problem(http.api.post(&resolve, &why).await, 409, None).await["current_status"],
        "RESOLVED"
    );
    http.wait_for(completed, "COMPLETED").await;
    let other = format!("/v1/sagas/{completed}/resolve");
    assert_eq!(
        problem(http.api.post(&other, &why).await, 409, None).await["current_status"],
        "COMPLETED"
    );

    participants.stop().await;
    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_cancel_job_cancels_every_running_saga_it_names_and_reports_progress() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    // No participant answers: the sagas wait on their first step.
    let mut running = Vec::new();
    for _ in 0..3 {
        running.push(http.start_saga(order()).await.to_string());
    }
    let job = json!({ "action": "cancel", "definition": "order", "reason": "supplier outage" });
    let created = http.api.post_keyed("/v1/bulk-jobs", "outage-1", &job).await;
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let created = accepted(created).await;
    assert_eq!(created["total"], 3);
    assert_eq!(
        created["filter"]["status"], "RUNNING",
        "cancel names RUNNING sagas only"
    );
    // Safe to repeat: the same key answers with the same job.
    let again = http.api.post_keyed("/v1/bulk-jobs", "outage-1", &job).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(accepted(again).await["id"], created["id"]);

    let mut progress = Value::Null;
    eventually("the bulk job to finish", async || {
        progress = ok(http.get(&location).await).await;
        progress["finished_at"].is_string()
    })
    .await;
    assert_eq!(progress["done"], 3, "{progress}");
    assert_eq!(progress["pending"], 0);
    for id in &running {
        let saga = http.saga(id.parse().unwrap()).await;
        assert_ne!(saga["status"], "RUNNING", "{saga}");
        let entry = saga["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["kind"] == "cancel.requested")
            .cloned()
            .expect("cancelled by the job");
        assert_eq!(entry["detail"]["reason"], "supplier outage");
    }
    let listed = ok(http.get("/v1/bulk-jobs").await).await;
    assert_eq!(listed[0]["id"], created["id"]);
    // A definition that is not registered is a reference to nothing: 422.
    let bad = json!({ "action": "cancel", "definition": "nope" });
    problem(
        http.api.post("/v1/bulk-jobs", &bad).await,
        422,
        Some("definition"),
    )
    .await;
    problem(
        http.get(&format!("/v1/bulk-jobs/{}", Uuid::now_v7())).await,
        404,
        None,
    )
    .await;
    http.orchestrator.stop().await;
}

/// The bulk loop fails between a saga's action and the item's outcome (a trigger makes the
/// outcome's write fail, once): neither is kept, the item stays pending, and the next round
/// acts once. Had the action committed on its own, the retry would find the saga cancelled
/// already and report the item `skipped`.
#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_action_and_its_outcome_commit_together_and_are_never_repeated() {
    let env = TestEnv::start().await;
    let mut conn = env.db.pool.get().await.unwrap();
    for statement in [
        // A sequence, because a sequence's step survives the rollback of the failure.
        "CREATE SEQUENCE outcome_writes",
        "CREATE FUNCTION fail_outcome_once() RETURNS trigger AS $$ BEGIN \
           IF nextval('outcome_writes') = 1 THEN \
             RAISE EXCEPTION 'crash between the action and its outcome'; \
           END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER fail_outcome BEFORE UPDATE ON bulk_job_items \
         FOR EACH ROW EXECUTE FUNCTION fail_outcome_once()",
    ] {
        diesel::sql_query(statement)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let http = Http::start(&env).await;
    let saga = http.start_saga(order()).await;
    let job = json!({ "action": "cancel", "definition": "order", "reason": "outage" });
    let created = http.api.post("/v1/bulk-jobs", &job).await;
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    accepted(created).await;
    let mut progress = Value::Null;
    eventually("the bulk job to finish", async || {
        progress = ok(http.get(&location).await).await;
        progress["finished_at"].is_string()
    })
    .await;
    let writes: i64 = {
        use diesel::sql_types::BigInt;
        #[derive(diesel::QueryableByName)]
        struct Written {
            #[diesel(sql_type = BigInt)]
            last_value: i64,
        }
        diesel::sql_query("SELECT last_value FROM outcome_writes")
            .get_result::<Written>(&mut conn)
            .await
            .unwrap()
            .last_value
    };
    assert_eq!(writes, 2, "the first outcome write failed, the second held");
    assert_eq!(progress["done"], 1, "{progress}");
    assert_eq!(
        progress["skipped"], 0,
        "the action was not repeated: {progress}"
    );
    let history = http.saga(saga).await["history"].clone();
    let cancels = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["kind"] == "cancel.requested")
        .count();
    assert_eq!(cancels, 1, "{history}");
    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_lag_shows_commands_no_worker_took() {
    let env = TestEnv::start().await;
    let http = Http::start(&env).await;
    // No inventory worker runs: the saga's first command waits in its topic.
    http.start_saga(order()).await;
    let mut lag = Value::Null;
    eventually("the inventory command to show as lag", async || {
        lag = ok(http.get("/v1/consumer-lag").await).await;
        lag.as_array()
            .unwrap()
            .iter()
            .any(|group| group["consumer"] == "inventory" && group["lag"].as_i64() >= Some(1))
    })
    .await;
    let consumers: Vec<&str> = lag
        .as_array()
        .unwrap()
        .iter()
        .map(|group| group["consumer"].as_str().unwrap())
        .collect();
    for expected in [
        "inventory",
        "payment",
        "notification",
        "orchestrator",
        "dead-letters",
    ] {
        assert!(consumers.contains(&expected), "{expected} missing: {lag}");
    }
    let payment = lag
        .as_array()
        .unwrap()
        .iter()
        .find(|group| group["consumer"] == "payment")
        .unwrap();
    assert_eq!(
        payment["lag"], 0,
        "nothing was sent to payment yet: {payment}"
    );
    http.orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_says_degraded_when_the_outbox_is_stuck() {
    let env = TestEnv::start().await;
    // An orchestrator whose relay never publishes: its outbox only grows.
    let options = Options {
        relay_enabled: false,
        ..Options::default()
    };
    let orchestrator = Orchestrator::start(&env, options).await;
    let http = Http {
        api: support::http::Http::new(orchestrator.base()),
        orchestrator,
    };
    let ready = ok(http.get("/readyz").await).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    http.start_saga(order()).await;
    let mut conn = env.db.pool.get().await.unwrap();
    diesel::sql_query("UPDATE outbox SET created_at = now() - interval '1 minute'")
        .execute(&mut conn)
        .await
        .unwrap();
    // Readiness answers from a snapshot taken every second: wait for the next one.
    let degraded = loop {
        let answer = ok(http.get("/readyz").await).await;
        if answer["status"] == "degraded" {
            break answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let outbox = degraded["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "outbox")
        .unwrap();
    assert_eq!(outbox["state"], "degraded", "{outbox}");
    http.orchestrator.stop().await;
}
