//! The load generator: sagaflow as separate processes with real participants (Redis locks,
//! Postgres), driven through its HTTP API the way users drive it, reporting what they feel.
//!
//! ```text
//! cargo bench -p orchestrator --bench load -- [--dev] [--clients N | --rate R] [--sagas N]
//!     [--flow order|coupon|mix] [--workers ROLE=N,...] [--poll-ms MS] [--env NAME=VALUE]...
//!     [--bin DIR] [--idle S] [--keep]
//! ```
//! - `--dev`: one `orchestrator dev` process with its embedded broker. Otherwise one
//!   `orchestrator serve` and one `worker` per role (`--workers payment=3` for more) on a
//!   tansu of its own (`--tansu PATH` or `TANSU`), or on `KAFKA_BROKERS`.
//! - Closed loop (`--clients N`, default 1): N clients, each starts a saga and waits for its
//!   end before the next. Open loop (`--rate R`): a saga starts every 1/R s whatever the
//!   system does, so queueing shows in the latency.
//! - `--idle S` first measures each process's CPU use over S seconds with no requests (what
//!   consumer polling costs, see `KAFKA_FETCH_WAIT_MS`).
//! - `--keep` keeps the run's database and logs.
//! - `--bin DIR` runs the `orchestrator` and `worker` binaries in DIR (another build, to
//!   compare before and after) instead of this build's.
//! - Latency is measured from the POST to the first GET that shows a final status: by
//!   default a client waits for the end with `GET /v1/sagas/{id}?wait=25` (answered when
//!   the saga settles), or polls `--poll-ms` apart for comparison, which bounds the
//!   resolution.
//!
//! It reports sagas/s, completion latency percentiles, step latency per role (from the saga
//! history) and where one step's time goes (relay, broker to worker, worker, back, apply),
//! peak RSS per process, Postgres transactions (and with `--statements`, statements) per
//! saga over the measured window, and the invariants of the chaos run (exit code 1 when one
//! is broken).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chaos::cluster::Kind;
use chaos::load::{Api, Data, Record, Sizes};
use chaos::system::{self, System};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Text};
use diesel_async::RunQueryDsl;
use rand::Rng as _;
use rand::seq::IndexedRandom as _;
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "load/crowd.rs"]
mod crowd;

#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
enum Flow {
    Order,
    Coupon,
    Mix,
}

/// Drives sagas through the HTTP API of sagaflow run as separate processes and reports
/// what users feel and what each saga costs (see README, "Load generator").
#[derive(Debug, clap::Parser)]
#[command(name = "load")]
struct Args {
    /// One `orchestrator dev` process with its embedded broker.
    #[arg(long)]
    dev: bool,
    /// Closed loop: clients that each wait for their saga to end before the next.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    clients: usize,
    /// Open loop instead: sagas started per second, whatever happens.
    #[arg(long, value_parser = positive)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 200)]
    sagas: usize,
    /// Sagas run before measuring.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[arg(long, value_enum, default_value_t = Flow::Order)]
    flow: Flow,
    /// Poll each saga's status this many milliseconds apart, for comparison; unset, a
    /// client waits for the end with `GET /v1/sagas/{id}?wait=25` (no polling).
    #[arg(long = "poll-ms", value_parser = millis)]
    poll: Option<Duration>,
    /// Worker processes per role, e.g. `payment=3,inventory=2`.
    #[arg(long, value_delimiter = ',', value_parser = role_count)]
    workers: Vec<(String, usize)>,
    /// A tansu binary (else `KAFKA_BROKERS`).
    #[arg(long, env = "TANSU")]
    tansu: Option<PathBuf>,
    /// `NAME=VALUE` passed to every process; repeatable.
    #[arg(long, value_parser = name_value)]
    env: Vec<(String, String)>,
    /// Run these `orchestrator` and `worker` binaries (another build, for a before/after).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Measure each process's CPU use while idle for this many seconds first.
    #[arg(long, default_value = "0", value_parser = seconds)]
    idle: Duration,
    /// Keep the database and logs for a look afterwards.
    #[arg(long)]
    keep: bool,
    /// Run a Postgres cluster of the run's own with `pg_stat_statements`, and print the
    /// statements per saga and the ten that cost most.
    #[arg(long)]
    statements: bool,
    /// Another API key crowds the server meanwhile with this many requests at once (half
    /// waiting reads, half signals at a saga of its own), as issue 31's attacker did: the
    /// measured latency is then the other clients'. Not with `--dev` (no keys there).
    #[arg(long, default_value_t = 0)]
    crowd: usize,
    /// Passed by `cargo bench` to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive count, got `{value}`")),
    }
}

