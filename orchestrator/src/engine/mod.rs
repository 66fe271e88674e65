//! The saga engine: runs the pure state machine ([`crate::saga`]) against Postgres.
//!
//! Every change follows one pattern, inside one transaction: lock the saga row, compute the
//! transition, write the new state (guarded by the row version), the history entries and
//! the outbox messages the transition asks for, commit. Nothing is published here: the
//! [relay](crate::relay) publishes the outbox after the commit, so there is no state without
//! its message and no message without its state.

mod messages;
pub mod metrics;
pub mod store;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection as _;
use platform::contract::{Direction, Fenced, Outcome as ReplyOutcome, Reply, Topics};
use platform::db::{self, Connection};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::clock::Clock;
use crate::saga::{self, Action, Definition, FailureKind, Input, SagaState, Status};
use metrics::Metrics;
use store::{NewHistory, NewSaga, SagaRow, SagaUpdate};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown saga definition `{0}`")]
    UnknownDefinition(String),
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
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

/// A started (or, with a reused idempotency key, found) saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub id: Uuid,
    /// `false` when the idempotency key named an existing saga.
    pub created: bool,
}

#[derive(Clone)]
pub struct Engine {
    pool: db::Pool,
    topics: Topics,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Engine {
    pub fn new(pool: db::Pool, topics: Topics, clock: Clock) -> Self {
        Self {
            pool,
            topics,
            clock,
            metrics: Arc::new(Metrics::default()),
        }
    }

    pub fn pool(&self) -> &db::Pool {
        &self.pool
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
        conn.transaction(async |conn: &mut Connection| {
            self.start_in(conn, definition, payload, idempotency_key)
                .await
        })
        .await
    }

    /// Starts a saga inside the caller's transaction (so an order row and its saga commit
    /// together). With an idempotency key already used for this definition, returns the
    /// existing saga and writes nothing.
    pub async fn start_in(
        &self,
        conn: &mut Connection,
        definition_name: &str,
        payload: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Started, Error> {
        let definition = saga::definitions::find(definition_name)
            .ok_or_else(|| Error::UnknownDefinition(definition_name.to_owned()))?;
        let now = self.clock.now();
        let id = Uuid::now_v7();
        let transition = saga::start(definition, now);
        let row = NewSaga {
            id,
            definition: definition.name,
            status: transition.state.status.as_str(),
            current_step: current_step(&transition.state),
            payload,
            state: encode_state(&transition.state),
            version: 0,
            idempotency_key,
            next_timer_at: transition.state.next_timer(),
            created_at: now,
            updated_at: now,
        };
        if !store::insert(conn, &row).await? {
            let key = idempotency_key.unwrap_or_default();
            let existing = store::find_by_key(conn, definition.name, key)
                .await?
                .ok_or(Error::Concurrent(id))?;
            return Ok(Started {
                id: existing.id,
                created: false,
            });
        }
        let context = SagaContext {
            id,
            definition,
            payload,
            state: &transition.state,
        };
        let entry = history(
            id,
            "saga.start",
            None,
            None,
            &transition.state,
            json!({}),
            now,
        );
        self.persist_effects(conn, &context, entry, &transition.actions, now)
            .await?;
        self.metrics.saga_started();
        Ok(Started { id, created: true })
    }

    /// Applies a participant's reply inside the caller's transaction. A redelivered reply
    /// (same id) changes nothing; a reply for an unknown saga or a stale attempt is recorded
    /// and ignored.
    pub async fn apply_reply(&self, conn: &mut Connection, reply: &Reply) -> Result<(), Error> {
        if !store::claim_reply(conn, reply.id, reply.saga_id).await? {
            tracing::debug!(reply.id = %reply.id, "duplicate reply ignored");
            return Ok(());
        }
        let Some(row) = store::lock(conn, reply.saga_id).await? else {
            tracing::warn!(saga.id = %reply.saga_id, reply.id = %reply.id, "reply for an unknown saga");
            store::settle_reply(conn, reply.id, "ignored: unknown saga").await?;
            return Ok(());
        };
        if let Some(reason) = &row.quarantine {
            let outcome = format!("ignored: saga quarantined: {reason}");
            store::settle_reply(conn, reply.id, &outcome).await?;
            return Ok(());
        }
        let input = reply_input(reply);
        let detail = json!({
            "step": reply.step,
            "attempt": reply.attempt,
            "reply_id": reply.id,
            "command_id": reply.command_id,
            "direction": reply.direction,
            "outcome": reply.outcome,
        });
        let outcome = self
            .isolated(conn, &row, &input, "reply.received", detail)
            .await?;
        store::settle_reply(conn, reply.id, &outcome).await?;
        Ok(())
    }

    /// Applies one input in a savepoint. A saga that cannot be decoded or moved is
    /// quarantined instead of failing the caller's whole batch: the savepoint undoes what
    /// the attempt wrote, the quarantine is recorded, and the batch goes on.
    async fn isolated(
        &self,
        conn: &mut Connection,
        row: &SagaRow,
        input: &Input,
        kind: &'static str,
        detail: Value,
    ) -> Result<String, Error> {
        let attempt = conn
            .transaction::<_, Error, _>(async |conn: &mut Connection| {
                self.apply_locked(conn, row, input, kind, detail).await
            })
            .await;
        match attempt {
            Err(Error::Corrupt { id, reason }) => {
                self.quarantine(conn, row, &reason).await?;
                Ok(format!("ignored: saga {id} quarantined: {reason}"))
            }
            other => other,
        }
    }

    async fn quarantine(
        &self,
        conn: &mut Connection,
        row: &SagaRow,
        reason: &str,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        tracing::error!(saga.id = %row.id, reason, "saga quarantined");
        store::quarantine(conn, row.id, reason, now).await?;
        let entry = NewHistory {
            saga_id: row.id,
            kind: "saga.quarantined".to_owned(),
            step: None,
            attempt: None,
            status: row.status.clone(),
            detail: json!({ "reason": reason }),
            recorded_at: now,
        };
        store::append_history(conn, &[entry]).await?;
        self.metrics
            .quarantined
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Counts a committed reply and its step latency.
    pub fn record_reply_metrics(&self, reply: &Reply) {
        self.metrics
            .replies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let latency = (reply.replied_at - reply.command_issued_at)
            .to_std()
            .unwrap_or_default();
        self.metrics.step_latency.observe(latency);
    }

    /// Feeds a timer tick to every saga whose timer is due (at most `limit`), skipping sagas
    /// another replica is working on. Returns how many were processed.
    pub async fn fire_due_timers(&self, limit: i64) -> Result<usize, Error> {
        let mut pooled = self.pool.get().await?;
        let conn: &mut Connection = &mut pooled;
        conn.transaction(async |conn: &mut Connection| {
            let now = self.clock.now();
            let due = store::lock_due(conn, now, limit).await?;
            for row in &due {
                self.isolated(conn, row, &Input::Tick, "timer.fired", json!({}))
                    .await?;
            }
            Ok(due.len())
        })
        .await
    }

    /// Operator: cancel a RUNNING saga (its dispatched steps are compensated).
    pub async fn cancel(&self, id: Uuid) -> Result<(), Error> {
        self.operator(id, Input::CancelRequested, "cancel.requested")
            .await
    }

    /// Operator: retry a FAILED saga (its pending compensation runs again with a fresh budget).
    pub async fn retry(&self, id: Uuid) -> Result<(), Error> {
        self.operator(id, Input::RetryRequested, "retry.requested")
            .await
    }

    async fn operator(&self, id: Uuid, input: Input, kind: &'static str) -> Result<(), Error> {
        let mut pooled = self.pool.get().await?;
        let conn: &mut Connection = &mut pooled;
        conn.transaction(async |conn: &mut Connection| {
            let row = store::lock(conn, id).await?.ok_or(Error::NotFound(id))?;
            if let Some(reason) = &row.quarantine {
                return Err(Error::Corrupt {
                    id,
                    reason: reason.clone(),
                });
            }
            let definition = definition_of(&row)?;
            let state = decode_state(&row)?;
            let now = self.clock.now();
            let transition = saga::transition(definition, &state, &input, now, jitter());
            if let saga::Outcome::Ignored { reason } = transition.outcome {
                return Err(Error::Conflict {
                    status: state.status,
                    reason,
                });
            }
            self.persist(conn, &row, definition, kind, json!({}), transition, now)
                .await?;
            Ok(())
        })
        .await
    }

    /// Runs one input against a locked row; returns a short outcome for the reply inbox.
    async fn apply_locked(
        &self,
        conn: &mut Connection,
        row: &SagaRow,
        input: &Input,
        kind: &'static str,
        detail: Value,
    ) -> Result<String, Error> {
        let definition = definition_of(row)?;
        let state = decode_state(row)?;
        let now = self.clock.now();
        let transition = saga::transition(definition, &state, input, now, jitter());
        match &transition.outcome {
            saga::Outcome::Applied => {
                self.persist(conn, row, definition, kind, detail, transition, now)
                    .await?;
                Ok("applied".to_owned())
            }
            saga::Outcome::Ignored { reason } => {
                if matches!(input, Input::Tick) {
                    // Nothing was due: bring the timer column back in line with the state so
                    // the timer loop does not pick this saga up again.
                    store::set_timer(conn, row.id, state.next_timer()).await?;
                } else {
                    let mut detail = detail;
                    detail["ignored"] = json!(reason);
                    let entry = history(row.id, kind, None, None, &state, detail, now);
                    store::append_history(conn, &[entry]).await?;
                    tracing::info!(saga.id = %row.id, reason = %reason, "input ignored");
                }
                Ok(format!("ignored: {reason}"))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn persist(
        &self,
        conn: &mut Connection,
        row: &SagaRow,
        definition: &'static Definition,
        kind: &'static str,
        detail: Value,
        transition: saga::Transition,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let state = &transition.state;
        let change = SagaUpdate {
            status: state.status.as_str(),
            current_step: current_step(state),
            state: encode_state(state),
            next_timer_at: state.next_timer(),
            updated_at: now,
        };
        if !store::update(conn, row.id, row.version, change).await? {
            return Err(Error::Concurrent(row.id));
        }
        let (step, attempt) = input_position(&detail);
        let entry = history(row.id, kind, step, attempt, state, detail, now);
        let context = SagaContext {
            id: row.id,
            definition,
            payload: &row.payload,
            state,
        };
        self.persist_effects(conn, &context, entry, &transition.actions, now)
            .await?;
        for action in &transition.actions {
            if let Action::Finish(status) = action {
                self.metrics
                    .saga_finished(*status, (now - row.created_at).to_std().unwrap_or_default());
            }
        }
        Ok(())
    }

    /// Writes the input's history entry plus, for each action, its history entry and its
    /// outbox message.
    async fn persist_effects(
        &self,
        conn: &mut Connection,
        context: &SagaContext<'_>,
        input_entry: NewHistory,
        actions: &[Action],
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let mut entries = vec![input_entry];
        let mut outgoing = Vec::new();
        for action in actions {
            if let Some((entry, message)) = messages::for_action(&self.topics, context, action, now)
            {
                entries.push(entry);
                outgoing.extend(message);
            }
        }
        store::append_history(conn, &entries).await?;
        store::enqueue(conn, &outgoing).await?;
        Ok(())
    }
}

/// What the outbox messages of one saga are built from.
pub(crate) struct SagaContext<'a> {
    pub id: Uuid,
    pub definition: &'static Definition,
    pub payload: &'a Value,
    pub state: &'a SagaState,
}

fn definition_of(row: &SagaRow) -> Result<&'static Definition, Error> {
    saga::definitions::find(&row.definition).ok_or_else(|| Error::Corrupt {
        id: row.id,
        reason: format!("unknown definition `{}`", row.definition),
    })
}

fn decode_state(row: &SagaRow) -> Result<SagaState, Error> {
    serde_json::from_value(row.state.clone()).map_err(|err| Error::Corrupt {
        id: row.id,
        reason: err.to_string(),
    })
}

fn encode_state(state: &SagaState) -> Value {
    // SagaState is plain data (strings, numbers, timestamps): serialising cannot fail.
    serde_json::to_value(state).unwrap_or(Value::Null)
}

/// The furthest step the saga has reached, for display and filtering.
fn current_step(state: &SagaState) -> i32 {
    let reached = state
        .steps
        .iter()
        .rposition(|step| step.forward != saga::ForwardPhase::Pending)
        .unwrap_or(0);
    i32::try_from(reached).unwrap_or(i32::MAX)
}

fn reply_input(reply: &Reply) -> Input {
    let step = reply.step as usize;
    let attempt = reply.attempt;
    match (reply.direction, &reply.outcome) {
        (Direction::Forward, ReplyOutcome::Succeeded { output }) => Input::StepSucceeded {
            step,
            attempt,
            output: output.clone(),
        },
        (Direction::Forward, ReplyOutcome::Rejected { reason }) => Input::StepFailed {
            step,
            attempt,
            kind: FailureKind::Rejected,
            reason: reason.clone(),
        },
        (Direction::Forward, ReplyOutcome::Failed { reason }) => Input::StepFailed {
            step,
            attempt,
            kind: FailureKind::Retryable,
            reason: reason.clone(),
        },
        (Direction::Compensate, ReplyOutcome::Succeeded { .. }) => {
            Input::CompensationSucceeded { step, attempt }
        }
        (
            Direction::Compensate | Direction::Fence,
            ReplyOutcome::Rejected { reason } | ReplyOutcome::Failed { reason },
        ) => Input::CompensationFailed {
            step,
            attempt,
            reason: reason.clone(),
        },
        (Direction::Fence, ReplyOutcome::Succeeded { output }) => {
            match serde_json::from_value::<Fenced>(output.clone()) {
                Ok(fenced) => Input::StepFenced {
                    step,
                    attempt,
                    applied: fenced.applied.then(|| fenced.output.unwrap_or(Value::Null)),
                },
                // Counts as a failed fence attempt: it is retried, and parks if it persists.
                Err(err) => Input::CompensationFailed {
                    step,
                    attempt,
                    reason: format!("unreadable fence reply: {err}"),
                },
            }
        }
    }
}

/// Step and attempt named in a reply's detail, for the history entry.
fn input_position(detail: &Value) -> (Option<i32>, Option<i32>) {
    let number = |key: &str| {
        detail
            .get(key)
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
    };
    (number("step"), number("attempt"))
}

fn history(
    saga_id: Uuid,
    kind: &str,
    step: Option<i32>,
    attempt: Option<i32>,
    state: &SagaState,
    detail: Value,
    now: DateTime<Utc>,
) -> NewHistory {
    NewHistory {
        saga_id,
        kind: kind.to_owned(),
        step,
        attempt,
        status: state.status.as_str().to_owned(),
        detail,
        recorded_at: now,
    }
}

fn jitter() -> f64 {
    rand::random::<f64>()
}
