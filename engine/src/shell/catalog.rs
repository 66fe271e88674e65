//! The registered flows: every version of every definition, stored in Postgres and held in
//! memory by each replica.
//!
//! - **Stored, immutable.** `saga_definitions` holds each (name, version) with its document;
//!   registering the same document again changes nothing, a different one under a used
//!   version is refused. The built-in documents are stored at start, so every store has
//!   version 1 of `order` and `coupon_use` (what sagas ran on before versions existed).
//! - **The default.** New sagas start on the version `saga_definition_defaults` names, or
//!   the highest when none is set (an admin sets one to roll back).
//! - **Retired versions** (`saga_definition_retirements`) start no new sagas; the sagas
//!   already on them finish. The application retires its own built-in versions when it
//!   ships a changed rule as a new version; an admin retires any other.
//! - **Fronted flows.** A flow an application starts through a typed endpoint of its own
//!   (the shop's `order`, whose front prices the lines) is refused by the generic start,
//!   for every key: [`Catalog::front`] names the endpoint to use.
//! - **Every replica sees a change without a restart.** A trigger NOTIFYs
//!   `sagaflow_definitions`; [`Catalog::follow`] reloads on it and every few seconds as a
//!   net. A saga whose version this replica has not loaded yet makes the engine reload
//!   before it decides anything ([`Catalog::ensure`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt as _;
use platform::db::{self, Connection, prepared};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::saga::document::{self, Fault};
use crate::saga::{Definition, Status};
use crate::schema::{
    saga_definition_defaults, saga_definition_retirements, saga_definition_tombstones,
    saga_definitions, sagas,
};

/// One stored version.
#[derive(Clone)]
pub struct Version {
    pub definition: Arc<Definition>,
    /// The definition's input schema, compiled once per version.
    pub input: Arc<jsonschema::Validator>,
    pub document: Value,
    pub created_by: String,
    pub created_at: chrono::DateTime<Utc>,
    /// What registration refuses in it now (a rule added after it was stored): such a
    /// version starts no new sagas, and those on it finish.
    pub refused_now: Vec<String>,
    /// The SHA-256 of its stored document (hex), as Postgres computes it: a replica that
    /// holds another document for the same version reads the store's again.
    pub sha256: String,
    /// Its compensation paths, computed once (off the async runtime) when first asked.
    pub paths: Arc<tokio::sync::OnceCell<Arc<Vec<crate::saga::paths::Path>>>>,
}

impl Version {
    /// Every compensation path of this version: simulated once, on a blocking thread (a
    /// large flow's simulation is far too long for the async runtime), then kept.
    pub async fn paths(&self) -> Arc<Vec<crate::saga::paths::Path>> {
        let cell = Arc::clone(&self.paths);
        let definition = Arc::clone(&self.definition);
        cell.get_or_init(async move || {
            let computed =
                tokio::task::spawn_blocking(move || crate::saga::paths::paths(&definition)).await;
            Arc::new(computed.unwrap_or_default())
        })
        .await
        .clone()
    }
}

#[derive(Default)]
struct Known {
    versions: HashMap<String, BTreeMap<u32, Version>>,
    defaults: HashMap<String, u32>,
    retired: HashMap<(String, u32), Retirement>,
    /// Versions stored that this build cannot read (a newer replica registered them).
    unreadable: std::collections::HashSet<(String, u32)>,
}

/// Why a version starts no new sagas, and who said so.
#[derive(Debug, Clone)]
pub struct Retirement {
    pub reason: String,
    pub retired_by: String,
    pub retired_at: chrono::DateTime<Utc>,
}

/// What an application brings to the catalog when it opens it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltIn<'a> {
    /// Its flows' documents, stored as built-in versions (immutable like any other: a
    /// changed rule ships as a new version).
    pub documents: &'a [&'a str],
    /// Flows it starts through typed endpoints of its own: (flow, the endpoint). The
    /// generic start refuses them for every key and names the endpoint.
    pub fronts: &'a [(&'a str, &'a str)],
    /// Its built-in versions that start no new sagas: (flow, version, why).
    pub retired: &'a [(&'a str, u32, &'a str)],
}

