//! Flows as versioned data, end to end over the API: a definition registered without a
//! restart (checked, with faults by JSON pointer), started with `POST /v1/sagas`, running a
//! parallel stage, a signal, a durable wait and a forward-only step served by a role no
//! Rust code knows; versions pinned per saga; a version in use kept.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use orchestrator::app::Options;
use platform::contract::{Direction, Outcome};
use platform::testkit::TestEnv;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::http::{Http, answer, problem};
use support::*;
use uuid::Uuid;

/// Click-and-collect: hold stock and charge together, wait for the pickup (the pivot),
/// then a short settling wait and a loyalty award that is retried until it lands.
fn click_and_collect(version: u32, timeout_ms: u64) -> Value {
    json!({
        "name": "click_and_collect",
        "version": version,
        "description": "Reserve and charge together, wait for the pickup, then award points.",
        "input": {
            "type": "object",
            "required": ["order_id", "user_id"],
            "properties": {
                "order_id": { "type": "string" },
                "user_id": { "type": "string" },
                "points": { "type": "integer", "minimum": 0 }
            }
        },
        "steps": [
            { "name": "hold", "kind": "parallel", "tasks": [
                { "name": "reserve_stock", "kind": "task", "role": "inventory",
                  "command": "inventory.reserve", "compensation": "inventory.release" },
                { "name": "charge_payment", "kind": "task", "role": "payment",
                  "command": "payment.charge", "compensation": "payment.refund" }
            ]},
            { "name": "picked_up", "kind": "signal", "scope": "operator",
              "timeout_ms": timeout_ms, "pivot": true },
            { "name": "settle", "kind": "wait", "duration_ms": 300 },
            { "name": "award_points", "kind": "task", "role": "loyalty",
              "command": "loyalty.award", "forward_only": true,
              "retry": { "initial_backoff_ms": 50, "max_backoff_ms": 200 } }
        ]
    })
}

