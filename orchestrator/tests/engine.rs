//! The saga engine end to end: real Postgres and Kafka, scripted participants.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use engine::loops::relay::RelayOptions;
use orchestrator::app::Options;

use engine::schema::{outbox, processed_replies, saga_history};
use platform::contract::{Direction, Outcome, Reply};
use platform::testkit::TestEnv;
use serde_json::json;
use support::*;
use uuid::Uuid;

fn order_payload() -> serde_json::Value {
    json!({ "user_id": 1, "lines": [{ "sku": "A", "quantity": 2 }] })
}

async fn history_kinds(env: &TestEnv, saga: Uuid) -> Vec<String> {
    let mut conn = env.db.pool.get().await.unwrap();
    saga_history::table
        .filter(saga_history::saga_id.eq(saga))
        .order(saga_history::id.asc())
        .select(saga_history::kind)
        .load(&mut conn)
        .await
        .unwrap()
}

/// Engine options whose clock moves only when the test says so: no deadline passes while a
/// loaded machine catches up.
fn frozen_clock() -> Options {
    Options {
        clock: engine::clock::Clock::frozen(),
        ..Options::default()
    }
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_saga_completes() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));

    let started = orchestrator
        .running
        .engine
        .start("order", &order_payload(), None)
        .await
        .unwrap();
    assert!(started.created);
    wait_for_status(&env, started.id, "COMPLETED").await;

    assert_eq!(
        participants.names_for(started.id),
        ["inventory.reserve", "payment.charge", "shipment.prepare"]
    );
    let commands = participants.commands();
    let charge = commands
        .iter()
        .find(|c| c.name == "payment.charge")
        .unwrap();
    assert_eq!(charge.payload.input, order_payload());
    assert_eq!(
        charge.payload.output_from("inventory", "inventory.reserve"),
        Ok(&json!({ "ok": true })),
        "the charge finds the reservation by the command that produced it"
    );
    let kinds = history_kinds(&env, started.id).await;
    assert_eq!(count(&kinds, "saga.completed"), 1);
    assert_eq!(count(&kinds, "reply.received"), 3);

    participants.stop().await;
    orchestrator.stop().await;
}

