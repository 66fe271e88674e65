//! Fixtures for the workers' tests: business rows inserted directly, commands built as the
//! engine builds them, and participant runtimes on the test's database and Redis prefix.

#![allow(dead_code)]

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Direction, Outcome, Reply, Topics};
use platform::kafka::Producer;
use platform::testkit::{TestDb, TestRedis};
use serde_json::{Value, json};
pub use shop::fixtures::*;
use shop::participant::{Participant, Strategy};
use shop::runtime::{CommandRuntime, RuntimeOptions};
use uuid::Uuid;

/// A command as the engine would send it.
pub fn command(
    saga_id: Uuid,
    step: u32,
    direction: Direction,
    name: &str,
    input: Value,
    outputs: Value,
) -> Command {
    let dispatch = platform::contract::Dispatch {
        step,
        attempt: 1,
        direction,
    };
    let payload = platform::contract::CommandPayload {
        input,
        outputs: serde_json::from_value(outputs).expect("outputs as the engine sends them"),
    };
    Command::new(saga_id, "test", dispatch, name, payload, Utc::now())
}

/// A product that costs one cent: a charge of `cents` is that many of it (the payment role
/// prices a saga's lines from the products, never from its input).
pub const CENT: &str = "CENT";

/// Makes [`CENT`] a product of `db`.
pub async fn sell_cents(db: &TestDb) {
    let mut conn = db.pool.get().await.unwrap();
    diesel::insert_into(shop::schema::products::table)
        .values((
            shop::schema::products::sku.eq(CENT),
            shop::schema::products::name.eq("one cent"),
            shop::schema::products::price_cents.eq(1i64),
            shop::schema::products::stock.eq(0),
        ))
        .on_conflict_do_nothing()
        .execute(&mut conn)
        .await
        .unwrap();
}

/// A charge's input: `user` pays `cents` ([`sell_cents`] first).
pub fn charge_of(user: Uuid, cents: i64) -> Value {
    serde_json::json!({ "user_id": user, "lines": [{ "sku": CENT, "quantity": cents }] })
}

/// The outputs of a payout's command: the coupon role's answer to `coupon.claim`.
pub fn claimed(output: Value) -> Value {
    serde_json::json!({
        "claim_coupon": {
            "by": { "kind": "command", "role": "coupon", "command": "coupon.claim" },
            "output": output,
        }
    })
}

/// The next attempt of `command`: the same step, direction and payload, a new id.
pub fn next_attempt(command: &Command) -> Command {
    let dispatch = platform::contract::Dispatch {
        step: command.step,
        attempt: command.attempt + 1,
        direction: command.direction,
    };
    let next = Command::new(
        command.saga_id,
        &command.saga,
        dispatch,
        &command.name,
        command.payload.clone(),
        Utc::now(),
    );
    assert_ne!(next.id, command.id, "a new attempt has a new id");
    next
}

pub fn forward(saga_id: Uuid, step: u32, name: &str, input: Value) -> Command {
    command(saga_id, step, Direction::Forward, name, input, json!({}))
}

pub fn compensate(saga_id: Uuid, step: u32, name: &str, input: Value) -> Command {
    command(saga_id, step, Direction::Compensate, name, input, json!({}))
}

/// A participant runtime, as one worker process would run it.
pub fn runtime<P: Participant>(
    participant: P,
    db: &TestDb,
    redis: &TestRedis,
    producer: &Producer,
    options: RuntimeOptions,
) -> CommandRuntime<P> {
    CommandRuntime::new(
        participant,
        db.pool.clone(),
        redis.pool.clone(),
        &redis.prefix,
        producer.clone(),
        &Topics::new("unused").unwrap(),
        options,
    )
}

/// Runtime options for a strategy; `think` widens the read-to-write window.
pub fn options(strategy: Strategy, think: Duration) -> RuntimeOptions {
    RuntimeOptions {
        strategy,
        lock_wait: Duration::from_secs(30),
        lock_lease: Duration::from_secs(10),
        think_time: think,
    }
}

pub fn succeeded(reply: &Reply) -> bool {
    matches!(reply.outcome, Outcome::Succeeded { .. })
}

pub fn rejection(reply: &Reply) -> Option<&str> {
    match &reply.outcome {
        Outcome::Rejected { reason } => Some(reason),
        _ => None,
    }
}

/// A user's wallet balance, in cents.
pub async fn balance(db: &TestDb, user: Uuid) -> i64 {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use shop::schema::users;
    let mut conn = db.pool.get().await.unwrap();
    users::table
        .find(user)
        .select(users::balance_cents)
        .first(&mut conn)
        .await
        .unwrap()
}

/// A producer that is never used to send (the tests call `process`, which does not publish).
pub fn idle_producer() -> Producer {
    Producer::connect("127.0.0.1:9").unwrap()
}

/// A connection of its own that records the statements it sends.
pub async fn recording(
    db: &TestDb,
) -> (
    diesel_async::AsyncPgConnection,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use diesel::connection::{Instrumentation, InstrumentationEvent};
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(&db.url)
        .await
        .unwrap();
    let statements = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = statements.clone();
    let instrumentation = move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            log.lock().unwrap().push(query.to_string());
        }
    };
    conn.set_instrumentation(Box::new(instrumentation) as Box<dyn Instrumentation>);
    (conn, statements)
}

/// How many coupons of `campaign` its counter says are claimed.
pub async fn coupons_claimed(db: &TestDb, campaign: Uuid) -> i32 {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use shop::schema::coupon_campaigns;
    let mut conn = db.pool.get().await.unwrap();
    coupon_campaigns::table
        .find(campaign)
        .select(coupon_campaigns::claimed)
        .first(&mut conn)
        .await
        .unwrap()
}
