//! The worker inbox (`processed_commands`), set-based: reading the stored replies of a
//! batch, claiming its commands, storing their replies and giving back the claims of the
//! commands that failed each cost one statement, whatever the batch size.
//!
//! A claimed row holds JSON `null` until its reply is stored in the same transaction, so a
//! committed row always has its reply.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel::sql_types::{Array, Jsonb, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use platform::contract::{Command, Reply, Role};
use platform::db::{Connection, prepared};
use serde_json::Value;
use uuid::Uuid;

use crate::schema::processed_commands;

/// The stored replies of whichever of `ids` were answered before.
pub async fn stored_replies(
    conn: &mut Connection,
    ids: &[Uuid],
) -> anyhow::Result<HashMap<Uuid, Reply>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, Value)> = processed_commands::table
        .filter(processed_commands::command_id.eq_any(ids))
        .select((processed_commands::command_id, processed_commands::reply))
        .load(conn)
        .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for (id, reply) in rows {
        if !reply.is_null() {
            stored.insert(id, serde_json::from_value(reply)?);
        }
    }
    Ok(stored)
}

/// Claims each command for this transaction, with its reply when it is already known (a
/// rejection before any business change). Returns the ids claimed: a command missing from
/// it was processed by someone else, whose transaction committed first.
pub async fn claim(
    conn: &mut Connection,
    role: Role,
    claims: &[(&Command, Option<&Reply>)],
) -> anyhow::Result<HashSet<Uuid>> {
    if claims.is_empty() {
        return Ok(HashSet::new());
    }
    // Inserted in key order: two overlapping batches (a redelivery racing a retry on
    // another replica) then wait on each other's rows in one order and never deadlock.
    let mut claims = claims.to_vec();
    claims.sort_by_key(|(command, _)| command.id);
    let mut ids = Vec::with_capacity(claims.len());
    let mut sagas = Vec::with_capacity(claims.len());
    let mut replies = Vec::with_capacity(claims.len());
    for (command, reply) in claims {
        ids.push(command.id);
        sagas.push(command.saga_id);
        replies.push(match reply {
            Some(reply) => serde_json::to_value(reply)?,
            None => Value::Null,
        });
    }
    #[derive(QueryableByName)]
    struct Claimed {
        #[diesel(sql_type = SqlUuid)]
        command_id: Uuid,
    }
    let claimed: Vec<Claimed> = prepared(
        "INSERT INTO processed_commands (command_id, saga_id, role, reply) \
         SELECT command_id, saga_id, $3, reply \
         FROM unnest($1::uuid[], $2::uuid[], $4::jsonb[]) WITH ORDINALITY \
           AS u(command_id, saga_id, reply, n) \
         ORDER BY n \
         ON CONFLICT DO NOTHING RETURNING command_id",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<SqlUuid>, _>(&sagas)
    .bind::<Text, _>(role.as_str())
    .bind::<Array<Jsonb>, _>(&replies)
    .load(conn)
    .await?;
    Ok(claimed.into_iter().map(|row| row.command_id).collect())
}

/// Stores the replies of claimed commands.
pub async fn store_replies(conn: &mut Connection, replies: &[Reply]) -> anyhow::Result<()> {
    if replies.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = replies.iter().map(|reply| reply.command_id).collect();
    let values = replies
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<Value>, _>>()?;
    prepared(
        "UPDATE processed_commands AS p SET reply = u.reply \
         FROM unnest($1::uuid[], $2::jsonb[]) AS u(id, reply) WHERE p.command_id = u.id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Jsonb>, _>(values)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives back the claims of commands that failed, so that their retry can claim them again.
pub async fn release(conn: &mut Connection, ids: &[Uuid]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    diesel::delete(processed_commands::table.filter(processed_commands::command_id.eq_any(ids)))
        .execute(conn)
        .await?;
    Ok(())
}
