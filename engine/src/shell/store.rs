//! Row-level persistence of saga instances, their history and the outbox. Every function
//! takes a connection that the caller has inside a transaction: the engine decides what
//! belongs together, this module only knows how to write it. The batch's statements take a
//! shared `&Connection`, so that a caller can send several at once: diesel-async pipelines
//! futures polled together on one connection (one round trip instead of one each).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::RunQueryDsl;
use platform::contract::Reply;
use platform::db::{Connection, prepared};
use serde_json::Value;
use uuid::Uuid;

use super::batch::RowChange;
use super::publish::{Message, Queued};

use crate::schema::sagas;

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = sagas)]
pub struct SagaRow {
    pub id: Uuid,
    pub definition: String,
    pub status: String,
    pub current_step: i32,
    pub payload: Value,
    pub state: Value,
    pub version: i64,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Why the engine stopped moving this saga, when it did (see [`quarantine`]).
    pub quarantine: Option<String>,
    /// The trace context of its start: the parent of what timers and operators do to it.
    pub traceparent: Option<String>,
    /// The version of its definition it started on.
    pub definition_version: i32,
}

/// A saga to insert ([`insert`]).
pub struct NewSaga<'a> {
    pub id: Uuid,
    pub definition: &'a str,
    pub status: &'a str,
    pub current_step: i32,
    pub payload: &'a Value,
    pub state: Value,
    pub version: i64,
    pub idempotency_key: Option<&'a str>,
    pub started_by: Option<&'a str>,
    pub next_timer_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub traceparent: Option<&'a str>,
    pub definition_version: i32,
}

/// A history entry to append ([`append_history`]).
pub struct NewHistory {
    pub saga_id: Uuid,
    pub kind: String,
    pub step: Option<i32>,
    pub attempt: Option<i32>,
    pub status: String,
    pub detail: Value,
    pub recorded_at: DateTime<Utc>,
}

/// A message to write to the outbox ([`enqueue`]).
pub struct NewOutboxMessage {
    pub topic: String,
    pub message_key: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
    /// Hands the saga's trace on to the command or event (the relay's Kafka header).
    pub traceparent: Option<String>,
}

/// Inserts a new saga; `false` when the idempotency key is already taken (the caller then
/// reads the existing saga). A concurrent insert with the same key waits on the unique index
/// until the first commits, so exactly one wins.
pub async fn insert(conn: &Connection, saga: &NewSaga<'_>) -> QueryResult<bool> {
    let mut conn = conn;
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = BigInt)]
        rows: i64,
    }
    // The timer goes in with the row, in the same statement (and only if the row does).
    let inserted: Inserted = prepared(
        "WITH saga AS ( \
           INSERT INTO sagas (id, definition, status, current_step, payload, state, version, \
             idempotency_key, started_by, created_at, updated_at, status_changed_at, \
             traceparent, definition_version) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $11, $12, $11, $13, $14) \
           ON CONFLICT DO NOTHING RETURNING id), \
         timer AS ( \
           INSERT INTO saga_timers (saga_id, fire_at) \
           SELECT id, $10::timestamptz FROM saga WHERE $10::timestamptz IS NOT NULL) \
         SELECT count(*) AS rows FROM saga",
    )
    .bind::<SqlUuid, _>(saga.id)
    .bind::<Text, _>(saga.definition)
    .bind::<Text, _>(saga.status)
    .bind::<Integer, _>(saga.current_step)
    .bind::<Jsonb, _>(saga.payload)
    .bind::<Jsonb, _>(&saga.state)
    .bind::<BigInt, _>(saga.version)
    .bind::<Nullable<Text>, _>(saga.idempotency_key)
    .bind::<Nullable<Text>, _>(saga.started_by)
    .bind::<Nullable<Timestamptz>, _>(saga.next_timer_at)
    .bind::<Timestamptz, _>(saga.created_at)
    .bind::<Timestamptz, _>(saga.updated_at)
    .bind::<Nullable<Text>, _>(saga.traceparent)
    .bind::<Integer, _>(saga.definition_version)
    .get_result(&mut conn)
    .await?;
    Ok(inserted.rows == 1)
}

