//! Dead letters: messages a consumer could not handle (an undecodable payload, or a
//! message that failed its whole retry budget where nothing else could settle it), as
//! recorded from the dead-letter topic. Operators list them with their origin and reason,
//! replay them, or discard them with a reason. Each decision is recorded.
//!
//! A replay is checked against what the orchestrator sent and built again from its own
//! records ([`crate::shell::replay`]), never a copy of the letter's bytes; it is enqueued
//! through the outbox in the transaction that marks the letter, so it happens once. A
//! letter that fails the check is refused with the reason and stays waiting.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use platform::db::Connection;
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use crate::api::State;
use crate::api::pagination;
use crate::api::problem::{ApiError, ApiResult};
use crate::auth::Caller;
use crate::schema::dead_letters;
use crate::shell::{replay, store};

pub struct DeadLettersApi;

/// One dead letter.
#[derive(Debug, Object, Queryable, Selectable)]
#[diesel(table_name = dead_letters)]
struct DeadLetter {
    id: i64,
    /// The topic, partition and offset it was read from, and the group that gave up on it.
    #[oai(skip_serializing_if_is_none)]
    origin_topic: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    origin_partition: Option<i32>,
    #[oai(skip_serializing_if_is_none)]
    origin_offset: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    consumer_group: Option<String>,
    /// Why it was given up on.
    error: String,
    #[oai(skip_serializing_if_is_none)]
    message_key: Option<String>,
    #[oai(skip)]
    #[allow(dead_code)] // read for `payload_text`
    payload: Vec<u8>,
    received_at: DateTime<Utc>,
    /// waiting, replayed or discarded.
    state: String,
    /// The key that replayed or discarded it, and why.
    #[oai(skip_serializing_if_is_none)]
    settled_by: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    settled_reason: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    settled_at: Option<DateTime<Utc>>,
}

/// A dead letter with its payload, as text (bytes that are not UTF-8 are replaced).
#[derive(Debug, Object)]
struct DeadLetterView {
    #[oai(flatten)]
    letter: DeadLetter,
    payload: String,
}

/// A page of dead letters, newest first.
#[derive(Debug, Object)]
struct DeadLetterPage {
    items: Vec<DeadLetterView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[oai(skip_serializing_if_is_none)]
    next_cursor: Option<i64>,
}

/// Which dead letters, and why.
#[derive(Debug, Object)]
struct Settle {
    /// 1 to 500 ids.
    #[oai(validator(min_items = 1, max_items = 500))]
    ids: Vec<i64>,
    /// Recorded with each.
    #[oai(validator(max_length = 500))]
    reason: Option<String>,
}

/// Which dead letters to discard, and why (required).
#[derive(Debug, Object)]
struct Discard {
    /// 1 to 500 ids.
    #[oai(validator(min_items = 1, max_items = 500))]
    ids: Vec<i64>,
    /// Recorded with each: at least one character that is not a space.
    #[oai(validator(max_length = 500, pattern = r"\S"))]
    reason: String,
}

/// What became of each id.
#[derive(Debug, Object)]
struct Settled {
    /// Replayed or discarded now.
    done: Vec<i64>,
    /// Left alone, with why (unknown, already settled, or an origin it cannot go back to).
    skipped: Vec<Skipped>,
}

#[derive(Debug, Object)]
struct Skipped {
    id: i64,
    reason: String,
}

#[OpenApi(tag = "crate::api::Tag::Sagas")]
impl DeadLettersApi {
    /// List dead letters
    ///
    /// Newest first, optionally only those in one `state` (waiting, replayed, discarded),
    /// with their origin, reason and payload.
    #[oai(path = "/v1/dead-letters", method = "get")]
    async fn list(
        &self,
        state: Data<&State>,
        /// waiting, replayed or discarded.
        #[oai(name = "state")]
        only: Query<Option<String>>,
        /// Page size, 1 to 200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<i64>>,
    ) -> ApiResult<Json<DeadLetterPage>> {
        let limit = pagination::limit(limit.0)?;
        let mut query = dead_letters::table.into_boxed();
        if let Some(only) = &only.0 {
            if !["waiting", "replayed", "discarded"].contains(&only.as_str()) {
                return Err(ApiError::invalid(
                    "state",
                    format!("unknown state `{only}`; known: waiting, replayed, discarded"),
                ));
            }
            query = query.filter(dead_letters::state.eq(only.clone()));
        }
        if let Some(cursor) = cursor.0 {
            query = query.filter(dead_letters::id.lt(cursor));
        }
        let mut conn = state.database.get().await?;
        let mut rows: Vec<DeadLetter> = query
            .order(dead_letters::id.desc())
            .limit(limit + 1)
            .select(DeadLetter::as_select())
            .load(&mut conn)
            .await?;
        let keep = usize::try_from(limit).unwrap_or(usize::MAX);
        let next_cursor = (rows.len() > keep).then(|| {
            rows.truncate(keep);
            rows.last().map(|row| row.id)
        });
        let items = rows
            .into_iter()
            .map(|letter| DeadLetterView {
                payload: String::from_utf8_lossy(&letter.payload).into_owned(),
                letter,
            })
            .collect();
        Ok(Json(DeadLetterPage {
            items,
            next_cursor: next_cursor.flatten(),
        }))
    }