/// Why a registration or an admin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the document is not a valid definition")]
    Invalid(Vec<Fault>),
    #[error(
        "{name} version {version} exists with a different document; versions are immutable, register a new one"
    )]
    Immutable { name: String, version: u32 },
    #[error("no definition {name} version {version}")]
    NotFound { name: String, version: u32 },
    #[error(
        "{name} version {version} was removed; a version is never used again, register a new one"
    )]
    Removed { name: String, version: u32 },
    #[error("{name} version {version} is used by {live} saga(s) that are not over")]
    InUse {
        name: String,
        version: u32,
        live: i64,
    },
    #[error("{name} version {version} is built in; it cannot be removed")]
    BuiltIn { name: String, version: u32 },
    #[error("{name} version {version} is the default; set another default first")]
    IsDefault { name: String, version: u32 },
    #[error("{name} version {version} was retired by its application; it stays retired")]
    RetiredByApplication { name: String, version: u32 },
    #[error(
        "{name} version {version} breaks a registration rule added after it was stored; it stays retired"
    )]
    RefusedNow { name: String, version: u32 },
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

/// A registration that was accepted: stored now, or found identical.
#[derive(Debug, Clone)]
pub struct Registered {
    pub definition: Arc<Definition>,
    pub created: bool,
}

#[derive(Default)]
pub struct Catalog {
    known: RwLock<Known>,
    /// Bumped by every reload that changed what is held (versions, defaults,
    /// retirements): what is derived from the catalog is rebuilt only then.
    generation: std::sync::atomic::AtomicU64,
    /// Reloads one at a time: a reload that read the store earlier never replaces what a
    /// later one stored.
    reloading: tokio::sync::Mutex<()>,
    /// Flow name -> the application's endpoint that starts it (set at open).
    fronts: HashMap<String, String>,
}

const CHANNEL: &str = "sagaflow_definitions";
/// A stored document's hash, computed by Postgres (so every replica agrees on the text).
const DOCUMENT_SHA256: &str = "encode(sha256(convert_to(document::text, 'UTF8')), 'hex')";
/// Who registered the built-in versions.
const BUILT_IN: &str = "built-in";

impl Catalog {
    /// Stores the built-in documents (once: a version already stored must be identical),
    /// retires the built-in versions the application no longer starts, and loads
    /// everything stored. The built-in documents are the application's (the shop's
    /// `order` and `coupon_use`), handed over by the composition point: the engine embeds
    /// no flow of its own.
    pub async fn open(pool: &db::Pool, built_in: &BuiltIn<'_>) -> anyhow::Result<Catalog> {
        let catalog = Catalog {
            fronts: built_in
                .fronts
                .iter()
                .map(|(flow, front)| ((*flow).to_owned(), (*front).to_owned()))
                .collect(),
            ..Catalog::default()
        };
        let mut pooled = pool.get().await?;
        let conn: &mut Connection = &mut pooled;
        for text in built_in.documents {
            let document: Value = serde_json::from_str(text)?;
            catalog
                .register(conn, &document, BUILT_IN)
                .await
                .with_context(|| {
                    format!(
                        "storing the built-in definition {}",
                        document["name"].as_str().unwrap_or("?")
                    )
                })?;
        }
        for (name, version, reason) in built_in.retired {
            retire_built_in(conn, name, *version, reason)
                .await
                .with_context(|| format!("retiring the built-in {name} version {version}"))?;
        }
        catalog.reload(conn).await?;
        Ok(catalog)
    }

    /// The application's endpoint that starts `flow`, when it fronts it: the generic
    /// start refuses such a flow.
    pub fn front(&self, flow: &str) -> Option<&str> {
        self.fronts.get(flow).map(String::as_str)
    }