/// The JSON pointers of a refused document's faults.
fn fault_pointers(refused: &Value) -> Vec<&str> {
    refused["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["pointer"].as_str().unwrap())
        .collect()
}

fn input() -> Value {
    json!({ "order_id": Uuid::now_v7(), "user_id": Uuid::now_v7(), "points": 12 })
}

async fn register(http: &Http, document: &Value, status: StatusCode) -> Value {
    answer(http.post("/v1/saga-definitions", document).await, status).await
}

async fn start(http: &Http, body: &Value) -> Uuid {
    let started = answer(http.post("/v1/sagas", body).await, StatusCode::ACCEPTED).await;
    started["saga_id"].as_str().unwrap().parse().unwrap()
}

async fn saga(http: &Http, id: Uuid) -> Value {
    answer(http.get(&format!("/v1/sagas/{id}")).await, StatusCode::OK).await
}

async fn step_state(http: &Http, id: Uuid, step: &str) -> String {
    let saga = saga(http, id).await;
    let steps = saga["steps"].as_array().cloned().unwrap_or_default();
    steps
        .iter()
        .find(|s| s["name"] == step)
        .map(|s| s["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flow_registered_over_the_api_runs_parallel_steps_a_signal_a_wait_and_a_new_role() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let http = Http::new(orchestrator.base());

    // Checked before it is stored: every fault, each with its JSON pointer.
    let mut broken = click_and_collect(1, 60_000);
    broken["steps"][0]["tasks"][1]["compensation"] = Value::Null;
    broken["steps"][3]["forward_only"] = json!(false);
    broken["input"] = json!({ "type": "colour" });
    let refused = problem(http.post("/v1/saga-definitions", &broken).await, 400, None).await;
    let pointers = fault_pointers(&refused);
    assert_eq!(pointers, ["/steps/0/tasks/1/compensation"], "{refused}");
    broken["steps"][0]["tasks"][1]["compensation"] = json!("payment.refund");
    let refused = problem(http.post("/v1/saga-definitions", &broken).await, 400, None).await;
    let pointers = fault_pointers(&refused);
    assert_eq!(pointers, ["/input", "/steps/3/forward_only"], "{refused}");

    let document = click_and_collect(1, 60_000);
    let stored = register(&http, &document, StatusCode::CREATED).await;
    assert_eq!(stored["version"], 1);
    assert_eq!(stored["default"], true);
    register(&http, &document, StatusCode::OK).await;
    let mut changed = document.clone();
    changed["description"] = json!("another shape under the same version");
    problem(http.post("/v1/saga-definitions", &changed).await, 409, None).await;

    // The compensation paths the console draws, from the engine's own state machine.
    let paths = answer(
        http.get("/v1/saga-definitions/click_and_collect/versions/1/paths")
            .await,
        StatusCode::OK,
    )
    .await;
    let failing: Vec<(&str, &str)> = paths
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["step"].as_str().unwrap(), p["failure"].as_str().unwrap()))
        .collect();
    assert_eq!(
        failing,
        [
            ("reserve_stock", "rejected"),
            ("charge_payment", "rejected"),
            ("picked_up", "timed_out")
        ]
    );

    // The live Kafka contract names the new role and its command; the snapshot does not.
    let contract = answer(http.get("/asyncapi.json").await, StatusCode::OK).await;
    let roles = &contract["channels"]["commands"]["parameters"]["role"]["enum"];
    assert!(
        roles.as_array().unwrap().contains(&json!("loyalty")),
        "{roles}"
    );
    let names = &contract["components"]["schemas"]["CommandName"]["enum"];
    assert!(
        names.as_array().unwrap().contains(&json!("loyalty.award")),
        "{names}"
    );
    let snapshot = include_str!("../../openapi/asyncapi.json");
    assert!(!snapshot.contains("loyalty"));

    // `loyalty` is a role no Rust code names: registering the flow created its topic.
    let awards = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&awards);
    let participants = Participants::start_roles(
        &env.kafka.cluster,
        &["inventory", "payment", "loyalty"],
        script(move |command| {
            // The award fails twice: a forward-only step is retried until it lands.
            if command.name == "loyalty.award" && counted.fetch_add(1, Ordering::SeqCst) < 2 {
                return Reaction::Reply(Outcome::Rejected {
                    reason: "loyalty service down".into(),
                });
            }
            succeed()
        }),
    );

    let bad =
        json!({ "definition": "click_and_collect", "input": { "order_id": 7, "user_id": "b" } });
    problem(
        http.post("/v1/sagas", &bad).await,
        400,
        Some("input/order_id"),
    )
    .await;
    let bad = json!({ "definition": "click_and_collect", "input": { "order_id": "a" } });
    let missing = problem(http.post("/v1/sagas", &bad).await, 400, Some("input")).await;
    assert!(
        missing["detail"].as_str().unwrap().contains("user_id"),
        "{missing}"
    );
    let bad = json!({ "definition": "click_and_collect", "input": { "order_id": "a", "user_id": "b", "points": -1 } });
    problem(
        http.post("/v1/sagas", &bad).await,
        400,
        Some("input/points"),
    )
    .await;
    let unknown = json!({ "definition": "no_such_flow", "input": {} });
    problem(
        http.post("/v1/sagas", &unknown).await,
        422,
        Some("definition"),
    )
    .await;

    let body = json!({ "definition": "click_and_collect", "input": input() });
    let first = answer(
        http.post_keyed("/v1/sagas", "pickup-1", &body).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let again = http.post_keyed("/v1/sagas", "pickup-1", &body).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(answer(again, StatusCode::ACCEPTED).await, first);
    let id: Uuid = first["saga_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(first["version"], 1);

    eventually("the saga waits for the pickup", async || {
        step_state(&http, id, "picked_up").await == "in_flight"
    })
    .await;
    // Both tasks of the parallel stage went out before either was answered: each was
    // sent at attempt 1 with the other's output absent.
    let sent = participants.deliveries_for(id);
    let hold: Vec<&str> = sent.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(hold.len(), 2, "{hold:?}");
    assert!(hold.contains(&"inventory.reserve") && hold.contains(&"payment.charge"));
    assert!(
        sent.iter().all(|c| c.payload.outputs.is_empty()),
        "{sent:?}"
    );

    // A signal the definition does not name is refused.
    let path = format!("/v1/sagas/{id}/signals/no_such_signal");
    problem(http.post(&path, &json!({})).await, 404, None).await;
    let path = format!("/v1/sagas/{id}/signals/picked_up");
    let taken = answer(
        http.post(&path, &json!({ "desk": "B2" })).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(taken["signal"], "picked_up");
    // Taken once: the second is a conflict.
    problem(http.post(&path, &json!({ "desk": "B2" })).await, 409, None).await;

    let row = wait_for_status(&env, id, "COMPLETED").await;
    assert_eq!(row.definition_version, 1);
    assert_eq!(
        awards.load(Ordering::SeqCst),
        3,
        "two refusals, then the award"
    );
    let award = participants
        .deliveries_for(id)
        .into_iter()
        .rfind(|c| c.name == "loyalty.award")
        .unwrap();
    let picked_up = &award.payload.outputs["picked_up"];
    assert_eq!(picked_up.output, json!({ "desk": "B2" }));
    assert_eq!(
        picked_up.by,
        platform::contract::Producer::Signal {
            name: "picked_up".into()
        },
        "a signal's body says it came from a signal"
    );
    assert_eq!(
        award.payload.outputs["settle"].by,
        platform::contract::Producer::Wait
    );
    assert!(
        award
            .payload
            .output_from("payment", "payment.charge")
            .is_ok(),
        "the award finds the charge it is derived from"
    );
    assert!(
        participants
            .deliveries_for(id)
            .iter()
            .all(|c| c.direction == Direction::Forward),
        "nothing was undone"
    );
    participants.stop().await;
    orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_pickup_in_time_undoes_both_parallel_steps_and_a_version_in_use_stays() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let http = Http::new(orchestrator.base());
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));

    // Version 1 waits long for the pickup; version 2 gives up after a second.
    register(&http, &click_and_collect(1, 600_000), StatusCode::CREATED).await;
    let waiting = start(
        &http,
        &json!({ "definition": "click_and_collect", "input": input() }),
    )
    .await;
    eventually("the first saga waits for the pickup", async || {
        step_state(&http, waiting, "picked_up").await == "in_flight"
    })
    .await;
    register(&http, &click_and_collect(2, 1_000), StatusCode::CREATED).await;
    let hasty = start(
        &http,
        &json!({ "definition": "click_and_collect", "input": input() }),
    )
    .await;
    assert_eq!(saga(&http, hasty).await["definition_version"], 2);

    let row = wait_for_status(&env, hasty, "COMPENSATED").await;
    assert!(row.state["failure"].as_str().unwrap().contains("no signal"));
    let undone: Vec<String> = participants
        .deliveries_for(hasty)
        .into_iter()
        .filter(|c| c.direction == Direction::Compensate)
        .map(|c| c.name)
        .collect();
    assert_eq!(undone, ["payment.refund", "inventory.release"]);

    // The first saga is still on version 1, which therefore cannot be removed.
    assert_eq!(load(&env, waiting).await.status, "RUNNING");
    let remove = http
        .client
        .delete(format!(
            "{}/v1/saga-definitions/click_and_collect/versions/1",
            http.base
        ))
        .send()
        .await
        .unwrap();
    problem(remove, 409, None).await;

    // An admin rolls back: new sagas start on version 1 again, a pinned one on 2.
    let rolled = http
        .client
        .put(format!(
            "{}/v1/saga-definitions/click_and_collect/default",
            http.base
        ))
        .json(&json!({ "version": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(rolled, StatusCode::OK).await["version"], 1);
    let rolled_back = start(
        &http,
        &json!({ "definition": "click_and_collect", "input": input() }),
    )
    .await;
    assert_eq!(saga(&http, rolled_back).await["definition_version"], 1);
    let pinned = start(
        &http,
        &json!({ "definition": "click_and_collect", "version": 2, "input": input() }),
    )
    .await;
    assert_eq!(saga(&http, pinned).await["definition_version"], 2);

    // Cancelled before the pickup, the first saga is over; then version 2 (not the
    // default, and no longer used once its sagas end) can go.
    answer(
        http.post_empty(&format!("/v1/sagas/{waiting}/cancel"))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    wait_for_status(&env, waiting, "CANCELLED").await;
    wait_for_status(&env, pinned, "COMPENSATED").await;
    let remove = http
        .client
        .delete(format!(
            "{}/v1/saga-definitions/click_and_collect/versions/2",
            http.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(remove.status(), StatusCode::NO_CONTENT);
    // A removed (name, version) is never used again, whatever the document: a replica
    // still holding the old one could run it.
    let reused = http
        .post("/v1/saga-definitions", &click_and_collect(2, 5_000))
        .await;
    let refused = problem(reused, 409, None).await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("never used again"),
        "{refused}"
    );
    let same = http
        .post("/v1/saga-definitions", &click_and_collect(2, 1_000))
        .await;
    problem(same, 409, None).await;
    // A built-in version is the shop's fronts' own: never removed, even unused.
    let remove = http
        .client
        .delete(format!(
            "{}/v1/saga-definitions/order/versions/1",
            http.base
        ))
        .send()
        .await
        .unwrap();
    problem(remove, 409, None).await;
    participants.stop().await;
    orchestrator.stop().await;
}

/// A version cannot be removed from under a start that has not committed yet: the removal
/// waits for the start's transaction, then counts its saga and refuses. Without the
/// start's hold on the version, the removal would count no saga (the start's is not
/// committed) and delete the version the saga is about to run on.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_is_not_removed_from_under_a_start_in_flight() {
    use diesel::prelude::*;
    use diesel::sql_types::BigInt;
    use diesel_async::{AsyncConnection as _, RunQueryDsl};
    use engine::shell::{Error, Start};

    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let http = Http::new(orchestrator.base());
    register(&http, &click_and_collect(1, 60_000), StatusCode::CREATED).await;
    register(&http, &click_and_collect(2, 60_000), StatusCode::CREATED).await;

    let engine = orchestrator.running.engine.clone();
    let pool = env.db.pool.clone();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (commit_tx, commit_rx) = tokio::sync::oneshot::channel::<()>();
    let starter = tokio::spawn(async move {
        let mut conn = pool.get().await.unwrap();
        conn.transaction(async |conn| {
            let input = input();
            let start = Start {
                version: Some(1),
                ..Start::new("click_and_collect", &input)
            };
            let started = engine.start_with(conn, start).await?;
            started_tx.send(()).unwrap();
            commit_rx.await.unwrap();
            Ok::<_, Error>(started.id)
        })
        .await
        .unwrap()
    });
    started_rx.await.unwrap();

    let client = http.client.clone();
    let url = format!(
        "{}/v1/saga-definitions/click_and_collect/versions/1",
        http.base
    );
    let remover = tokio::spawn(async move { client.delete(url).send().await.unwrap() });
    #[derive(QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    eventually(
        "the removal to wait for the start's transaction",
        async || {
            let mut conn = env.db.pool.get().await.unwrap();
            let waiting: Waiting = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .get_result(&mut conn)
            .await
            .unwrap();
            waiting.n > 0 || remover.is_finished()
        },
    )
    .await;
    assert!(
        !remover.is_finished(),
        "the removal went ahead while a start on the version was in flight"
    );
    commit_tx.send(()).unwrap();
    let id = starter.await.unwrap();
    let refused = problem(remover.await.unwrap(), 409, None).await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("used by 1 saga"),
        "{refused}"
    );
    assert_eq!(load(&env, id).await.definition_version, 1);
    orchestrator.stop().await;
}

/// Two replicas, and the definitions `LISTEN` connection of both cut by the server: each
/// listens again (a new backend appears), and a version registered on one is then known
/// to the other, which starts sagas on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_listens_again_after_a_drop_and_uses_a_version_registered_on_another() {
    use diesel::prelude::*;
    use diesel::sql_types::Integer;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Backend {
        #[diesel(sql_type = Integer)]
        pid: i32,
    }
    let env = TestEnv::start().await;
    let first = Orchestrator::start(&env, Options::default()).await;
    let second = Orchestrator::start(&env, Options::default()).await;
    let (one, two) = (Http::new(first.base()), Http::new(second.base()));
    let listeners = async || {
        let mut conn = env.db.pool.get().await.unwrap();
        diesel::sql_query(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%sagaflow_definitions%'",
        )
        .load::<Backend>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|backend| backend.pid)
        .collect::<Vec<i32>>()
    };
    let mut cut = Vec::new();
    eventually("both replicas to listen", async || {
        cut = listeners().await;
        cut.len() >= 2
    })
    .await;
    {
        let mut conn = env.db.pool.get().await.unwrap();
        diesel::sql_query(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({})",
            cut.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    eventually(
        "both replicas to listen again, on new connections",
        async || {
            let now = listeners().await;
            now.iter().filter(|pid| !cut.contains(pid)).count() >= 2
        },
    )
    .await;
    register(&one, &click_and_collect(1, 60_000), StatusCode::CREATED).await;
    // A flow of signals and waits only names no role, so no topic: still registered.
    let no_roles = json!({
        "name": "approval", "version": 1, "input": {},
        "steps": [
            { "name": "approved", "kind": "signal", "scope": "operator", "timeout_ms": 60_000 },
            { "name": "cool_off", "kind": "wait", "duration_ms": 1_000 }
        ]
    });
    register(&one, &no_roles, StatusCode::CREATED).await;
    eventually("the other replica to know the new version", async || {
        two.get("/v1/saga-definitions/click_and_collect/versions/1")
            .await
            .status()
            == StatusCode::OK
    })
    .await;
    start(
        &two,
        &json!({ "definition": "click_and_collect", "input": input() }),
    )
    .await;
    first.stop().await;
    second.stop().await;
}
