//! The engine's shell: runs the pure state machine ([`crate::saga`]) against Postgres.
//!
//! It reads like its core, in three verbs. **Start** a saga ([`Engine::start_with`]).
//! **Apply** inputs to locked sagas, whatever they are: participants' replies, timer ticks,
//! operator actions and signals are all [`batch::Arrival`]s, planned by one pure function
//! ([`plan`]) beside the state machine. **Act** on the plan: write the new states (guarded
//! by the row versions), the history entries and the outbox messages the transitions ask
//! for, inside the caller's transaction; commit, then count and publish ([`publish`]). A
//! batch of inputs costs a constant number of statements ([`batch`]). Nothing is published
//! before the commit, so there is no state without its message and no message without its
//! state; what the committing task fails to send, the [relay](crate::loops::relay) sweeps.

mod batch;
pub mod catalog;
mod codec;
mod messages;
pub mod metrics;
mod plan;
pub mod publish;
pub mod replay;
pub mod store;
pub mod watch;

use std::sync::Arc;

use diesel_async::AsyncConnection as _;
use futures_util::TryFutureExt as _;
use platform::contract::{Reply, Topics};
use platform::db::{self, Connection};
use platform::telemetry;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::clock::Clock;
use crate::saga::{self, Definition, Input, SagaState, Status};
use batch::Arrival;
pub(crate) use batch::Writes;
use catalog::Catalog;
use codec::{current_step, encode_state, reply_input};
use messages::history;
use metrics::Metrics;
pub use publish::{Publisher, Queued};
use store::NewSaga;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown saga definition `{0}`")]
    UnknownDefinition(String),
    #[error("saga definition `{name}` has no version {version}")]
    UnknownVersion { name: String, version: u32 },
    /// The version (or, unpinned, every version of the flow) starts no new sagas.
    #[error("saga definition `{name}` version {version} is retired: it starts no new sagas")]
    Retired { name: String, version: u32 },
    /// The input cannot start the saga (a wait's time missing from it, say).
    #[error("{0}")]
    BadInput(String),
    #[error("saga {0} not found")]
    NotFound(Uuid),
    /// The operator action does not apply in the saga's current status.
    #[error("saga is {status}: {reason}")]
    Conflict { status: Status, reason: String },
    /// Another writer changed the saga between our read and our write; retry.
    #[error("saga {0} changed concurrently")]
    Concurrent(Uuid),
    #[error("stored saga {id} is unreadable: {reason}")]
    Corrupt { id: Uuid, reason: String },
    /// The operator acted on a version of the saga that is no longer current.
    #[error("saga {id} is at version {current}, not {expected}")]
    Stale {
        id: Uuid,
        expected: i64,
        current: i64,
    },
    /// A saga runs on a version this replica stores but cannot read (a newer replica
    /// registered it): it is left alone, neither moved nor quarantined; the input waits
    /// (a fault: the consumer retries without spending an attempt) or goes to another
    /// replica.
    #[error("saga {id}: {source}")]
    VersionUnreadable {
        id: Uuid,
        #[source]
        source: platform::fault::Unavailable,
    },
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

/// A started (or, with a reused idempotency key, found) saga.
#[derive(Debug)]
pub struct Started {
    pub id: Uuid,
    /// `false` when the idempotency key named an existing saga.
    pub created: bool,
    /// Its first messages: for [`Engine::publish`] once the caller's transaction committed.
    pub queued: Queued,
}

#[derive(Clone)]
pub struct Engine {
    pool: db::Pool,
    topics: Topics,
    clock: Clock,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    /// Sends committed messages at once; without one, the relay sends them all.
    publisher: Option<Publisher>,
}

/// What to start: a flow (at its default version unless one is pinned) on an input.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    pub definition: &'a str,
    pub version: Option<u32>,
    pub payload: &'a Value,
    /// With a key already used for this definition, the existing saga is returned.
    pub idempotency_key: Option<&'a str>,
    /// The API key's name that starts it: that client may read it later, no other may.
    pub started_by: Option<&'a str>,
}

impl<'a> Start<'a> {
    pub fn new(definition: &'a str, payload: &'a Value) -> Self {
        Self {
            definition,
            version: None,
            payload,
            idempotency_key: None,
            started_by: None,
        }
    }
}

