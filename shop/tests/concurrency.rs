//! Business invariants under concurrency, on the real Postgres and Redis: many concurrent
//! commands spread over several participant runtimes (as several worker processes would run
//! them). Each invariant is checked under every production strategy, and the same load
//! without protection shows the lost updates, which proves the checks can fail. Coupon
//! claims also arrive in concurrent batches, whose sets race each other.

mod support;

use std::sync::Arc;
use std::time::Duration;

use diesel::dsl::sum;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::Reply;
use platform::testkit::{TestDb, TestRedis};
use serde_json::json;
use shop::participant::{Participant, Strategy};
use shop::participants::{coupon::Coupon, inventory::Inventory, vendor::Vendor};
use shop::runtime::CommandRuntime;
use shop::schema::{
    coupon_campaigns, coupon_claims, products, reservations, vendor_ledger, vendors,
};
use support::*;
use uuid::Uuid;

const INSTANCES: usize = 3;
const THINK: Duration = Duration::from_millis(10);

/// Runs every command concurrently, round-robin over `INSTANCES` runtimes.
async fn run_all<P: Participant>(
    runtimes: Vec<CommandRuntime<P>>,
    commands: Vec<platform::contract::Command>,
) -> Vec<Reply> {
    let runtimes = Arc::new(runtimes);
    let tasks: Vec<_> = commands
        .into_iter()
        .enumerate()
        .map(|(n, command)| {
            let runtimes = runtimes.clone();
            tokio::spawn(async move {
                runtimes[n % runtimes.len()]
                    .process(&command)
                    .await
                    .expect("process")
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

/// Runs the commands as concurrent batches of `size`, round-robin over the runtimes, as
/// the consumer loops of several worker processes would: a batch's claims are one set, so
/// sets race sets. Replies come back in the commands' order.
async fn run_batches<P: Participant>(
    runtimes: Vec<CommandRuntime<P>>,
    commands: Vec<platform::contract::Command>,
    size: usize,
) -> Vec<Reply> {
    let runtimes = Arc::new(runtimes);
    let tasks: Vec<_> = commands
        .chunks(size)
        .enumerate()
        .map(|(n, batch)| {
            let (runtimes, batch) = (runtimes.clone(), batch.to_vec());
            tokio::spawn(async move {
                let batch: Vec<&platform::contract::Command> = batch.iter().collect();
                runtimes[n % runtimes.len()]
                    .process_batch(&batch)
                    .await
                    .expect("batch")
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        for answer in task.await.unwrap() {
            replies.push(answer.expect("answer"));
        }
    }
    replies
}

fn runtimes<P: Participant>(
    make: impl Fn() -> P,
    db: &TestDb,
    redis: &TestRedis,
    strategy: Strategy,
) -> Vec<CommandRuntime<P>> {
    runtimes_thinking(make, db, redis, strategy, THINK)
}

fn runtimes_thinking<P: Participant>(
    make: impl Fn() -> P,
    db: &TestDb,
    redis: &TestRedis,
    strategy: Strategy,
    think: Duration,
) -> Vec<CommandRuntime<P>> {
    let producer = idle_producer();
    (0..INSTANCES)
        .map(|_| runtime(make(), db, redis, &producer, options(strategy, think)))
        .collect()
}

/// Stock 100, 50 orders of 2: (remaining stock, units reserved, orders that succeeded).
async fn reserve_stock(strategy: Strategy) -> (i32, i64, usize) {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    add_product(&db.pool, "SKU-1", 100, 500).await;
    let commands = (0..50)
        .map(|_| {
            forward(
                Uuid::now_v7(),
                0,
                "inventory.reserve",
                json!({ "lines": [{ "sku": "SKU-1", "quantity": 2 }] }),
            )
        })
        .collect();
    let replies = run_all(runtimes(|| Inventory, &db, &redis, strategy), commands).await;
    let mut conn = db.pool.get().await.unwrap();
    let stock: i32 = products::table
        .find("SKU-1")
        .select(products::stock)
        .first(&mut conn)
        .await
        .unwrap();
    let reserved: Option<i64> = reservations::table
        .select(sum(reservations::quantity))
        .first(&mut conn)
        .await
        .unwrap();
    (
        stock,
        reserved.unwrap_or(0),
        replies.iter().filter(|r| succeeded(r)).count(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_orders_of_two_take_exactly_a_stock_of_one_hundred() {
    for strategy in [Strategy::RedisLock, Strategy::Postgres, Strategy::LuaGate] {
        let (stock, reserved, succeeded) = reserve_stock(strategy).await;
        assert_eq!((stock, reserved, succeeded), (0, 100, 50), "{strategy:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_protection_stock_updates_are_lost() {
    let (stock, reserved, _) = reserve_stock(Strategy::Unprotected).await;
    assert!(
        i64::from(stock) + reserved > 100,
        "expected lost updates (stock {stock} + reserved {reserved} > 100)"
    );
}

/// 500 claims by 250 users (each tries twice) on a campaign of 100: (claims recorded,
/// campaign's claimed counter, most claims held by one user, rejections by the Lua gate).
/// How the claims of [`claim_coupons`] reach the runtimes.
#[derive(Clone, Copy, PartialEq)]
enum Arrival {
    /// Each on its own, with a pause between read and write.
    OneByOne,
    /// In concurrent batches of 25, decided as sets.
    Batches,
}

async fn claim_coupons(strategy: Strategy, arrival: Arrival) -> (i64, i32, i64, usize) {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let vendor = add_vendor(&db.pool, true).await;
    let campaign = add_campaign(&db.pool, vendor, 100, 1_000).await;
    let mut users = Vec::new();
    for _ in 0..250 {
        users.push(add_user(&db.pool, 0).await);
    }
    let commands = (0..500)
        .map(|n| {
            forward(
                Uuid::now_v7(),
                0,
                "coupon.claim",
                json!({ "campaign_id": campaign, "user_id": users[n % users.len()] }),
            )
        })
        .collect();
    let replies = match arrival {
        Arrival::OneByOne => {
            run_all(runtimes(Coupon::default, &db, &redis, strategy), commands).await
        }
        Arrival::Batches => {
            let instances =
                runtimes_thinking(Coupon::default, &db, &redis, strategy, Duration::ZERO);
            run_batches(instances, commands, 25).await
        }
    };
    let gated = replies
        .iter()
        .filter(|r| rejection(r).is_some_and(|reason| reason.starts_with("not enough left")))
        .count();
    let mut conn = db.pool.get().await.unwrap();
    let claims: Vec<Uuid> = coupon_claims::table
        .filter(coupon_claims::campaign_id.eq(campaign))
        .filter(coupon_claims::unclaimed_at.is_null())
        .select(coupon_claims::user_id)
        .load(&mut conn)
        .await
        .unwrap();
    let counter: i32 = coupon_campaigns::table
        .find(campaign)
        .select(coupon_campaigns::claimed)
        .first(&mut conn)
        .await
        .unwrap();
    let most_per_user = users
        .iter()
        .map(|user| claims.iter().filter(|c| *c == user).count() as i64)
        .max()
        .unwrap_or(0);
    (claims.len() as i64, counter, most_per_user, gated)
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_claims_on_one_hundred_coupons_give_exactly_one_hundred() {
    for strategy in [Strategy::RedisLock, Strategy::Postgres, Strategy::LuaGate] {
        let (claims, counter, most_per_user, gated) =
            claim_coupons(strategy, Arrival::OneByOne).await;
        assert_eq!(
            (claims, counter, most_per_user),
            (100, 100, 1),
            "{strategy:?}"
        );
        if strategy == Strategy::LuaGate {
            // Once the 100 are gone, the gate turns claims away without touching Postgres.
            assert!(
                gated >= 200,
                "only {gated} of 400 rejections came from the gate"
            );
        } else {
            assert_eq!(gated, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_claims_in_racing_sets_give_exactly_one_hundred_one_per_user() {
    // Every user asks twice, often in two batches that run at once on two instances.
    for strategy in [Strategy::RedisLock, Strategy::Postgres] {
        let (claims, counter, most_per_user, _) = claim_coupons(strategy, Arrival::Batches).await;
        assert_eq!(
            (claims, counter, most_per_user),
            (100, 100, 1),
            "{strategy:?}"
        );
    }
    // The Lua gate takes a coupon for a user's second claim too, until Postgres refuses it
    // and the lease is settled: a batch running meanwhile may be turned away. The gate
    // admits less then, never more.
    let (claims, counter, most_per_user, _) =
        claim_coupons(Strategy::LuaGate, Arrival::Batches).await;
    assert_eq!((claims, most_per_user), (i64::from(counter), 1), "LuaGate");
    assert!((1..=100).contains(&claims), "LuaGate: {claims} claimed");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_protection_more_coupons_are_claimed_than_counted() {
    let (claims, counter, _, _) = claim_coupons(Strategy::Unprotected, Arrival::OneByOne).await;
    assert!(
        claims > i64::from(counter),
        "expected lost updates: {claims} claims recorded, counter says {counter}"
    );
}

/// 200 payouts of 900 to one vendor: (balance, ledger sum).
async fn pay_out(strategy: Strategy) -> (i64, i64) {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let vendor = add_vendor(&db.pool, true).await;
    let commands = (0..200)
        .map(|_| {
            command(
                Uuid::now_v7(),
                1,
                platform::contract::Direction::Forward,
                "vendor.payout",
                json!({}),
                claimed(json!({ "vendor_id": vendor, "payout_cents": 900 })),
            )
        })
        .collect();
    let replies = run_all(runtimes(|| Vendor, &db, &redis, strategy), commands).await;
    assert!(replies.iter().all(succeeded));
    let mut conn = db.pool.get().await.unwrap();
    let balance: i64 = vendors::table
        .find(vendor)
        .select(vendors::balance_cents)
        .first(&mut conn)
        .await
        .unwrap();
    // SUM(bigint) is numeric in Postgres; the cast keeps it an integer.
    let ledger: Option<i64> = vendor_ledger::table
        .filter(vendor_ledger::vendor_id.eq(vendor))
        .select(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::BigInt>,
        >("SUM(amount_cents)::bigint"))
        .first(&mut conn)
        .await
        .unwrap();
    (balance, ledger.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_payouts_keep_the_balance_equal_to_the_ledger() {
    for strategy in [Strategy::RedisLock, Strategy::Postgres, Strategy::LuaGate] {
        assert_eq!(pay_out(strategy).await, (180_000, 180_000), "{strategy:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_protection_the_balance_drifts_from_the_ledger() {
    let (balance, ledger) = pay_out(Strategy::Unprotected).await;
    assert_eq!(ledger, 180_000);
    assert!(
        balance < ledger,
        "expected lost updates: balance {balance}, ledger {ledger}"
    );
}
