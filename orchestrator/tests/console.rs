//! The operator console in a real (headless) Chromium, against the app in `serve` mode with
//! access control on: an operator pastes a key, sees the overview, finds a saga in the
//! list, reads its step diagram and attempt timeline, and cancels it with a reason; a
//! client key is refused. Needs chromium and chromedriver (`.ci/run` installs them); on a
//! machine without them the test says so and passes only outside CI.

mod support;

use orchestrator::app::{Mode, Options};
use platform::testkit::TestEnv;
use reqwest::StatusCode;
use serde_json::json;
use support::browser::Browser;
use support::http::{Http, answer};
use support::*;

const KEYS: &str = "ops:operator:ops-secret-00000000003,shop:client:shop-secret-0000000001";

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_finds_a_saga_reads_its_steps_and_cancels_it_with_a_reason() {
    let Some(browser) = Browser::start().await else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the console test: install chromium and chromium-driver"
        );
        eprintln!(
            "console test skipped: no chromium/chromedriver (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start_with_vars(
        &env,
        Mode::Serve,
        Options::default(),
        &[("AUTH", "on"), ("API_KEYS", KEYS)],
    )
    .await;
    let base = orchestrator.base();
    // No participant runs: the saga waits on its first step until an operator acts.
    let payload =
        json!({ "user_id": uuid::Uuid::nil(), "lines": [{ "sku": "MUG-01", "quantity": 1 }] });
    let saga = orchestrator
        .running
        .engine
        .start("order", &payload, None)
        .await
        .unwrap()
        .id;

    browser.goto(&format!("{base}/ui")).await;
    browser.wait_for_text("#notice", "needs an API key").await;
    browser.type_into("#key", "ops-secret-00000000003").await;
    browser.click("#key-form button[type=submit]").await;
    let overview = browser.wait_for_text("#by-status", "order").await;
    assert!(overview.contains("RUNNING"), "{overview}");
    browser.wait_for_text("#lag", "inventory").await;

    browser
        .goto(&format!("{base}/ui#/sagas?status=RUNNING"))
        .await;
    browser.wait_for_text("#sagas", &saga.to_string()).await;
    browser.click(&format!("a[href='#/sagas/{saga}']")).await;
    browser.wait_for_text("#diagram", "reserve_stock").await;
    let first_step = browser
        .run("return document.querySelector('#diagram .step').className")
        .await;
    assert_eq!(
        first_step, "step s-in_flight",
        "the first step is drawn in flight"
    );
    browser
        .wait_for_text("#timeline", "reserve_stock forward attempt 1")
        .await;
    let buttons = browser
        .run("return [document.getElementById('retry').disabled, document.getElementById('cancel').disabled]")
        .await;
    assert_eq!(
        buttons,
        json!([true, false]),
        "only cancel fits a RUNNING saga"
    );

    browser.click("#cancel").await;
    browser.type_into("#reason", "customer asked to stop").await;
    browser.click("#confirm-yes").await;
    browser.wait_for_text("#history", "cancel.requested").await;

    let ops = Http::with_key(base.clone(), "ops-secret-00000000003");
    let detail = answer(ops.get(&format!("/v1/sagas/{saga}")).await, StatusCode::OK).await;
    let entry = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["kind"] == "cancel.requested")
        .cloned()
        .expect("the cancel is in the history");
    assert_eq!(entry["detail"]["actor"], "ops");
    assert_eq!(entry["detail"]["reason"], "customer asked to stop");

    // The page follows the saga's events: a cancel sent by someone else shows up on the
    // open page without a reload (the page polls no more; a reload would clear the mark).
    let watched = orchestrator
        .running
        .engine
        .start("order", &payload, None)
        .await
        .unwrap()
        .id;
    browser.goto(&format!("{base}/ui#/sagas/{watched}")).await;
    browser
        .wait_for_text("#timeline", "reserve_stock forward attempt 1")
        .await;
    browser
        .run("window.sagaflowMark = 'still here'; return null")
        .await;
    let cancelled = ops
        .post(
            &format!("/v1/sagas/{watched}/cancel"),
            &json!({ "reason": "cancelled elsewhere" }),
        )
        .await;
    assert_eq!(cancelled.status(), StatusCode::ACCEPTED);
    browser
        .wait_for_text("#history", "cancelled elsewhere")
        .await;
    assert_eq!(
        browser.run("return window.sagaflowMark || null").await,
        json!("still here"),
        "the page was redrawn in place, not reloaded"
    );

    // A dead letter: listed with its origin, discarded with a reason.
    let producer = env.kafka.cluster.producer().unwrap();
    let replies = env.kafka.cluster.topics().replies();
    producer
        .send(&replies, "poison", b"not json", &[])
        .await
        .unwrap();
    browser.goto(&format!("{base}/ui#/dead-letters")).await;
    let mut listed = String::new();
    eventually("the dead letter to be listed", async || {
        browser.goto(&format!("{base}/ui#/sagas")).await;
        browser.goto(&format!("{base}/ui#/dead-letters")).await;
        listed = browser.text("#dead-letters").await;
        listed.contains("not json")
    })
    .await;
    assert!(listed.contains(&replies), "{listed}");
    browser.click("input[name=letter]").await;
    browser
        .type_into("#letter-reason", "garbage from a test")
        .await;
    browser.click("#discard").await;
    browser.wait_for_text("#notice", "discard: 1 done").await;

    // A bulk cancel of every RUNNING order saga (one more is started for it).
    let next = orchestrator
        .running
        .engine
        .start("order", &payload, None)
        .await
        .unwrap()
        .id;
    browser.goto(&format!("{base}/ui#/bulk")).await;
    browser
        .type_into("#bulk-form input[name=reason]", "supplier outage")
        .await;
    browser.click("#bulk-form button[type=submit]").await;
    browser.accept_dialog().await;
    browser.wait_for_text("#notice", "1 saga(s)").await;
    eventually("the bulk job to cancel the saga", async || {
        let saga = answer(ops.get(&format!("/v1/sagas/{next}")).await, StatusCode::OK).await;
        saga["status"] != "RUNNING"
    })
    .await;

    browser.goto(&format!("{base}/ui#/definitions")).await;
    browser.wait_for_text("main", "coupon_use").await;

    // A client's key gets no operator view.
    browser.click("#forget-key").await;
    browser.type_into("#key", "shop-secret-0000000001").await;
    browser.click("#key-form button[type=submit]").await;
    browser.goto(&format!("{base}/ui#/sagas")).await;
    browser.wait_for_text("#notice", "may not do that").await;

    browser.quit().await;
    orchestrator.stop().await;
}