impl Engine {
    pub fn new(pool: db::Pool, topics: Topics, clock: Clock, catalog: Arc<Catalog>) -> Self {
        Self {
            pool,
            topics,
            clock,
            catalog,
            metrics: Arc::new(Metrics::default()),
            publisher: None,
        }
    }

    /// This engine publishes what its callers committed at once through `publisher`.
    pub fn publishing(self, publisher: Publisher) -> Self {
        Self {
            publisher: Some(publisher),
            ..self
        }
    }

    /// Publishes the messages of a transaction that committed (an engine without a
    /// publisher leaves them to the relay).
    pub fn publish(&self, queued: Queued) {
        if let Some(publisher) = &self.publisher {
            publisher.publish(queued);
        }
    }

    /// The registered flows.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn pool(&self) -> &db::Pool {
        &self.pool
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Starts a saga in its own transaction.
    pub async fn start(
        &self,
        definition: &str,
        payload: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Started, Error> {
        let mut pooled = self.pool.get().await?;
        let conn: &mut Connection = &mut pooled;
        let start = Start {
            idempotency_key,
            ..Start::new(definition, payload)
        };
        let mut started = conn
            .transaction(async |conn: &mut Connection| self.start_with(conn, start).await)
            .await?;
        self.publish(std::mem::take(&mut started.queued));
        Ok(started)
    }

    /// Starts a saga inside the caller's transaction (so an order row and its saga commit
    /// together). With an idempotency key already used for this definition, returns the
    /// existing saga and writes nothing. Publish its `queued` once the transaction committed.
    pub async fn start_in(
        &self,
        conn: &mut Connection,
        definition_name: &str,
        payload: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Started, Error> {
        let start = Start {
            idempotency_key,
            ..Start::new(definition_name, payload)
        };
        self.start_with(conn, start).await
    }

    /// Starts a saga for a client (the API key's name), inside the caller's transaction:
    /// that client may read it later, and no other client may.
    pub async fn start_for_in(
        &self,
        conn: &mut Connection,
        definition_name: &str,
        payload: &Value,
        started_by: Option<&str>,
    ) -> Result<Started, Error> {
        let start = Start {
            started_by,
            ..Start::new(definition_name, payload)
        };
        self.start_with(conn, start).await
    }

    /// The definition a start asks for: the pinned version, or the default one; a retired
    /// version starts nothing.
    pub fn definition_for(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<Definition>, Error> {
        let retired = |version: u32| Error::Retired {
            name: name.to_owned(),
            version,
        };
        match version {
            Some(version) => {
                let Some(definition) = self.catalog.version(name, version) else {
                    return Err(if self.catalog.flows().iter().any(|(f, ..)| f == name) {
                        Error::UnknownVersion {
                            name: name.to_owned(),
                            version,
                        }
                    } else {
                        Error::UnknownDefinition(name.to_owned())
                    });
                };
                match self.catalog.retirement(name, version) {
                    Some(_) => Err(retired(version)),
                    None => Ok(definition),
                }
            }
            None => self.catalog.current(name).ok_or_else(|| {
                match self.catalog.flows().into_iter().find(|(f, ..)| f == name) {
                    Some((_, versions, _)) => {
                        retired(versions.last().map_or(0, |v| v.definition.version))
                    }
                    None => Error::UnknownDefinition(name.to_owned()),
                }
            }),
        }
    }

    /// Starts a saga inside the caller's transaction. The version it starts on is held
    /// until the transaction ends, so it cannot be removed meanwhile ([`Catalog::hold`]).
    /// After the hold, one round trip: the version's check, the saga's row, its history
    /// and its outbox are sent together (with an idempotency key, the writes wait for the
    /// insert to tell whether the key was new). A version found gone fails the start, and
    /// the caller's transaction, which then writes nothing, rolls back.
    pub async fn start_with(
        &self,
        conn: &mut Connection,
        start: Start<'_>,
    ) -> Result<Started, Error> {
        let Start {
            definition: definition_name,
            version,
            payload,
            idempotency_key,
            started_by,
        } = start;
        let definition = self.definition_for(definition_name, version)?;
        let now = self.clock.now();
        let id = Uuid::now_v7();
        // The saga's trace starts here, under the caller's span (the HTTP request).
        let span = tracing::info_span!("saga.start", saga.id = %id, saga.definition = %definition.name, trace_id = tracing::field::Empty);
        telemetry::continue_trace(&span, None);
        let traceparent = telemetry::traceparent(&span);
        let transition = saga::start(&definition, payload, now);
        if let saga::Outcome::Ignored { reason } = transition.outcome {
            return Err(Error::BadInput(reason));
        }
        let row = NewSaga {
            id,
            definition: &definition.name,
            status: transition.state.status.as_str(),
            current_step: current_step(&transition.state),
            payload,
            state: encode_state(&transition.state),
            version: 0,
            idempotency_key,
            started_by,
            next_timer_at: transition.state.next_timer(),
            created_at: now,
            updated_at: now,
            traceparent: traceparent.as_deref(),
            definition_version: i32::try_from(definition.version).unwrap_or(i32::MAX),
        };
        let context = SagaContext {
            id,
            definition: &definition,
            payload,
            state: &transition.state,
            traceparent: traceparent.as_deref(),
        };
        let mut writes = Writes::default();
        writes.history.push(history(
            id,
            "saga.start",
            None,
            None,
            &transition.state,
            match started_by {
                Some(client) => json!({ "started_by": client }),
                None => json!({}),
            },
            now,
        ));
        writes.effects(&self.topics, &context, &transition.actions, now, now);

        let (name, number) = (definition.name.as_str(), definition.version);
        self.catalog.hold(conn, name, number).await?;
        let shared: &Connection = conn;
        let (stored, inserted) = if idempotency_key.is_none() {
            // A fresh id and no key: the insert cannot conflict, so the writes go with it.
            let (stored, inserted, ()) = futures_util::try_join!(
                catalog::is_open(shared, name, number).err_into::<Error>(),
                store::insert(shared, &row).err_into::<Error>(),
                writes.flush(shared),
            )?;
            (stored, inserted)
        } else {
            futures_util::try_join!(
                catalog::is_open(shared, name, number),
                store::insert(shared, &row),
            )?
        };
        if !stored {
            // Removed or retired since this replica read the catalog.
            return Err(match self.catalog.retirement(name, number) {
                Some(_) => Error::Retired {
                    name: name.to_owned(),
                    version: number,
                },
                None => Error::UnknownVersion {
                    name: name.to_owned(),
                    version: number,
                },
            });
        }
        if !inserted {
            let key = idempotency_key.unwrap_or_default();
            let existing = store::find_by_key(conn, name, key)
                .await?
                .ok_or(Error::Concurrent(id))?;
            return Ok(Started {
                id: existing.id,
                created: false,
                queued: Queued::default(),
            });
        }
        if idempotency_key.is_some() {
            writes.flush(conn).await?;
        }
        self.metrics.saga_started();
        Ok(Started {
            id,
            created: true,
            queued: writes.queued,
        })
    }

    /// Applies a batch of participants' replies inside the caller's transaction, with a
    /// constant number of statements: the replies claimed in the inbox (a redelivered reply
    /// changes nothing) and their sagas locked in id order (so that replicas cannot deadlock),
    /// both in one round trip,
    /// the transitions computed in memory in the batch's order, and the changes written.
    /// A reply for an unknown, quarantined or stale saga is recorded and ignored. Publish
    /// what it queued once the transaction committed.
    pub async fn apply_replies<'a>(
        &self,
        conn: &mut Connection,
        replies: impl IntoIterator<Item = &'a Reply>,
    ) -> Result<Queued, Error> {
        self.apply_traced_replies(conn, replies.into_iter().map(|reply| (reply, None)))
            .await
    }

    /// [`Engine::apply_replies`], each reply with the trace context it is handled in (the
    /// reply consumer's span for it), which the commands and events it causes carry on.
    pub async fn apply_traced_replies<'a>(
        &self,
        conn: &mut Connection,
        replies: impl IntoIterator<Item = (&'a Reply, Option<String>)>,
    ) -> Result<Queued, Error> {
        let mut seen = std::collections::HashSet::new();
        let mut received = 0;
        let unique: Vec<(&Reply, Option<String>)> = replies
            .into_iter()
            .inspect(|_| received += 1)
            .filter(|(r, _)| seen.insert(r.id))
            .collect();
        let (unique, traces): (Vec<&Reply>, Vec<Option<String>>) = unique.into_iter().unzip();
        // The claim and the locks, sent together (pipelined): every saga of the batch is
        // locked, in id order, though a redelivered reply then locks its saga for nothing.
        let mut ids: Vec<Uuid> = unique.iter().map(|reply| reply.saga_id).collect();
        ids.sort();
        ids.dedup();
        let shared: &Connection = conn;
        let (fresh, mut rows) = futures_util::try_join!(
            store::claim_replies(shared, &unique),
            store::lock_all(shared, &ids),
        )?;
        let arrivals: Vec<Arrival> = unique
            .into_iter()
            .zip(traces)
            .filter(|(reply, _)| fresh.contains(&reply.id))
            .map(|(reply, traceparent)| Arrival {
                saga_id: reply.saga_id,
                input: reply_input(reply),
                kind: "reply.received",
                detail: json!({
                    "step": reply.step,
                    "attempt": reply.attempt,
                    "reply_id": reply.id,
                    "command_id": reply.command_id,
                    "direction": reply.direction,
                    "outcome": reply.outcome,
                }),
                step: i32::try_from(reply.step).ok(),
                attempt: i32::try_from(reply.attempt).ok(),
                reply_id: Some(reply.id),
                traceparent,
            })
            .collect();
        if arrivals.len() < received {
            tracing::debug!(
                duplicates = received - arrivals.len(),
                "duplicate replies ignored"
            );
        }
        if arrivals.is_empty() {
            return Ok(Queued::default());
        }
        rows.retain(|row| arrivals.iter().any(|arrival| arrival.saga_id == row.id));
        let writes = self.apply(conn, &rows, arrivals, self.clock.now()).await?;
        self.record(&writes);
        Ok(writes.queued)
    }

    /// Verb two: applies inputs of any kind to sagas the caller locked, in its transaction:
    /// makes sure their versions are loaded, plans in memory, and acts on the plan. An
    /// operator action or signal the saga refuses is a conflict, and nothing is written.
    async fn apply(
        &self,
        conn: &mut Connection,
        rows: &[store::SagaRow],
        arrivals: Vec<Arrival>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Writes, Error> {
        self.know(conn, rows).await?;
        if let Some(row) = rows.iter().find(|row| self.unreadable_here(row)) {
            return Err(Error::VersionUnreadable {
                id: row.id,
                source: platform::fault::Unavailable(format!(
                    "definition `{}` version {} is stored, but this replica cannot read it; \
                     waiting for a replica that can",
                    row.definition, row.definition_version
                )),
            });
        }
        let writes = plan::Planner {
            catalog: &self.catalog,
            topics: &self.topics,
            jitter: &|| rand::random::<f64>(),
        }
        .plan(rows, arrivals, now);
        // A saga found unreadable is quarantined (written) rather than refused.
        if let Some((status, reason)) = writes.refused.clone() {
            return Err(Error::Conflict { status, reason });
        }
        let mut writes = writes;
        self.act(conn, &mut writes).await?;
        Ok(writes)
    }

    /// Verb three: carries out a plan in the caller's transaction, one statement per
    /// table. Nothing is published here: its messages wait in `writes.queued` for the
    /// commit ([`Engine::publish`]).
    async fn act(&self, conn: &mut Connection, writes: &mut Writes) -> Result<(), Error> {
        writes.flush(conn).await
    }

    /// Whether `row` runs on a version this replica stores but cannot read.
    fn unreadable_here(&self, row: &store::SagaRow) -> bool {
        let version = u32::try_from(row.definition_version).unwrap_or_default();
        self.catalog.unreadable(&row.definition, version)
    }

    /// Makes sure the catalog holds the version every row runs on (one registered on
    /// another replica a moment ago is loaded now, not found missing).
    async fn know(&self, conn: &mut Connection, rows: &[store::SagaRow]) -> Result<(), Error> {
        let wanted = rows.iter().map(|row| {
            let version = u32::try_from(row.definition_version).unwrap_or_default();
            (row.definition.as_str(), version)
        });
        self.catalog.ensure(conn, wanted).await?;
        Ok(())
    }

    /// Operator or client: sends the signal `name` to a saga waiting for it; `payload`
    /// becomes the signal step's output. A saga not waiting for it is a conflict. `on` is
    /// the pool of whoever asks (the API's): a request never takes a connection the
    /// engine's loops need.
    pub async fn signal_by(
        &self,
        on: &db::Pool,
        id: Uuid,
        name: &str,
        payload: Value,
        operator: &Operator,
    ) -> Result<(), Error> {
        let input = Input::Signal {
            name: name.to_owned(),
            payload,
        };
        self.operator(on, id, input, "signal.received", operator)
            .await
    }

    /// Counts a committed reply and its step latency.
    pub fn record_reply_metrics(&self, reply: &Reply) {
        self.metrics.replies.inc();
        let latency = (reply.replied_at - reply.command_issued_at)
            .to_std()
            .unwrap_or_default();
        self.metrics.step_latency.observe(latency.as_secs_f64());
    }

    /// Feeds a timer tick to every saga whose timer is due (at most `limit`), skipping sagas
    /// another replica is working on, as one batch. Returns how many were processed.
    pub async fn fire_due_timers(&self, limit: i64) -> Result<usize, Error> {
        let mut pooled = self.pool.get().await?;
        let conn: &mut Connection = &mut pooled;
        let writes = conn
            .transaction(async |conn: &mut Connection| {
                let now = self.clock.now();
                let mut due = store::lock_due(conn, now, limit).await?;
                // Sagas on a version this replica cannot read are left to one that can:
                // their timers move a little later, so they do not crowd out the others.
                let (theirs, ours): (Vec<_>, Vec<_>) =
                    due.drain(..).partition(|row| self.unreadable_here(row));
                let due = ours;
                if !theirs.is_empty() {
                    let ids: Vec<Uuid> = theirs.iter().map(|row| row.id).collect();
                    store::defer_timers(conn, &ids, now + chrono::TimeDelta::seconds(5)).await?;
                }
                let ticks = due
                    .iter()
                    .map(|row| Arrival::new(row.id, Input::Tick, "timer.fired"))
                    .collect();
                let writes = self.apply(conn, &due, ticks, now).await?;
                Ok::<_, Error>((due.len(), writes))
            })
            .await?;
        let (fired, writes) = writes;
        self.record(&writes);
        self.publish(writes.queued);
        Ok(fired)
    }

    /// Operator: cancel a RUNNING saga (its dispatched steps are compensated).
    pub async fn cancel(&self, id: Uuid) -> Result<(), Error> {
        self.cancel_by(&self.pool, id, &Operator::system()).await
    }

    /// [`Engine::cancel`] on an operator's behalf, on the asker's pool: who and why go into
    /// the history.
    pub async fn cancel_by(
        &self,
        on: &db::Pool,
        id: Uuid,
        operator: &Operator,
    ) -> Result<(), Error> {
        self.operator(on, id, Input::CancelRequested, "cancel.requested", operator)
            .await
    }

    /// Operator: retry a FAILED saga (its pending compensation runs again with a fresh budget).
    pub async fn retry(&self, id: Uuid) -> Result<(), Error> {
        self.retry_by(&self.pool, id, &Operator::system()).await
    }

    /// Operator: end a FAILED saga by hand (its compensation can never succeed); it becomes
    /// RESOLVED. Who and why go into the history.
    pub async fn resolve_by(
        &self,
        on: &db::Pool,
        id: Uuid,
        operator: &Operator,
    ) -> Result<(), Error> {
        self.operator(
            on,
            id,
            Input::ResolveRequested,
            "resolve.requested",
            operator,
        )
        .await
    }

    /// [`Engine::retry`] on an operator's behalf, on the asker's pool: who and why go into
    /// the history.
    pub async fn retry_by(
        &self,
        on: &db::Pool,
        id: Uuid,
        operator: &Operator,
    ) -> Result<(), Error> {
        self.operator(on, id, Input::RetryRequested, "retry.requested", operator)
            .await
    }

    async fn operator(
        &self,
        on: &db::Pool,
        id: Uuid,
        input: Input,
        kind: &'static str,
        operator: &Operator,
    ) -> Result<(), Error> {
        let mut pooled = on.get().await?;
        let conn: &mut Connection = &mut pooled;
        let writes = conn
            .transaction(async |conn: &mut Connection| {
                self.operator_in(conn, id, input, kind, operator).await
            })
            .await?;
        self.acted(id, writes)
    }

    /// A bulk job's action on one saga, inside the caller's transaction (so the job
    /// records its outcome atomically with it). Call [`Engine::acted`] once it committed.
    pub(crate) async fn bulk_action_in(
        &self,
        conn: &mut Connection,
        id: Uuid,
        action: &str,
        operator: &Operator,
    ) -> Result<Writes, Error> {
        let (input, kind) = match action {
            "retry" => (Input::RetryRequested, "retry.requested"),
            _ => (Input::CancelRequested, "cancel.requested"),
        };
        self.operator_in(conn, id, input, kind, operator).await
    }

    /// Counts and publishes what a committed operator action did; a saga it found
    /// unreadable (and quarantined) is reported as such.
    pub(crate) fn acted(&self, id: Uuid, mut writes: Writes) -> Result<(), Error> {
        self.record(&writes);
        self.publish(std::mem::take(&mut writes.queued));
        match writes.quarantine() {
            Some(reason) => Err(Error::Corrupt {
                id,
                reason: reason.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Operator: lets the engine move a quarantined saga again (the cause was fixed: its
    /// version was loaded, its row repaired). The quarantine is cleared, the history
    /// records who, why and what the quarantine said, and the saga's timer is made due,
    /// so the timer loop looks at it at once. A saga that is not quarantined is a conflict.
    pub async fn lift_quarantine(
        &self,
        on: &db::Pool,
        id: Uuid,
        operator: &Operator,
    ) -> Result<(), Error> {
        let mut pooled = on.get().await?;
        let conn: &mut Connection = &mut pooled;
        let now = self.clock.now();
        conn.transaction(async |conn: &mut Connection| {
            let row = store::lock(conn, id).await?.ok_or(Error::NotFound(id))?;
            operator.expects(&row)?;
            let Some(quarantine) = row.quarantine.clone() else {
                let status = row.status.parse().unwrap_or(Status::Running);
                return Err(Error::Conflict {
                    status,
                    reason: "it is not quarantined".to_owned(),
                });
            };
            store::lift_quarantine(conn, id, now).await?;
            let entry = store::NewHistory {
                saga_id: id,
                kind: "quarantine.lifted".to_owned(),
                step: None,
                attempt: None,
                status: row.status.clone(),
                detail: json!({
                    "actor": operator.actor,
                    "reason": operator.reason,
                    "quarantine": quarantine,
                }),
                recorded_at: now,
            };
            store::append_history(conn, &[entry]).await?;
            Ok::<_, Error>(())
        })
        .await
    }

    async fn operator_in(
        &self,
        conn: &mut Connection,
        id: Uuid,
        input: Input,
        kind: &'static str,
        operator: &Operator,
    ) -> Result<Writes, Error> {
        let row = store::lock(conn, id).await?.ok_or(Error::NotFound(id))?;
        operator.expects(&row)?;
        if let Some(reason) = &row.quarantine {
            return Err(Error::Corrupt {
                id,
                reason: reason.clone(),
            });
        }
        let mut arrival = Arrival::new(id, input, kind);
        arrival.detail = json!({ "actor": operator.actor, "reason": operator.reason });
        self.apply(conn, &[row], vec![arrival], self.clock.now())
            .await
    }
}

/// Who asks for an operator action, and why; both are recorded in the saga's history.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The API key's name (`anonymous` with access control off).
    pub actor: String,
    pub reason: Option<String>,
    /// Act only if the saga is still at this version (`If-Match`); `None`: whatever it is.
    pub expected_version: Option<i64>,
}

impl Operator {
    /// Refuses to act on a saga that moved past the version the operator saw (`If-Match`).
    fn expects(&self, row: &store::SagaRow) -> Result<(), Error> {
        match self.expected_version {
            Some(expected) if expected != row.version => Err(Error::Stale {
                id: row.id,
                expected,
                current: row.version,
            }),
            _ => Ok(()),
        }
    }

    /// The engine's own callers (tests, tools).
    pub fn system() -> Self {
        Self {
            actor: "system".to_owned(),
            reason: None,
            expected_version: None,
        }
    }
}

/// What the outbox messages of one saga are built from.
pub(crate) struct SagaContext<'a> {
    pub id: Uuid,
    pub definition: &'a Definition,
    pub payload: &'a Value,
    pub state: &'a SagaState,
    /// The trace context the transition ran in; its outbox messages carry it on.
    pub traceparent: Option<&'a str>,
}
