//! Dead-letter replay as the engine's own message, never a copy of the letter's bytes.
//!
//! Anything that can write to the dead-letter topic can put any bytes there, under any
//! origin header. So a letter is only a request to send again something this deployment
//! sent (or received) before, and it is checked against the records:
//! - its origin must be exactly one of the deployment's topics (a role's commands, the
//!   replies, the events), never the dead-letter topic or a neighbour's;
//! - its payload must decode as that topic's message, keyed by its saga;
//! - a command must be one the saga's history shows was sent (same command id, step,
//!   attempt, direction, command name and role), to a saga still moving; it is then
//!   **built again from the saga's own row**, so a changed amount or address in the letter
//!   never reaches a participant;
//! - a reply is never sent on as it came: its outcome and output are the letter's to say,
//!   and a forged `succeeded` could name any amount. It must answer such a command, and
//!   its replay **re-sends that command**, rebuilt from the row, so the participant's inbox
//!   answers with the reply it stored (or applies the command, if it never did);
//! - an event must be one the history recorded.
//!
//! What passes is enqueued through the outbox by the caller, in the transaction that marks
//! the letter replayed, so a replay happens exactly once and is published by the relay.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Direction, Event, Reply, Topics};
use platform::db::Connection;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use super::SagaContext;
use super::catalog::Catalog;
use super::codec::{decode_state, definition_of};
use super::messages::{command_message, sent_kind};
use super::store::{self, NewOutboxMessage, SagaRow};
use crate::schema::saga_history;

/// A dead letter as recorded: where it says it came from, its key and its bytes.
pub struct Letter<'a> {
    pub origin_topic: &'a str,
    pub key: Option<&'a str>,
    pub payload: &'a [u8],
}

/// The outbox message that replays `letter`, or why it is refused.
pub async fn message_for(
    conn: &mut Connection,
    catalog: &Catalog,
    topics: &Topics,
    letter: &Letter<'_>,
    now: DateTime<Utc>,
) -> QueryResult<Result<NewOutboxMessage, String>> {
    let origin = letter.origin_topic;
    if origin == topics.replies() {
        return reply(conn, catalog, topics, letter, now).await;
    }
    if origin == topics.events() {
        return event(conn, topics, letter).await;
    }
    let registered = catalog.roles();
    match topics
        .command_role(origin)
        .filter(|role| registered.iter().any(|known| known == role))
    {
        Some(role) => command(conn, catalog, topics, role, letter, now).await,
        None => Ok(Err(format!(
            "origin `{origin}` is not one of this deployment's topics"
        ))),
    }
}

fn decode<T: DeserializeOwned>(letter: &Letter<'_>, what: &str) -> Result<T, String> {
    serde_json::from_slice(letter.payload).map_err(|err| format!("not a {what}: {err}"))
}

fn keyed_by(letter: &Letter<'_>, saga_id: Uuid) -> Result<(), String> {
    match letter.key {
        Some(key) if key == saga_id.to_string() => Ok(()),
        _ => Err("its key is not its saga's id".to_owned()),
    }
}

/// The history entry that recorded the send of `command_id` at (step, attempt, direction).
async fn sent_entry(
    conn: &mut Connection,
    saga_id: Uuid,
    direction: Direction,
    step: u32,
    attempt: u32,
    command_id: Uuid,
) -> QueryResult<Option<Value>> {
    let (Ok(step), Ok(attempt)) = (i32::try_from(step), i32::try_from(attempt)) else {
        return Ok(None);
    };
    saga_history::table
        .filter(saga_history::saga_id.eq(saga_id))
        .filter(saga_history::kind.eq(sent_kind(direction)))
        .filter(saga_history::step.eq(step))
        .filter(saga_history::attempt.eq(attempt))
        .select(saga_history::detail)
        .load::<Value>(conn)
        .await
        .map(|entries| {
            entries
                .into_iter()
                .find(|detail| detail["command_id"] == command_id.to_string())
        })
}

async fn command(
    conn: &mut Connection,
    catalog: &Catalog,
    topics: &Topics,
    role: &str,
    letter: &Letter<'_>,
    now: DateTime<Utc>,
) -> QueryResult<Result<NewOutboxMessage, String>> {
    let sent: Command = match decode(letter, "command") {
        Ok(command) => command,
        Err(reason) => return Ok(Err(reason)),
    };
    if let Err(reason) = keyed_by(letter, sent.saga_id) {
        return Ok(Err(reason));
    }
    let Some(row) = store::lock(conn, sent.saga_id).await? else {
        return Ok(Err(format!("no saga {}", sent.saga_id)));
    };
    let Some(detail) = sent_entry(
        conn,
        sent.saga_id,
        sent.direction,
        sent.step,
        sent.attempt,
        sent.id,
    )
    .await?
    else {
        return Ok(Err(format!(
            "saga {} never sent command {} (step {}, attempt {})",
            sent.saga_id, sent.id, sent.step, sent.attempt
        )));
    };
    if detail["command"] != sent.name.as_str() || detail["role"] != role {
        return Ok(Err(format!(
            "command {} was sent as `{}` to `{}`, not as `{}` to `{}`",
            sent.id, detail["command"], detail["role"], sent.name, role
        )));
    }
    let asked = Asked {
        id: sent.id,
        step: sent.step,
        attempt: sent.attempt,
        direction: sent.direction,
        name: &sent.name,
    };
    Ok(rebuilt(catalog, topics, &row, &asked, role, now))
}

