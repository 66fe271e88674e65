//! `/healthz` and `/readyz` against real dependencies, one of which is then stopped.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use orchestrator::app::{self, Mode};
use orchestrator::config::Config;
use platform::env::Vars;
use platform::health::Probes;
use platform::kafka::Producer;
use platform::testkit::{PrivateRedis, TestDb, TestKafka};
use platform::{cache, db};
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_names_a_stopped_dependency() {
    let test_db = TestDb::migrated().await;
    let kafka = TestKafka::start().await;
    let mut redis = PrivateRedis::start();
    let config = Config::from_vars(&Vars::from_pairs([
        ("DATABASE_URL", test_db.url.as_str()),
        ("REDIS_URL", redis.url.as_str()),
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("API_KEYS", "ops:operator:ops-secret-00000000003"),
    ]))
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = app::start(
        &config,
        kafka.cluster.clone(),
        Mode::Serve,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.local_addr);
    let client = reqwest::Client::new();

    let alive = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), 200);
    assert!(running.loops.stopped().is_empty());

    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");

    redis.stop();
    // Redis is shared by every replica: its outage leaves this one serving, degraded (a
    // 503 from each would empty the Service). Readiness answers from a snapshot taken
    // every second: wait for the next one.
    let degraded = loop {
        let answer = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(
            answer.status(),
            200,
            "a Redis outage never makes it unready"
        );
        let body: serde_json::Value = answer.json().await.unwrap();
        if body["status"] == "degraded" {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let redis_check = degraded["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "redis")
        .cloned()
        .unwrap_or_else(|| panic!("redis named in the checks: {degraded}"));
    assert_eq!(redis_check["state"], "degraded");
    let redis_status = degraded["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "redis")
        .unwrap();
    assert_eq!(redis_status["up"], false);
    // An anonymous caller learns that it is down, not why (no error chains, hosts, ports).
    assert_eq!(redis_status["error"], "down");
    let as_operator = client
        .get(format!("{base}/readyz"))
        .bearer_auth("ops-secret-00000000003")
        .send()
        .await
        .unwrap();
    let body_for_operator: serde_json::Value = as_operator.json().await.unwrap();
    let reason = body_for_operator["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "redis")
        .unwrap()["error"]
        .clone();
    assert!(
        reason.as_str().is_some_and(|reason| reason != "down"),
        "an operator sees why: {reason}"
    );
    let postgres_status = degraded["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "postgres")
        .unwrap();
    assert_eq!(postgres_status["up"], true);

    // A loop that stops (here: recorded as the watcher records a reply consumer's end)
    // turns liveness to 503, naming it, so the replica gets restarted.
    running.loops.record(platform::liveness::Stopped {
        name: "replies-0".to_owned(),
        reason: "panicked".to_owned(),
    });
    let dead = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(dead.status(), 503);
    let body: serde_json::Value = dead.json().await.unwrap();
    assert_eq!(body["detail"], "stopped: replies-0", "{body}");
    // ... and this replica cannot serve its sagas any more: out of rotation.
    let unready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(unready.status(), 503);
    assert_eq!(
        unready.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: serde_json::Value = unready.json().await.unwrap();
    assert_eq!(body["detail"], "stopped: replies-0", "{body}");

    shutdown.cancel();
    running.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_name_an_unreachable_postgres_and_kafka() {
    let closed = free_port();
    let probes = Probes {
        database: db::pool(&format!("postgres://postgres@127.0.0.1:{closed}/x"), 1).unwrap(),
        redis: cache::pool("redis://127.0.0.1:6379").unwrap(),
        kafka: Producer::connect(&format!("127.0.0.1:{closed}")).unwrap(),
    };
    let checks = probes.check().await;
    let down: Vec<&str> = checks
        .iter()
        .filter(|c| c.error.is_some())
        .map(|c| c.name)
        .collect();
    assert_eq!(down, ["postgres", "kafka"]);
}

/// A flood of probes costs the dependencies nothing: `/readyz` answers from the background
/// snapshot, so 500 probers at once for 10 s leave readiness 200 and the API fast. Each
/// prober probes twice a second (1 000 probes/s in all, far past any balancer's rate): the test's own client shares the two cores with the server, and a closed loop of
/// 500 would measure the client's scheduling, not the server.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_probes_leaves_readiness_and_the_api_answering() {
    let test_db = TestDb::migrated().await;
    let kafka = TestKafka::start().await;
    let config = Config::from_vars(&Vars::from_pairs([
        ("DATABASE_URL", test_db.url.as_str()),
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("AUTH", "off"),
    ]))
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = app::start(
        &config,
        kafka.cluster.clone(),
        Mode::Serve,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.local_addr);
    let flood_ends = Instant::now() + Duration::from_secs(10);
    // The probers and the measuring client each get a runtime of their own, so that the
    // measured call waits on the server, not behind 500 client tasks in one scheduler.
    let url = format!("{base}/readyz");
    let flood = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let probers: Vec<_> = (0..500)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move {
                        let client = reqwest::Client::new();
                        let mut statuses = Vec::new();
                        while Instant::now() < flood_ends {
                            if let Ok(answer) = client.get(&url).send().await {
                                statuses.push(answer.status().as_u16());
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        statuses
                    })
                })
                .collect();
            let mut all = Vec::new();
            for prober in probers {
                all.extend(prober.await.unwrap());
            }
            all
        })
    });
    let url = format!("{base}/v1/sagas?limit=5");
    let measure = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = reqwest::Client::new();
            let mut latencies = Vec::new();
            while Instant::now() < flood_ends {
                let started = Instant::now();
                let answer = client.get(&url).send().await.unwrap();
                assert_eq!(answer.status(), 200);
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies
        })
    });
    let (flood, measure) = tokio::task::spawn_blocking(move || (flood.join(), measure.join()))
        .await
        .unwrap();
    let statuses = flood.unwrap();
    let mut latencies = measure.unwrap();
    let probes = statuses.len();
    assert!(statuses.iter().all(|s| *s == 200), "readiness flickered");
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    println!(
        "{probes} probes in 10 s; API p50 {:?}, p99 {p99:?} over {} calls",
        latencies[latencies.len() / 2],
        latencies.len()
    );
    assert!(probes > 4_000, "the flood happened ({probes})");
    // Probes that reached Postgres or the broker would hold the API for seconds; 500 ms
    // leaves room for a machine busy with other work (a release build beside CI measured
    // 162 ms here, an idle one well under 100).
    assert!(
        p99 < Duration::from_millis(500),
        "API p99 {p99:?} under the flood"
    );
    shutdown.cancel();
    running.wait().await;
}
