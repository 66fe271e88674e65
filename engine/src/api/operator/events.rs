//! Server-Sent Events: a saga's timeline as it happens (`GET /v1/sagas/{id}/events`), and
//! every saga's matching a filter (`GET /v1/saga-events`). Each event is one history entry;
//! its `id:` is the entry's id, so a client that reconnects with `Last-Event-ID` resumes
//! after the last entry it saw. A stream wakes when the engine notifies a change
//! ([`crate::shell::watch`]), reads the entries after its cursor and sends them; between
//! changes it holds no database connection and sends a keep-alive comment every 15 s.
//! Streams count against `HTTP_MAX_WAITS` with the waiting reads (past it, 503) and against
//! the caller's `HTTP_MAX_WAITS_PER_KEY` (past it, 429). A stream ends after
//! `HTTP_MAX_STREAM_SECONDS`; the client resumes with `Last-Event-ID`, as after any drop.
//! A stream of every saga reads a bounded window at each wake, whatever its filter: the
//! entries since the last id it scanned (and a look-back for late commits), never all
//! history since it opened.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::stream::{self, BoxStream, StreamExt as _};
use poem::web::Data;
use poem::web::sse::Event;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::EventStream;
use poem_openapi::types::ToJSON as _;
use poem_openapi::{Object, OpenApi};
use serde_json::Value;
use uuid::Uuid;

use crate::api::State;
use crate::api::problem::{ApiError, ApiResult};
use crate::auth::Caller;
use crate::saga::Status;
use crate::schema::{saga_history, sagas};
use crate::shell::watch::{Full, Watch};

pub struct EventsApi;

/// Entries read per query.
const PAGE: i64 = 100;
/// How far back a stream of every saga looks for entries committed after later ones (ids
/// are taken at insert, commits may land out of order across sagas); entries it already
/// sent are skipped.
const LOOKBACK: i64 = 200;
/// A stream of every saga reads at most this often: a burst of changes is one read.
const GATHER: Duration = Duration::from_millis(100);

/// One entry of a saga's timeline, as a stream sends it.
#[derive(Debug, Clone, Object, Queryable)]
pub struct SagaEvent {
    /// The history entry's id: the event's `id`, and the `Last-Event-ID` to resume after.
    id: i64,
    saga_id: Uuid,
    definition: String,
    /// What happened (`saga.start`, `reply.received`, `saga.completed`...): the event's type.
    kind: String,
    #[oai(skip_serializing_if_is_none)]
    step: Option<i32>,
    #[oai(skip_serializing_if_is_none)]
    attempt: Option<i32>,
    /// The saga's status right after the entry.
    status: String,
    detail: Value,
    recorded_at: DateTime<Utc>,
}

type Events = EventStream<BoxStream<'static, SagaEvent>>;

/// Which entries a stream sends.
#[derive(Clone)]
struct Scope {
    saga: Option<Uuid>,
    definition: Option<String>,
    status: Option<String>,
    /// A client's stream shows only the sagas it started.
    owner: Option<String>,
}

/// A stream's position: entries after `after` not yet sent, waiting for changes.
struct Cursor {
    state: State,
    scope: Scope,
    after: i64,
    /// Where the stream started: nothing at or below it is sent.
    floor: i64,
    sent: HashSet<i64>,
    pending: VecDeque<SagaEvent>,
    watch: Watch,
    over: bool,
    /// When the stream ends, matched or not (the client resumes).
    ends_at: tokio::time::Instant,
}

