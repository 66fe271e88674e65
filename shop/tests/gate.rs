//! The Lua gate is a filter in front of Postgres: no crash can make it refuse what Postgres
//! would allow.

mod support;

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::testkit::{TestDb, TestRedis};
use shop::gate::{Gate, Want};
use shop::guarded;
use shop::participant::Strategy;
use shop::participants::coupon::Coupon;
use shop::schema::coupon_campaigns;
use support::*;

/// A campaign of three coupons, the gate, and what one claim wants of it.
async fn campaign_of_three() -> (TestDb, TestRedis, uuid::Uuid, Gate, Want) {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let vendor = add_vendor(&db.pool, true).await;
    let campaign = add_campaign(&db.pool, vendor, 3, 1_000).await;
    let gate = Gate::new(redis.pool.clone(), redis.prefix.clone());
    let want = Want {
        resource: format!("coupon:{campaign}"),
        counter: guarded::COUPONS_CLAIMED,
        key: campaign.to_string(),
        amount: 1,
    };
    (db, redis, campaign, gate, want)
}

#[tokio::test(flavor = "multi_thread")]
async fn capacity_taken_by_a_crashed_claim_is_reconciled_from_postgres() {
    let (db, redis, campaign, gate, want) = campaign_of_three().await;
    // Three claims took their coupon at the gate a lease ago and crashed before committing:
    // the gate's counter says 0 left, Postgres still says 3.
    let mut conn = db.pool.get().await.unwrap();
    let then = chrono::Utc::now() - chrono::TimeDelta::from_std(shop::gate::LEASE).unwrap();
    for _ in 0..3 {
        let op = uuid::Uuid::now_v7();
        let wants = std::slice::from_ref(&want);
        assert!(gate.take_at(&mut conn, wants, op, then).await.unwrap());
    }
    // A claim in flight right now holds a live lease.
    let in_flight = uuid::Uuid::now_v7();
    assert!(
        gate.take(&mut conn, std::slice::from_ref(&want), in_flight)
            .await
            .unwrap()
    );

    let coupon = runtime(
        Coupon::default(),
        &db,
        &redis,
        &idle_producer(),
        options(Strategy::LuaGate, Duration::ZERO),
    );
    let claim = async || {
        let user = add_user(&db.pool, 0).await;
        let claim = forward(
            uuid::Uuid::now_v7(),
            0,
            "coupon.claim",
            serde_json::json!({ "campaign_id": campaign, "user_id": user }),
        );
        coupon.process(&claim).await.unwrap()
    };
    // The crashed claims' coupons are back; the live lease's is not handed out twice.
    for _ in 0..2 {
        let reply = claim().await;
        assert!(succeeded(&reply), "a valid claim was refused: {reply:?}");
    }
    let held_back = claim().await;
    assert!(
        rejection(&held_back).unwrap().contains("not enough left"),
        "{held_back:?}"
    );
    // The in-flight claim fails and settles: its coupon goes back.
    gate.settle(std::slice::from_ref(&want), in_flight, false)
        .await
        .unwrap();
    assert!(succeeded(&claim().await));
    // And the gate still refuses what Postgres refuses.
    assert!(rejection(&claim().await).is_some());
    let claimed: i32 = coupon_campaigns::table
        .find(campaign)
        .select(coupon_campaigns::claimed)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(claimed, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_takes_in_order_in_one_script_and_reads_postgres_once() {
    let (db, _redis, _, gate, want) = campaign_of_three().await;
    let wants = std::slice::from_ref(&want);
    let (mut conn, statements) = recording(&db).await;
    let ops: Vec<(uuid::Uuid, &[Want])> = (0..5).map(|_| (uuid::Uuid::now_v7(), wants)).collect();
    let now = chrono::Utc::now();
    let taken = gate.take_all(&mut conn, &ops, now).await.unwrap();
    assert_eq!(
        taken,
        [true, true, true, false, false],
        "first come, first served"
    );
    // The first operation failed: its coupon goes back; the others committed.
    let settled: Vec<(uuid::Uuid, &[Want], bool)> = ops[..3]
        .iter()
        .enumerate()
        .map(|(n, (op, wants))| (*op, *wants, n != 0))
        .collect();
    gate.settle_all(&settled).await.unwrap();
    let again: Vec<(uuid::Uuid, &[Want])> = (0..2).map(|_| (uuid::Uuid::now_v7(), wants)).collect();
    let taken = gate.take_all(&mut conn, &again, now).await.unwrap();
    assert_eq!(taken, [true, false], "exactly the coupon given back");
    assert_eq!(
        statements.lock().unwrap().len(),
        1,
        "Postgres is read once, to seed the counter"
    );
}
