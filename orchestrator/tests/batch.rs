//! The engine's set-based batch on a real Postgres: a batch of replies costs the same number
//! of statements whatever its size, and several replies to one saga in one batch apply in
//! their order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Utc;
use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use engine::clock::Clock;
use engine::schema::{processed_replies, saga_history, sagas};
use engine::shell::Engine;
use engine::shell::catalog::Catalog;
use platform::contract::{Direction, Outcome, Reply, Topics, command_id};
use platform::testkit::TestDb;
use serde_json::json;
use uuid::Uuid;

async fn engine(db: &TestDb) -> Engine {
    let catalog = Catalog::open(&db.pool, &shop::definitions::BUILT_IN)
        .await
        .expect("catalog");
    Engine::new(
        db.pool.clone(),
        Topics::new("batch").unwrap(),
        Clock::system(),
        std::sync::Arc::new(catalog),
    )
}

fn success(saga_id: Uuid, step: u32) -> Reply {
    Reply {
        id: Uuid::now_v7(),
        command_id: command_id(saga_id, Direction::Forward, step, 1),
        saga_id,
        step,
        attempt: 1,
        direction: Direction::Forward,
        outcome: Outcome::Succeeded {
            output: json!({ "step": step }),
        },
        command_issued_at: Utc::now(),
        replied_at: Utc::now(),
    }
}

async fn start_orders(engine: &Engine, n: usize) -> Vec<Uuid> {
    let payload = json!({ "user_id": 1, "lines": [{ "sku": "A", "quantity": 1 }] });
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(engine.start("order", &payload, None).await.unwrap().id);
    }
    ids
}

/// A connection that counts the statements it sends.
async fn counting(db: &TestDb) -> (AsyncPgConnection, Arc<AtomicUsize>) {
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let statements = Arc::new(AtomicUsize::new(0));
    let counter = statements.clone();
    let instrumentation = move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { .. } = event {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    };
    conn.set_instrumentation(Box::new(instrumentation) as Box<dyn Instrumentation>);
    (conn, statements)
}

async fn apply(engine: &Engine, conn: &mut AsyncPgConnection, replies: &[Reply]) {
    // This engine has no publisher: what the batch queued stays in the outbox.
    let _queued = conn
        .transaction::<_, engine::shell::Error, _>(async |conn| {
            engine.apply_replies(conn, replies).await
        })
        .await
        .unwrap();
}

async fn statuses(db: &TestDb, ids: &[Uuid]) -> Vec<(String, i64)> {
    let mut conn = db.pool.get().await.unwrap();
    sagas::table
        .filter(sagas::id.eq_any(ids))
        .order(sagas::id.asc())
        .select((sagas::status, sagas::version))
        .load(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_replies_costs_the_same_statements_whatever_its_size() {
    let db = TestDb::migrated().await;
    let engine = engine(&db).await;
    let (mut conn, statements) = counting(&db).await;

    let mut counts = Vec::new();
    for size in [1, 4, 16] {
        let ids = start_orders(&engine, size).await;
        let replies: Vec<Reply> = ids.iter().map(|id| success(*id, 0)).collect();
        let before = AtomicUsize::load(&statements, Ordering::SeqCst);
        apply(&engine, &mut conn, &replies).await;
        counts.push(AtomicUsize::load(&statements, Ordering::SeqCst) - before);
        // Every saga moved: one version further, its next step dispatched.
        for (status, version) in statuses(&db, &ids).await {
            assert_eq!((status.as_str(), version), ("RUNNING", 1));
        }
    }
    assert!(
        counts.windows(2).all(|w| w[0] == w[1]),
        "statements per batch of 1, 4 and 16 replies: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn several_replies_to_one_saga_in_one_batch_apply_in_their_order() {
    let db = TestDb::migrated().await;
    let engine = engine(&db).await;
    let ids = start_orders(&engine, 2).await;
    let (saga, other) = (ids[0], ids[1]);
    let (mut conn, _) = counting(&db).await;

    // Step 0's reply dispatches step 1, whose reply (later in the same batch) dispatches
    // step 2, whose reply completes the saga; a duplicate in the batch counts once.
    let first = success(saga, 0);
    let replies = vec![
        first.clone(),
        success(other, 0),
        success(saga, 1),
        first.clone(),
        success(saga, 2),
    ];
    apply(&engine, &mut conn, &replies).await;
    let after = statuses(&db, &ids).await;
    assert_eq!(
        statuses(&db, &[saga]).await,
        [("COMPLETED".to_owned(), 1)],
        "three steps in one batch, one write"
    );
    assert_eq!(statuses(&db, &[other]).await, [("RUNNING".to_owned(), 1)]);

    let mut pooled = db.pool.get().await.unwrap();
    let kinds: Vec<String> = saga_history::table
        .filter(saga_history::saga_id.eq(saga))
        .order(saga_history::id.asc())
        .select(saga_history::kind)
        .load(&mut pooled)
        .await
        .unwrap();
    let received: Vec<usize> = kinds
        .iter()
        .enumerate()
        .filter(|(_, kind)| *kind == "reply.received")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(received.len(), 3, "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("saga.completed"),
        "{kinds:?}"
    );

    // The same batch again (a redelivery): nothing changes.
    apply(&engine, &mut conn, &replies).await;
    assert_eq!(statuses(&db, &ids).await, after);
    let inbox: i64 = processed_replies::table
        .filter(processed_replies::saga_id.eq_any(&ids))
        .count()
        .get_result(&mut pooled)
        .await
        .unwrap();
    assert_eq!(inbox, 4);
}
