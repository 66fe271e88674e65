//! `--crowd N`: while the measured clients run, another API key holds as many waiting
//! reads as it may and floods signals at a saga of its own (what issue 31's attacker did:
//! 1 100 waits and 300 signals). It measures what one caller's crowd costs the others: with
//! per-key bounds the crowd's excess is answered 429 and the others' latency stays.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chaos::load::Api;
use serde_json::{Value, json};
use uuid::Uuid;

/// The crowd's key, in `chaos::load::API_KEY_ENTRY`.
const KEY: &str = chaos::load::CROWD_KEY;

/// A flow the crowd may start (client scope) that waits for two signals in turn: a
/// signal for the second while it waits for the first locks the saga's row and is
/// refused, the costliest kind of refusal.
fn flow() -> Value {
    json!({
        "name": "crowd_hold", "version": 1, "start_scopes": ["client"], "input": {},
        "steps": [
            { "name": "first", "kind": "signal", "scope": "client", "timeout_ms": 3_600_000 },
            { "name": "second", "kind": "signal", "scope": "client", "timeout_ms": 3_600_000 }
        ]
    })
}

/// The crowd's requests so far, by answer.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    refused_429: AtomicU64,
}

pub struct Crowd {
    http: reqwest::Client,
    /// Its saga's signal URL, without the signal's name.
    signals: String,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    counts: Arc<Counts>,
}

impl Crowd {
    /// Starts `n` crowding tasks (half waiting reads, half signals) against `ports`.
    pub async fn start(admin: &Api, ports: &[u16], n: usize) -> anyhow::Result<Crowd> {
        let (status, body) = admin
            .post("/v1/saga-definitions", &flow(), &Uuid::now_v7().to_string())
            .await?;
        anyhow::ensure!(
            status == 201 || status == 200,
            "crowd flow: {status} {body}"
        );
        let http = reqwest::Client::builder()
            .default_headers(
                [(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {KEY}").parse()?,
                )]
                .into_iter()
                .collect(),
            )
            .pool_max_idle_per_host(n)
            .build()?;
        let base = format!("http://127.0.0.1:{}", ports[0]);
        let started: Value = http
            .post(format!("{base}/v1/sagas"))
            .json(&json!({ "definition": "crowd_hold", "input": {} }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let saga = started["saga_id"].as_str().unwrap_or_default().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let tasks = (0..n)
            .map(|i| {
                let (http, stop, counts) = (http.clone(), stop.clone(), counts.clone());
                let (wait, signal) = (
                    format!("{base}/v1/sagas/{saga}?wait=25"),
                    format!("{base}/v1/sagas/{saga}/signals/second"),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let sent = if i % 2 == 0 {
                            http.get(&wait).send().await
                        } else {
                            http.post(&signal).json(&json!({ "n": i })).send().await
                        };
                        counts.sent.fetch_add(1, Ordering::Relaxed);
                        if sent.is_ok_and(|answer| answer.status().as_u16() == 429) {
                            counts.refused_429.fetch_add(1, Ordering::Relaxed);
                            // It holds its places rather than spinning on refusals.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                })
            })
            .collect();
        Ok(Crowd {
            http,
            signals: format!("{base}/v1/sagas/{saga}/signals/"),
            stop,
            tasks,
            counts,
        })
    }

    /// (requests sent, answered 429) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.sent.load(Ordering::Relaxed),
            self.counts.refused_429.load(Ordering::Relaxed),
        )
    }

    /// Stops the crowd and ends its saga (both signals), so that every saga is final.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.abort();
        }
        for signal in ["first", "second"] {
            self.http
                .post(format!("{}{signal}", self.signals))
                .json(&json!({}))
                .send()
                .await?
                .error_for_status()?;
        }
        Ok(())
    }
}