fn positive(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(number) if number > 0.0 => Ok(number),
        _ => Err(format!("expected a positive number, got `{value}`")),
    }
}

fn millis(value: &str) -> Result<Duration, String> {
    value
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("expected milliseconds, got `{value}`"))
}

fn seconds(value: &str) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(secs) if secs >= 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("expected seconds, got `{value}`")),
    }
}

fn role_count(value: &str) -> Result<(String, usize), String> {
    let (role, n) = value.split_once('=').ok_or("expected ROLE=N")?;
    if !system::ROLES.contains(&role) {
        return Err(format!("no role `{role}`"));
    }
    let n = n.parse().map_err(|_| format!("`{n}` is not a count"))?;
    Ok((role.to_owned(), n))
}

fn name_value(value: &str) -> Result<(String, String), String> {
    let (name, value) = value.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok((name.to_owned(), value.to_owned()))
}

fn args() -> anyhow::Result<Args> {
    Ok(<Args as clap::Parser>::parse())
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(err) => {
            eprintln!("load: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Where this build's `orchestrator` and `worker` binaries are (both are this package's,
/// so cargo builds them for the bench).
fn binaries() -> anyhow::Result<PathBuf> {
    let orchestrator = PathBuf::from(env!("CARGO_BIN_EXE_orchestrator"));
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_worker"));
    let bin = orchestrator
        .parent()
        .context("binary directory")?
        .to_owned();
    anyhow::ensure!(
        worker.parent() == Some(bin.as_path()),
        "the worker binary is not beside the orchestrator's"
    );
    Ok(bin)
}

async fn run() -> anyhow::Result<bool> {
    let args = args()?;
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => binaries()?,
    };
    let mut options = system::Options::new("load", bin);
    options.dev = args.dev;
    options.replicas = 1;
    options.workers = args.workers.clone();
    options.tansu = args.tansu.clone();
    options.env = args.env.clone();
    if args.crowd > 0 {
        // The harness's own key carries every simulated user, so the system lifts the
        // per-key bounds unless told; with a crowd, they are what is measured: the
        // defaults, unless the run sets them.
        for (name, default) in [
            ("HTTP_MAX_WAITS_PER_KEY", "64"),
            ("HTTP_MAX_SIGNALS_PER_KEY", "8"),
        ] {
            if !options.env.iter().any(|(set, _)| set == name) {
                options.env.push((name.to_owned(), default.to_owned()));
            }
        }
    }
    options.own_postgres = args.statements;
    let system = System::start(&options).await?;
    let api = Api::new(&system.ports);
    // Plenty of everything: a load run measures the happy path, not refusals.
    let sizes = Sizes {
        products: 20,
        stock: 1_000_000,
        users: 500,
        balance: 1_000_000_000,
        vendors: 10,
        campaigns: (args.sagas + args.warmup).div_ceil(100) * 2 + 2,
        coupons: 100,
    };
    let data = Arc::new(chaos::load::seed(&api, &sizes).await?);
    let pool = platform::db::pool(&system.database_url, 2)?;

    let client = Client {
        api: api.clone(),
        data: data.clone(),
        flow: args.flow,
        poll: args.poll,
        users: Arc::new(Mutex::new(0)),
    };
    // Warm-up: consumer groups joined, connections open, the first sagas done.
    for _ in 0..args.warmup {
        client.one().await?;
    }

    let idle = if args.idle.is_zero() {
        Vec::new()
    } else {
        idle_cpu(&system, args.idle).await
    };

    // What the background loops (timers, relay, retention) commit per second when idle.
    let quiet = Duration::from_secs(3);
    let background = {
        let before = transactions(&pool).await?;
        tokio::time::sleep(quiet).await;
        (transactions(&pool).await? - before) as f64 / quiet.as_secs_f64()
    };
    // The measured window: only the measured sagas (and the client's own GETs) run in it.
    if args.statements {
        statements::reset(&pool).await?;
    }
    let crowd = if args.crowd > 0 {
        anyhow::ensure!(
            !args.dev,
            "--crowd needs API keys, which `dev` runs without"
        );
        let crowd = crowd::Crowd::start(&api, &system.ports, args.crowd).await?;
        // Let it take its places before the measured window.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some(crowd)
    } else {
        None
    };
    let transactions_before = transactions(&pool).await?;
    let cpu_before = cpu_times(&system);
    let started = Instant::now();
    let outcomes = match args.rate {
        None => closed_loop(&client, args.clients, args.sagas).await,
        Some(rate) => open_loop(&client, rate, args.sagas).await,
    };
    let elapsed = started.elapsed();
    let crowded = match crowd {
        Some(crowd) => {
            let counts = crowd.counts();
            crowd.stop().await?;
            Some(counts)
        }
        None => None,
    };
    let cpu_after = cpu_times(&system);
    let measured = outcomes.len().max(1) as f64;
    let per_saga = ((transactions(&pool).await? - transactions_before) as f64
        - background * elapsed.as_secs_f64())
        / measured;
    let top = if args.statements {
        Some(statements::top(&pool, outcomes.len().max(1)).await?)
    } else {
        None
    };

    let mut record = Record::default();
    let mut latencies = Vec::with_capacity(outcomes.len());
    let mut statuses: std::collections::BTreeMap<String, usize> = Default::default();
    let mut polls = 0usize;
    for outcome in &outcomes {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(err) => anyhow::bail!("a saga failed to run: {err:#}"),
        };
        record.sagas.push(outcome.saga);
        latencies.push(outcome.latency);
        polls += outcome.polls;
        *statuses.entry(outcome.status.clone()).or_default() += 1;
    }
    latencies.sort();

    let mut conn = pool.get().await?;
    let steps = step_latencies(&mut conn).await?;
    let breakdown = step_breakdown(&mut conn).await?;
    let results = chaos::check::all(&mut conn, &record, &sizes).await?;
    let mode = match args.rate {
        None => format!("closed loop, {} clients", args.clients),
        Some(rate) => format!("open loop, {rate}/s"),
    };
    let topology = if args.dev {
        "one `orchestrator dev`, embedded broker".to_owned()
    } else {
        let workers: usize = system
            .procs
            .iter()
            .filter(|p| p.kind == Kind::Worker)
            .count();
        format!(
            "`orchestrator serve` + {workers} `worker` processes, {}",
            system.broker
        )
    };
    println!(
        "load: {} {:?} sagas, {mode}; {topology}",
        args.sagas, args.flow
    );
    println!(
        "  throughput        {:>9.1} sagas/s ({} in {:.2} s)",
        outcomes.len() as f64 / elapsed.as_secs_f64(),
        outcomes.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "  latency ms        p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}  (POST to final status; {}, {:.1} GETs per saga)",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.95)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        match args.poll {
            Some(poll) => format!("polled every {} ms", poll.as_millis()),
            None => "waiting GETs (?wait=25), no polling".to_owned(),
        },
        polls as f64 / outcomes.len().max(1) as f64
    );
    println!("  final statuses    {statuses:?}");
    if let Some((sent, refused)) = crowded {
        println!(
            "  crowd             {} requests at once from another key: {sent} sent, {refused} answered 429",
            args.crowd
        );
    }
    println!("  step latency ms   (first send to success, from the history)");
    for step in &steps {
        println!(
            "    {:<13} p50 {:.1}  p99 {:.1}  ({} steps)",
            step.role, step.p50, step.p99, step.n
        );
    }
    println!(
        "  one step, p50 ms  relay  to-worker  worker   back  apply  (from queued to acknowledged, taken, replied, applied, locked)"
    );
    for hop in &breakdown {
        println!(
            "    {:<13} {:>6.1} {:>10.1} {:>7.1} {:>6.1} {:>6.1}  ours (relay + apply) {:.1}  ({} steps)",
            hop.role,
            hop.relay,
            hop.to_worker,
            hop.worker,
            hop.back,
            hop.apply,
            hop.relay + hop.apply,
            hop.n
        );
    }
    println!(
        "  Postgres          {per_saga:.1} transactions per saga (over the measured window, the client's GETs included; idle loops' {background:.1}/s taken out)"
    );
    if let Some((total, by_time, by_calls)) = &top {
        println!(
            "  statements        {total:.1} per saga (pg_stat_statements over the measured window; this client's own queries left out); the ten that cost most:"
        );
        let show = |statements: &[statements::PerSaga]| {
            for statement in statements {
                println!(
                    "    {:>6.2} calls {:>7.3} ms  {}",
                    statement.calls, statement.ms, statement.query
                );
            }
        };
        show(by_time);
        println!("                    the ten sent most:");
        show(by_calls);
    }
    println!("  CPU ms per saga   (while measured; the backends of Postgres and this client too)");
    let mut total = 0.0;
    for ((name, before), (_, after)) in cpu_before.iter().zip(&cpu_after) {
        let per_saga = ms(after.saturating_sub(*before)) / outcomes.len().max(1) as f64;
        total += per_saga;
        println!("    {name:<22} {per_saga:>7.2}");
    }
    println!(
        "    {:<22} {total:>7.2}  ({:.0}% of the machine's {} cores)",
        "all",
        total * outcomes.len() as f64 / ms(elapsed) / cores() as f64 * 100.0,
        cores()
    );
    if !idle.is_empty() {
        println!(
            "  idle CPU          (% of one core over {:.0} s, nothing running)",
            args.idle.as_secs_f64()
        );
        for (name, share) in &idle {
            println!("    {name:<22} {:>6.2} %", share * 100.0);
        }
    }
    println!("  peak RSS MiB");
    for proc in &system.procs {
        if let Some(kib) = proc.peak_rss_kib() {
            println!("    {:<22} {:>7.1}", proc.name, kib as f64 / 1024.0);
        }
    }
    let broken: Vec<_> = results.iter().filter(|(_, n)| *n != 0).collect();
    if args.keep {
        println!(
            "  kept              {}, {}",
            system.dir.display(),
            system.database_url
        );
        return Ok(broken.is_empty());
    }
    if broken.is_empty() {
        println!("  invariants        all {} hold", results.len());
    } else {
        for (name, n) in &broken {
            println!("  VIOLATED          {name}: {n}");
        }
        println!(
            "  logs and database kept: {}, {}",
            system.dir.display(),
            system.database_url
        );
        return Ok(false);
    }
    drop(conn);
    pool.close();
    let System {
        procs,
        dir,
        database_url,
        ..
    } = system;
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    if !args.statements {
        // The run's own cluster (`--statements`) went with its directory.
        platform::db::drop_database(&database_url).await?;
    }
    Ok(true)
}