pub async fn find_by_key(
    conn: &mut Connection,
    definition: &str,
    key: &str,
) -> QueryResult<Option<SagaRow>> {
    sagas::table
        .filter(sagas::definition.eq(definition))
        .filter(sagas::idempotency_key.eq(key))
        .select(SagaRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Loads sagas and locks their rows until the transaction ends, in id order, so that two
/// transactions locking overlapping sets cannot deadlock.
pub async fn lock_all(conn: &Connection, ids: &[Uuid]) -> QueryResult<Vec<SagaRow>> {
    let mut conn = conn;
    sagas::table
        .filter(sagas::id.eq_any(ids))
        .order(sagas::id.asc())
        .select(SagaRow::as_select())
        .for_update()
        .load(&mut conn)
        .await
}

/// Writes each saga's new row if it is still at the version it was read at; returns how
/// many were written (fewer means another writer got there first).
pub(crate) async fn update_all(conn: &Connection, rows: &[RowChange]) -> QueryResult<usize> {
    let mut conn = conn;
    let mut ids = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    let mut statuses = Vec::with_capacity(rows.len());
    let mut steps = Vec::with_capacity(rows.len());
    let mut states = Vec::with_capacity(rows.len());
    let mut timers = Vec::with_capacity(rows.len());
    let mut exact = Vec::with_capacity(rows.len());
    let mut quarantines = Vec::with_capacity(rows.len());
    let mut updated = Vec::with_capacity(rows.len());
    for row in rows {
        ids.push(row.id);
        versions.push(row.version);
        statuses.push(row.status.as_str());
        steps.push(row.current_step);
        states.push(&row.state);
        timers.push(row.next_timer_at);
        exact.push(row.timer_exact);
        quarantines.push(row.quarantine.as_deref());
        updated.push(row.updated_at);
    }
    // The saga's row changes no indexed column unless its status or quarantine changes, so
    // the update is HOT. Its timer, which is indexed, lives in `saga_timers` and is written
    // in the same statement only when it must move earlier, be set exactly, or go (a
    // mismatched version fails the whole batch, timers included). Only the holder of the
    // saga's row lock writes its timer, so reading it here cannot race.
    prepared(
        "WITH u AS ( \
           SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::int4[], $5::jsonb[], \
                                $6::timestamptz[], $7::bool[], $8::text[], $9::timestamptz[]) \
             AS u(id, version, status, current_step, state, fire_at, exact, quarantine, \
                  updated_at)), \
         set_timers AS ( \
           INSERT INTO saga_timers (saga_id, fire_at) \
           SELECT u.id, u.fire_at FROM u LEFT JOIN saga_timers t ON t.saga_id = u.id \
           WHERE u.fire_at IS NOT NULL AND t.fire_at IS DISTINCT FROM u.fire_at \
             AND (u.exact OR t.fire_at IS NULL OR u.fire_at < t.fire_at) \
           ON CONFLICT (saga_id) DO UPDATE SET fire_at = excluded.fire_at), \
         clear_timers AS ( \
           DELETE FROM saga_timers t USING u WHERE t.saga_id = u.id AND u.fire_at IS NULL) \
         UPDATE sagas AS s SET status = u.status, current_step = u.current_step, state = u.state, \
           quarantine = u.quarantine, updated_at = u.updated_at, version = s.version + 1, \
           status_changed_at = CASE WHEN s.status = u.status THEN s.status_changed_at \
                                    ELSE u.updated_at END \
         FROM u WHERE s.id = u.id AND s.version = u.version",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<BigInt>, _>(&versions)
    .bind::<Array<Text>, _>(&statuses)
    .bind::<Array<Integer>, _>(&steps)
    .bind::<Array<Jsonb>, _>(&states)
    .bind::<Array<Nullable<Timestamptz>>, _>(&timers)
    .bind::<Array<diesel::sql_types::Bool>, _>(&exact)
    .bind::<Array<Nullable<Text>>, _>(&quarantines)
    .bind::<Array<Timestamptz>, _>(&updated)
    .execute(&mut conn)
    .await
}

/// Records reply ids in the inbox (in id order, so that two batches sharing a redelivered
/// reply cannot deadlock); returns the ids that were new. The others are redeliveries.
pub async fn claim_replies(conn: &Connection, replies: &[&Reply]) -> QueryResult<HashSet<Uuid>> {
    let mut conn = conn;
    if replies.is_empty() {
        return Ok(HashSet::new());
    }
    let mut rows: Vec<(Uuid, Uuid)> = replies.iter().map(|r| (r.id, r.saga_id)).collect();
    rows.sort();
    let (reply_ids, saga_ids): (Vec<Uuid>, Vec<Uuid>) = rows.into_iter().unzip();
    #[derive(QueryableByName)]
    struct Claimed {
        #[diesel(sql_type = SqlUuid)]
        reply_id: Uuid,
    }
    let fresh: Vec<Claimed> = prepared(
        "INSERT INTO processed_replies (reply_id, saga_id, outcome) \
         SELECT reply_id, saga_id, 'received' FROM unnest($1::uuid[], $2::uuid[]) \
           AS u(reply_id, saga_id) \
         ON CONFLICT DO NOTHING RETURNING reply_id",
    )
    .bind::<Array<SqlUuid>, _>(&reply_ids)
    .bind::<Array<SqlUuid>, _>(&saga_ids)
    .load(&mut conn)
    .await?;
    Ok(fresh.into_iter().map(|claimed| claimed.reply_id).collect())
}

/// Records what became of each reply.
pub async fn settle_replies(conn: &Connection, settled: &[(Uuid, String)]) -> QueryResult<()> {
    let mut conn = conn;
    if settled.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = settled.iter().map(|(id, _)| *id).collect();
    let outcomes: Vec<&str> = settled
        .iter()
        .map(|(_, outcome)| outcome.as_str())
        .collect();
    prepared(
        "UPDATE processed_replies AS p SET outcome = u.outcome \
         FROM unnest($1::uuid[], $2::text[]) AS u(reply_id, outcome) \
         WHERE p.reply_id = u.reply_id",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Text>, _>(&outcomes)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// What an application's front shows of a saga it started (the shop's order page).
#[derive(Debug, Clone, Queryable)]
pub struct Glance {
    pub status: String,
    pub state: Value,
    /// The client that started it (`None`: an operator, or access control off).
    pub started_by: Option<String>,
}

/// A saga's [`Glance`], without locking it.
pub async fn glance(conn: &mut Connection, id: Uuid) -> QueryResult<Option<Glance>> {
    sagas::table
        .find(id)
        .select((sagas::status, sagas::state, sagas::started_by))
        .first(conn)
        .await
        .optional()
}

/// `NOTIFY channel, payload`, delivered when the transaction commits (and never if it
/// rolls back).
pub async fn notify(conn: &Connection, channel: &str, payload: &str) -> QueryResult<()> {
    let mut conn = conn;
    prepared("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(channel)
        .bind::<Text, _>(payload)
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Loads a saga and locks its row until the transaction ends.
pub async fn lock(conn: &mut Connection, id: Uuid) -> QueryResult<Option<SagaRow>> {
    sagas::table
        .find(id)
        .select(SagaRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Moves the timers of `ids` to `at` (sagas this replica leaves to another).
pub async fn defer_timers(
    conn: &mut Connection,
    ids: &[Uuid],
    at: DateTime<Utc>,
) -> QueryResult<()> {
    prepared("UPDATE saga_timers SET fire_at = $2 WHERE saga_id = ANY($1)")
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Timestamptz, _>(at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Clears a saga's quarantine and makes its timer due at `now` (in the caller's
/// transaction, which holds the row's lock).
pub async fn lift_quarantine(
    conn: &mut Connection,
    id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(sagas::table.find(id))
        .set((
            sagas::quarantine.eq(None::<String>),
            sagas::version.eq(sagas::version + 1),
            sagas::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    prepared(
        "INSERT INTO saga_timers (saga_id, fire_at) VALUES ($1, $2) \
         ON CONFLICT (saga_id) DO UPDATE SET fire_at = excluded.fire_at",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Timestamptz, _>(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn append_history(conn: &Connection, entries: &[NewHistory]) -> QueryResult<()> {
    let mut conn = conn;
    if entries.is_empty() {
        return Ok(());
    }
    let sagas: Vec<Uuid> = entries.iter().map(|e| e.saga_id).collect();
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    let steps: Vec<Option<i32>> = entries.iter().map(|e| e.step).collect();
    let attempts: Vec<Option<i32>> = entries.iter().map(|e| e.attempt).collect();
    let statuses: Vec<&str> = entries.iter().map(|e| e.status.as_str()).collect();
    let details: Vec<&Value> = entries.iter().map(|e| &e.detail).collect();
    let recorded: Vec<DateTime<Utc>> = entries.iter().map(|e| e.recorded_at).collect();
    // `WITH ORDINALITY ... ORDER BY`: the entries get their ids in the batch's order.
    prepared(
        "INSERT INTO saga_history (saga_id, kind, step, attempt, status, detail, recorded_at) \
         SELECT saga_id, kind, step, attempt, status, detail, recorded_at \
         FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int4[], $5::text[], $6::jsonb[], \
                     $7::timestamptz[]) WITH ORDINALITY \
           AS u(saga_id, kind, step, attempt, status, detail, recorded_at, n) \
         ORDER BY n",
    )
    .bind::<Array<SqlUuid>, _>(&sagas)
    .bind::<Array<Text>, _>(&kinds)
    .bind::<Array<Nullable<Integer>>, _>(&steps)
    .bind::<Array<Nullable<Integer>>, _>(&attempts)
    .bind::<Array<Text>, _>(&statuses)
    .bind::<Array<Jsonb>, _>(&details)
    .bind::<Array<Timestamptz>, _>(&recorded)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Writes messages to the outbox; the [`Queued`] they became is for
/// [`super::Engine::publish`] once the transaction committed.
pub async fn enqueue(conn: &Connection, messages: Vec<NewOutboxMessage>) -> QueryResult<Queued> {
    let mut conn = conn;
    if messages.is_empty() {
        return Ok(Queued::default());
    }
    let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
    let keys: Vec<&str> = messages.iter().map(|m| m.message_key.as_str()).collect();
    let payloads: Vec<&Value> = messages.iter().map(|m| &m.payload).collect();
    let created: Vec<DateTime<Utc>> = messages.iter().map(|m| m.created_at).collect();
    let traces: Vec<Option<&str>> = messages.iter().map(|m| m.traceparent.as_deref()).collect();
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let ids: Vec<Id> = prepared(
        "INSERT INTO outbox (topic, message_key, payload, created_at, traceparent) \
         SELECT topic, message_key, payload, created_at, traceparent \
         FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[], $5::text[]) \
           WITH ORDINALITY AS u(topic, message_key, payload, created_at, traceparent, n) \
         ORDER BY n RETURNING id",
    )
    .bind::<Array<Text>, _>(&topics)
    .bind::<Array<Text>, _>(&keys)
    .bind::<Array<Jsonb>, _>(&payloads)
    .bind::<Array<Timestamptz>, _>(&created)
    .bind::<Array<Nullable<Text>>, _>(&traces)
    .load(&mut conn)
    .await?;
    let mut ids: Vec<i64> = ids.into_iter().map(|row| row.id).collect();
    // The ids come from the sequence row by row, in the order of the rows (`ORDER BY n`).
    ids.sort_unstable();
    let queued = messages
        .into_iter()
        .zip(ids)
        .map(|(message, id)| Message {
            id,
            topic: message.topic,
            key: message.message_key,
            payload: message.payload,
            traceparent: message.traceparent,
        })
        .collect();
    Ok(Queued(queued))
}

/// Locks up to `limit` sagas whose timer is due, skipping rows another replica holds.
pub async fn lock_due(
    conn: &mut Connection,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<SagaRow>> {
    // Only the sagas' rows are locked: a timer's row is written by its saga's lock holder,
    // and holding it here would stall that holder for the rest of this transaction.
    prepared(
        "SELECT s.* FROM saga_timers t JOIN sagas s ON s.id = t.saga_id \
         WHERE t.fire_at <= $1 ORDER BY t.fire_at LIMIT $2 FOR UPDATE OF s SKIP LOCKED",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}
