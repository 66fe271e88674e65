//! What a participant is: the resources a command touches and the change it applies.
//!
//! The [runtime](crate::runtime) does everything else (inbox, locks, transaction, reply), so
//! a participant file holds business rules only. `apply` runs inside a savepoint: returning
//! [`Failure::Rejected`] rolls back whatever it changed and the rejection becomes the reply;
//! [`Failure::Retry`] rolls back the whole transaction and the command is processed again.

use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use platform::contract::{Command, Role};
use platform::db::Connection;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a command did not produce its effect.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A business rule forbids it; nothing changed; retrying will not help.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Infrastructure trouble (database, stale fencing token); the runtime retries.
    #[error(transparent)]
    Retry(#[from] anyhow::Error),
}

impl Failure {
    pub fn rejected(reason: impl Into<String>) -> Self {
        Self::Rejected(reason.into())
    }
}

impl From<diesel::result::Error> for Failure {
    fn from(err: diesel::result::Error) -> Self {
        Self::Retry(err.into())
    }
}

/// How concurrent changes to one resource are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Redis lock per resource, fencing token checked in the write (the default).
    RedisLock,
    /// No lock: every write is one conditional `UPDATE` that Postgres applies atomically.
    Postgres,
    /// An atomic Lua script takes capacity from Redis-held counters first (see `gate`),
    /// then the Postgres strategy's conditional write.
    LuaGate,
    /// No protection at all: read, compute, write. Test-only, to show the lost updates the
    /// other strategies prevent.
    Unprotected,
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "redis-lock" => Ok(Self::RedisLock),
            "postgres" => Ok(Self::Postgres),
            "lua-gate" => Ok(Self::LuaGate),
            "unprotected" => Ok(Self::Unprotected),
            other => Err(format!(
                "expected `redis-lock`, `postgres` or `lua-gate` (or `unprotected` in tests), got `{other}`"
            )),
        }
    }
}

/// What `apply` may use besides the connection.
#[derive(Debug, Clone)]
pub struct Context {
    pub strategy: Strategy,
    /// Fencing token per locked resource (`sku:A` -> 17); empty without Redis locks.
    pub fences: HashMap<String, u64>,
    pub now: DateTime<Utc>,
    /// Pause between reading and writing a resource (tests: widens the race window so the
    /// unprotected strategy reliably shows its lost updates).
    pub think_time: std::time::Duration,
}

impl Context {
    /// The fencing token to check in the write of `resource`, if it was locked.
    pub fn fence(&self, resource: &str) -> Option<i64> {
        self.fences
            .get(resource)
            .and_then(|token| i64::try_from(*token).ok())
    }

    /// Whether writes must be single conditional statements (no lock protects a
    /// read-then-write).
    pub fn atomic_writes(&self) -> bool {
        matches!(self.strategy, Strategy::Postgres | Strategy::LuaGate)
    }

    pub async fn think(&self) {
        if !self.think_time.is_zero() {
            tokio::time::sleep(self.think_time).await;
        }
    }
}

pub trait Participant: Send + Sync + 'static {
    fn role(&self) -> Role;

    /// The resources the command changes, as lock names (`sku:A`, `user:<id>`).
    fn resources(&self, command: &Command) -> Result<Vec<String>, Failure>;

    /// Capacity the command takes, for the Lua gate (`Strategy::LuaGate`); none by default.
    fn gate(&self, _command: &Command) -> Result<Vec<crate::gate::Want>, Failure> {
        Ok(Vec::new())
    }

    /// Applies the command (forward or compensation) inside the runtime's transaction and
    /// returns the reply's output; a rejection's changes are rolled back, and only its own
    /// (see `runtime::batch`).
    fn apply(
        &self,
        conn: &mut Connection,
        command: &Command,
        context: &Context,
    ) -> impl Future<Output = Result<Value, Failure>> + Send;

    /// Whether [`apply_set`](Participant::apply_set) can take this forward command; none by
    /// default.
    fn settable(&self, _command: &Command, _context: &Context) -> bool {
        false
    }

    /// Applies forward commands of one name, each of a different saga, as one set: a few
    /// statements decide all of them, whatever their number (a rush of claims on one
    /// campaign is one conditional insert, not a savepoint and six statements per claim).
    /// Returns one answer per command, in order: its output, or the reason it is rejected.
    /// A rejected command must have changed nothing. The runtime orders the set against
    /// the step fences afterwards; when a step turns out fenced, the set is rolled back
    /// and its commands are applied one by one.
    fn apply_set(
        &self,
        _conn: &mut Connection,
        commands: &[&Command],
        _context: &Context,
    ) -> impl Future<Output = anyhow::Result<Vec<Result<Value, String>>>> + Send {
        let count = commands.len();
        async move { anyhow::bail!("{} takes no sets ({count} commands)", self.role().as_str()) }
    }
}

/// Reads `payload.input` as `T`; a payload that does not fit is a rejection (the saga was
/// started with input this participant cannot act on).
pub fn input<T: DeserializeOwned>(command: &Command) -> Result<T, Failure> {
    serde_json::from_value(command.payload.input.clone())
        .map_err(|err| Failure::rejected(format!("malformed {} input: {err}", command.name)))
}

/// Reads the output of the step whose command `produced_by` (`role`, `command`) answered:
/// never a step found by name, which a signal of the same name could fill with what its
/// caller chose. Missing, ambiguous or unreadable is a rejection.
pub fn output_of<T: DeserializeOwned>(
    command: &Command,
    (role, produced_by): (Role, &str),
) -> Result<T, Failure> {
    let output = command
        .payload
        .output_from(role.as_str(), produced_by)
        .map_err(|why| Failure::rejected(format!("{} needs {why}", command.name)))?;
    serde_json::from_value(output.clone()).map_err(|err| {
        Failure::rejected(format!(
            "{} cannot read the output of {produced_by}: {err}",
            command.name
        ))
    })
}

/// The command name did not match any this role handles.
pub fn unknown_command(command: &Command) -> Failure {
    Failure::rejected(format!("unknown command {}", command.name))
}