    /// Adds the documents of a directory (every `*.json` file), as at start with
    /// `DEFINITIONS_DIR`.
    pub async fn register_dir(
        &self,
        pool: &db::Pool,
        dir: &std::path::Path,
    ) -> anyhow::Result<usize> {
        let mut pooled = pool.get().await?;
        let conn: &mut Connection = &mut pooled;
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading DEFINITIONS_DIR {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        for path in &paths {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let document: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            match self.register(conn, &document, "definitions-dir").await {
                Ok(_) => {}
                Err(Refused::Invalid(faults)) => {
                    let faults: Vec<String> = faults.iter().map(Fault::to_string).collect();
                    anyhow::bail!("{}: {}", path.display(), faults.join("; "));
                }
                Err(err) => return Err(err).with_context(|| path.display().to_string()),
            }
        }
        Ok(paths.len())
    }

    /// Checks a document and stores it as a new version (call [`Catalog::reload`] once the
    /// caller's transaction committed; the other replicas are notified by the store). The same document again is
    /// accepted and changes nothing; another document under a stored version is refused.
    pub async fn register(
        &self,
        conn: &mut Connection,
        document: &Value,
        actor: &str,
    ) -> Result<Registered, Refused> {
        let definition = document::parse(document, platform::kafka::LOST_MEMBER_COST)
            .map_err(Refused::Invalid)?;
        let version = i32::try_from(definition.version).unwrap_or(i32::MAX);
        let removed: Option<i32> = saga_definition_tombstones::table
            .find((&definition.name, version))
            .select(saga_definition_tombstones::version)
            .first(conn)
            .await
            .optional()?;
        if removed.is_some() {
            return Err(Refused::Removed {
                name: definition.name,
                version: definition.version,
            });
        }
        let inserted = diesel::insert_into(saga_definitions::table)
            .values((
                saga_definitions::name.eq(&definition.name),
                saga_definitions::version.eq(version),
                saga_definitions::document.eq(document),
                saga_definitions::created_by.eq(actor),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        if inserted == 0 {
            let stored: Value = saga_definitions::table
                .find((&definition.name, version))
                .select(saga_definitions::document)
                .first(conn)
                .await?;
            if &stored != document {
                return Err(Refused::Immutable {
                    name: definition.name,
                    version: definition.version,
                });
            }
        }
        let definition = Arc::new(definition);
        Ok(Registered {
            definition,
            created: inserted > 0,
        })
    }

    /// Makes `version` the one new sagas of `name` start on.
    pub async fn set_default(
        &self,
        conn: &mut Connection,
        name: &str,
        version: u32,
        actor: &str,
    ) -> Result<(), Refused> {
        self.stored(conn, name, version).await?;
        let now = Utc::now();
        diesel::insert_into(saga_definition_defaults::table)
            .values((
                saga_definition_defaults::name.eq(name),
                saga_definition_defaults::version.eq(to_i32(version)),
                saga_definition_defaults::set_by.eq(actor),
                saga_definition_defaults::set_at.eq(now),
            ))
            .on_conflict(saga_definition_defaults::name)
            .do_update()
            .set((
                saga_definition_defaults::version.eq(excluded(saga_definition_defaults::version)),
                saga_definition_defaults::set_by.eq(excluded(saga_definition_defaults::set_by)),
                saga_definition_defaults::set_at.eq(excluded(saga_definition_defaults::set_at)),
            ))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Removes a version no saga still needs: one that a saga not yet over runs on, or the
    /// pinned default, is refused. The caller's transaction holds the version's lock
    /// exclusively, so no saga can start on it meanwhile ([`Catalog::hold`]).
    pub async fn remove(
        &self,
        conn: &mut Connection,
        name: &str,
        version: u32,
        actor: &str,
    ) -> Result<(), Refused> {
        // Waits for the starts that hold this version to commit, so that their sagas are
        // counted below; a start after this one finds the version gone.
        version_lock(conn, Hold::Exclusive, name, version).await?;
        let locked: Option<String> = saga_definitions::table
            .find((name, to_i32(version)))
            .select(saga_definitions::created_by)
            .for_update()
            .first(conn)
            .await
            .optional()?;
        match locked.as_deref() {
            None => {
                return Err(Refused::NotFound {
                    name: name.to_owned(),
                    version,
                });
            }
            Some(BUILT_IN) => {
                return Err(Refused::BuiltIn {
                    name: name.to_owned(),
                    version,
                });
            }
            Some(_) => {}
        }
        refuse_pinned_default(conn, name, version).await?;
        let terminal: Vec<&str> = Status::ALL
            .into_iter()
            .filter(|status| status.is_terminal())
            .map(Status::as_str)
            .collect();
        let live: i64 = sagas::table
            .filter(sagas::definition.eq(name))
            .filter(sagas::definition_version.eq(to_i32(version)))
            .filter(sagas::status.ne_all(terminal))
            .count()
            .get_result(conn)
            .await?;
        if live > 0 {
            return Err(Refused::InUse {
                name: name.to_owned(),
                version,
                live,
            });
        }
        // The pair is never used again: a tombstone with the hash of what it held.
        prepared(
            "INSERT INTO saga_definition_tombstones (name, version, document_sha256, removed_by) \
             SELECT name, version, encode(sha256(convert_to(document::text, 'UTF8')), 'hex'), $3 \
             FROM saga_definitions WHERE name = $1 AND version = $2",
        )
        .bind::<Text, _>(name)
        .bind::<Integer, _>(to_i32(version))
        .bind::<Text, _>(actor)
        .execute(conn)
        .await?;
        diesel::delete(saga_definitions::table.find((name, to_i32(version))))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Retires a version: no new saga starts on it, those on it finish. The pinned
    /// default is refused (set another first). The caller's transaction holds the
    /// version's lock exclusively, so a start in flight commits first.
    pub async fn retire(
        &self,
        conn: &mut Connection,
        name: &str,
        version: u32,
        actor: &str,
        reason: &str,
    ) -> Result<(), Refused> {
        version_lock(conn, Hold::Exclusive, name, version).await?;
        self.stored(conn, name, version).await?;
        refuse_pinned_default(conn, name, version).await?;
        diesel::insert_into(saga_definition_retirements::table)
            .values((
                saga_definition_retirements::name.eq(name),
                saga_definition_retirements::version.eq(to_i32(version)),
                saga_definition_retirements::reason.eq(reason),
                saga_definition_retirements::retired_by.eq(actor),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Lets a retired version start sagas again; one its application retired stays
    /// retired (it ships a newer built-in version instead).
    pub async fn reinstate(
        &self,
        conn: &mut Connection,
        name: &str,
        version: u32,
    ) -> Result<(), Refused> {
        self.stored(conn, name, version).await?;
        if self
            .stored_version(name, version)
            .is_some_and(|stored| !stored.refused_now.is_empty())
        {
            return Err(Refused::RefusedNow {
                name: name.to_owned(),
                version,
            });
        }
        let by: Option<String> = saga_definition_retirements::table
            .find((name, to_i32(version)))
            .select(saga_definition_retirements::retired_by)
            .first(conn)
            .await
            .optional()?;
        if by.as_deref() == Some(BUILT_IN) {
            return Err(Refused::RetiredByApplication {
                name: name.to_owned(),
                version,
            });
        }
        diesel::delete(saga_definition_retirements::table.find((name, to_i32(version))))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Holds a version against removal until the caller's transaction ends (a saga is
    /// being started on it): a shared advisory lock on the version, which
    /// [`Catalog::remove`] takes exclusively. Check that the version is stored with
    /// [`is_open`], in a statement after this one, so that its snapshot sees a removal
    /// that committed while the hold waited. The lock lives in the lock manager only:
    /// `FOR SHARE` on the version's row, which this replaced, made every concurrent start
    /// rewrite that row (its lockers became a multixact, one member more per start).
    pub async fn hold(&self, conn: &Connection, name: &str, version: u32) -> QueryResult<()> {
        version_lock(conn, Hold::Shared, name, version).await
    }

    async fn stored(&self, conn: &mut Connection, name: &str, version: u32) -> Result<(), Refused> {
        if is_stored(conn, name, version).await? {
            Ok(())
        } else {
            Err(Refused::NotFound {
                name: name.to_owned(),
                version,
            })
        }
    }

    /// Reads every stored version and default and replaces what is held. A stored
    /// document this build cannot read (a newer format, say) is skipped with a warning:
    /// its sagas are quarantined by the engine, the others keep running.
    pub async fn reload(&self, conn: &mut Connection) -> Result<(), diesel::result::Error> {
        let _one_at_a_time = self.reloading.lock().await;
        type Row = (String, i32, Value, String, chrono::DateTime<Utc>, String);
        let rows: Vec<Row> = saga_definitions::table
            .select((
                saga_definitions::name,
                saga_definitions::version,
                saga_definitions::document,
                saga_definitions::created_by,
                saga_definitions::created_at,
                diesel::dsl::sql::<Text>(DOCUMENT_SHA256),
            ))
            .load(conn)
            .await?;
        let defaults: Vec<(String, i32)> = saga_definition_defaults::table
            .select((
                saga_definition_defaults::name,
                saga_definition_defaults::version,
            ))
            .load(conn)
            .await?;
        let retirements: Vec<(String, i32, String, String, chrono::DateTime<Utc>)> =
            saga_definition_retirements::table
                .select((
                    saga_definition_retirements::name,
                    saga_definition_retirements::version,
                    saga_definition_retirements::reason,
                    saga_definition_retirements::retired_by,
                    saga_definition_retirements::retired_at,
                ))
                .load(conn)
                .await?;
        let mut known = Known::default();
        for (name, version, reason, retired_by, retired_at) in retirements {
            let number = u32::try_from(version).unwrap_or_default();
            let retirement = Retirement {
                reason,
                retired_by,
                retired_at,
            };
            known.retired.insert((name, number), retirement);
        }
        for (name, version, document, created_by, created_at, sha256) in rows {
            let number = u32::try_from(version).unwrap_or_default();
            // Versions are immutable: one already held is kept, not read again, as long as
            // its hash is the store's (every replica runs the same document).
            let held = self.stored_version(&name, number);
            if let Some(held) = &held
                && held.sha256 != sha256
            {
                tracing::error!(
                    definition = name,
                    version,
                    "the stored document differs from the one this replica held; the store wins"
                );
            }
            let stored = match held.filter(|held| held.sha256 == sha256) {
                Some(held) => held,
                None => match read_version(&document) {
                    Ok((definition, input, refused_now)) => Version {
                        definition: Arc::new(definition),
                        input: Arc::new(input),
                        document,
                        created_by,
                        created_at,
                        refused_now,
                        paths: Arc::default(),
                        sha256,
                    },
                    Err(faults) => {
                        tracing::warn!(
                            definition = name,
                            version,
                            faults = ?faults,
                            "stored definition unreadable by this build; its sagas are left to a replica that reads it"
                        );
                        known.unreadable.insert((name, number));
                        continue;
                    }
                },
            };
            known
                .versions
                .entry(name)
                .or_default()
                .insert(number, stored);
        }
        for (name, version) in defaults {
            known
                .defaults
                .insert(name, u32::try_from(version).unwrap_or_default());
        }
        // A version stored before a registration rule it breaks is retired, not skipped.
        for (name, versions) in &known.versions {
            for (number, stored) in versions {
                if stored.refused_now.is_empty() {
                    continue;
                }
                known
                    .retired
                    .entry((name.clone(), *number))
                    .or_insert_with(|| Retirement {
                        reason: format!(
                            "registration refuses it now: {}",
                            stored.refused_now.join("; ")
                        ),
                        retired_by: "engine".to_owned(),
                        retired_at: stored.created_at,
                    });
            }
        }
        let mut held = self
            .known
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if held.summary() != known.summary() {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *held = known;
        Ok(())
    }

    /// Changes whenever a reload changed what is held.
    pub fn generation(&self) -> u64 {
        std::sync::atomic::AtomicU64::load(&self.generation, std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes sure every (name, version) asked for is held, reloading once if one is not
    /// (it may have been registered on another replica a moment ago).
    pub async fn ensure<'a>(
        &self,
        conn: &mut Connection,
        wanted: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Result<(), diesel::result::Error> {
        let missing = wanted
            .into_iter()
            .any(|(name, version)| self.version(name, version).is_none());
        if missing {
            self.reload(conn).await?;
        }
        Ok(())
    }

    /// Puts a version in memory only, as if loaded (the planner's tests need no database).
    #[cfg(test)]
    pub(crate) fn know_for_test(&self, definition: Definition) {
        let version = Version {
            input: Arc::new(input_validator(&definition.input_schema).unwrap()),
            definition: Arc::new(definition),
            document: Value::Null,
            created_by: "test".to_owned(),
            created_at: Utc::now(),
            refused_now: Vec::new(),
            paths: Arc::default(),
            sha256: String::new(),
        };
        let mut known = self.known.write().unwrap();
        let name = version.definition.name.clone();
        let number = version.definition.version;
        known
            .versions
            .entry(name)
            .or_default()
            .insert(number, version);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The version new sagas of `name` start on: the pinned default, or the highest, that
    /// is not retired.
    pub fn current(&self, name: &str) -> Option<Arc<Definition>> {
        let known = self.read();
        let number = known.default_of(name)?;
        let chosen = known.versions.get(name)?.get(&number)?;
        Some(Arc::clone(&chosen.definition))
    }

    /// Whether `version` of `name` is stored but this build cannot read it: its sagas wait
    /// for (or are left to) a replica that can, never quarantined.
    pub fn unreadable(&self, name: &str, version: u32) -> bool {
        self.read().unreadable.contains(&(name.to_owned(), version))
    }

    /// Why `version` of `name` starts no new sagas, if it is retired.
    pub fn retirement(&self, name: &str, version: u32) -> Option<Retirement> {
        self.read()
            .retired
            .get(&(name.to_owned(), version))
            .cloned()
    }

    /// The exact shape a saga runs on.
    pub fn version(&self, name: &str, version: u32) -> Option<Arc<Definition>> {
        self.stored_version(name, version)
            .map(|stored| stored.definition)
    }

    pub fn stored_version(&self, name: &str, version: u32) -> Option<Version> {
        self.read().versions.get(name)?.get(&version).cloned()
    }

    /// Every flow's name with its versions (ascending) and its default version (0 when
    /// every version is retired).
    pub fn flows(&self) -> Vec<(String, Vec<Version>, u32)> {
        let known = self.read();
        let mut flows: Vec<_> = known
            .versions
            .iter()
            .map(|(name, versions)| {
                let default = known.default_of(name).unwrap_or_default();
                (name.clone(), versions.values().cloned().collect(), default)
            })
            .collect();
        flows.sort_by(|a, b| a.0.cmp(&b.0));
        flows
    }

    /// Every role some stored definition sends commands to.
    pub fn roles(&self) -> Vec<String> {
        let known = self.read();
        let mut roles: Vec<String> = known
            .versions
            .values()
            .flat_map(|versions| versions.values())
            .flat_map(|version| {
                version
                    .definition
                    .roles()
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }

    /// Keeps this replica's copy current: reloads when another replica changes the store
    /// (NOTIFY), and every `interval` in case a notification was missed. A lost LISTEN
    /// connection is made again (and the catalog reloaded, since a change may have come
    /// meanwhile); until it is back, the interval alone keeps the copy current.
    pub async fn follow(
        self: Arc<Self>,
        database_url: String,
        pool: db::Pool,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let reload = async || {
            let reloaded = async {
                let mut pooled = pool.get().await?;
                self.reload(&mut pooled).await?;
                Ok::<_, anyhow::Error>(())
            };
            if let Err(err) = reloaded.await {
                tracing::warn!(error = format!("{err:#}"), "reloading definitions failed");
            }
        };
        loop {
            match listen(&database_url).await {
                Ok(mut conn) => {
                    reload().await;
                    let mut notifications = Box::pin(conn.notifications_stream());
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(interval) => {}
                            next = notifications.next() => if !matches!(next, Some(Ok(_))) {
                                tracing::warn!("definitions notifications ended; listening again");
                                break;
                            },
                        }
                        reload().await;
                    }
                }
                Err(err) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "definitions LISTEN failed; polling until it is back"
                    );
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
            reload().await;
        }
    }
}

impl Known {
    /// What identifies the held state: versions, defaults and retirements.
    fn summary(&self) -> [Vec<(&str, u32)>; 3] {
        let mut versions: Vec<(&str, u32)> = self
            .versions
            .iter()
            .flat_map(|(name, versions)| versions.keys().map(move |v| (name.as_str(), *v)))
            .collect();
        let mut defaults: Vec<(&str, u32)> = self
            .defaults
            .iter()
            .map(|(n, v)| (n.as_str(), *v))
            .collect();
        let mut retired: Vec<(&str, u32)> =
            self.retired.keys().map(|(n, v)| (n.as_str(), *v)).collect();
        versions.sort_unstable();
        defaults.sort_unstable();
        retired.sort_unstable();
        [versions, defaults, retired]
    }

    /// The version new sagas of `name` start on: the pinned default unless it is retired,
    /// else the highest version that is not.
    fn default_of(&self, name: &str) -> Option<u32> {
        let versions = self.versions.get(name)?;
        let open = |version: &u32| !self.retired.contains_key(&(name.to_owned(), *version));
        self.defaults
            .get(name)
            .copied()
            .filter(|version| versions.contains_key(version) && open(version))
            .or_else(|| versions.keys().rev().copied().find(open))
    }
}

/// A version an admin pinned as the default may be neither retired nor removed: another
/// default comes first.
async fn refuse_pinned_default(
    conn: &mut Connection,
    name: &str,
    version: u32,
) -> Result<(), Refused> {
    let pinned: Option<i32> = saga_definition_defaults::table
        .find(name)
        .select(saga_definition_defaults::version)
        .first(conn)
        .await
        .optional()?;
    if pinned == Some(to_i32(version)) {
        return Err(Refused::IsDefault {
            name: name.to_owned(),
            version,
        });
    }
    Ok(())
}

/// Retires a built-in version for its application (kept if an admin retired it first).
async fn retire_built_in(
    conn: &mut Connection,
    name: &str,
    version: u32,
    reason: &str,
) -> QueryResult<()> {
    diesel::insert_into(saga_definition_retirements::table)
        .values((
            saga_definition_retirements::name.eq(name),
            saga_definition_retirements::version.eq(to_i32(version)),
            saga_definition_retirements::reason.eq(reason),
            saga_definition_retirements::retired_by.eq(BUILT_IN),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    // A default pinned to it would leave the flow without a version to start on.
    diesel::delete(
        saga_definition_defaults::table
            .filter(saga_definition_defaults::name.eq(name))
            .filter(saga_definition_defaults::version.eq(to_i32(version))),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored document as this build reads it, with its input schema compiled, and what
/// registration would refuse in it today. The lost-member rule held when the version was
/// registered; a build that raised it must still run the sagas already on it, so it is
/// not applied here, and neither is any rule added since: such a version is retired.
fn read_version(
    document: &Value,
) -> Result<(Definition, jsonschema::Validator, Vec<String>), Vec<String>> {
    let (definition, later) = document::load(document)
        .map_err(|faults| faults.iter().map(Fault::to_string).collect::<Vec<_>>())?;
    let input =
        input_validator(&definition.input_schema).map_err(|err| vec![format!("/input: {err}")])?;
    Ok((
        definition,
        input,
        later.iter().map(Fault::to_string).collect(),
    ))
}

/// A version's input schema as a start checks it: `format` is asserted (a `uuid` that is
/// not one, a `date-time` that is not RFC 3339, is refused at the start, not found later
/// by a participant).
fn input_validator(
    schema: &Value,
) -> Result<jsonschema::Validator, jsonschema::ValidationError<'static>> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
}

async fn listen(database_url: &str) -> anyhow::Result<AsyncPgConnection> {
    super::watch::listen_on(database_url, CHANNEL).await
}

/// Whether a version is stored and not retired (a saga may start on it), read with a
/// shared connection so that a start can send it together with its writes.
pub async fn is_open(conn: &Connection, name: &str, version: u32) -> QueryResult<bool> {
    let mut conn = conn;
    let found: Option<i32> = saga_definitions::table
        .find((name, to_i32(version)))
        .filter(diesel::dsl::not(diesel::dsl::exists(
            saga_definition_retirements::table
                .filter(saga_definition_retirements::name.eq(name))
                .filter(saga_definition_retirements::version.eq(to_i32(version))),
        )))
        .select(saga_definitions::version)
        .first(&mut conn)
        .await
        .optional()?;
    Ok(found.is_some())
}

/// Whether a version is stored.
async fn is_stored(conn: &mut Connection, name: &str, version: u32) -> QueryResult<bool> {
    let found: Option<i32> = saga_definitions::table
        .find((name, to_i32(version)))
        .select(saga_definitions::version)
        .first(conn)
        .await
        .optional()?;
    Ok(found.is_some())
}

/// How a transaction holds a version's lock: starts share it, a removal excludes them.
#[derive(Clone, Copy)]
enum Hold {
    Shared,
    Exclusive,
}

/// Takes a version's advisory lock until the transaction ends. Its key is the two-`int4`
/// form (the name's hash, the version), a key space apart from the single-`bigint` locks
/// of migrations and idempotency keys.
async fn version_lock(conn: &Connection, hold: Hold, name: &str, version: u32) -> QueryResult<()> {
    let mut conn = conn;
    let sql = match hold {
        Hold::Shared => "SELECT pg_advisory_xact_lock_shared(hashtext($1), $2)",
        Hold::Exclusive => "SELECT pg_advisory_xact_lock(hashtext($1), $2)",
    };
    prepared(sql)
        .bind::<Text, _>(name)
        .bind::<Integer, _>(to_i32(version))
        .execute(&mut conn)
        .await?;
    Ok(())
}

fn to_i32(version: u32) -> i32 {
    i32::try_from(version).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version's compensation paths are simulated once, whoever asks and however often:
    /// every caller gets the same computed list.
    #[tokio::test]
    async fn a_versions_paths_are_computed_once() {
        let catalog = Catalog::default();
        let order = document::samples().remove(0);
        catalog.know_for_test(order.clone());
        let held = || catalog.stored_version(&order.name, order.version).unwrap();
        let (one, two) = (held(), held());
        let (first, second) = tokio::join!(one.paths(), two.paths());
        assert!(!first.is_empty());
        assert!(Arc::ptr_eq(&first, &second), "one simulation for both");
        let later = held();
        assert!(Arc::ptr_eq(&first, &later.paths().await), "kept for later");
    }
}