/// A step that leaves its saga's status alone rewrites the saga's row without touching any
/// of the table's indexes (a HOT update): the row's indexed columns do not change, its timer
/// lives in `saga_timers`, and its page keeps room for the new version. Of an order saga's
/// three updates, the two mid-flight ones can be HOT; the last changes the status. The
/// timer is written twice per saga (set at the start, gone at the end), not at every step,
/// though each step's retry time is later than the one before.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_keeps_the_status_updates_its_saga_without_index_writes() {
    #[derive(QueryableByName)]
    struct Writes {
        #[diesel(sql_type = diesel::sql_types::Text)]
        relname: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        ins: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        upd: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        hot: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        del: i64,
    }
    const SAGAS: i64 = 20;
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, frozen_clock()).await;
    let engine = &orchestrator.running.engine;
    // Each command moves the clock on (a little: no retry comes due), so that each step's
    // retry time is later than the last.
    let clock = engine.clock().clone();
    let participants = Participants::start(
        &env.kafka.cluster,
        script(move |_| {
            clock.advance(Duration::from_millis(100));
            succeed()
        }),
    );
    // One after another: a page's dead versions are pruned once no transaction can see
    // them, and with sagas in flight together that can come after the next update.
    for _ in 0..SAGAS {
        let id = engine
            .start("order", &order_payload(), None)
            .await
            .unwrap()
            .id;
        wait_for_status(&env, id, "COMPLETED").await;
    }
    // Each backend reports its counts when it goes idle (within seconds): wait until every
    // saga's three updates and its timer's removal are counted.
    let mut conn = env.db.pool.get().await.unwrap();
    let mut counted = Vec::new();
    eventually("every write to be counted", async || {
        counted = diesel::sql_query(
            "SELECT relname::text, n_tup_ins AS ins, n_tup_upd AS upd, \
               n_tup_hot_upd AS hot, n_tup_del AS del \
             FROM pg_stat_user_tables WHERE relname IN ('sagas', 'saga_timers') \
             ORDER BY relname",
        )
        .load::<Writes>(&mut conn)
        .await
        .unwrap();
        counted.len() == 2 && counted[0].del >= SAGAS && counted[1].upd >= 3 * SAGAS
    })
    .await;
    let (timers, sagas) = (&counted[0], &counted[1]);
    assert_eq!(
        (timers.relname.as_str(), sagas.relname.as_str()),
        ("saga_timers", "sagas")
    );
    assert!(
        sagas.hot * 2 >= sagas.upd,
        "{} of {} saga updates were HOT",
        sagas.hot,
        sagas.upd
    );
    assert_eq!(
        (timers.ins, timers.upd, timers.del),
        (SAGAS, 0, SAGAS),
        "timers inserted, updated, deleted"
    );
    participants.stop().await;
    orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_at_step_three_compensates_step_two_then_step_one() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let participants = Participants::start(
        &env.kafka.cluster,
        script(|command| match command.name.as_str() {
            "shipment.prepare" => Reaction::Reply(Outcome::Rejected {
                reason: "address not serviceable".into(),
            }),
            _ => succeed(),
        }),
    );

    let started = orchestrator
        .running
        .engine
        .start("order", &order_payload(), None)
        .await
        .unwrap();
    let row = wait_for_status(&env, started.id, "COMPENSATED").await;

    assert_eq!(
        participants.names_for(started.id),
        [
            "inventory.reserve",
            "payment.charge",
            "shipment.prepare",
            "payment.refund",
            "inventory.release"
        ]
    );
    assert!(
        row.state["failure"]
            .as_str()
            .unwrap()
            .contains("address not serviceable")
    );
    let kinds = history_kinds(&env, started.id).await;
    assert_eq!(count(&kinds, "compensation.started"), 1);
    assert_eq!(count(&kinds, "saga.compensated"), 1);

    participants.stop().await;
    orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_never_answers_times_out_and_is_compensated() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let participants = Participants::start(
        &env.kafka.cluster,
        script(|command| match command.name.as_str() {
            "payment.charge" => Reaction::Silence,
            _ => succeed(),
        }),
    );
    let engine = orchestrator.running.engine.clone();
    let started = engine.start("order", &order_payload(), None).await.unwrap();
    eventually("the charge command", async || {
        participants.names_for(started.id).len() == 2
    })
    .await;

    // Past the step's 30 s deadline.
    engine.clock().advance(Duration::from_secs(91));
    wait_for_status(&env, started.id, "COMPENSATED").await;

    assert_eq!(
        participants.names_for(started.id),
        [
            "inventory.reserve",
            "payment.charge",
            "payment.refund",
            "inventory.release"
        ]
    );
    let kinds = history_kinds(&env, started.id).await;
    assert_eq!(count(&kinds, "step.timed_out"), 1);

    participants.stop().await;
    orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicated_reply_is_applied_once_and_an_unknown_saga_is_ignored() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let participants = Participants::start(
        &env.kafka.cluster,
        script(|_| {
            Reaction::ReplyTwice(Outcome::Succeeded {
                output: json!({ "ok": true }),
            })
        }),
    );
    let started = orchestrator
        .running
        .engine
        .start("order", &order_payload(), None)
        .await
        .unwrap();
    wait_for_status(&env, started.id, "COMPLETED").await;

    // A reply for a saga nobody knows is recorded as ignored, not a crash.
    let stray = Reply {
        id: Uuid::now_v7(),
        command_id: Uuid::now_v7(),
        saga_id: Uuid::now_v7(),
        step: 0,
        attempt: 1,
        direction: Direction::Forward,
        outcome: Outcome::Succeeded { output: json!({}) },
        command_issued_at: chrono::Utc::now(),
        replied_at: chrono::Utc::now(),
    };
    let producer = env.kafka.cluster.producer().unwrap();
    producer
        .send_json(
            &env.kafka.topics().replies(),
            &stray.saga_id.to_string(),
            &stray,
        )
        .await
        .unwrap();
    let pool = env.db.pool.clone();
    eventually("the stray reply to be recorded", async || {
        let mut conn = pool.get().await.unwrap();
        processed_replies::table
            .find(stray.id)
            .select(processed_replies::outcome)
            .first::<String>(&mut conn)
            .await
            .is_ok_and(|outcome| outcome == "ignored: unknown saga")
    })
    .await;

    // Every reply arrived twice; each was applied once.
    assert_eq!(participants.names_for(started.id).len(), 3);
    let kinds = history_kinds(&env, started.id).await;
    assert_eq!(count(&kinds, "reply.received"), 3);
    let mut conn = env.db.pool.get().await.unwrap();
    let recorded: i64 = processed_replies::table
        .filter(processed_replies::saga_id.eq(started.id))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(recorded, 3);

    participants.stop().await;
    orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compensation_that_keeps_failing_parks_the_saga_and_an_operator_retry_finishes_it() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, Options::default()).await;
    let failing_refund = script(|command| match command.name.as_str() {
        "shipment.prepare" => Reaction::Reply(Outcome::Rejected {
            reason: "address not serviceable".into(),
        }),
        "payment.refund" => Reaction::Reply(Outcome::Failed {
            reason: "bank unavailable".into(),
        }),
        _ => succeed(),
    });
    let participants = Participants::start(&env.kafka.cluster, failing_refund);
    let engine = orchestrator.running.engine.clone();
    let started = engine.start("order", &order_payload(), None).await.unwrap();

    // Compensation backoff grows to 30 s: while a retry waits, move the clock past it
    // instead of waiting (never while an attempt is in flight, which would time it out).
    let clock = engine.clock().clone();
    wait_for_status_with(&env, started.id, "FAILED", |row| {
        skip_retry_wait(&clock, row)
    })
    .await;
    let refunds = |names: Vec<String>| names.iter().filter(|n| *n == "payment.refund").count();
    assert_eq!(
        refunds(participants.names_for(started.id)),
        8,
        "budget is 8 attempts"
    );
    assert!(
        !participants
            .names_for(started.id)
            .contains(&"inventory.release".to_owned())
    );

    // Only FAILED sagas can be retried; only RUNNING ones cancelled.
    assert!(matches!(
        engine.cancel(started.id).await,
        Err(engine::shell::Error::Conflict { .. })
    ));

    participants.set_script(script(|_| succeed()));
    engine.retry(started.id).await.unwrap();
    wait_for_status(&env, started.id, "COMPENSATED").await;
    let names = participants.names_for(started.id);
    assert_eq!(refunds(names.clone()), 9);
    assert_eq!(names.last().unwrap(), "inventory.release");
    assert!(matches!(
        engine.retry(started.id).await,
        Err(engine::shell::Error::Conflict { .. })
    ));

    participants.stop().await;
    orchestrator.stop().await;
}