/// Flows as data on the console: a definition's versions (the default marked), its parallel
/// stage drawn as one group, its compensation paths; and on a saga waiting for a signal, the
/// signal sent from the page, after which the saga completes.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_sees_versions_parallel_stages_and_paths_and_sends_a_signal() {
    let Some(browser) = Browser::start().await else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the console test: install chromium and chromium-driver"
        );
        eprintln!("console test skipped: no chromium/chromedriver");
        return;
    };
    let env = TestEnv::start().await;
    let keys = "ops:operator+admin:ops-secret-00000000003";
    let orchestrator = Orchestrator::start_with_vars(
        &env,
        Mode::Serve,
        Options::default(),
        &[("AUTH", "on"), ("API_KEYS", keys)],
    )
    .await;
    let base = orchestrator.base();
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));
    let ops = Http::with_key(base.clone(), "ops-secret-00000000003");
    let pickup = |version: u32| {
        json!({
            "name": "pickup", "version": version, "input": { "type": "object" },
            "steps": [
                { "name": "hold", "kind": "parallel", "tasks": [
                    { "name": "reserve_stock", "kind": "task", "role": "inventory",
                      "command": "inventory.reserve", "compensation": "inventory.release" },
                    { "name": "charge_payment", "kind": "task", "role": "payment",
                      "command": "payment.charge", "compensation": "payment.refund" }
                ]},
                { "name": "picked_up", "kind": "signal", "scope": "operator",
                  "timeout_ms": 600_000 * u64::from(version), "pivot": true }
            ]
        })
    };
    for version in [1, 2] {
        let registered = ops.post("/v1/saga-definitions", &pickup(version)).await;
        answer(registered, StatusCode::CREATED).await;
    }
    let body = json!({ "definition": "pickup", "input": {} });
    let started = answer(ops.post("/v1/sagas", &body).await, StatusCode::ACCEPTED).await;
    let saga = started["saga_id"].as_str().unwrap().to_owned();

    browser.goto(&format!("{base}/ui")).await;
    browser.type_into("#key", "ops-secret-00000000003").await;
    browser.click("#key-form button[type=submit]").await;
    // Straight on, while the overview may still be loading: it must not draw over this.
    browser.goto(&format!("{base}/ui#/definitions")).await;
    let shown = browser
        .wait_for_text("[data-definition=pickup]", "v2 (default)")
        .await;
    assert!(shown.contains("v1 by ops"), "{shown}");
    // The shop retired `order` version 1 (its input carried a total): the console says so.
    let order = browser
        .wait_for_text("[data-definition=order]", "v2 (default)")
        .await;
    assert!(order.contains("v1 (retired) by built-in"), "{order}");
    let group = browser
        .run("return document.querySelectorAll('[data-definition=pickup] .stage.parallel .step').length")
        .await;
    assert_eq!(
        group,
        json!(2),
        "the parallel stage is drawn as one group of two"
    );
    let paths = browser.text("[data-paths=pickup]").await;
    assert!(
        paths.contains("charge_payment (payment.refund) → reserve_stock (inventory.release)"),
        "{paths}"
    );

    browser.goto(&format!("{base}/ui#/sagas/{saga}")).await;
    browser.wait_for_text("#diagram", "picked_up").await;
    // The engine may take longer than the browser's wait on a loaded machine (the embedded
    // broker's group joins): once the saga waits for the signal, the open page must show
    // the form without a reload, from its event stream.
    let id = saga.parse().unwrap();
    eventually("the saga waits for its signal", async || {
        load(&env, id).await.state["steps"][2]["forward"] == "in_flight"
    })
    .await;
    browser
        .wait_for_text("#signal-picked_up", "Send picked_up")
        .await;
    browser.click("#signal-picked_up button").await;
    browser
        .wait_for_text("#notice", "signal picked_up sent")
        .await;
    let row = wait_for_status(&env, id, "COMPLETED").await;
    assert_eq!(row.state["steps"][2]["output"], json!({}));
    assert_eq!(row.definition_version, 2);

    browser.quit().await;
    participants.stop().await;
    orchestrator.stop().await;
}
