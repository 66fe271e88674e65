//! Retention deletes what aged out of its window and nothing else: inbox rows after the
//! inbox window, the history of sagas that finished long ago (never of a running saga),
//! old notifications, expired idempotency keys; a step's fence and its command's inbox
//! row stay as long as their saga is not finished, however old.

use chrono::Utc;
use diesel::QueryableByName;
use diesel::sql_query;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use platform::env::{RetentionEnv, Vars};
use platform::retention;
use platform::testkit::TestDb;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let mut conn = db.pool.get().await.unwrap();
    sql_query(sql)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

#[tokio::test(flavor = "multi_thread")]
async fn each_table_keeps_exactly_what_is_inside_its_window() {
    let db = TestDb::migrated().await;
    let mut conn = db.pool.get().await.unwrap();
    let setup = [
        // Replies and commands: one past the 14-day inbox window, one inside it.
        "INSERT INTO processed_replies (reply_id, saga_id, outcome, processed_at) VALUES \
         (gen_random_uuid(), gen_random_uuid(), 'applied', now() - interval '15 days'), \
         (gen_random_uuid(), gen_random_uuid(), 'applied', now() - interval '13 days')",
        "INSERT INTO processed_commands (command_id, saga_id, role, reply, processed_at) VALUES \
         (gen_random_uuid(), gen_random_uuid(), 'payment', '{}', now() - interval '15 days'), \
         (gen_random_uuid(), gen_random_uuid(), 'payment', '{}', now() - interval '1 day')",
        "INSERT INTO step_fences (saga_id, step, fenced_at, applied_at) VALUES \
         (gen_random_uuid(), 0, now() - interval '15 days', NULL), \
         (gen_random_uuid(), 0, NULL, now() - interval '1 day')",
        // A saga parked FAILED for 100 days: its fence and its command's inbox row stay.
        "INSERT INTO processed_commands (command_id, saga_id, role, reply, processed_at) VALUES \
         (gen_random_uuid(), '00000000-0000-7000-8000-000000000003', 'vendor', '{}', now() - interval '100 days')",
        "INSERT INTO step_fences (saga_id, step, fenced_at, applied_at) VALUES \
         ('00000000-0000-7000-8000-000000000003', 1, NULL, now() - interval '100 days')",
        "INSERT INTO sagas (id, definition, status, payload, state, updated_at, status_changed_at) VALUES \
         ('00000000-0000-7000-8000-000000000003', 'coupon_use', 'FAILED', '{}', '{}', now() - interval '100 days', now() - interval '100 days')",
        // Three sagas with 100-day-old history: one finished 100 days ago, one resolved by
        // hand as long ago, one still running.
        "INSERT INTO sagas (id, definition, status, payload, state, updated_at, status_changed_at) VALUES \
         ('00000000-0000-7000-8000-000000000001', 'order', 'COMPLETED', '{}', '{}', now() - interval '100 days', now() - interval '100 days'), \
         ('00000000-0000-7000-8000-000000000004', 'order', 'RESOLVED', '{}', '{}', now() - interval '100 days', now() - interval '100 days'), \
         ('00000000-0000-7000-8000-000000000002', 'order', 'RUNNING', '{}', '{}', now() - interval '100 days', now() - interval '100 days')",
        "INSERT INTO saga_history (saga_id, kind, status, recorded_at) VALUES \
         ('00000000-0000-7000-8000-000000000001', 'saga.start', 'RUNNING', now() - interval '100 days'), \
         ('00000000-0000-7000-8000-000000000004', 'saga.start', 'RUNNING', now() - interval '100 days'), \
         ('00000000-0000-7000-8000-000000000002', 'saga.start', 'RUNNING', now() - interval '100 days')",
        "INSERT INTO notifications (event_id, saga_id, saga, kind, message, occurred_at, recorded_at) VALUES \
         (gen_random_uuid(), gen_random_uuid(), 'order', 'saga.started', 'x', now(), now() - interval '91 days'), \
         (gen_random_uuid(), gen_random_uuid(), 'order', 'saga.started', 'x', now(), now() - interval '89 days')",
        "INSERT INTO idempotency_keys (caller, key, fingerprint, status, response, created_at) VALUES \
         ('', 'old', 'f', 202, '{}', now() - interval '25 hours'), \
         ('', 'new', 'f', 202, '{}', now() - interval '23 hours')",
    ];
    for statement in setup {
        sql_query(statement).execute(&mut conn).await.unwrap();
    }
    let windows = RetentionEnv::from_vars(&Vars::from_pairs([])).unwrap();
    let mut rules = engine::loops::retention::RULES.to_vec();
    rules.extend_from_slice(shop::retention::RULES);
    let deleted = retention::sweep(&mut conn, &rules, &windows, Utc::now())
        .await
        .unwrap();
    assert!(
        deleted
            .iter()
            .all(|(table, n)| *n == if *table == "saga_history" { 2 } else { 1 }),
        "{deleted:?}"
    );

    for table in ["processed_commands", "step_fences"] {
        assert_eq!(
            count(&db, &format!("SELECT count(*) AS n FROM {table}")).await,
            2,
            "{table}: the recent row, and the parked saga's however old"
        );
    }
    for table in ["processed_replies", "notifications", "idempotency_keys"] {
        assert_eq!(
            count(&db, &format!("SELECT count(*) AS n FROM {table}")).await,
            1,
            "{table}"
        );
    }
    let kept = count(
        &db,
        "SELECT count(*) AS n FROM saga_history WHERE saga_id = '00000000-0000-7000-8000-000000000002'",
    )
    .await;
    assert_eq!(kept, 1, "a running saga keeps its whole history");
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM saga_history").await,
        1
    );
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM sagas").await,
        4,
        "saga rows stay"
    );
}