/// Once failed on a loaded machine: the scripted participants joined their group after the
/// first step's real-time deadline, so the "two commands" it waited for were the reserve and
/// its release, and the cancel met a COMPENSATING saga. The clock is frozen now, so only the
/// test moves time, and it waits for the charge itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_saga_can_be_cancelled() {
    let env = TestEnv::start().await;
    let options = frozen_clock();
    let orchestrator = Orchestrator::start(&env, options).await;
    let participants = Participants::start(
        &env.kafka.cluster,
        script(|command| match command.name.as_str() {
            "payment.charge" => Reaction::Silence,
            _ => succeed(),
        }),
    );
    let engine = orchestrator.running.engine.clone();
    let started = engine.start("order", &order_payload(), None).await.unwrap();
    eventually("the charge command", async || {
        participants.names_for(started.id) == ["inventory.reserve", "payment.charge"]
    })
    .await;

    engine.cancel(started.id).await.unwrap();
    wait_for_status(&env, started.id, "CANCELLED").await;
    assert_eq!(
        participants.names_for(started.id)[2..],
        ["payment.refund", "inventory.release"]
    );

    participants.stop().await;
    orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_starts_with_one_idempotency_key_make_one_saga() {
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(
        &env,
        Options {
            relay_enabled: false,
            ..Options::default()
        },
    )
    .await;
    let engine = orchestrator.running.engine.clone();
    let starts = (0..20).map(|_| {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .start("order", &order_payload(), Some("key-1"))
                .await
                .unwrap()
        })
    });
    let results: Vec<_> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let id = results[0].id;
    assert!(results.iter().all(|r| r.id == id));
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orchestrator_stopped_between_commit_and_publish_loses_nothing() {
    let env = TestEnv::start().await;
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));

    // This one commits sagas but never publishes: a crash right after commit. It and its
    // replacement are one static member of the reply group, as a restarted process with
    // `KAFKA_INSTANCE_ID` is.
    let crashed = Orchestrator::start_as(
        &env,
        Options {
            relay_enabled: false,
            ..Options::default()
        },
        "replica",
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            crashed
                .running
                .engine
                .start("order", &order_payload(), None)
                .await
                .unwrap()
                .id,
        );
    }
    let mut conn = env.db.pool.get().await.unwrap();
    let pending: i64 = outbox::table
        .filter(outbox::published_at.is_null())
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert!(pending >= 5, "commands must wait in the outbox");
    crashed.stop().await;
    assert!(participants.commands().is_empty());

    let restarted = Orchestrator::start_as(&env, Options::default(), "replica").await;
    for id in &ids {
        wait_for_status(&env, *id, "COMPLETED").await;
    }
    participants.stop().await;
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_messages_leave_at_once_and_are_marked_without_the_sweep() {
    let env = TestEnv::start().await;
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));
    // The sweep takes only rows an hour old: whatever reaches a participant here, the task
    // that committed it sent.
    let orchestrator = Orchestrator::start(
        &env,
        Options {
            relay: RelayOptions {
                sweep_after: Duration::from_secs(3600),
                ..RelayOptions::default()
            },
            ..Options::default()
        },
    )
    .await;
    let engine = &orchestrator.running.engine;
    let id = engine
        .start("order", &order_payload(), None)
        .await
        .unwrap()
        .id;
    wait_for_status(&env, id, "COMPLETED").await;
    assert_eq!(participants.names_for(id).len(), 3);
    // And the relay marked every row the engine sent: none is left for a sweep to repeat.
    eventually(
        "every outbox row of the saga marked published",
        async || {
            let mut conn = env.db.pool.get().await.unwrap();
            let unmarked: i64 = outbox::table
                .filter(outbox::message_key.eq(id.to_string()))
                .filter(outbox::published_at.is_null())
                .count()
                .get_result(&mut conn)
                .await
                .unwrap();
            unmarked == 0
        },
    )
    .await;
    participants.stop().await;
    orchestrator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_orchestrators_finish_two_hundred_sagas_each_exactly_once() {
    let env = TestEnv::start().await;
    let first = Orchestrator::start(&env, Options::default()).await;
    let second = Orchestrator::start(&env, Options::default()).await;
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));

    let mut ids = Vec::new();
    for n in 0..200 {
        let engine = if n % 2 == 0 {
            &first.running.engine
        } else {
            &second.running.engine
        };
        ids.push(
            engine
                .start("order", &order_payload(), None)
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        wait_for_status(&env, *id, "COMPLETED").await;
    }

    let mut conn = env.db.pool.get().await.unwrap();
    let completions: Vec<Uuid> = saga_history::table
        .filter(saga_history::kind.eq("saga.completed"))
        .select(saga_history::saga_id)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(completions.len(), 200);
    let mut per_saga: HashMap<Uuid, usize> = HashMap::new();
    for id in completions {
        *per_saga.entry(id).or_default() += 1;
    }
    assert!(ids.iter().all(|id| per_saga.get(id) == Some(&1)));
    assert_eq!(
        completed(&first.running.engine) + completed(&second.running.engine),
        200
    );
    // Each step of each saga was dispatched as one attempt: a loaded machine may re-send an
    // attempt whose reply is late (same command id, recorded as `step.redelivered`), but no
    // replica ever issued a second attempt or a second command id for a step.
    let mut dispatched: HashMap<(Uuid, u32), HashSet<Uuid>> = HashMap::new();
    let mut messages = 0;
    for command in participants.commands() {
        assert_eq!(command.attempt, 1, "{command:?}");
        dispatched
            .entry((command.saga_id, command.step))
            .or_default()
            .insert(command.id);
        messages += 1;
    }
    assert_eq!(dispatched.len(), 600);
    assert!(dispatched.values().all(|ids| ids.len() == 1));
    let resends: i64 = saga_history::table
        .filter(saga_history::kind.eq("step.redelivered"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert!(
        messages <= 600 + resends as usize,
        "{messages} commands for 600 steps and {resends} re-sends"
    );

    participants.stop().await;
    first.stop().await;
    second.stop().await;
}

/// A command lost in transit (here: ignored once) is sent again with the same command id
/// when its attempt times out, and the saga completes without compensating anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_command_is_sent_again_with_its_id_and_the_saga_completes() {
    let env = TestEnv::start().await;
    let options = frozen_clock();
    let orchestrator = Orchestrator::start(&env, options).await;
    let charges = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = charges.clone();
    let participants = Participants::start(
        &env.kafka.cluster,
        script(move |command| match command.name.as_str() {
            "payment.charge" if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
                Reaction::Silence
            }
            _ => succeed(),
        }),
    );
    let engine = orchestrator.running.engine.clone();
    let started = engine.start("order", &order_payload(), None).await.unwrap();
    eventually("the first charge", async || {
        participants.names_for(started.id).len() == 2
    })
    .await;

    // Past the attempt's 5 s start-to-close timeout, far from the step's 30 s deadline.
    engine.clock().advance(Duration::from_secs(6));
    wait_for_status(&env, started.id, "COMPLETED").await;

    let charges: Vec<_> = participants
        .deliveries_for(started.id)
        .into_iter()
        .filter(|c| c.name == "payment.charge")
        .collect();
    assert_eq!(charges.len(), 2, "one loss, one re-send");
    assert_eq!(
        charges[0].id, charges[1].id,
        "the re-send keeps the command id"
    );
    assert_eq!(charges[0].attempt, charges[1].attempt);
    let kinds = history_kinds(&env, started.id).await;
    assert_eq!(count(&kinds, "step.redelivered"), 1);
    assert_eq!(count(&kinds, "compensation.started"), 0);

    participants.stop().await;
    orchestrator.stop().await;
}

