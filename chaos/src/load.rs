//! The workload: both flows through the HTTP API at a steady arrival rate, spread over both
//! orchestrator replicas. Every POST carries an `Idempotency-Key`, so a request that met a
//! killed replica (or a 5xx) is sent again, to either replica, and counts once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::Rng as _;
use rand::seq::IndexedRandom as _;
use serde_json::{Value, json};
use uuid::Uuid;

/// Starting figures of the data set; the checks compare against them.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub products: usize,
    pub stock: i64,
    pub users: usize,
    pub balance: i64,
    pub vendors: usize,
    pub campaigns: usize,
    pub coupons: i64,
}

/// The coupon value every campaign pays (90% of it to its vendor).
pub const COUPON_VALUE: i64 = 1_000;

impl Default for Sizes {
    /// Small enough that stock, wallets and coupons run out under the chaos load, so
    /// refusals and compensations happen too.
    fn default() -> Self {
        Self {
            products: 20,
            stock: 150,
            users: 200,
            balance: 30_000,
            vendors: 10,
            campaigns: 20,
            coupons: 100,
        }
    }
}

/// The harness's API key, with every scope, as `serve` is given it (`dev` runs open and
/// ignores it).
pub const API_KEY_ENTRY: &str = "harness:client+operator+admin:harness-key-0123456789,\
    crowd:client:crowd-key-0123456789abc";
pub const API_KEY: &str = "harness-key-0123456789";
/// A second client, for the load generator's `--crowd` (another caller crowding the API).
pub const CROWD_KEY: &str = "crowd-key-0123456789abc";

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    bases: Vec<String>,
}

impl Api {
    pub fn new(ports: &[u16]) -> Self {
        Self {
            http: reqwest::Client::builder()
                .default_headers(
                    [(
                        reqwest::header::AUTHORIZATION,
                        format!("Bearer {API_KEY}").parse().expect("header value"),
                    )]
                    .into_iter()
                    .collect(),
                )
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
            bases: ports
                .iter()
                .map(|port| format!("http://127.0.0.1:{port}"))
                .collect(),
        }
    }

    /// POSTs until a replica answers without a server error; `key` makes the repeats safe.
    pub async fn post(&self, path: &str, body: &Value, key: &str) -> anyhow::Result<(u16, Value)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut attempt = 0usize;
        loop {
            let base = &self.bases[(attempt + rand::rng().random_range(0..2)) % self.bases.len()];
            attempt += 1;
            let sent = self
                .http
                .post(format!("{base}{path}"))
                .header("Idempotency-Key", key)
                .json(body)
                .send()
                .await;
            if let Ok(response) = sent {
                let status = response.status();
                if !status.is_server_error() {
                    let body = response.json().await.unwrap_or(Value::Null);
                    return Ok((status.as_u16(), body));
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "POST {path}: no replica answered"
            );
            tokio::time::sleep(Duration::from_millis(100 * attempt.min(10) as u64)).await;
        }
    }

    /// GETs a JSON document from one replica, trying the others while one is down.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut attempt = 0usize;
        loop {
            let base = &self.bases[attempt % self.bases.len()];
            attempt += 1;
            if let Ok(response) = self.http.get(format!("{base}{path}")).send().await
                && response.status().is_success()
            {
                return Ok(response.json().await?);
            }
            anyhow::ensure!(Instant::now() < deadline, "GET {path}: no replica answered");
            tokio::time::sleep(Duration::from_millis(100 * attempt.min(10) as u64)).await;
        }
    }

    async fn created(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, body) = self.post(path, &body, &Uuid::now_v7().to_string()).await?;
        anyhow::ensure!(status == 201, "POST {path}: {status} {body}");
        Ok(body)
    }
}

/// The data set every request draws from.
pub struct Data {
    pub users: Vec<Uuid>,
    pub skus: Vec<String>,
    pub campaigns: Vec<Uuid>,
    /// The click-and-collect flow is registered (see `system::Options`).
    pub click_and_collect: bool,
}

pub async fn seed(api: &Api, sizes: &Sizes) -> anyhow::Result<Data> {
    let mut data = Data {
        users: Vec::new(),
        skus: Vec::new(),
        campaigns: Vec::new(),
        click_and_collect: false,
    };
    for i in 0..sizes.products {
        let sku = format!("CHAOS-{i:02}");
        let price = 1_000 + 200 * i as i64;
        api.created(
            "/v1/products",
            json!({ "sku": sku, "name": sku, "price_cents": price, "stock": sizes.stock }),
        )
        .await?;
        data.skus.push(sku);
    }
    for i in 0..sizes.users {
        let user = api
            .created(
                "/v1/users",
                json!({ "name": format!("user {i}"), "balance_cents": sizes.balance }),
            )
            .await?;
        data.users.push(id(&user)?);
    }
    let mut vendors = Vec::new();
    for i in 0..sizes.vendors {
        let vendor = api
            .created("/v1/vendors", json!({ "name": format!("vendor {i}") }))
            .await?;
        vendors.push(id(&vendor)?);
    }
    for i in 0..sizes.campaigns {
        let campaign = api
            .created(
                "/v1/coupons",
                json!({
                    "vendor_id": vendors[i % sizes.vendors],
                    "kind": format!("CHAOS-{}-{i}", Uuid::now_v7().simple()),
                    "title": format!("campaign {i}"),
                    "value_cents": COUPON_VALUE,
                    "total_quantity": sizes.coupons,
                    "valid_from": "2020-01-01T00:00:00Z",
                    "valid_until": "2099-01-01T00:00:00Z",
                }),
            )
            .await?;
        data.campaigns.push(id(&campaign)?);
    }
    Ok(data)
}

