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

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::contract::Topics;
use crate::kafka::{Cluster, EmbeddedKafka};
use crate::{cache, db};

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
        let pool = db::pool(&url, 8).expect("test pool");
        Self {
            url,
            pool,
            name,
            server_url: admin_url,
        }
    }

    /// A new database with every migration applied.
    pub async fn migrated() -> Self {
        let test_db = Self::empty().await;
        db::migrate(&test_db.url)
            .await
            .expect("migrate test database");
        test_db
    }

    pub fn name(&self) -> &str {
        &self.name
    }
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
