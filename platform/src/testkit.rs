//! Test support: every integration test gets its own database on the real Postgres, its
//! own topic prefix on the real broker (`KAFKA_BROKERS`) or on a private embedded cluster,
//! and a unique key prefix on the real Redis, so tests run in parallel and leave nothing
//! behind: the database is dropped and the keys deleted when the value drops.
//!
//! Topics are not deleted: deleting topics on tansu while other clients of the same test
//! process are live intermittently crashed librdkafka 2.12 (a leader-change hint with
//! leader -1 reaches `rd_kafka_metadata_update_op`, librdkafka issue #5280). CI's tansu keeps
//! topics in memory and is discarded after the run; an embedded cluster dies with its test.
//!
//! Environment: `TEST_DATABASE_URL` (a server URL; default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`), `KAFKA_BROKERS` (unset: embedded cluster per test).

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::contract::Topics;
use crate::kafka::{Cluster, EmbeddedKafka};
use crate::{cache, db};

/// Polls `probe` every 50 ms until it yields a value and returns it, or `None` once `within`
/// has passed. Tests wait for conditions with this, never for a fixed time; give `within`
/// room, since a loaded machine is slow.
pub async fn poll_until<T>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `condition` holds; panics naming `what` when `within` passes first.
pub async fn eventually(what: &str, within: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let held = poll_until(within, async || condition().await.then_some(())).await;
    assert!(
        held.is_some(),
        "timed out after {within:?} waiting for {what}"
    );
}

