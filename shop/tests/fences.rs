//! Step fences: once a step is fenced, its forward command can never take effect; a fence
//! that comes after the forward command reports it with its output; a forward command racing
//! its fence ends in exactly one of those two stories.

mod support;

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::{Direction, Fenced, Outcome, Reply};
use platform::testkit::{TestDb, TestRedis};
use serde_json::json;
use shop::participant::Strategy;
use shop::participants::vendor::Vendor;
use shop::schema::{vendor_ledger, vendors};
use support::*;
use uuid::Uuid;

fn opts() -> shop::runtime::RuntimeOptions {
    options(Strategy::RedisLock, Duration::ZERO)
}

fn payout(saga: Uuid, direction: Direction, vendor: Uuid) -> platform::contract::Command {
    command(
        saga,
        1,
        direction,
        "vendor.payout",
        json!({}),
        claimed(json!({ "vendor_id": vendor, "payout_cents": 900 })),
    )
}

fn fenced(reply: &Reply) -> Fenced {
    match &reply.outcome {
        Outcome::Succeeded { output } => serde_json::from_value(output.clone()).unwrap(),
        other => panic!("fence did not succeed: {other:?}"),
    }
}

async fn ledger(db: &TestDb, vendor: Uuid) -> (i64, i64) {
    let mut conn = db.pool.get().await.unwrap();
    let balance: i64 = vendors::table
        .find(vendor)
        .select(vendors::balance_cents)
        .first(&mut conn)
        .await
        .unwrap();
    let entries: i64 = vendor_ledger::table
        .filter(vendor_ledger::vendor_id.eq(vendor))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    (balance, entries)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_payout_never_lands_even_when_its_command_arrives_later() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let vendor_runtime = runtime(Vendor, &db, &redis, &idle_producer(), opts());
    let vendor = add_vendor(&db.pool, true).await;
    let saga = Uuid::now_v7();

    let fence = vendor_runtime
        .process(&payout(saga, Direction::Fence, vendor))
        .await
        .unwrap();
    assert_eq!(
        fenced(&fence),
        Fenced {
            applied: false,
            output: None
        }
    );
    let late = vendor_runtime
        .process(&payout(saga, Direction::Forward, vendor))
        .await
        .unwrap();
    assert_eq!(
        rejection(&late),
        Some("step fenced: the saga has compensated past it")
    );
    assert_eq!(
        ledger(&db, vendor).await,
        (0, 0),
        "no payout after the fence"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fence_after_the_payout_reports_it_with_its_output_and_changes_nothing() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let vendor_runtime = runtime(Vendor, &db, &redis, &idle_producer(), opts());
    let vendor = add_vendor(&db.pool, true).await;
    let saga = Uuid::now_v7();

    let paid = vendor_runtime
        .process(&payout(saga, Direction::Forward, vendor))
        .await
        .unwrap();
    let Outcome::Succeeded { output } = &paid.outcome else {
        panic!("{paid:?}");
    };
    let fence = payout(saga, Direction::Fence, vendor);
    let first = vendor_runtime.process(&fence).await.unwrap();
    assert_eq!(
        fenced(&first),
        Fenced {
            applied: true,
            output: Some(output.clone())
        }
    );
    // Redelivered: the stored reply, nothing else.
    let again = vendor_runtime.process(&fence).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(ledger(&db, vendor).await, (900, 1));
}

/// The payout and its fence delivered at the same moment, many times over: each pair ends
/// either as "paid, and the fence says so" or "refused, and the fence held", never as a
/// payout the fence did not see.
#[tokio::test(flavor = "multi_thread")]
async fn a_payout_racing_its_fence_lands_only_if_the_fence_reports_it() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let producer = idle_producer();
    let forward_side = runtime(Vendor, &db, &redis, &producer, opts());
    let fence_side = runtime(Vendor, &db, &redis, &producer, opts());
    let vendor = add_vendor(&db.pool, true).await;

    let mut applied = 0;
    for _ in 0..30 {
        let saga = Uuid::now_v7();
        let original = payout(saga, Direction::Forward, vendor);
        let fence = payout(saga, Direction::Fence, vendor);
        let (paid, fence) =
            tokio::join!(forward_side.process(&original), fence_side.process(&fence));
        let (paid, fence) = (paid.unwrap(), fenced(&fence.unwrap()));
        match &paid.outcome {
            Outcome::Succeeded { output } => {
                assert!(fence.applied, "a payout landed behind its fence");
                assert_eq!(fence.output.as_ref(), Some(output));
                applied += 1;
            }
            Outcome::Rejected { .. } => assert!(!fence.applied),
            Outcome::Failed { reason } => panic!("{reason}"),
        }
    }
    assert_eq!(ledger(&db, vendor).await, (900 * applied, applied));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fence_with_a_step_number_beyond_the_schema_is_rejected_not_retried() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let vendor_runtime = runtime(Vendor, &db, &redis, &idle_producer(), opts());
    let mut fence = payout(Uuid::now_v7(), Direction::Fence, Uuid::now_v7());
    fence.step = u32::MAX;
    let reply = vendor_runtime.process(&fence).await.unwrap();
    assert!(
        rejection(&reply).unwrap().contains("out of range"),
        "{reply:?}"
    );
}
