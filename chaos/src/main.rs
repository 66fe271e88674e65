//! `chaos`: sagaflow as separate processes on a real broker (two `orchestrator serve`
//! replicas, one `worker` per role), driven through the HTTP API at a steady rate while a
//! random process is killed with SIGKILL every few seconds and started again (the broker
//! and Redis included, when chaos runs its own, and always its own Postgres cluster: initdb
//! on a spare port, so the machine's server is never touched). Redis stays down for 10 to
//! 12 s each time (an outage the participants must wait out); each Postgres crash's
//! recovery time is reported. Then it waits until every saga is final
//! and checks every invariant from the database. Exit code 1 on any violation.
//!
//! ```text
//! cargo build -p orchestrator -p chaos
//! target/debug/chaos [--sagas 10000] [--rate 40] [--kill-every 3] [--tansu PATH] [--kill-broker]
//! target/debug/chaos --dev [--sagas 1000]
//! ```
//! `--dev` runs one `orchestrator dev` (embedded broker, every worker in-process) instead,
//! and kills it and Redis.
//! With `--tansu` (or `TANSU`), chaos runs its own tansu; otherwise it uses `KAFKA_BROKERS`.
//! `--kill-broker` adds the broker to the kills, on SQLite storage so that it survives
//! them. (With tansu 0.6.0 a consumer group can stay stuck in `Forming` after such a
//! restart, with a leader that is no longer a member, so that run is not the default.)
//! `DATABASE_URL` names the Postgres server (default `postgres://postgres@127.0.0.1:5432/`);
//! each run makes a database of its own.

use chaos::cluster::Kind;
use chaos::system::System;
use chaos::{check, load, system};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use rand::Rng as _;
use rand::seq::SliceRandom as _;
use tokio::sync::Semaphore;

/// Runs sagaflow as separate processes, drives both flows through the API, kills a random
/// process with SIGKILL every few seconds, then checks every invariant from the database.
#[derive(Parser)]
#[command(name = "chaos")]
struct Args {
    /// Sagas to start.
    #[arg(long, default_value_t = 10_000)]
    sagas: usize,
    /// Sagas started per second.
    #[arg(long, default_value_t = 40.0, value_parser = positive)]
    rate: f64,
    /// Seconds between kills.
    #[arg(long = "kill-every", default_value = "3", value_parser = seconds)]
    kill_every: Duration,
    /// A tansu binary (else `KAFKA_BROKERS`).
    #[arg(long, env = "TANSU")]
    tansu: Option<PathBuf>,
    /// Kill the broker too (with SQLite storage, so it survives).
    #[arg(long)]
    kill_broker: bool,
    /// One `orchestrator dev` process with its embedded broker instead.
    #[arg(long)]
    dev: bool,
}

fn positive(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if rate > 0.0 => Ok(rate),
        _ => Err(format!("expected a positive number, got `{value}`")),
    }
}

fn seconds(value: &str) -> Result<Duration, String> {
    positive(value).map(Duration::from_secs_f64)
}