/// Every metric the provisioned Grafana dashboard queries (`sagaflow_...`, sample names
/// such as `..._total` and `..._bucket` as written in its expressions), each once.
pub fn dashboard_series() -> Vec<String> {
    let dashboard = include_str!("../../deploy/grafana/dashboards/sagaflow.json");
    let mut names: Vec<String> = dashboard
        .match_indices("sagaflow_")
        .map(|(at, _)| {
            dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > "sagaflow_".len())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A short unique name, e.g. `t_1a2b3c4d5e6f`.
pub fn unique_name(label: &str) -> String {
    let id = Uuid::new_v4().simple().to_string();
    format!("{label}_{}", &id[..12])
}

fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh, migrated database, dropped on drop.
pub struct TestDb {
    pub url: String,
    pub pool: db::Pool,
    name: String,
    server_url: String,
}

impl TestDb {
    /// A new empty database (no migrations applied).
    pub async fn empty() -> Self {
        let server_url = server_url();
        let (admin_url, _) = db::split_database_url(&server_url).expect("TEST_DATABASE_URL");
        let name = unique_name("sagaflow_test");
        let url = replace_database(&server_url, &name);
        let created = db::ensure_database(&url)
            .await
            .expect("create test database");
        assert!(created, "test database {name} already existed");
        let pool = test_pool(&url);
        Self {
            url,
            pool,
            name,
            server_url: admin_url,
        }
    }

    /// A new database with every migration applied: a copy of a template database that
    /// was migrated once (the first time the migrations are seen), which is much faster
    /// than migrating every test's database from scratch.
    pub async fn migrated() -> Self {
        let server_url = server_url();
        let (admin_url, _) = db::split_database_url(&server_url).expect("TEST_DATABASE_URL");
        let template = TEMPLATE
            .get_or_init(|| async { template(&server_url, &admin_url).await })
            .await;
        let name = unique_name("sagaflow_test");
        let mut admin = AsyncPgConnection::establish(&admin_url)
            .await
            .expect("connect to the test server");
        diesel::sql_query(format!(
            "CREATE DATABASE {} TEMPLATE {}",
            db::quote_identifier(&name),
            db::quote_identifier(template)
        ))
        .execute(&mut admin)
        .await
        .expect("copy the template database");
        let url = replace_database(&server_url, &name);
        let pool = test_pool(&url);
        Self {
            url,
            pool,
            name,
            server_url: admin_url,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Tests send bursts no process sends (hundreds of commands at once into eight connections),
/// so their pools wait longer for a connection than a service would.
fn test_pool(url: &str) -> db::Pool {
    let options = db::PoolOptions {
        wait_timeout: Duration::from_secs(120),
        ..db::PoolOptions::new(8)
    };
    db::pool_with(url, options).expect("test pool")
}

static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// The template database for the migrations as they are now, created and migrated if it
/// does not exist yet. Its name carries a hash of the migration files, so a changed or new
/// migration gets a new template (and all but the two newest others are dropped). Test
/// processes that start together serialise on an advisory lock.
async fn template(server_url: &str, admin_url: &str) -> String {
    let name = format!("sagaflow_template_{}", migrations_hash());
    let mut admin = AsyncPgConnection::establish(admin_url)
        .await
        .expect("connect to the test server");
    diesel::sql_query("SELECT pg_advisory_lock(7226359121)")
        .execute(&mut admin)
        .await
        .expect("template lock");
    // Newest first (database OIDs grow as databases are created).
    let ready: Vec<Named> = diesel::sql_query(
        "SELECT datname AS name FROM pg_database WHERE datname LIKE 'sagaflow_template_%' \
         ORDER BY oid DESC",
    )
    .load(&mut admin)
    .await
    .expect("list templates");
    let exists = ready.iter().any(|db| db.name == name);
    // Another checkout with other migrations may be testing against this server right now:
    // the two newest other templates stay, older ones go.
    for stale in ready.iter().filter(|db| db.name != name).skip(2) {
        let quoted = db::quote_identifier(&stale.name);
        for statement in [
            format!("ALTER DATABASE {quoted} WITH IS_TEMPLATE false"),
            format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"),
        ] {
            let _ = diesel::sql_query(statement).execute(&mut admin).await;
        }
    }
    if !exists {
        let url = replace_database(server_url, &name);
        // Built under a temporary name, renamed only when complete: a run that dies half
        // way leaves no template that looks ready.
        let building = format!("{name}_building");
        let quoted = db::quote_identifier(&building);
        let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        diesel::sql_query(format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
            .expect("create the template database");
        db::migrate(&replace_database(server_url, &building))
            .await
            .expect("migrate the template database");
        diesel::sql_query(format!(
            "ALTER DATABASE {quoted} RENAME TO {}",
            db::quote_identifier(&name)
        ))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|err| panic!("finish the template {url}: {err}"));
    }
    diesel::sql_query("SELECT pg_advisory_unlock(7226359121)")
        .execute(&mut admin)
        .await
        .expect("template unlock");
    name
}

#[derive(diesel::QueryableByName)]
struct Named {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

/// The hash of the migrations embedded in this build (computed by `build.rs` from the
/// files it embedded, so it always names what `db::migrate` applies).
fn migrations_hash() -> &'static str {
    env!("MIGRATIONS_HASH")
}

fn replace_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL scheme");
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}/{name}")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.pool.close();
        let statement = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            db::quote_identifier(&self.name)
        );
        let server_url = self.server_url.clone();
        // Drop runs outside any async context we could rely on: use a private runtime on a
        // plain thread and wait for it.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = AsyncPgConnection::establish(&server_url).await?;
                diesel::sql_query(statement).execute(&mut conn).await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(outcome, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// A private topic prefix on the real broker, or a private embedded cluster.
pub struct TestKafka {
    pub cluster: Cluster,
}

impl TestKafka {
    /// Creates every system topic under a fresh prefix.
    pub async fn start() -> Self {
        let topics = Topics::new(&unique_name("t")).expect("topic prefix");
        let cluster = match std::env::var("KAFKA_BROKERS") {
            Ok(brokers) if !brokers.trim().is_empty() => Cluster::external(brokers.trim(), topics),
            _ => Cluster::embedded(EmbeddedKafka::start().expect("embedded Kafka"), topics),
        }
        .with_partitions(2);
        cluster.ensure_topics().await.expect("create test topics");
        Self { cluster }
    }

    pub fn topics(&self) -> &Topics {
        self.cluster.topics()
    }

    pub fn brokers(&self) -> &str {
        self.cluster.brokers()
    }
}

/// The real Redis with a unique key prefix; keys under it are deleted on drop.
pub struct TestRedis {
    pub pool: cache::Pool,
    pub prefix: String,
    url: String,
}

impl TestRedis {
    pub fn start() -> Self {
        let url =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let pool = cache::pool(&url).expect("test Redis pool");
        Self {
            pool,
            prefix: format!("{}:", unique_name("test")),
            url,
        }
    }

    /// `prefix` + `key`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let url = self.url.clone();
        let pattern = format!("{}*", self.prefix);
        let _ = std::thread::spawn(move || -> anyhow::Result<()> {
            let client = deadpool_redis::redis::Client::open(url)?;
            let mut conn = client.get_connection()?;
            let keys: Vec<String> = deadpool_redis::redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut conn)?;
            if !keys.is_empty() {
                deadpool_redis::redis::cmd("DEL")
                    .arg(keys)
                    .exec(&mut conn)?;
            }
            Ok(())
        })
        .join();
    }
}

/// Everything an integration test needs.
pub struct TestEnv {
    pub db: TestDb,
    pub kafka: TestKafka,
    pub redis: TestRedis,
}

impl TestEnv {
    pub async fn start() -> Self {
        let (db, kafka) = tokio::join!(TestDb::migrated(), TestKafka::start());
        Self {
            db,
            kafka,
            redis: TestRedis::start(),
        }
    }
}

/// A redis-server of the test's own on a free port, so the test can stop it (an outage)
/// and start it again on the same port without disturbing anyone else. It keeps nothing
/// on disk: a restart comes back empty, as after a crash.
pub struct PrivateRedis {
    child: Option<std::process::Child>,
    port: u16,
    pub url: String,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}"),
        };
        redis.restart();
        redis
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "private redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server: every connection to it fails until [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