fn coupon_payload() -> serde_json::Value {
    json!({ "campaign_id": Uuid::now_v7(), "user_id": Uuid::now_v7() })
}

/// A payout whose outcome is unknown is fenced before the claim is returned, and the
/// coupon is returned only when the fence held.
#[tokio::test(flavor = "multi_thread")]
async fn a_payout_of_unknown_outcome_is_fenced_before_its_claim_is_returned() {
    for (applied, status) in [(false, "COMPENSATED"), (true, "COMPLETED")] {
        let env = TestEnv::start().await;
        let options = frozen_clock();
        let orchestrator = Orchestrator::start(&env, options).await;
        let participants = Participants::start(
            &env.kafka.cluster,
            script(
                move |command| match (command.name.as_str(), command.direction) {
                    ("vendor.payout", Direction::Forward) => Reaction::Silence,
                    ("vendor.payout", Direction::Fence) => Reaction::Reply(Outcome::Succeeded {
                        output: json!({ "applied": applied, "output": applied.then(|| json!({ "ledger_id": 1 })) }),
                    }),
                    _ => succeed(),
                },
            ),
        );
        let engine = orchestrator.running.engine.clone();
        let started = engine
            .start("coupon_use", &coupon_payload(), None)
            .await
            .unwrap();
        eventually("the payout", async || {
            participants.names_for(started.id).len() == 2
        })
        .await;
        engine.clock().advance(Duration::from_secs(91));
        let row = wait_for_status(&env, started.id, status).await;

        let sent: Vec<(String, Direction)> = participants
            .deliveries_for(started.id)
            .into_iter()
            .map(|c| (c.name, c.direction))
            .collect();
        let mut expected = vec![
            ("coupon.claim".to_owned(), Direction::Forward),
            ("vendor.payout".to_owned(), Direction::Forward),
            ("vendor.payout".to_owned(), Direction::Fence),
        ];
        if !applied {
            expected.push(("coupon.unclaim".to_owned(), Direction::Compensate));
        }
        assert_eq!(sent, expected, "applied: {applied}");
        let forward = if applied { "succeeded" } else { "fenced" };
        assert_eq!(row.state["steps"][1]["forward"], forward);

        participants.stop().await;
        orchestrator.stop().await;
    }
}