    /// Replay dead letters
    ///
    /// Sends each waiting one again onto the topic it came from, and marks it replayed.
    /// Only this deployment's exact topics take replays. A command is replayed only if the
    /// saga's history shows it was sent (same command id, step, attempt, direction, name
    /// and role) and the saga still moves, and it is built again from the saga's own row;
    /// a reply only if it answers such a command; an event only if the history recorded
    /// it. A letter that fails is listed in `skipped` with why, and stays waiting. A
    /// replay of something already applied changes nothing: every consumer keeps an inbox.
    #[oai(path = "/v1/dead-letters/replay", method = "post")]
    async fn replay(
        &self,
        state: Data<&State>,
        body: Json<Settle>,
        caller: Data<&Caller>,
    ) -> ApiResult<Json<Settled>> {
        let topics = state.engine.topics();
        let catalog = state.engine.catalog();
        let mut settled = Settled {
            done: Vec::new(),
            skipped: Vec::new(),
        };
        let mut pooled = state.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        for id in sorted(&body.ids) {
            let outcome = conn
                .transaction::<_, ApiError, _>(async |conn: &mut Connection| {
                    let Some(letter) = waiting(conn, id).await? else {
                        return Ok(Err("unknown, or replayed or discarded already".to_owned()));
                    };
                    let checked = replay::Letter {
                        origin_topic: letter.origin_topic.as_deref().unwrap_or_default(),
                        key: letter.message_key.as_deref(),
                        payload: &letter.payload,
                    };
                    let message =
                        match replay::message_for(conn, catalog, topics, &checked, Utc::now())
                            .await?
                        {
                            Ok(message) => message,
                            Err(reason) => return Ok(Err(reason)),
                        };
                    // The outbox row and the letter's state commit together: once.
                    let queued = store::enqueue(conn, vec![message]).await?;
                    mark(conn, id, "replayed", &caller.name, body.reason.as_deref()).await?;
                    Ok(Ok(queued))
                })
                .await?;
            match outcome {
                Ok(queued) => {
                    state.engine.publish(queued);
                    settled.done.push(id);
                }
                Err(reason) => settled.skipped.push(Skipped { id, reason }),
            }
        }
        Ok(Json(settled))
    }

    /// Discard dead letters
    ///
    /// Marks each waiting one discarded, with the `reason` (required) and the key's name;
    /// nothing is published.
    #[oai(path = "/v1/dead-letters/discard", method = "post")]
    async fn discard(
        &self,
        state: Data<&State>,
        body: Json<Discard>,
        caller: Data<&Caller>,
    ) -> ApiResult<Json<Settled>> {
        let reason = body.reason.trim();
        if reason.is_empty() {
            return Err(ApiError::invalid("reason", "say why these are discarded"));
        }
        let mut settled = Settled {
            done: Vec::new(),
            skipped: Vec::new(),
        };
        let mut conn = state.database.get().await?;
        for id in sorted(&body.ids) {
            if mark(&mut conn, id, "discarded", &caller.name, Some(reason)).await? {
                settled.done.push(id);
            } else {
                settled.skipped.push(Skipped {
                    id,
                    reason: "unknown, or replayed or discarded already".to_owned(),
                });
            }
        }
        Ok(Json(settled))
    }
}

fn sorted(ids: &[i64]) -> Vec<i64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

async fn waiting(conn: &mut Connection, id: i64) -> QueryResult<Option<DeadLetter>> {
    dead_letters::table
        .find(id)
        .filter(dead_letters::state.eq("waiting"))
        .for_update()
        .select(DeadLetter::as_select())
        .first(conn)
        .await
        .optional()
}

/// Settles a waiting dead letter; `false` if it was not waiting.
async fn mark(
    conn: &mut Connection,
    id: i64,
    state: &str,
    by: &str,
    reason: Option<&str>,
) -> QueryResult<bool> {
    let changed = diesel::update(
        dead_letters::table
            .find(id)
            .filter(dead_letters::state.eq("waiting")),
    )
    .set((
        dead_letters::state.eq(state),
        dead_letters::settled_by.eq(by),
        dead_letters::settled_reason.eq(reason),
        dead_letters::settled_at.eq(Utc::now()),
    ))
    .execute(conn)
    .await?;
    Ok(changed == 1)
}