#[derive(Clone)]
struct Client {
    api: Api,
    data: Arc<Data>,
    flow: Flow,
    /// `None`: wait for the end with the wait API instead of polling.
    poll: Option<Duration>,
    /// Coupon uses go round the users, so that no user claims one campaign twice.
    users: Arc<Mutex<usize>>,
}

struct Outcome {
    saga: Uuid,
    status: String,
    latency: Duration,
    polls: usize,
}

impl Client {
    /// Starts one saga and waits for its final status.
    async fn one(&self) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let saga = self.start().await?;
        let mut polls = 0;
        let path = match self.poll {
            Some(_) => format!("/v1/sagas/{saga}"),
            None => format!("/v1/sagas/{saga}?wait=25"),
        };
        loop {
            polls += 1;
            let view: Value = self.api.get(&path).await?;
            let status = view["status"].as_str().unwrap_or_default();
            if matches!(status, "COMPLETED" | "COMPENSATED" | "CANCELLED" | "FAILED") {
                return Ok(Outcome {
                    saga,
                    status: status.to_owned(),
                    latency: started.elapsed(),
                    polls,
                });
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "saga {saga} not final after 120 s"
            );
            if let Some(poll) = self.poll {
                tokio::time::sleep(poll).await;
            }
        }
    }

    /// Starts one saga (POST) and returns its id.
    async fn start(&self) -> anyhow::Result<Uuid> {
        let coupon = match self.flow {
            Flow::Order => false,
            Flow::Coupon => true,
            Flow::Mix => rand::rng().random_range(0..4) == 0,
        };
        let (path, body) = if coupon {
            let n = {
                let mut users = self.users.lock().expect("users");
                *users += 1;
                *users
            };
            let users = self.data.users.len();
            // Each campaign takes 100 claims; user n % users, campaign n / 100 (two sets).
            let campaign = self.data.campaigns[(n / 100) % self.data.campaigns.len()];
            let user = self.data.users[n % users];
            (
                format!("/v1/coupons/{campaign}/uses"),
                json!({ "user_id": user }),
            )
        } else {
            let (user, sku) = {
                let mut rng = rand::rng();
                (
                    *self.data.users.choose(&mut rng).expect("users"),
                    self.data.skus.choose(&mut rng).expect("skus").clone(),
                )
            };
            (
                "/v1/orders".to_owned(),
                json!({
                    "user_id": user,
                    "lines": [{ "sku": sku, "quantity": 1 }],
                    "shipping_address": { "country": "KR", "city": "Seoul", "line1": "1 Road", "postal_code": "04790" },
                }),
            )
        };
        let (status, answer) = self
            .api
            .post(&path, &body, &Uuid::now_v7().to_string())
            .await?;
        anyhow::ensure!(status == 202, "POST {path}: {status} {answer}");
        answer["saga_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .with_context(|| format!("no saga_id in {answer}"))
    }
}