/// Inserts a saga this version cannot read, with a timer long due.
async fn insert_unreadable(env: &TestEnv, definition: &str, state: serde_json::Value) -> Uuid {
    use engine::schema::sagas;
    let id = Uuid::now_v7();
    let mut conn = env.db.pool.get().await.unwrap();
    diesel::insert_into(sagas::table)
        .values((
            sagas::id.eq(id),
            sagas::definition.eq(definition),
            sagas::status.eq("RUNNING"),
            sagas::payload.eq(json!({})),
            sagas::state.eq(state),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    make_timer_due(env, id).await;
    id
}

/// Sets the saga's timer an hour in the past.
async fn make_timer_due(env: &TestEnv, id: Uuid) {
    use engine::schema::saga_timers;
    let mut conn = env.db.pool.get().await.unwrap();
    let due = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    diesel::insert_into(saga_timers::table)
        .values((saga_timers::saga_id.eq(id), saga_timers::fire_at.eq(due)))
        .on_conflict(saga_timers::saga_id)
        .do_update()
        .set(saga_timers::fire_at.eq(due))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// When the saga's timer fires, if it has one.
async fn timer_of(env: &TestEnv, id: Uuid) -> Option<chrono::DateTime<chrono::Utc>> {
    use engine::schema::saga_timers;
    let mut conn = env.db.pool.get().await.unwrap();
    saga_timers::table
        .find(id)
        .select(saga_timers::fire_at)
        .first(&mut conn)
        .await
        .optional()
        .unwrap()
}

/// A saga records the version of its definition it started on. A row of a version this
/// process does not have (started by a newer deploy, say) is never run on another shape:
/// it is quarantined, with the reason, and the others move on.
#[tokio::test(flavor = "multi_thread")]
async fn a_saga_runs_only_on_the_definition_version_it_started_on() {
    use engine::schema::sagas;
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, frozen_clock()).await;
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));
    let engine = orchestrator.running.engine.clone();
    let current = engine.start("order", &order_payload(), None).await.unwrap();
    let mut conn = env.db.pool.get().await.unwrap();
    let recorded: i32 = sagas::table
        .find(current.id)
        .select(sagas::definition_version)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        recorded, 2,
        "started on version 2 of `order` (1 is retired)"
    );
    // Another saga, as a deploy with a version 3 of `order` would have started it.
    let newer = engine.start("order", &order_payload(), None).await.unwrap();
    diesel::update(sagas::table.find(newer.id))
        .set(sagas::definition_version.eq(3))
        .execute(&mut conn)
        .await
        .unwrap();
    make_timer_due(&env, newer.id).await;
    wait_for_status(&env, current.id, "COMPLETED").await;
    eventually("the newer saga to be quarantined", async || {
        load(&env, newer.id).await.quarantine.is_some()
    })
    .await;
    let quarantine = load(&env, newer.id).await.quarantine.unwrap();
    assert!(
        quarantine.contains("definition `order` version 3 is not registered here"),
        "{quarantine}"
    );
    // The cause fixed (the row back on a version this replica has), an operator lifts the
    // quarantine with a reason, and the saga moves again at once.
    diesel::update(sagas::table.find(newer.id))
        .set(sagas::definition_version.eq(2))
        .execute(&mut conn)
        .await
        .unwrap();
    let operator = engine::shell::Operator {
        actor: "ops".to_owned(),
        reason: Some("row repaired".to_owned()),
        expected_version: None,
    };
    engine
        .lift_quarantine(engine.pool(), newer.id, &operator)
        .await
        .unwrap();
    assert!(
        engine
            .lift_quarantine(engine.pool(), newer.id, &operator)
            .await
            .is_err(),
        "a saga that is not quarantined has nothing to lift"
    );
    // Its reservation's reply came while it was set aside: past the attempt timeout the
    // command goes out again, and the participant's answer moves it on.
    engine.clock().advance(std::time::Duration::from_secs(6));
    make_timer_due(&env, newer.id).await;
    wait_for_status(&env, newer.id, "COMPLETED").await;
    let kinds = history_kinds(&env, newer.id).await;
    assert_eq!(count(&kinds, "quarantine.lifted"), 1, "{kinds:?}");
    participants.stop().await;
    orchestrator.stop().await;
}