fn id(body: &Value) -> anyhow::Result<Uuid> {
    body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("no id in {body}"))
}

/// What the workload did, for the report and the checks.
#[derive(Default)]
pub struct Record {
    /// Sagas the API accepted (202).
    pub sagas: Vec<Uuid>,
    /// The click-and-collect ones among them, which wait for a pickup signal.
    pub pickups: Vec<Uuid>,
    /// Top-ups the API confirmed, per user.
    pub top_ups: HashMap<Uuid, i64>,
    /// Requests by kind and answer.
    pub answers: HashMap<(&'static str, u16), usize>,
}

pub type Shared = Arc<Mutex<Record>>;

/// One request of the mix.
pub async fn one(api: &Api, data: &Data, record: &Shared) -> anyhow::Result<()> {
    let (kind, path, body) = {
        let mut rng = rand::rng();
        let user = *data.users.choose(&mut rng).expect("users");
        let roll = rng.random_range(0..100);
        match roll {
            // Click and collect: hold and charge together, then a pickup signal below.
            0..5 if data.click_and_collect => {
                let sku = data.skus.choose(&mut rng).expect("skus");
                let quantity = rng.random_range(1..=2);
                let input = json!({
                    "user_id": user,
                    "lines": [{ "sku": sku, "quantity": quantity }],
                });
                let body = json!({ "definition": "click_and_collect", "input": input });
                ("click and collect", "/v1/sagas".to_owned(), body)
            }
            // Most pickups come; the others time out, and the saga refunds and releases.
            5..10 if data.click_and_collect => {
                let waiting = {
                    let record = record.lock().expect("record");
                    let from = record.pickups.len().saturating_sub(30);
                    record.pickups[from..].choose(&mut rng).copied()
                };
                let Some(saga) = waiting else {
                    return Ok(());
                };
                let path = format!("/v1/sagas/{saga}/signals/picked_up");
                ("pickup", path, json!({ "desk": rng.random_range(1..=9) }))
            }
            0..55 => {
                let sku = data.skus.choose(&mut rng).expect("skus");
                // One in ten orders ships where nobody delivers: it compensates.
                let country = if rng.random_range(0..10) == 0 {
                    "AQ"
                } else {
                    "KR"
                };
                let body = json!({
                    "user_id": user,
                    "lines": [{ "sku": sku, "quantity": rng.random_range(1..=3) }],
                    "shipping_address": { "country": country, "city": "Seoul", "line1": "1 Road", "postal_code": "04790" },
                });
                ("order", "/v1/orders".to_owned(), body)
            }
            55..80 => {
                let campaign = data.campaigns.choose(&mut rng).expect("campaigns");
                let path = format!("/v1/coupons/{campaign}/uses");
                ("coupon use", path, json!({ "user_id": user }))
            }
            80..90 => {
                let campaign = data.campaigns.choose(&mut rng).expect("campaigns");
                let path = format!("/v1/coupons/{campaign}/direct-uses");
                ("direct use", path, json!({ "user_id": user }))
            }
            90..95 => {
                let path = format!("/v1/users/{user}/top-ups");
                let amount = rng.random_range(1..=50) * 100;
                ("top-up", path, json!({ "amount_cents": amount }))
            }
            _ => {
                let recent = {
                    let record = record.lock().expect("record");
                    let from = record.sagas.len().saturating_sub(50);
                    record.sagas[from..].choose(&mut rng).copied()
                };
                let Some(saga) = recent else {
                    return Ok(());
                };
                ("cancel", format!("/v1/sagas/{saga}/cancel"), json!({}))
            }
        }
    };
    let (status, answer) = api.post(&path, &body, &Uuid::now_v7().to_string()).await?;
    let mut record = record.lock().expect("record");
    *record.answers.entry((kind, status)).or_default() += 1;
    match (kind, status) {
        ("order" | "coupon use", 202) => {
            let saga: Option<Uuid> = answer["saga_id"].as_str().and_then(|id| id.parse().ok());
            record.sagas.extend(saga);
        }
        ("click and collect", 202) => {
            let saga: Option<Uuid> = answer["saga_id"].as_str().and_then(|id| id.parse().ok());
            record.sagas.extend(saga);
            record.pickups.extend(saga);
        }
        ("top-up", 200) => {
            let user = path
                .split('/')
                .nth(3)
                .and_then(|id| id.parse().ok())
                .context("top-up path")?;
            *record.top_ups.entry(user).or_default() += body["amount_cents"].as_i64().unwrap_or(0);
        }
        _ => {}
    }
    Ok(())
}

/// Whether a status is an answer the workload expects (a 409 for a refused direct use or
/// cancel, a 4xx is never expected).
pub fn unexpected(kind: &str, status: u16) -> bool {
    match kind {
        "order" | "coupon use" | "click and collect" => status != 202,
        // Not waiting (yet, or any more: taken, timed out, cancelled) is 409.
        "pickup" => status != 202 && status != 409,
        "direct use" => status != 200 && status != 409,
        "top-up" => status != 200,
        "cancel" => status != 202 && status != 409,
        _ => true,
    }
}