impl Cursor {
    async fn next(mut self) -> Option<(SagaEvent, Cursor)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((event, self));
            }
            if self.over || tokio::time::Instant::now() >= self.ends_at {
                return None;
            }
            let (page, scanned) = match self.read().await {
                Ok(read) => read,
                Err(err) => {
                    tracing::warn!(error = ?err, "event stream ended: reading history failed");
                    return None;
                }
            };
            if page.is_empty() {
                // Nothing matched up to `scanned`: a stream of every saga starts its next
                // read there (its look-back still covers late commits). A saga's own stream
                // keeps its cursor: an entry of that saga in flight now may have an id
                // below `scanned`.
                if self.scope.saga.is_none() {
                    self.after = self.after.max(scanned);
                }
                if self.scope.saga.is_some() && self.saga_over().await {
                    return None; // every entry of a final saga was sent
                }
                let ends_at = self.ends_at;
                if tokio::time::timeout_at(ends_at, self.watch.changed())
                    .await
                    .is_err()
                {
                    return None; // its lifetime is over; the client resumes
                }
                if self.scope.saga.is_none() {
                    tokio::time::sleep(GATHER).await;
                }
                continue;
            }
            for event in page {
                self.after = self.after.max(event.id);
                if self.sent.insert(event.id) {
                    self.pending.push_back(event);
                }
            }
            let floor = self.after - LOOKBACK;
            self.sent.retain(|id| *id > floor);
        }
    }

    /// The next entries to send, and the highest id the read covered: with nothing
    /// matched below it, the stream need not scan there again.
    async fn read(&self) -> Result<(Vec<SagaEvent>, i64), ApiError> {
        let mut conn = self.state.database.get().await?;
        let from = match self.scope.saga {
            Some(_) => self.after,
            None => (self.after - LOOKBACK).max(self.floor),
        };
        // The window this read covers: from the cursor to the newest entry now, so a
        // filter that matches nothing costs one window per wake, not all history.
        let upto: i64 = saga_history::table
            .select(diesel::dsl::max(saga_history::id))
            .first::<Option<i64>>(&mut conn)
            .await?
            .unwrap_or(0);
        let mut query = saga_history::table
            .inner_join(sagas::table)
            .filter(saga_history::id.gt(from))
            .filter(saga_history::id.le(upto))
            .into_boxed();
        if let Some(saga) = self.scope.saga {
            query = query.filter(saga_history::saga_id.eq(saga));
        }
        if let Some(definition) = &self.scope.definition {
            query = query.filter(sagas::definition.eq(definition.clone()));
        }
        if let Some(status) = &self.scope.status {
            query = query.filter(saga_history::status.eq(status.clone()));
        }
        if let Some(owner) = &self.scope.owner {
            query = query.filter(sagas::started_by.eq(owner.clone()));
        }
        let page = query
            .order(saga_history::id.asc())
            .limit(PAGE + LOOKBACK)
            .select((
                saga_history::id,
                saga_history::saga_id,
                sagas::definition,
                saga_history::kind,
                saga_history::step,
                saga_history::attempt,
                saga_history::status,
                saga_history::detail,
                saga_history::recorded_at,
            ))
            .load::<SagaEvent>(&mut conn)
            .await?;
        let limit = usize::try_from(PAGE + LOOKBACK).unwrap_or(300);
        // A full page may stop short of `upto`; only a short one covered the window.
        let scanned = if page.len() < limit { upto } else { from };
        let page = page
            .into_iter()
            .filter(|event| !self.sent.contains(&event.id))
            .take(usize::try_from(PAGE).unwrap_or(100))
            .collect();
        Ok((page, scanned))
    }

    /// Whether the streamed saga is final (it will write no more entries).
    async fn saga_over(&self) -> bool {
        let Some(saga) = self.scope.saga else {
            return false;
        };
        let status = async {
            let mut conn = self.state.database.get().await.ok()?;
            sagas::table
                .find(saga)
                .select(sagas::status)
                .first::<String>(&mut conn)
                .await
                .ok()
        };
        status
            .await
            .and_then(|status| status.parse::<Status>().ok())
            .is_some_and(Status::is_terminal)
    }
}