/// A deploy that adds or removes a step leaves rows whose step count no longer matches
/// their definition. More of them than one timer batch, all overdue: each is quarantined
/// with the reason, and the healthy saga's timer still fires among them.
#[tokio::test(flavor = "multi_thread")]
async fn sagas_that_no_longer_match_their_definition_are_quarantined_and_hide_no_timer() {
    use engine::schema::sagas;
    let env = TestEnv::start().await;
    let options = frozen_clock();
    let orchestrator = Orchestrator::start(&env, options).await;
    let participants = Participants::start(
        &env.kafka.cluster,
        script(|command| match command.name.as_str() {
            "payment.charge" => Reaction::Silence,
            _ => succeed(),
        }),
    );
    let engine = orchestrator.running.engine.clone();
    let template = engine.start("order", &order_payload(), None).await.unwrap();
    eventually("the template's charge command", async || {
        participants.names_for(template.id).len() == 2
    })
    .await;
    // 150 copies of it, each stored with one step fewer, their timers overdue.
    let mut conn = env.db.pool.get().await.unwrap();
    diesel::sql_query(
        "WITH copies AS ( \
           INSERT INTO sagas (id, definition, status, current_step, payload, state, version, \
             created_at, updated_at) \
           SELECT gen_random_uuid(), definition, status, current_step, payload, \
             jsonb_set(state, '{steps}', (state->'steps') - 2), version, created_at, updated_at \
           FROM sagas, generate_series(1, 150) WHERE id = $1 RETURNING id) \
         INSERT INTO saga_timers (saga_id, fire_at) \
         SELECT id, now() - interval '1 hour' FROM copies",
    )
    .bind::<diesel::sql_types::Uuid, _>(template.id)
    .execute(&mut conn)
    .await
    .unwrap();
    let healthy = engine.start("order", &order_payload(), None).await.unwrap();
    eventually("the charge command", async || {
        participants.names_for(healthy.id).len() == 2
    })
    .await;
    engine.clock().advance(Duration::from_secs(91));
    wait_for_status(&env, healthy.id, "COMPENSATED").await;
    eventually("every mismatched saga to be quarantined", async || {
        let quarantined: i64 = sagas::table
            .filter(sagas::quarantine.like("stored with 2 steps; definition `order` has 3"))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap();
        quarantined == 150
    })
    .await;
    participants.stop().await;
    orchestrator.stop().await;
}

