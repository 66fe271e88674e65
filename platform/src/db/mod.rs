//! Postgres: the connection pool, database creation and the embedded migrations.
//!
//! The schema history lives in the repository's `migrations/` directory and is compiled
//! into the binaries, so a deployed binary always carries the schema it expects. Batch
//! statements are [`prepared`] once per connection.

use anyhow::Context as _;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel::{QueryableByName, sql_query};
use std::time::Duration;

use diesel_async::pooled_connection::deadpool::Pool as DeadPool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

mod prepared;
pub use prepared::{Prepared, prepared};

pub type Pool = DeadPool<AsyncPgConnection>;
pub type Connection = AsyncPgConnection;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Number of migrations in the schema history (kept in step by a test).
pub const MIGRATIONS_COUNT: usize = 18;

/// Serialises concurrent migrators (several replicas starting at once).
const MIGRATION_LOCK_KEY: i64 = 0x5a6a_f10e;

/// How a pool behaves under pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    pub max_size: usize,
    /// Longest wait for a free connection; past it `get` fails with a timeout, which the
    /// API answers 503 and the engine loops retry, instead of piling up without bound.
    pub wait_timeout: Duration,
    /// `statement_timeout` of every connection: no statement holds a connection longer.
    pub statement_timeout: Duration,
}

impl PoolOptions {
    pub fn new(max_size: usize) -> Self {
        Self {
            max_size,
            wait_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

pub fn pool(url: &str, max_size: usize) -> anyhow::Result<Pool> {
    pool_with(url, PoolOptions::new(max_size))
}

pub fn pool_with(url: &str, options: PoolOptions) -> anyhow::Result<Pool> {
    let statement_timeout_ms = options.statement_timeout.as_millis();
    let mut config = ManagerConfig::default();
    // No `SELECT 1` on every checkout (it was the statement sent most, 11.8 per saga): a
    // connection the server closed (a restart, a crash, a terminated backend) is known
    // closed to the pool and replaced; one that breaks in use fails its statement, which
    // callers treat as the fault it is.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        Box::pin(async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            conn.batch_execute(&format!("SET statement_timeout = {statement_timeout_ms}"))
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(options.max_size)
        .wait_timeout(Some(options.wait_timeout))
        // Opening a connection is a separate matter: a slow start is not back-pressure.
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .context("building the Postgres pool")
}

/// `SELECT 1` through the pool: the readiness probe for Postgres.
pub async fn ping(pool: &Pool) -> anyhow::Result<()> {
    let mut conn = pool.get().await.context("no Postgres connection")?;
    sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

/// Splits `postgres://host/name?opts` into the URL of the `postgres` maintenance database
/// and the database name.
pub fn split_database_url(url: &str) -> anyhow::Result<(String, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .context("DATABASE_URL has no scheme")?;
    let (authority, path) = rest
        .split_once('/')
        .context("DATABASE_URL names no database")?;
    let (name, query) = match path.split_once('?') {
        Some((name, query)) => (name, format!("?{query}")),
        None => (path, String::new()),
    };
    anyhow::ensure!(!name.is_empty(), "DATABASE_URL names no database");
    Ok((
        format!("{scheme}://{authority}/postgres{query}"),
        name.to_owned(),
    ))
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// Drops the database named in `url` (its connections are closed first).
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let (admin_url, name) = split_database_url(url)?;
    let mut conn = AsyncPgConnection::establish(&admin_url)
        .await
        .with_context(|| format!("connecting to {}", redact(&admin_url)))?;
    let statement = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_identifier(&name)
    );
    sql_query(statement).execute(&mut conn).await?;
    Ok(())
}

/// Creates the database named in `url` when it does not exist yet. Returns whether it did.
pub async fn ensure_database(url: &str) -> anyhow::Result<bool> {
    let (admin_url, name) = split_database_url(url)?;
    let mut conn = AsyncPgConnection::establish(&admin_url)
        .await
        .with_context(|| format!("connecting to {}", redact(&admin_url)))?;
    let found: Exists =
        sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<Text, _>(&name)
            .get_result(&mut conn)
            .await?;
    if found.exists {
        return Ok(false);
    }
    let statement = format!("CREATE DATABASE {}", quote_identifier(&name));
    match sql_query(statement).execute(&mut conn).await {
        Ok(_) => Ok(true),
        // Another process created it between our check and our CREATE.
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains("already exists") =>
        {
            Ok(false)
        }
        Err(err) => Err(err).with_context(|| format!("creating database {name}")),
    }
}

/// Applies pending migrations; returns the versions applied.
///
/// Runs on the calling thread through `block_in_place` (diesel's harness is synchronous), so
/// it needs the multi-threaded Tokio runtime.
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .await?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|err| anyhow::anyhow!("applying migrations: {err}"))?
        .into_iter()
        .map(|version| version.to_string())
        .collect();
    let mut conn = harness.into_inner();
    sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .await?;
    Ok(applied)
}

/// Creates the database if needed and migrates it.
pub async fn prepare(url: &str) -> anyhow::Result<()> {
    if ensure_database(url).await? {
        tracing::info!(database = %redact(url), "created database");
    }
    let applied = migrate(url).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied migrations");
    }
    Ok(())
}

pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_splits_into_maintenance_url_and_name() {
        let (admin, name) =
            split_database_url("postgres://u:p@h:5432/app?sslmode=disable").unwrap();
        assert_eq!(admin, "postgres://u:p@h:5432/postgres?sslmode=disable");
        assert_eq!(name, "app");
        assert!(split_database_url("postgres://h:5432").is_err());
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier(r#"a"b"#), r#""a""b""#);
    }
}
