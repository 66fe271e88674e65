//! Row-level persistence of saga instances, their history and the outbox. Every function
//! takes a connection that the caller has inside a transaction: the engine decides what
//! belongs together, this module only knows how to write it.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::db::Connection;
use serde_json::Value;
use uuid::Uuid;

use crate::schema::{outbox, processed_replies, saga_history, sagas};

#[derive(Debug, Clone, Queryable, Selectable)]
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
    pub next_timer_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Why the engine stopped moving this saga, when it did (see [`quarantine`]).
    pub quarantine: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = sagas)]
pub struct NewSaga<'a> {
    pub id: Uuid,
    pub definition: &'a str,
    pub status: &'a str,
    pub current_step: i32,
    pub payload: &'a Value,
    pub state: Value,
    pub version: i64,
    pub idempotency_key: Option<&'a str>,
    pub next_timer_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = saga_history)]
pub struct NewHistory {
    pub saga_id: Uuid,
    pub kind: String,
    pub step: Option<i32>,
    pub attempt: Option<i32>,
    pub status: String,
    pub detail: Value,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = outbox)]
pub struct NewOutboxMessage {
    pub topic: String,
    pub message_key: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

/// Inserts a new saga; `false` when the idempotency key is already taken (the caller then
/// reads the existing saga). A concurrent insert with the same key waits on the unique index
/// until the first commits, so exactly one wins.
pub async fn insert(conn: &mut Connection, saga: &NewSaga<'_>) -> QueryResult<bool> {
    let inserted = diesel::insert_into(sagas::table)
        .values(saga)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
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

/// What changes on a saga row with a transition.
pub struct SagaUpdate<'a> {
    pub status: &'a str,
    pub current_step: i32,
    pub state: Value,
    pub next_timer_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// Writes the new state if the row is still at `version`; `false` means another writer got
/// there first and the caller must start over.
pub async fn update(
    conn: &mut Connection,
    id: Uuid,
    version: i64,
    change: SagaUpdate<'_>,
) -> QueryResult<bool> {
    let updated = diesel::update(sagas::table)
        .filter(sagas::id.eq(id))
        .filter(sagas::version.eq(version))
        .set((
            sagas::status.eq(change.status),
            sagas::current_step.eq(change.current_step),
            sagas::state.eq(change.state),
            sagas::next_timer_at.eq(change.next_timer_at),
            sagas::updated_at.eq(change.updated_at),
            sagas::version.eq(version + 1),
        ))
        .execute(conn)
        .await?;
    Ok(updated == 1)
}

/// Corrects the timer column without a state change (a tick found nothing due).
pub async fn set_timer(
    conn: &mut Connection,
    id: Uuid,
    next_timer_at: Option<DateTime<Utc>>,
) -> QueryResult<()> {
    diesel::update(sagas::table.find(id))
        .set(sagas::next_timer_at.eq(next_timer_at))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn append_history(conn: &mut Connection, entries: &[NewHistory]) -> QueryResult<()> {
    if !entries.is_empty() {
        diesel::insert_into(saga_history::table)
            .values(entries)
            .execute(conn)
            .await?;
    }
    Ok(())
}

pub async fn enqueue(conn: &mut Connection, messages: &[NewOutboxMessage]) -> QueryResult<()> {
    if !messages.is_empty() {
        diesel::insert_into(outbox::table)
            .values(messages)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Records a reply id; `false` when it was recorded before (a redelivery).
pub async fn claim_reply(
    conn: &mut Connection,
    reply_id: Uuid,
    saga_id: Uuid,
) -> QueryResult<bool> {
    let inserted = diesel::insert_into(processed_replies::table)
        .values((
            processed_replies::reply_id.eq(reply_id),
            processed_replies::saga_id.eq(saga_id),
            processed_replies::outcome.eq("received"),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

pub async fn settle_reply(conn: &mut Connection, reply_id: Uuid, outcome: &str) -> QueryResult<()> {
    diesel::update(processed_replies::table.find(reply_id))
        .set(processed_replies::outcome.eq(outcome))
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets a saga aside with the reason: no timer fires for it and no input moves it.
pub async fn quarantine(
    conn: &mut Connection,
    id: Uuid,
    reason: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(sagas::table.find(id))
        .set((
            sagas::quarantine.eq(reason),
            sagas::next_timer_at.eq(None::<DateTime<Utc>>),
            sagas::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks up to `limit` sagas whose timer is due, skipping rows another replica holds.
pub async fn lock_due(
    conn: &mut Connection,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<SagaRow>> {
    sagas::table
        .filter(sagas::next_timer_at.le(now))
        .order(sagas::next_timer_at.asc())
        .limit(limit)
        .select(SagaRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}