/// Rows this version cannot decode (an unknown definition, a state from a newer version)
/// are quarantined with their reason; the timers and replies of every other saga go on.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_saga_is_quarantined_and_the_others_move_on() {
    let env = TestEnv::start().await;
    let unknown = insert_unreadable(&env, "from_a_newer_version", json!({})).await;
    let garbled =
        insert_unreadable(&env, "order", json!({ "status": "RUNNING", "steps": 7 })).await;
    let options = frozen_clock();
    let orchestrator = Orchestrator::start(&env, options).await;
    let participants = Participants::start(
        &env.kafka.cluster,
        script(|command| match command.name.as_str() {
            "payment.charge" => Reaction::Silence,
            _ => succeed(),
        }),
    );
    let engine = orchestrator.running.engine.clone();
    let healthy = engine.start("order", &order_payload(), None).await.unwrap();
    eventually("the charge command", async || {
        participants.names_for(healthy.id).len() == 2
    })
    .await;
    // The healthy saga's timer is due in the same batches as the unreadable ones.
    engine.clock().advance(Duration::from_secs(91));
    wait_for_status(&env, healthy.id, "COMPENSATED").await;

    for (id, reason) in [
        (unknown, "is not registered here"),
        (garbled, "invalid type"),
    ] {
        let row = load(&env, id).await;
        let quarantine = row.quarantine.unwrap_or_default();
        assert!(quarantine.contains(reason), "{quarantine}");
        assert_eq!(
            timer_of(&env, id).await,
            None,
            "no timer fires for it again"
        );
        assert_eq!(count(&history_kinds(&env, id).await, "saga.quarantined"), 1);
    }
    assert_eq!(engine.metrics().quarantined.get(), 2);
    // A reply for a quarantined saga is recorded and changes nothing.
    let producer = env.kafka.cluster.producer().unwrap();
    let reply = Reply {
        id: Uuid::now_v7(),
        command_id: Uuid::now_v7(),
        saga_id: garbled,
        step: 0,
        attempt: 1,
        direction: Direction::Forward,
        outcome: Outcome::Succeeded { output: json!({}) },
        command_issued_at: chrono::Utc::now(),
        replied_at: chrono::Utc::now(),
    };
    producer
        .send_json(&env.kafka.topics().replies(), &garbled.to_string(), &reply)
        .await
        .unwrap();
    eventually("the reply to the quarantined saga is settled", async || {
        let mut conn = env.db.pool.get().await.unwrap();
        processed_replies::table
            .find(reply.id)
            .select(processed_replies::outcome)
            .first::<String>(&mut conn)
            .await
            .is_ok_and(|outcome| outcome.contains("quarantined"))
    })
    .await;
    assert!(matches!(
        engine.retry(garbled).await,
        Err(engine::shell::Error::Corrupt { .. })
    ));

    participants.stop().await;
    orchestrator.stop().await;
}