fn open(state: &State, caller: &Caller, scope: Scope, after: i64) -> ApiResult<Events> {
    let watch = match scope.saga {
        Some(saga) => state.waiters.watch(&caller.name, saga),
        None => state.waiters.watch_all(&caller.name),
    }
    .map_err(|full| match full {
        Full::All => ApiError::unavailable(
            "too many requests are waiting or streaming (HTTP_MAX_WAITS)",
            1,
        ),
        Full::Key => ApiError::too_many(
            "this key has as many requests waiting or streaming as one key may \
             (HTTP_MAX_WAITS_PER_KEY)",
            1,
        ),
    })?;
    let cursor = Cursor {
        state: state.clone(),
        scope,
        after,
        floor: after,
        sent: HashSet::new(),
        pending: VecDeque::new(),
        watch,
        over: false,
        ends_at: tokio::time::Instant::now() + state.max_stream,
    };
    let events = stream::unfold(cursor, Cursor::next).boxed();
    Ok(EventStream::new(events)
        .keep_alive(Duration::from_secs(15))
        .to_event(|event| {
            let data = event.to_json_string();
            Event::message(data)
                .id(event.id.to_string())
                .event_type(event.kind)
        }))
}

/// The entry to resume after: `Last-Event-ID`, which must be an entry's id.
fn resume_after(last_event_id: Option<&str>) -> ApiResult<Option<i64>> {
    last_event_id
        .map(|text| {
            text.trim().parse::<i64>().map_err(|_| {
                ApiError::invalid(
                    "Last-Event-ID",
                    format!("Last-Event-ID must be an event's id (a number), got `{text}`"),
                )
            })
        })
        .transpose()
}

#[OpenApi(tag = "crate::api::Tag::Sagas")]
impl EventsApi {
    /// Stream a saga's events
    ///
    /// Server-Sent Events (`text/event-stream`): the saga's history entries, oldest first,
    /// then each new one as it is recorded; the stream ends after the saga's final entry.
    /// Each event's `id` is the entry's id: reconnect with `Last-Event-ID` to resume after
    /// it. 404 when no saga has this id (or, for a client, when it did not start it).
    #[oai(path = "/v1/sagas/:id/events", method = "get")]
    async fn saga_events(
        &self,
        state: Data<&State>,
        #[oai(example = "crate::api::example_id")] id: Path<Uuid>,
        /// The last event's id the client saw: the stream resumes after it.
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Events> {
        let after = resume_after(last_event_id.0.as_deref())?.unwrap_or(0);
        let mut conn = state.database.get().await?;
        let known: Option<Uuid> = super::sagas::readable_by(&caller, id.0)
            .select(sagas::id)
            .first(&mut conn)
            .await
            .optional()?;
        if known.is_none() {
            return Err(ApiError::not_found("saga", id.0));
        }
        drop(conn);
        let scope = Scope {
            saga: Some(id.0),
            definition: None,
            status: None,
            owner: caller.owner().map(str::to_owned),
        };
        open(&state, &caller, scope, after)
    }

    /// Stream every saga's events
    ///
    /// Server-Sent Events of every saga matching the filter, as they are recorded: from
    /// now on, or after `Last-Event-ID` when resuming. `definition` and `status` (the
    /// saga's status right after the entry) narrow it. An entry committed late may arrive
    /// after a later one; ids never repeat within a connection.
    #[oai(path = "/v1/saga-events", method = "get")]
    async fn all_events(
        &self,
        state: Data<&State>,
        /// Only sagas of this definition.
        #[oai(validator(min_length = 1, max_length = 100))]
        definition: Query<Option<String>>,
        /// Only entries after which the saga had this status (RUNNING, COMPLETED, ...).
        status: Query<Option<String>>,
        /// The last event's id the client saw: the stream resumes after it.
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Events> {
        if let Some(status) = &status.0
            && status.parse::<Status>().is_err()
        {
            let names: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
            return Err(ApiError::invalid(
                "status",
                format!("status must be one of {}", names.join(", ")),
            ));
        }
        let after = match resume_after(last_event_id.0.as_deref())? {
            Some(after) => after,
            None => {
                let mut conn = state.database.get().await?;
                saga_history::table
                    .select(diesel::dsl::max(saga_history::id))
                    .first::<Option<i64>>(&mut conn)
                    .await?
                    .unwrap_or(0)
            }
        };
        let scope = Scope {
            saga: None,
            definition: definition.0,
            status: status.0,
            owner: caller.owner().map(str::to_owned),
        };
        open(&state, &caller, scope, after)
    }
}