async fn closed_loop(
    client: &Client,
    clients: usize,
    sagas: usize,
) -> Vec<anyhow::Result<Outcome>> {
    let left = Arc::new(Mutex::new(sagas));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, left) = (client.clone(), left.clone());
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                {
                    let mut left = left.lock().expect("left");
                    if *left == 0 {
                        break;
                    }
                    *left -= 1;
                }
                outcomes.push(client.one().await);
            }
            outcomes
        });
    }
    let mut outcomes = Vec::with_capacity(sagas);
    while let Some(done) = tasks.join_next().await {
        outcomes.extend(done.expect("client task"));
    }
    outcomes
}

async fn open_loop(client: &Client, rate: f64, sagas: usize) -> Vec<anyhow::Result<Outcome>> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..sagas {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        tasks.spawn(async move { client.one().await });
    }
    let mut outcomes = Vec::with_capacity(sagas);
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("saga task"));
    }
    outcomes
}

/// Each sagaflow process's CPU use over `period` with no requests: what polling costs.
async fn idle_cpu(system: &System, period: Duration) -> Vec<(String, f64)> {
    let sagaflow = |kind: Kind| matches!(kind, Kind::Orchestrator | Kind::Worker);
    // The broker too: a short fetch wait costs it as much as its clients.
    let before: Vec<Option<Duration>> = system.procs.iter().map(|p| p.cpu_time()).collect();
    tokio::time::sleep(period).await;
    system
        .procs
        .iter()
        .zip(before)
        .filter(|(proc, _)| sagaflow(proc.kind) || proc.kind == Kind::Broker)
        .filter_map(|(proc, before)| {
            let used = proc.cpu_time()?.checked_sub(before?)?;
            Some((proc.name.clone(), used.as_secs_f64() / period.as_secs_f64()))
        })
        .collect()
}

