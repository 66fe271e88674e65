//! The direct coupon use commits the claim and the payout together or not at all, and
//! waits for busy locks without holding a database connection.

mod support;

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::testkit::{TestDb, TestRedis};
use shop::direct::{DirectUse, Error};
use shop::lock::Locks;
use shop::participant::Strategy;
use shop::schema::{coupon_campaigns, coupon_claims, vendor_ledger};
use support::*;
use uuid::Uuid;

fn direct(db: &TestDb, redis: &TestRedis, strategy: Strategy) -> DirectUse {
    let mut options = options(strategy, Duration::ZERO);
    options.lock_wait = Duration::from_millis(300);
    DirectUse::new(db.pool.clone(), redis.pool.clone(), &redis.prefix, options)
}

/// (claimed counter, claim rows, ledger rows)
async fn books(db: &TestDb, campaign: Uuid) -> (i32, i64, i64) {
    let mut conn = db.pool.get().await.unwrap();
    let claimed = coupon_campaigns::table
        .find(campaign)
        .select(coupon_campaigns::claimed)
        .first(&mut conn)
        .await
        .unwrap();
    let claims = coupon_claims::table
        .filter(coupon_claims::campaign_id.eq(campaign))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    let payouts = vendor_ledger::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    (claimed, claims, payouts)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_vendor_lock_leaves_no_claim_and_a_retry_succeeds() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let vendor = add_vendor(&db.pool, true).await;
    let campaign = add_campaign(&db.pool, vendor, 5, 1_000).await;
    let user = add_user(&db.pool, 0).await;
    let direct = direct(&db, &redis, Strategy::RedisLock);

    // Someone else holds the vendor (a payout in flight, say).
    let locks = Locks::new(redis.pool.clone(), redis.prefix.clone());
    let held = locks
        .try_lock(
            &format!("vendor:{vendor}"),
            Duration::ZERO,
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .expect("vendor lock");
    let busy = direct.run(campaign, vendor, user).await;
    assert!(matches!(busy, Err(Error::Busy(_))), "{busy:?}");
    assert_eq!(
        books(&db, campaign).await,
        (0, 0, 0),
        "no claim without its payout"
    );

    held.release().await.unwrap();
    let used = direct.run(campaign, vendor, user).await.unwrap();
    assert_eq!(used.payout["amount_cents"], 900, "{used:?}");
    assert_eq!(books(&db, campaign).await, (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_payout_rolls_the_claim_back_entirely() {
    for strategy in [Strategy::RedisLock, Strategy::Postgres] {
        let db = TestDb::migrated().await;
        let redis = TestRedis::start();
        let vendor = add_vendor(&db.pool, false).await;
        let campaign = add_campaign(&db.pool, vendor, 5, 1_000).await;
        let user = add_user(&db.pool, 0).await;
        let refused = direct(&db, &redis, strategy)
            .run(campaign, vendor, user)
            .await;
        match refused {
            Err(Error::Refused(reason)) => assert!(reason.contains("payouts are disabled")),
            other => panic!("{other:?}"),
        }
        assert_eq!(books(&db, campaign).await, (0, 0, 0), "{strategy:?}");
    }
}