/// A saga on a version this replica stores but cannot read (a newer replica registered it,
/// in a format this build does not know) is never quarantined: its timer is left to a
/// replica that reads it (moved a little later), and once the version reads here (the
/// store's document, compared by hash, is read again), the saga moves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_saga_on_a_version_this_replica_cannot_read_is_left_alone_not_quarantined() {
    use engine::schema::{saga_definitions, saga_timers, sagas};
    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::start(&env, frozen_clock()).await;
    let engine = orchestrator.running.engine.clone();
    let mut conn = env.db.pool.get().await.unwrap();
    // Version 3 of `order`, written by a "newer build": a field this one does not know.
    let readable: serde_json::Value = saga_definitions::table
        .find(("order", 2))
        .select(saga_definitions::document)
        .first(&mut conn)
        .await
        .unwrap();
    let mut newer = readable.clone();
    newer["version"] = json!(3);
    newer["compensation_policy"] = json!("some future setting");
    diesel::insert_into(saga_definitions::table)
        .values((
            saga_definitions::name.eq("order"),
            saga_definitions::version.eq(3),
            saga_definitions::document.eq(&newer),
            saga_definitions::created_by.eq("a newer build"),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    engine.catalog().reload(&mut conn).await.unwrap();
    assert!(engine.catalog().unreadable("order", 3));
    // No participant yet: the saga's first command waits, and the saga is put on v3.
    let id = engine
        .start("order", &order_payload(), None)
        .await
        .unwrap()
        .id;
    diesel::update(sagas::table.find(id))
        .set(sagas::definition_version.eq(3))
        .execute(&mut conn)
        .await
        .unwrap();
    make_timer_due(&env, id).await;
    let overdue = chrono::Utc::now() - chrono::TimeDelta::minutes(30);
    eventually("the timer to be left to another replica", async || {
        timer_of(&env, id).await.is_some_and(|at| at > overdue)
    })
    .await;
    assert!(
        load(&env, id).await.quarantine.is_none(),
        "never quarantined"
    );
    let kinds = history_kinds(&env, id).await;
    assert_eq!(count(&kinds, "saga.quarantined"), 0, "{kinds:?}");

    // The store's document changes under the same version (as a deploy of the newer build
    // would make it readable): the hash differs, this replica reads it again and runs it.
    let mut fixed = readable;
    fixed["version"] = json!(3);
    diesel::update(saga_definitions::table.find(("order", 3)))
        .set(saga_definitions::document.eq(&fixed))
        .execute(&mut conn)
        .await
        .unwrap();
    engine.catalog().reload(&mut conn).await.unwrap();
    assert!(!engine.catalog().unreadable("order", 3));
    let participants = Participants::start(&env.kafka.cluster, script(|_| succeed()));
    engine.clock().advance(Duration::from_secs(6));
    diesel::update(saga_timers::table.find(id))
        .set(saga_timers::fire_at.eq(chrono::Utc::now() - chrono::TimeDelta::hours(1)))
        .execute(&mut conn)
        .await
        .unwrap();
    wait_for_status(&env, id, "COMPLETED").await;
    participants.stop().await;
    orchestrator.stop().await;
}