/// CPU time so far of every process of the run, the Postgres server's, and this client's.
fn cpu_times(system: &System) -> Vec<(String, Duration)> {
    let mut times: Vec<(String, Duration)> = system
        .procs
        .iter()
        .map(|proc| (proc.name.clone(), proc.cpu_time().unwrap_or_default()))
        .collect();
    times.push((
        "postgres".to_owned(),
        chaos::cluster::cpu_time_named("postgres"),
    ));
    times.push((
        "load client".to_owned(),
        chaos::cluster::cpu_time_of(std::process::id()).unwrap_or_default(),
    ));
    times
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Committed and rolled-back transactions in this run's database so far. Backends publish
/// their counters at most once a second, so this first waits that long.
async fn transactions(pool: &platform::db::Pool) -> anyhow::Result<i64> {
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut conn = pool.get().await?;
    let row: Count = diesel::sql_query(
        "SELECT (xact_commit + xact_rollback)::bigint AS n FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .get_result(&mut conn)
    .await?;
    Ok(row.n)
}

#[derive(QueryableByName)]
struct StepLatency {
    #[diesel(sql_type = Text)]
    role: String,
    #[diesel(sql_type = Double)]
    p50: f64,
    #[diesel(sql_type = Double)]
    p99: f64,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// First send to success of every forward step (re-sends and retries included), per role,
/// from the saga history.
async fn step_latencies(conn: &mut platform::db::Connection) -> anyhow::Result<Vec<StepLatency>> {
    Ok(diesel::sql_query(
        "WITH sent AS ( \
           SELECT saga_id, step, min(detail ->> 'role') AS role, min(recorded_at) AS at \
           FROM saga_history WHERE kind = 'command.sent' GROUP BY saga_id, step), \
         done AS ( \
           SELECT saga_id, step, min(recorded_at) AS at \
           FROM saga_history WHERE kind = 'step.succeeded' GROUP BY saga_id, step) \
         SELECT sent.role, \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done.at - sent.at)) * 1000 AS p50, \
           percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM done.at - sent.at)) * 1000 AS p99, \
           count(*) AS n \
         FROM sent JOIN done USING (saga_id, step) \
         GROUP BY 1 ORDER BY 1",
    )
    .load(conn)
    .await?)
}

/// Where one forward step's time goes, per role (medians, ms), joined from the timestamps
/// each hop leaves: the outbox row (queued, then marked published once the broker
/// acknowledged it), the worker's inbox row (its transaction's start) and reply
/// (`replied_at`), the engine's reply inbox row (its transaction's start), and the
/// reply's history entry (stamped when its saga was locked; the messages its transition
/// queues carry the same time, so the rest of that transaction is the next step's relay).
#[derive(QueryableByName)]
struct Breakdown {
    #[diesel(sql_type = Text)]
    role: String,
    /// Queued in the outbox to acknowledged by the broker: the engine's commit, the
    /// relay's wake-up and read, the produce.
    #[diesel(sql_type = Double)]
    relay: f64,
    /// Acknowledged to the worker's transaction: the consumer's fetch, the worker's inbox
    /// read and its Redis locks.
    #[diesel(sql_type = Double)]
    to_worker: f64,
    /// The worker's transaction up to its reply.
    #[diesel(sql_type = Double)]
    worker: f64,
    /// Reply to the engine's transaction: the worker's commit, the reply's produce, the
    /// broker, the engine consumer's fetch.
    #[diesel(sql_type = Double)]
    back: f64,
    /// The engine's transaction up to its saga's lock: the reply's claim, the row lock.
    #[diesel(sql_type = Double)]
    apply: f64,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn step_breakdown(conn: &mut platform::db::Connection) -> anyhow::Result<Vec<Breakdown>> {
    Ok(diesel::sql_query(
        "WITH hops AS ( \
           SELECT pc.role, o.created_at AS queued, o.published_at AS published, \
             pc.processed_at AS taken, (pc.reply ->> 'replied_at')::timestamptz AS replied, \
             pr.processed_at AS applied, h.recorded_at AS next \
           FROM outbox o \
           JOIN processed_commands pc ON pc.command_id = (o.payload ->> 'id')::uuid \
           JOIN processed_replies pr ON pr.reply_id = (pc.reply ->> 'id')::uuid \
           JOIN saga_history h ON h.saga_id = pr.saga_id AND h.kind = 'reply.received' \
             AND h.detail ->> 'reply_id' = pr.reply_id::text \
           WHERE o.payload ->> 'direction' = 'forward' AND o.published_at IS NOT NULL) \
         SELECT role, \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM published - queued)) * 1000 AS relay, \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM taken - published)) * 1000 AS to_worker, \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM replied - taken)) * 1000 AS worker, \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied - replied)) * 1000 AS back, \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM next - applied)) * 1000 AS apply, \
           count(*) AS n \
         FROM hops GROUP BY role ORDER BY role",
    )
    .load(conn)
    .await?)
}

/// `pg_stat_statements` over a measured window (the run's own Postgres preloads it).
mod statements {
    use diesel::sql_types::{Double, Text};
    use diesel_async::RunQueryDsl as _;

    /// One statement's share of a saga.
    #[derive(diesel::QueryableByName)]
    pub struct PerSaga {
        #[diesel(sql_type = Double)]
        pub calls: f64,
        #[diesel(sql_type = Double)]
        pub ms: f64,
        #[diesel(sql_type = Text)]
        pub query: String,
    }

    /// This run's database, without the queries of this client (the counters it reads, the
    /// sagas it waits for).
    const OURS: &str = "dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                        AND query NOT LIKE '%pg_stat%' AND query NOT LIKE '%status NOT IN (%'";

    pub async fn reset(pool: &platform::db::Pool) -> anyhow::Result<()> {
        let mut conn = pool.get().await?;
        diesel::sql_query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await?;
        diesel::sql_query("SELECT pg_stat_statements_reset()")
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Statements per saga in all, the ten that took most time and the ten sent most, per
    /// saga.
    pub async fn top(
        pool: &platform::db::Pool,
        sagas: usize,
    ) -> anyhow::Result<(f64, Vec<PerSaga>, Vec<PerSaga>)> {
        let mut conn = pool.get().await?;
        let n = sagas as f64;
        #[derive(diesel::QueryableByName)]
        struct Total {
            #[diesel(sql_type = Double)]
            calls: f64,
        }
        let total: Total = diesel::sql_query(format!(
            "SELECT coalesce(sum(calls), 0)::float8 / $1 AS calls FROM pg_stat_statements WHERE {OURS}"
        ))
        .bind::<Double, _>(n)
        .get_result(&mut conn)
        .await?;
        let mut ten = async |order: &str| {
            diesel::sql_query(format!(
                "SELECT calls::float8 / $1 AS calls, total_exec_time / $1 AS ms, \
                 left(regexp_replace(query, '\\s+', ' ', 'g'), 110) AS query \
                 FROM pg_stat_statements WHERE {OURS} ORDER BY {order} DESC LIMIT 10"
            ))
            .bind::<Double, _>(n)
            .load::<PerSaga>(&mut conn)
            .await
        };
        let by_time = ten("total_exec_time").await?;
        let by_calls = ten("calls").await?;
        Ok((total.calls, by_time, by_calls))
    }
}