fn args() -> anyhow::Result<Args> {
    Ok(Args::parse())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(err) => {
            eprintln!("chaos: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<bool> {
    let args = args()?;
    let bin = std::env::current_exe()?
        .parent()
        .context("executable directory")?
        .to_owned();
    let mut options = system::Options::new("chaos", bin);
    options.dev = args.dev;
    options.tansu = args.tansu.clone();
    options.durable_broker = args.kill_broker;
    // A Postgres of the run's own, killed like every other process.
    options.own_postgres = true;
    options.click_and_collect = true;
    let System {
        procs,
        ports,
        database_url,
        dir,
        click_and_collect,
        ..
    } = System::start(&options).await?;
    println!("chaos: database {database_url}, logs in {}", dir.display());
    let api = load::Api::new(&ports);
    let mut data = load::seed(&api, &load::Sizes::default()).await?;
    data.click_and_collect = click_and_collect;
    let data = Arc::new(data);
    println!(
        "chaos: {} processes up; {} sagas at {}/s, a kill every {:?}",
        procs.len(),
        args.sagas,
        args.rate,
        args.kill_every
    );

    // The killer: round robin over a shuffled list of every process, so each kind is hit.
    let procs = Arc::new(Mutex::new(procs));
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(Mutex::new(Vec::<(String, Kind)>::new()));
    let last_kill = Arc::new(Mutex::new(Instant::now()));
    // How long each Postgres crash took to recover from: kill to the first answered query.
    let recoveries = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let killer = {
        let (procs, stop, kills, last_kill, recoveries) = (
            procs.clone(),
            stop.clone(),
            kills.clone(),
            last_kill.clone(),
            recoveries.clone(),
        );
        let database_url = database_url.clone();
        let every = args.kill_every;
        let kill_broker = args.kill_broker;
        tokio::spawn(async move {
            let mut order: Vec<usize> = procs
                .lock()
                .expect("procs")
                .iter()
                .enumerate()
                .filter(|(_, proc)| kill_broker || proc.kind != Kind::Broker)
                .map(|(index, _)| index)
                .collect();
            let mut next = order.len();
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(every).await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if next == order.len() {
                    order.shuffle(&mut rand::rng());
                    next = 0;
                }
                let victim = order[next];
                next += 1;
                let (name, kind) = {
                    let mut procs = procs.lock().expect("procs");
                    procs[victim].kill();
                    (procs[victim].name.clone(), procs[victim].kind)
                };
                let killed_at = Instant::now();
                *last_kill.lock().expect("last kill") = killed_at;
                kills.lock().expect("kills").push((name.clone(), kind));
                // Redis stays away for a while (an outage, not a blip): the participants
                // must wait for it, never answer `Failed`.
                let down = match kind {
                    Kind::Redis => Duration::from_millis(rand::rng().random_range(10_000..12_000)),
                    _ => Duration::from_millis(rand::rng().random_range(300..1500)),
                };
                tokio::time::sleep(down).await;
                if let Err(err) = procs.lock().expect("procs")[victim].start() {
                    eprintln!("chaos: restarting {name} failed: {err:#}");
                }
                if kind == Kind::Postgres {
                    let recovered =
                        system::postgres_answers(&database_url, Duration::from_secs(60)).await;
                    match recovered {
                        Ok(()) => recoveries
                            .lock()
                            .expect("recoveries")
                            .push(killed_at.elapsed()),
                        Err(err) => eprintln!("chaos: Postgres did not come back: {err:#}"),
                    }
                }
            }
        })
    };

    // The load: a steady arrival rate, at most 64 requests in flight.
    let record: load::Shared = Arc::default();
    let in_flight = Arc::new(Semaphore::new(64));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    let mut issued = 0usize;
    while record.lock().expect("record").sagas.len() < args.sagas {
        let due = started + Duration::from_secs_f64(issued as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        issued += 1;
        let permit = in_flight.clone().acquire_owned().await?;
        let (api, data, record, failures) =
            (api.clone(), data.clone(), record.clone(), failures.clone());
        requests.spawn(async move {
            if let Err(err) = load::one(&api, &data, &record).await {
                failures.lock().expect("failures").push(format!("{err:#}"));
            }
            drop(permit);
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    let load_took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    killer.await?;
    for proc in procs.lock().expect("procs").iter_mut() {
        if !proc.running() {
            proc.start()?;
        }
    }

    // Quiescence: every saga final, measured from the last kill.
    let pool = platform::db::pool(&database_url, 2)?;
    let mut conn = pool.get().await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let unfinished = check::unfinished(&mut conn).await?;
        if unfinished == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let quiet_after = last_kill.lock().expect("last kill").elapsed();

    let record = std::mem::take(&mut *record.lock().expect("record"));
    let results = check::all(&mut conn, &record, &load::Sizes::default()).await?;
    let statuses = check::by_status(&mut conn).await?;
    let kills = kills.lock().expect("kills").clone();
    let violations = results.iter().filter(|(_, n)| *n != 0).count();
    // Read before the processes are killed, so that the shutdown's noise is not all of it.
    let (stuck, tails) = if violations > 0 {
        let tails: Vec<(String, String)> = procs
            .lock()
            .expect("procs")
            .iter()
            .map(|proc| (proc.name.clone(), proc.log_tail(15)))
            .collect();
        (check::stuck(&mut conn).await?, tails)
    } else {
        (Vec::new(), Vec::new())
    };
    for proc in procs.lock().expect("procs").iter_mut() {
        proc.kill();
    }
    let failures = std::mem::take(&mut *failures.lock().expect("failures"));
    println!("\n== sagas");
    for (label, n) in &statuses {
        println!("  {label:<26} {n}");
    }
    report(&record, &kills, &results, load_took, quiet_after, &failures);
    let recoveries = recoveries.lock().expect("recoveries").clone();
    if !recoveries.is_empty() {
        let shown: Vec<String> = recoveries
            .iter()
            .map(|took| format!("{:.1} s", took.as_secs_f64()))
            .collect();
        println!(
            "\n== Postgres crashes: {}, each answered again after (kill to first query): {}",
            recoveries.len(),
            shown.join(", ")
        );
    }
    if violations > 0 {
        // What CI keeps is this output: where the sagas stand and what each process said last.
        println!("\n== not final, by where they stand");
        for (label, n) in &stuck {
            println!("  {label:<60} {n}");
        }
        for (name, tail) in &tails {
            println!("\n== last lines of {name}");
            println!("{tail}");
        }
        println!(
            "\nlogs and the database are kept: {}, {database_url}",
            dir.display()
        );
    } else {
        drop(conn);
        pool.close();
        // The run's Postgres cluster lives in `dir` (and was stopped above): removing the
        // directory removes the database.
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(violations == 0 && failures.is_empty())
}

fn report(
    record: &load::Record,
    kills: &[(String, Kind)],
    results: &[(String, i64)],
    load_took: Duration,
    quiet_after: Duration,
    failures: &[String],
) {
    println!("\n== load");
    println!(
        "sagas accepted: {} in {:.1} s ({:.1}/s)",
        record.sagas.len(),
        load_took.as_secs_f64(),
        record.sagas.len() as f64 / load_took.as_secs_f64()
    );
    let mut answers: Vec<_> = record.answers.iter().collect();
    answers.sort();
    for ((kind, status), n) in answers {
        let note = if load::unexpected(kind, *status) {
            "  (unexpected)"
        } else {
            ""
        };
        println!("  {kind:<11} {status}: {n}{note}");
    }
    println!("\n== kills: {}", kills.len());
    let mut by_kind: std::collections::BTreeMap<String, usize> = Default::default();
    for (name, _) in kills {
        *by_kind.entry(name.clone()).or_default() += 1;
    }
    for (name, n) in by_kind {
        println!("  {name:<22} {n}");
    }
    let kinds: std::collections::BTreeSet<Kind> = kills.iter().map(|(_, kind)| *kind).collect();
    println!("  kinds hit: {kinds:?}");
    println!(
        "\n== quiescence: {:.1} s after the last kill",
        quiet_after.as_secs_f64()
    );
    println!("\n== invariants");
    for (name, n) in results {
        let verdict = if *n == 0 { "ok" } else { "VIOLATED" };
        println!("  {verdict:<8} {name}: {n}");
    }
    for failure in failures {
        println!("  request failed: {failure}");
    }
}