/// Which command a letter is about: its identity only, never its payload.
struct Asked<'a> {
    id: Uuid,
    step: u32,
    attempt: u32,
    direction: Direction,
    name: &'a str,
}

/// The command built again from the saga's own row: the letter lends only its identity.
fn rebuilt(
    catalog: &Catalog,
    topics: &Topics,
    row: &SagaRow,
    sent: &Asked<'_>,
    role: &str,
    now: DateTime<Utc>,
) -> Result<NewOutboxMessage, String> {
    let unreadable = |err: super::Error| format!("the saga cannot be read: {err}");
    let definition = definition_of(catalog, row).map_err(unreadable)?;
    let state = decode_state(row).map_err(unreadable)?;
    if state.status.is_terminal() {
        return Err(format!(
            "saga {} is {}: nothing waits for this command",
            row.id, state.status
        ));
    }
    let context = SagaContext {
        id: row.id,
        definition: &definition,
        payload: &row.payload,
        state: &state,
        traceparent: row.traceparent.as_deref(),
    };
    let step = usize::try_from(sent.step).unwrap_or(usize::MAX);
    let (_, message) = command_message(
        topics,
        &context,
        (step, sent.attempt),
        sent.direction,
        sent.name,
        role,
        now,
    );
    let message = message.ok_or("no message for this command")?;
    // The same dispatch derives the same id: the participant's inbox knows it if it ever
    // applied it.
    if message.payload["id"] != sent.id.to_string() {
        return Err(format!("command {} is not this saga's", sent.id));
    }
    Ok(message)
}

/// A reply letter re-asks: the command it answers goes out again, rebuilt from the row, and
/// the participant's inbox answers with the genuine reply it stored. The letter's outcome
/// and output are never read.
async fn reply(
    conn: &mut Connection,
    catalog: &Catalog,
    topics: &Topics,
    letter: &Letter<'_>,
    now: DateTime<Utc>,
) -> QueryResult<Result<NewOutboxMessage, String>> {
    let reply: Reply = match decode(letter, "reply") {
        Ok(reply) => reply,
        Err(reason) => return Ok(Err(reason)),
    };
    if let Err(reason) = keyed_by(letter, reply.saga_id) {
        return Ok(Err(reason));
    }
    let Some(row) = store::lock(conn, reply.saga_id).await? else {
        return Ok(Err(format!("no saga {}", reply.saga_id)));
    };
    let answered = sent_entry(
        conn,
        reply.saga_id,
        reply.direction,
        reply.step,
        reply.attempt,
        reply.command_id,
    )
    .await?;
    let Some(detail) = answered else {
        return Ok(Err(format!(
            "reply {} answers no command saga {} sent",
            reply.id, reply.saga_id
        )));
    };
    let (Some(name), Some(role)) = (detail["command"].as_str(), detail["role"].as_str()) else {
        return Ok(Err(format!(
            "the history does not say which command {} was",
            reply.command_id
        )));
    };
    let asked = Asked {
        id: reply.command_id,
        step: reply.step,
        attempt: reply.attempt,
        direction: reply.direction,
        name,
    };
    Ok(rebuilt(catalog, topics, &row, &asked, role, now))
}

async fn event(
    conn: &mut Connection,
    topics: &Topics,
    letter: &Letter<'_>,
) -> QueryResult<Result<NewOutboxMessage, String>> {
    let event: Event = match decode(letter, "event") {
        Ok(event) => event,
        Err(reason) => return Ok(Err(reason)),
    };
    if let Err(reason) = keyed_by(letter, event.saga_id) {
        return Ok(Err(reason));
    }
    let recorded: Vec<Value> = saga_history::table
        .filter(saga_history::saga_id.eq(event.saga_id))
        .filter(saga_history::kind.eq(&event.kind))
        .select(saga_history::detail)
        .load(conn)
        .await?;
    // The text too: a letter may keep a real event's id and change what it says.
    if !recorded.iter().any(|detail| {
        detail["event_id"] == event.id.to_string() && detail["message"] == event.message.as_str()
    }) {
        return Ok(Err(format!(
            "event {} is not in saga {}'s history",
            event.id, event.saga_id
        )));
    }
    Ok(Ok(outbox(topics.events(), event.saga_id, &event)))
}

/// A message decoded and checked, written again in our own encoding.
fn outbox<T: serde::Serialize>(topic: String, saga_id: Uuid, message: &T) -> NewOutboxMessage {
    NewOutboxMessage {
        topic,
        message_key: saga_id.to_string(),
        payload: serde_json::to_value(message).unwrap_or(Value::Null),
        created_at: Utc::now(),
        traceparent: None,
    }
}
