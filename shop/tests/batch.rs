//! A worker batch on the real Postgres and Redis: one transaction and a constant number of
//! inbox statements whatever its size; a failing command gives back only its own claim; a
//! fence later in the batch sees its forward command's output; a command twice in a batch,
//! or answered before, takes effect once; a rush of claims is decided as one set, and a set
//! with a fenced step runs again one by one.

mod support;

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use platform::contract::{Command, Direction, Fenced, Outcome};
use platform::testkit::{TestDb, TestRedis};
use serde_json::json;
use shop::participant::Strategy;
use shop::participants::coupon::Coupon;
use shop::participants::payment::Payment;
use shop::runtime::CommandRuntime;
use shop::schema::{coupon_claims, processed_commands};
use support::*;
use uuid::Uuid;

fn payments(db: &TestDb, redis: &TestRedis) -> CommandRuntime<Payment> {
    let options = options(Strategy::RedisLock, Duration::ZERO);
    runtime(Payment, db, redis, &idle_producer(), options)
}

fn charge(user: Uuid, cents: i64) -> Command {
    forward(Uuid::now_v7(), 1, "payment.charge", charge_of(user, cents))
}

async fn inbox_rows(db: &TestDb, id: Uuid) -> i64 {
    let mut conn = db.pool.get().await.unwrap();
    processed_commands::table
        .filter(processed_commands::command_id.eq(id))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

/// How many of `statements` open a savepoint.
fn savepoints(statements: &[String]) -> usize {
    statements
        .iter()
        .filter(|sql| sql.trim().to_ascii_uppercase().starts_with("SAVEPOINT"))
        .count()
}

/// (statements on the inbox, commits, savepoints) for one batch of `size` charges.
async fn cost_of_batch(
    db: &TestDb,
    runtime: &CommandRuntime<Payment>,
    size: usize,
) -> (usize, usize, usize) {
    let mut commands = Vec::new();
    for _ in 0..size {
        commands.push(charge(add_user(&db.pool, 1_000).await, 100));
    }
    let batch: Vec<&Command> = commands.iter().collect();
    let (mut conn, statements) = recording(db).await;
    let answers = runtime.process_batch_on(&mut conn, &batch).await.unwrap();
    assert_eq!(answers.len(), size);
    for answer in answers {
        assert!(succeeded(&answer.unwrap()), "every charge succeeds");
    }
    let statements = statements.lock().unwrap();
    let inbox = statements
        .iter()
        .filter(|sql| sql.contains("processed_commands"))
        .count();
    let commits = statements
        .iter()
        .filter(|sql| sql.trim().eq_ignore_ascii_case("COMMIT"))
        .count();
    (inbox, commits, savepoints(&statements))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_costs_one_transaction_and_the_same_inbox_statements_whatever_its_size() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let runtime = payments(&db, &redis);
    sell_cents(&db).await;
    let one = cost_of_batch(&db, &runtime, 1).await;
    let sixteen = cost_of_batch(&db, &runtime, 16).await;
    // Claim (which finds redeliveries too), store the replies; one commit; no savepoint
    // while every command succeeds.
    assert_eq!(one, (2, 1, 0));
    assert_eq!(sixteen, one, "a batch of 16 costs what a batch of one does");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_command_is_answered_so_and_its_neighbours_commit_once() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let runtime = payments(&db, &redis);
    sell_cents(&db).await;
    let mut customers = Vec::new();
    for n in 0..4 {
        // The third cannot pay: its charge is a business rejection.
        customers.push(add_user(&db.pool, if n == 2 { 50 } else { 1_000 }).await);
    }
    let commands: Vec<Command> = customers.iter().map(|user| charge(*user, 100)).collect();
    let batch: Vec<&Command> = commands.iter().collect();
    let (mut conn, statements) = recording(&db).await;
    let answers = runtime.process_batch_on(&mut conn, &batch).await.unwrap();
    for (n, answer) in answers.iter().enumerate() {
        let reply = answer.as_ref().unwrap();
        if n == 2 {
            assert!(
                rejection(reply).is_some_and(|why| why.contains("insufficient funds")),
                "{reply:?}"
            );
        } else {
            assert!(succeeded(reply), "neighbour {n} charged");
        }
    }
    // Together first; the rejection sent the batch round again, apart.
    assert_eq!(
        savepoints(&statements.lock().unwrap()),
        4,
        "the second round runs each command apart"
    );
    for (n, user) in customers.iter().enumerate() {
        let expected = if n == 2 { 50 } else { 900 };
        assert_eq!(
            balance(&db, *user).await,
            expected,
            "user {n}: charged once"
        );
    }
    for command in &commands {
        assert_eq!(
            inbox_rows(&db, command.id).await,
            1,
            "every command answered"
        );
    }

    // After a refusal the next batch starts apart at once (not twice, as a rush of
    // refusals would be); after a batch without one, together again.
    let savepoints_of = async |runtime: &CommandRuntime<Payment>| {
        let user = add_user(&db.pool, 1_000).await;
        let commands = [charge(user, 10), charge(user, 10)];
        let batch: Vec<&Command> = commands.iter().collect();
        let (mut conn, statements) = recording(&db).await;
        let answers = runtime.process_batch_on(&mut conn, &batch).await.unwrap();
        assert!(answers.iter().all(|a| succeeded(a.as_ref().unwrap())));
        savepoints(&statements.lock().unwrap())
    };
    assert_eq!(savepoints_of(&runtime).await, 2, "apart, once");
    assert_eq!(savepoints_of(&runtime).await, 0, "together again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_command_rolls_back_alone_and_its_neighbours_commit() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let runtime = payments(&db, &redis);
    sell_cents(&db).await;
    let mut customers = Vec::new();
    for _ in 0..4 {
        customers.push(add_user(&db.pool, 1_000).await);
    }
    let broken = customers[2];
    // A real failure inside Postgres, for one user's row only.
    let mut conn = db.pool.get().await.unwrap();
    conn.batch_execute(&format!(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$; \
         CREATE TRIGGER refuse BEFORE UPDATE ON users FOR EACH ROW \
         WHEN (OLD.id = '{broken}') EXECUTE FUNCTION refuse()"
    ))
    .await
    .unwrap();
    let commands: Vec<Command> = customers.iter().map(|user| charge(*user, 100)).collect();
    let batch: Vec<&Command> = commands.iter().collect();
    let answers = runtime.process_batch(&batch).await.unwrap();
    for (n, answer) in answers.iter().enumerate() {
        match answer {
            Ok(reply) if n != 2 => assert!(succeeded(reply), "neighbour {n} charged"),
            Err(err) if n == 2 => assert!(format!("{err:#}").contains("disk on fire")),
            other => panic!("command {n}: unexpected {other:?}"),
        }
    }
    for (n, user) in customers.iter().enumerate() {
        let expected = if n == 2 { 1_000 } else { 900 };
        assert_eq!(balance(&db, *user).await, expected, "user {n}");
    }
    assert_eq!(
        inbox_rows(&db, commands[2].id).await,
        0,
        "its claim was given back"
    );

    // Once the fault is gone, its retry takes effect, once.
    conn.batch_execute("DROP TRIGGER refuse ON users")
        .await
        .unwrap();
    assert!(succeeded(&runtime.process(&commands[2]).await.unwrap()));
    assert_eq!(balance(&db, broken).await, 900);
    assert_eq!(inbox_rows(&db, commands[2].id).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fence_after_its_forward_command_in_one_batch_reports_its_output() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let runtime = payments(&db, &redis);
    sell_cents(&db).await;
    let user = add_user(&db.pool, 1_000).await;
    let original = charge(user, 250);
    let fence = command(
        original.saga_id,
        original.step,
        Direction::Fence,
        "payment.charge",
        json!({}),
        json!({}),
    );
    let answers = runtime.process_batch(&[&original, &fence]).await.unwrap();
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    assert!(succeeded(&answers[0]));
    let Outcome::Succeeded { output } = &answers[1].outcome else {
        panic!("fence failed: {:?}", answers[1].outcome);
    };
    let fenced: Fenced = serde_json::from_value(output.clone()).unwrap();
    assert!(fenced.applied, "the charge took effect before its fence");
    assert_eq!(
        fenced.output,
        Some(json!({ "user_id": user, "amount_cents": 250 })),
        "the fence carries the charge's output"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_twice_in_a_batch_or_answered_before_takes_effect_once() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let runtime = payments(&db, &redis);
    sell_cents(&db).await;
    let (first_user, second_user) = (
        add_user(&db.pool, 1_000).await,
        add_user(&db.pool, 1_000).await,
    );
    let earlier = charge(first_user, 100);
    let before = runtime.process(&earlier).await.unwrap();
    let twice = charge(second_user, 100);
    let answers = runtime
        .process_batch(&[&earlier, &twice, &twice])
        .await
        .unwrap();
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers[0].id, before.id, "the stored reply, re-sent");
    assert_eq!(answers[1].id, answers[2].id, "one reply for both copies");
    assert_eq!(balance(&db, first_user).await, 900);
    assert_eq!(balance(&db, second_user).await, 900);
}

/// Two transactions claiming overlapping commands, in opposite orders, never deadlock:
/// claims are inserted in command-id order. T1 holds `a`; T2 claims `[b, a]` and waits on
/// `a`; T1 then claims `b`. In batch order T2 would already hold `b`, and Postgres would
/// break the cycle by failing one of them.
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_claims_in_opposite_orders_do_not_deadlock() {
    use shop::runtime::inbox;
    let db = TestDb::migrated().await;
    let with_id = |id: u128| {
        let mut command = charge(Uuid::now_v7(), 100);
        command.id = Uuid::from_u128(id);
        command
    };
    let (a, b) = (with_id(1), with_id(2));
    let role = platform::contract::Role::Payment;

    let mut first = db.pool.get().await.unwrap();
    first.batch_execute("BEGIN").await.unwrap();
    inbox::claim(&mut first, role, &[(&a, None)]).await.unwrap();

    let pool = db.pool.clone();
    let (a2, b2) = (a.clone(), b.clone());
    let second = tokio::spawn(async move {
        let mut conn = pool.get().await.unwrap();
        conn.batch_execute("BEGIN").await.unwrap();
        let claimed = inbox::claim(&mut conn, role, &[(&b2, None), (&a2, None)]).await;
        conn.batch_execute("COMMIT").await.unwrap();
        claimed
    });
    // Wait until the second transaction waits on a lock (on `a`).
    let mut watcher = db.pool.get().await.unwrap();
    platform::testkit::poll_until(Duration::from_secs(60), async || {
        #[derive(QueryableByName)]
        struct Waiting {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let waiting: Waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO processed_commands%'",
        )
        .get_result(&mut watcher)
        .await
        .unwrap();
        (waiting.n == 1).then_some(())
    })
    .await
    .expect("the second claim waits on the first");

    let claimed = inbox::claim(&mut first, role, &[(&b, None)]).await;
    assert!(claimed.is_ok(), "no deadlock: {claimed:?}");
    first.batch_execute("COMMIT").await.unwrap();
    let theirs = second.await.unwrap();
    assert_eq!(
        theirs.expect("no deadlock on the other side either"),
        Default::default(),
        "both were the first transaction's"
    );
}

fn claim(campaign: Uuid, user: Uuid) -> Command {
    forward(
        Uuid::now_v7(),
        0,
        "coupon.claim",
        json!({ "campaign_id": campaign, "user_id": user }),
    )
}

async fn claimed(db: &TestDb, campaign: Uuid) -> (i32, Vec<Uuid>) {
    let counter = coupons_claimed(db, campaign).await;
    let mut conn = db.pool.get().await.unwrap();
    let sagas: Vec<Option<Uuid>> = coupon_claims::table
        .filter(coupon_claims::campaign_id.eq(campaign))
        .filter(coupon_claims::unclaimed_at.is_null())
        .select(coupon_claims::saga_id)
        .load(&mut conn)
        .await
        .unwrap();
    (counter, sagas.into_iter().flatten().collect())
}

/// (statements, savepoints) of one batch of claims on a campaign of `quantity` coupons:
/// the first claims are by the same user twice and by a user nobody knows, then `rush`
/// claims by distinct users.
async fn rush_of_claims(
    db: &TestDb,
    coupons: &CommandRuntime<Coupon>,
    quantity: i32,
    rush: usize,
) -> (usize, usize) {
    let vendor = add_vendor(&db.pool, true).await;
    let campaign = add_campaign(&db.pool, vendor, quantity, 1_000).await;
    let twice = add_user(&db.pool, 0).await;
    let mut commands = vec![
        claim(campaign, twice),
        claim(campaign, twice),
        claim(campaign, Uuid::now_v7()),
    ];
    for _ in 0..rush {
        commands.push(claim(campaign, add_user(&db.pool, 0).await));
    }
    let batch: Vec<&Command> = commands.iter().collect();
    let (mut conn, statements) = recording(db).await;
    let answers = coupons.process_batch_on(&mut conn, &batch).await.unwrap();
    let replies: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    // The rules of a claim, in the batch's order, while coupons last.
    let why = |n: usize| rejection(&replies[n]).unwrap_or("claimed").to_owned();
    assert!(succeeded(&replies[0]), "{:?}", replies[0]);
    assert!(why(1).contains("already holds"), "{}", why(1));
    assert!(why(2).contains("unknown user"), "{}", why(2));
    let mut expected = vec![commands[0].saga_id];
    for n in 3..commands.len() {
        if expected.len() < quantity as usize {
            assert!(succeeded(&replies[n]), "claim {n}: {}", why(n));
            expected.push(commands[n].saga_id);
        } else {
            assert!(why(n).contains("no coupons left"), "claim {n}: {}", why(n));
        }
    }
    let (counter, mut sagas) = claimed(db, campaign).await;
    assert_eq!(counter, quantity, "the counter holds every claim, no more");
    sagas.sort();
    expected.sort();
    assert_eq!(sagas, expected, "the winners, and only they, hold a coupon");
    let statements = statements.lock().unwrap();
    (statements.len(), savepoints(&statements))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rush_of_claims_is_decided_as_a_set_in_the_same_statements_whatever_its_size() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    for strategy in [Strategy::RedisLock, Strategy::Postgres] {
        let coupons = runtime(
            Coupon::default(),
            &db,
            &redis,
            &idle_producer(),
            options(strategy, Duration::ZERO),
        );
        let small = rush_of_claims(&db, &coupons, 3, 5).await;
        let large = rush_of_claims(&db, &coupons, 10, 40).await;
        // The rejections of a set changed nothing: no savepoint, no second round.
        assert_eq!(small.1, 0, "{strategy:?}: no savepoint");
        assert_eq!(large, small, "{strategy:?}: 43 claims cost what 8 do");
        // And the next batch starts together, as if nothing was refused.
        let again = rush_of_claims(&db, &coupons, 3, 5).await;
        assert_eq!(
            again, small,
            "{strategy:?}: a refusal in a set runs nothing twice"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_set_with_a_fenced_step_rolls_back_and_its_claims_run_one_by_one() {
    let db = TestDb::migrated().await;
    let redis = TestRedis::start();
    let coupons = runtime(
        Coupon::default(),
        &db,
        &redis,
        &idle_producer(),
        options(Strategy::RedisLock, Duration::ZERO),
    );
    let vendor = add_vendor(&db.pool, true).await;
    let campaign = add_campaign(&db.pool, vendor, 10, 1_000).await;
    let mut commands = Vec::new();
    for _ in 0..4 {
        commands.push(claim(campaign, add_user(&db.pool, 0).await));
    }
    // The saga of the third claim moved on first: its step is fenced.
    let late = &commands[2];
    let fence = command(
        late.saga_id,
        late.step,
        Direction::Fence,
        "coupon.claim",
        late.payload.input.clone(),
        json!({}),
    );
    let fenced = coupons.process(&fence).await.unwrap();
    assert!(succeeded(&fenced), "{fenced:?}");

    let batch: Vec<&Command> = commands.iter().collect();
    let (mut conn, statements) = recording(&db).await;
    let answers = coupons.process_batch_on(&mut conn, &batch).await.unwrap();
    for (n, answer) in answers.iter().enumerate() {
        let reply = answer.as_ref().unwrap();
        if n == 2 {
            assert!(
                rejection(reply).is_some_and(|why| why.contains("step fenced")),
                "{reply:?}"
            );
        } else {
            assert!(succeeded(reply), "claim {n}: {reply:?}");
        }
    }
    let (counter, sagas) = claimed(&db, campaign).await;
    assert_eq!(counter, 3, "the fenced claim took no coupon");
    assert!(!sagas.contains(&late.saga_id), "the fenced saga holds none");
    assert!(
        savepoints(&statements.lock().unwrap()) >= 4,
        "the set ran again, one by one"
    );
}
