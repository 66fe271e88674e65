//! Every command and compensation delivered twice changes state exactly as once; a
//! compensation delivered before its original command makes the original a no-op.

mod support;

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::testkit::{TestDb, TestRedis};
use serde_json::json;
use shop::participant::Strategy;
use shop::participants::{
    coupon::Coupon, inventory::Inventory, payment::Payment, shipment::Shipment, vendor::Vendor,
};
use shop::schema::{
    coupon_campaigns, coupon_claims, payments, products, shipments, vendor_ledger, vendors,
};
use support::*;
use uuid::Uuid;

fn opts() -> shop::runtime::RuntimeOptions {
    options(Strategy::RedisLock, Duration::ZERO)
}

async fn stock(db: &TestDb, sku: &str) -> i32 {
    let mut conn = db.pool.get().await.unwrap();
    products::table
        .find(sku)
        .select(products::stock)
        .first(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_commands_delivered_twice_apply_once() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let inventory = runtime(Inventory, &db, &redis, &idle_producer(), opts());
    add_product(&db.pool, "A", 10, 100).await;
    let saga = Uuid::now_v7();
    let lines = json!({ "lines": [{ "sku": "A", "quantity": 3 }] });

    let reserve = forward(saga, 0, "inventory.reserve", lines.clone());
    let first = inventory.process(&reserve).await.unwrap();
    let again = inventory.process(&reserve).await.unwrap();
    assert!(succeeded(&first));
    assert_eq!(first, again, "a redelivery re-sends the stored reply");
    assert_eq!(stock(&db, "A").await, 7);

    let release = compensate(saga, 0, "inventory.release", lines.clone());
    inventory.process(&release).await.unwrap();
    inventory.process(&release).await.unwrap();
    // A second compensation command (a new attempt, new id) finds nothing left to undo.
    let retry = next_attempt(&release);
    let reply = inventory.process(&retry).await.unwrap();
    assert!(succeeded(&reply));
    assert_eq!(stock(&db, "A").await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_before_its_reserve_makes_the_late_reserve_a_rejection() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let inventory = runtime(Inventory, &db, &redis, &idle_producer(), opts());
    add_product(&db.pool, "A", 10, 100).await;
    let saga = Uuid::now_v7();
    let lines = json!({ "lines": [{ "sku": "A", "quantity": 3 }] });

    let release = inventory
        .process(&compensate(saga, 0, "inventory.release", lines.clone()))
        .await
        .unwrap();
    assert!(succeeded(&release), "nothing to undo is a success");
    let late = inventory
        .process(&forward(saga, 0, "inventory.reserve", lines))
        .await
        .unwrap();
    assert_eq!(
        rejection(&late),
        Some("step fenced: the saga has compensated past it")
    );
    assert_eq!(stock(&db, "A").await, 10, "no hanging reservation");
}

#[tokio::test(flavor = "multi_thread")]
async fn payments_charge_at_most_once_and_refund_at_most_once() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let payment = runtime(Payment, &db, &redis, &idle_producer(), opts());
    let user = add_user(&db.pool, 10_000).await;
    let saga = Uuid::now_v7();
    sell_cents(&db).await;
    let order = charge_of(user, 2_500);

    let charge = forward(saga, 1, "payment.charge", order.clone());
    payment.process(&charge).await.unwrap();
    payment.process(&charge).await.unwrap();
    // A second attempt of the same step (new command id) must not charge again either.
    payment.process(&next_attempt(&charge)).await.unwrap();
    assert_eq!(balance(&db, user).await, 7_500);

    let refund = compensate(saga, 1, "payment.refund", order.clone());
    payment.process(&refund).await.unwrap();
    payment.process(&refund).await.unwrap();
    payment.process(&next_attempt(&refund)).await.unwrap();
    assert_eq!(balance(&db, user).await, 10_000);
    let mut conn = db.pool.get().await.unwrap();
    let rows: i64 = payments::table.count().get_result(&mut conn).await.unwrap();
    assert_eq!(rows, 1);

    // Insufficient funds is a business rejection, and changes nothing.
    let poor = forward(Uuid::now_v7(), 1, "payment.charge", charge_of(user, 50_000));
    let reply = payment.process(&poor).await.unwrap();
    assert!(rejection(&reply).unwrap().contains("insufficient funds"));
    assert_eq!(balance(&db, user).await, 10_000);

    // A refund before its charge: the late charge is refused.
    let early = Uuid::now_v7();
    payment
        .process(&compensate(early, 1, "payment.refund", order.clone()))
        .await
        .unwrap();
    let late = payment
        .process(&forward(early, 1, "payment.charge", order))
        .await
        .unwrap();
    assert_eq!(
        rejection(&late),
        Some("step fenced: the saga has compensated past it")
    );
    assert_eq!(balance(&db, user).await, 10_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn shipments_prepare_once_cancel_once_and_reject_unserviceable_addresses() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let shipment = runtime(Shipment, &db, &redis, &idle_producer(), opts());
    let saga = Uuid::now_v7();
    let address = |country: &str| json!({ "shipping_address": { "country": country, "city": "Seoul", "line1": "1 Main St", "postal_code": "04524" } });

    let prepare = forward(saga, 2, "shipment.prepare", address("KR"));
    let first = shipment.process(&prepare).await.unwrap();
    let retry = shipment.process(&next_attempt(&prepare)).await.unwrap();
    let tracking = |reply: &platform::contract::Reply| match &reply.outcome {
        platform::contract::Outcome::Succeeded { output } => output["tracking_number"].clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(tracking(&first), tracking(&retry), "one shipment per saga");

    let cancel = compensate(saga, 2, "shipment.cancel", address("KR"));
    shipment.process(&cancel).await.unwrap();
    shipment.process(&cancel).await.unwrap();
    let mut conn = db.pool.get().await.unwrap();
    let cancelled: Option<chrono::DateTime<chrono::Utc>> = shipments::table
        .find(saga)
        .select(shipments::cancelled_at)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(cancelled.is_some());

    let reply = shipment
        .process(&forward(
            Uuid::now_v7(),
            2,
            "shipment.prepare",
            address("AQ"),
        ))
        .await
        .unwrap();
    assert!(rejection(&reply).unwrap().contains("not serviceable"));
}

#[tokio::test(flavor = "multi_thread")]
async fn coupon_claims_and_payouts_delivered_twice_apply_once() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let producer = idle_producer();
    let coupon = runtime(Coupon::default(), &db, &redis, &producer, opts());
    let vendor_runtime = runtime(Vendor, &db, &redis, &producer, opts());
    let vendor = add_vendor(&db.pool, true).await;
    let campaign = add_campaign(&db.pool, vendor, 5, 1_000).await;
    let user = add_user(&db.pool, 0).await;
    let saga = Uuid::now_v7();
    let coupon_use = json!({ "campaign_id": campaign, "user_id": user });

    let claim = forward(saga, 0, "coupon.claim", coupon_use.clone());
    let first = coupon.process(&claim).await.unwrap();
    coupon.process(&claim).await.unwrap();
    let output = match &first.outcome {
        platform::contract::Outcome::Succeeded { output } => output.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(output["payout_cents"], 900, "90% of the coupon's value");
    // The same user again (another saga): one coupon per user per campaign.
    let twice = coupon
        .process(&forward(
            Uuid::now_v7(),
            0,
            "coupon.claim",
            coupon_use.clone(),
        ))
        .await
        .unwrap();
    assert!(rejection(&twice).unwrap().contains("already holds"));

    let payout = command(
        saga,
        1,
        platform::contract::Direction::Forward,
        "vendor.payout",
        coupon_use.clone(),
        claimed(output),
    );
    vendor_runtime.process(&payout).await.unwrap();
    vendor_runtime.process(&payout).await.unwrap();
    let mut conn = db.pool.get().await.unwrap();
    let balance: i64 = vendors::table
        .find(vendor)
        .select(vendors::balance_cents)
        .first(&mut conn)
        .await
        .unwrap();
    let entries: i64 = vendor_ledger::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!((balance, entries), (900, 1));

    let unclaim = compensate(saga, 0, "coupon.unclaim", coupon_use);
    coupon.process(&unclaim).await.unwrap();
    coupon.process(&unclaim).await.unwrap();
    let claimed: i32 = coupon_campaigns::table
        .find(campaign)
        .select(coupon_campaigns::claimed)
        .first(&mut conn)
        .await
        .unwrap();
    let live: i64 = coupon_claims::table
        .filter(coupon_claims::unclaimed_at.is_null())
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!((claimed, live), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payout_to_a_vendor_with_payouts_disabled_is_rejected() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let vendor_runtime = runtime(Vendor, &db, &redis, &idle_producer(), opts());
    let vendor = add_vendor(&db.pool, false).await;
    let payout = command(
        Uuid::now_v7(),
        1,
        platform::contract::Direction::Forward,
        "vendor.payout",
        json!({}),
        claimed(json!({ "vendor_id": vendor, "payout_cents": 900 })),
    );
    let reply = vendor_runtime.process(&payout).await.unwrap();
    assert!(rejection(&reply).unwrap().contains("payouts are disabled"));
    let mut conn = db.pool.get().await.unwrap();
    let entries: i64 = vendor_ledger::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries, 0, "a rejection rolls back the ledger row");
}
