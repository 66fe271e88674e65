//! Both saga flows end to end, as `orchestrator dev` runs them: the engine, every real
//! participant and the notification worker, on real Postgres, Redis and Kafka.

mod support;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use engine::schema::notifications;
use engine::schema::saga_history;
use platform::testkit::TestEnv;
use serde_json::{Value, json};
use shop::fixtures::{add_campaign, add_product, add_user, add_vendor};
use shop::schema::{coupon_campaigns, products, shipments, users, vendors};
use support::{Orchestrator, eventually, wait_for_status};
use uuid::Uuid;

struct Dev {
    env: TestEnv,
    orchestrator: Orchestrator,
}

impl Dev {
    async fn start() -> Self {
        let env = TestEnv::start().await;
        let orchestrator = Orchestrator::dev(&env).await;
        Self { env, orchestrator }
    }

    async fn stop(self) {
        self.orchestrator.stop().await;
    }

    async fn start_saga(&self, definition: &str, payload: Value) -> Uuid {
        self.orchestrator
            .running
            .engine
            .start(definition, &payload, None)
            .await
            .unwrap()
            .id
    }

    async fn stock(&self, sku: &str) -> i32 {
        let mut conn = self.env.db.pool.get().await.unwrap();
        products::table
            .find(sku)
            .select(products::stock)
            .first(&mut conn)
            .await
            .unwrap()
    }

    async fn balance(&self, user: Uuid) -> i64 {
        let mut conn = self.env.db.pool.get().await.unwrap();
        users::table
            .find(user)
            .select(users::balance_cents)
            .first(&mut conn)
            .await
            .unwrap()
    }

    /// Every lifecycle event of the saga ends up as a notification.
    async fn assert_notified(&self, saga: Uuid) {
        let pool = self.env.db.pool.clone();
        let events = {
            let mut conn = pool.get().await.unwrap();
            let mut kinds: Vec<String> = saga_history::table
                .filter(saga_history::saga_id.eq(saga))
                .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                    "detail ? 'event_id'",
                ))
                .select(saga_history::kind)
                .load(&mut conn)
                .await
                .unwrap();
            kinds.sort();
            kinds
        };
        assert!(events.iter().any(|k| k == "saga.started"));
        eventually("notifications for every event", async || {
            let mut conn = pool.get().await.unwrap();
            let mut recorded: Vec<String> = notifications::table
                .filter(notifications::saga_id.eq(saga))
                .select(notifications::kind)
                .load(&mut conn)
                .await
                .unwrap();
            recorded.sort();
            recorded == events
        })
        .await;
    }
}

async fn seed_order(dev: &Dev, stock: i32, balance: i64) -> Uuid {
    add_product(&dev.env.db.pool, "SKU-1", stock, 1_000).await;
    add_user(&dev.env.db.pool, balance).await
}

fn order(user: Uuid, quantity: i64, country: &str) -> Value {
    json!({
        "user_id": user,
        "lines": [{ "sku": "SKU-1", "quantity": quantity }],
        "total_cents": quantity * 1_000,
        "shipping_address": { "country": country, "city": "Seoul", "line1": "1 Main St", "postal_code": "04524" },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn order_flows_complete_or_compensate_with_notifications() {
    let dev = Dev::start().await;
    let user = seed_order(&dev, 10, 5_000).await;

    // Completes: stock and money move, a shipment exists.
    let ok = dev.start_saga("order", order(user, 2, "KR")).await;
    wait_for_status(&dev.env, ok, "COMPLETED").await;
    assert_eq!(
        (dev.stock("SKU-1").await, dev.balance(user).await),
        (8, 3_000)
    );
    let mut conn = dev.env.db.pool.get().await.unwrap();
    let shipped: i64 = shipments::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(shipped, 1);

    // Insufficient funds: the reservation is released.
    let poor = dev.start_saga("order", order(user, 4, "KR")).await;
    wait_for_status(&dev.env, poor, "COMPENSATED").await;
    assert_eq!(
        (dev.stock("SKU-1").await, dev.balance(user).await),
        (8, 3_000)
    );

    // Out of stock: nothing to undo.
    let greedy = dev.start_saga("order", order(user, 50, "KR")).await;
    wait_for_status(&dev.env, greedy, "COMPENSATED").await;
    assert_eq!(dev.stock("SKU-1").await, 8);

    // Unserviceable address: refund, then release.
    let far = dev.start_saga("order", order(user, 1, "AQ")).await;
    let row = wait_for_status(&dev.env, far, "COMPENSATED").await;
    assert!(
        row.state["failure"]
            .as_str()
            .unwrap()
            .contains("not serviceable")
    );
    assert_eq!(
        (dev.stock("SKU-1").await, dev.balance(user).await),
        (8, 3_000)
    );

    for saga in [ok, poor, greedy, far] {
        dev.assert_notified(saga).await;
    }
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn coupon_use_pays_the_vendor_or_returns_the_coupon() {
    let dev = Dev::start().await;
    let pool = dev.env.db.pool.clone();
    let user = add_user(&pool, 0).await;
    let paying = add_vendor(&pool, true).await;
    let blocked = add_vendor(&pool, false).await;
    let good = add_campaign(&pool, paying, 10, 2_000).await;
    let bad = add_campaign(&pool, blocked, 10, 2_000).await;

    let used = dev
        .start_saga(
            "coupon_use",
            json!({ "campaign_id": good, "user_id": user }),
        )
        .await;
    wait_for_status(&dev.env, used, "COMPLETED").await;
    let refused = dev
        .start_saga("coupon_use", json!({ "campaign_id": bad, "user_id": user }))
        .await;
    wait_for_status(&dev.env, refused, "COMPENSATED").await;

    let mut conn = pool.get().await.unwrap();
    let balance = |vendor: Uuid| vendors::table.find(vendor).select(vendors::balance_cents);
    assert_eq!(
        balance(paying).first::<i64>(&mut conn).await.unwrap(),
        1_800
    );
    assert_eq!(balance(blocked).first::<i64>(&mut conn).await.unwrap(), 0);
    let claimed = |campaign: Uuid| {
        coupon_campaigns::table
            .find(campaign)
            .select(coupon_campaigns::claimed)
    };
    assert_eq!(claimed(good).first::<i32>(&mut conn).await.unwrap(), 1);
    assert_eq!(
        claimed(bad).first::<i32>(&mut conn).await.unwrap(),
        0,
        "coupon returned"
    );
    drop(conn);

    dev.assert_notified(used).await;
    dev.assert_notified(refused).await;
    dev.stop().await;
}
