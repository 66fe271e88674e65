//! What waiting requests cost one replica while nothing happens:
//!
//! cargo bench -p orchestrator --bench waiters [-- WAITERS [SECONDS]]
//!
//! Starts `orchestrator dev` (embedded broker), registers a flow whose only step waits for
//! a signal, starts one saga of it, then holds WAITERS (default 1 000) concurrent
//! `GET /v1/sagas/{id}?wait=25` requests open on it. Once every one waits (the
//! `sagaflow_waiting_requests` gauge says so), it measures the orchestrator's resident
//! memory against before, and its CPU use over SECONDS (default 10) in which nothing
//! happens.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chaos::cluster::Kind;
use chaos::system::{self, System};
use serde_json::{Value, json};

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("waiters: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let waiters: usize = args.first().map_or(Ok(1_000), |a| a.parse())?;
    let window = Duration::from_secs(args.get(1).map_or(Ok(10), |a| a.parse())?);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_orchestrator"))
        .parent()
        .context("binary directory")?
        .to_owned();
    let mut options = system::Options::new("waiters", bin);
    options.dev = true;
    options.replicas = 1;
    options.tansu = None;
    let system = System::start(&options).await?;
    let base = format!("http://127.0.0.1:{}", system.ports[0]);
    let client = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", chaos::load::API_KEY).parse()?,
            )]
            .into_iter()
            .collect(),
        )
        .pool_max_idle_per_host(waiters + 8)
        .timeout(Duration::from_secs(60))
        .build()?;

    let flow = json!({
        "name": "held", "version": 1, "description": "waits for a signal that never comes",
        "input": {}, "steps": [{ "name": "hold", "kind": "signal", "scope": "operator",
                                  "timeout_ms": 3_600_000 }]
    });
    let registered = client
        .post(format!("{base}/v1/saga-definitions"))
        .json(&flow)
        .send()
        .await?;
    anyhow::ensure!(
        registered.status().is_success(),
        "register: {}",
        registered.status()
    );
    let started: Value = client
        .post(format!("{base}/v1/sagas"))
        .json(&json!({ "definition": "held", "input": {} }))
        .send()
        .await?
        .json()
        .await?;
    let saga = started["saga_id"].as_str().context("saga id")?.to_owned();

    let orchestrator = system
        .procs
        .iter()
        .find(|proc| proc.kind == Kind::Orchestrator)
        .context("the orchestrator process")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = orchestrator.rss_kib().context("RSS")?;
    let idle_cpu = cpu_over(orchestrator, window).await?;

    let url = format!("{base}/v1/sagas/{saga}?wait=25");
    let mut tasks = Vec::new();
    for _ in 0..waiters {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(25) * 3;
            while Instant::now() < deadline {
                if client.get(&url).send().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    let gauge = format!("sagaflow_waiting_requests {waiters}\n");
    let since = Instant::now();
    loop {
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        if metrics.contains(&gauge) {
            break;
        }
        anyhow::ensure!(
            since.elapsed() < Duration::from_secs(20),
            "not every request is waiting after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_waiting = orchestrator.rss_kib().context("RSS")?;
    let waiting_cpu = cpu_over(orchestrator, window).await?;
    for task in tasks {
        task.abort();
    }
    println!("waiters: {waiters} requests waiting on one saga, orchestrator dev, embedded broker");
    println!(
        "  memory   {:.1} MiB resident before, {:.1} MiB with them waiting: +{:.1} MiB",
        rss_before as f64 / 1024.0,
        rss_waiting as f64 / 1024.0,
        (rss_waiting.saturating_sub(rss_before)) as f64 / 1024.0
    );
    println!(
        "  CPU      {:.2}% of a core idle before, {:.2}% with them waiting ({} s each)",
        idle_cpu * 100.0,
        waiting_cpu * 100.0,
        window.as_secs()
    );
    let System {
        procs,
        dir,
        database_url,
        ..
    } = system;
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    platform::db::drop_database(&database_url).await?;
    Ok(())
}

/// The share of one core the process used over `window`.
async fn cpu_over(proc: &chaos::cluster::Proc, window: Duration) -> anyhow::Result<f64> {
    let before = proc.cpu_time().context("CPU time")?;
    tokio::time::sleep(window).await;
    let after = proc.cpu_time().context("CPU time")?;
    Ok((after - before).as_secs_f64() / window.as_secs_f64())
}
