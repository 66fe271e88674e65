//! Saga instances for operators: what a saga is doing (its steps as the stored state sees
//! them, and the timeline from `saga_history`), a filtered list, and the two operator
//! actions. Retry and cancel go through the engine, never through a direct UPDATE here, so
//! they take the row lock, pass the state machine's rules and write history and outbox in
//! the same transaction as any other input.

use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use diesel_async::RunQueryDsl;
use platform::db::Connection;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;
use uuid::Uuid;

use crate::api::State;
use crate::api::flows::start;
use crate::api::pagination::{self, PageInfo};
use crate::api::problem::{ApiError, ApiResult};
use crate::auth::Caller;
use crate::saga::{SagaState, Status};
use crate::schema::{saga_history, sagas};
use crate::shell::Operator;
use crate::shell::catalog::Catalog;
use crate::shell::store::SagaRow;

pub struct SagasApi;

/// A saga without its steps and history, as lists show it.
#[derive(Debug, Object, Queryable, Selectable)]
#[diesel(table_name = sagas)]
#[oai(example)]
struct SagaSummary {
    id: Uuid,
    /// The saga kind (`order`, `coupon_use`).
    definition: String,
    /// The version of its definition it started on (and finishes on).
    definition_version: i32,
    /// RUNNING, COMPENSATING, COMPLETED, COMPENSATED, CANCELLED, FAILED or RESOLVED.
    status: String,
    /// Index of the furthest step reached.
    current_step: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Why the engine set this saga aside (it could not be decoded or moved), when it did.
    #[oai(skip_serializing_if_is_none)]
    quarantine: Option<String>,
}

impl poem_openapi::types::Example for SagaSummary {
    fn example() -> Self {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        Self {
            id: Uuid::nil(),
            definition: "order".into(),
            definition_version: 1,
            status: "RUNNING".into(),
            current_step: 1,
            created_at: at,
            updated_at: at,
            quarantine: None,
        }
    }
}

/// One step of the saga's definition and where it stands.
#[derive(Debug, Object)]
struct StepView {
    index: u32,
    name: String,
    /// `task`, `wait` or `signal`.
    kind: String,
    /// The stage it belongs to; the steps of a parallel stage share one.
    stage: u32,
    /// The participant role that runs the command and its compensation (tasks).
    #[oai(skip_serializing_if_is_none)]
    role: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    command: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    compensation: Option<String>,
    /// pending, in_flight, awaiting_retry, succeeded, failed or outcome_unknown.
    state: String,
    /// Forward attempts dispatched.
    attempts: u32,
    /// not_started, in_flight, awaiting_retry, compensated or exhausted.
    compensation_state: String,
    /// Compensation attempts dispatched, over every operator retry.
    compensation_attempts: u32,
    /// What the participant answered on success.
    #[oai(skip_serializing_if_is_none)]
    output: Option<Value>,
    #[oai(skip_serializing_if_is_none)]
    last_error: Option<String>,
}

/// One entry of the saga's timeline.
#[derive(Debug, Object, Queryable, Selectable)]
#[diesel(table_name = saga_history)]
struct HistoryEntry {
    /// Increasing within a saga: pass the last one as `after` for the next page of history.
    id: i64,
    /// What happened (`saga.start`, `reply.received`, `command.sent`, `saga.completed`...).
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

/// A saga with its input, its steps and its timeline.
#[derive(Debug, Object)]
pub struct SagaDetail {
    id: Uuid,
    definition: String,
    /// The version of its definition it started on (and finishes on).
    definition_version: i32,
    status: String,
    current_step: i32,
    /// Bumped by every change; also the `ETag`. Send it back as `If-Match` with an operator
    /// action to act only on the saga as you saw it.
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Why the saga left the happy path, when it did.
    #[oai(skip_serializing_if_is_none)]
    failure: Option<String>,
    /// Why the engine set this saga aside (it could not be decoded or moved), when it did;
    /// its steps are then shown only if they can be read.
    #[oai(skip_serializing_if_is_none)]
    quarantine: Option<String>,
    /// The input the saga was started with.
    payload: Value,
    steps: Vec<StepView>,
    /// Oldest first.
    history: Vec<HistoryEntry>,
}

/// A page of sagas, newest first.
#[derive(Debug, Object)]
struct SagaPage {
    items: Vec<SagaSummary>,
    #[oai(flatten)]
    page: PageInfo,
}

#[derive(ApiResponse)]
enum Found {
    #[oai(status = 200)]
    Ok(
        Json<SagaDetail>,
        /// The saga's version, quoted: send it back as `If-Match`.
        #[oai(header = "ETag")]
        String,
        /// `wait=N` when the request waited (up to N seconds) for the saga to settle.
        #[oai(header = "Preference-Applied")]
        Option<String>,
    ),
}

/// A page of one saga's history, oldest first.
#[derive(Debug, Object)]
struct HistoryPage {
    items: Vec<HistoryEntry>,
    /// Pass as `after` for the next page; absent on the last one.
    #[oai(skip_serializing_if_is_none)]
    next_after: Option<i64>,
}

#[derive(ApiResponse)]
enum Listed {
    #[oai(status = 200)]
    Ok(Json<SagaPage>),
}

#[derive(ApiResponse)]
enum Changed {
    /// Accepted: the saga's next commands are in the outbox; poll the saga for the outcome.
    #[oai(status = 202)]
    Accepted(Json<SagaSummary>),
}

fn example_status() -> Option<String> {
    Some("FAILED".into())
}

fn example_definition() -> Option<String> {
    Some("order".into())
}

/// The serde (snake_case) name of a phase, the same word the stored state uses.
fn phase_name(phase: impl serde::Serialize) -> String {
    match serde_json::to_value(phase) {
        Ok(Value::String(name)) => name,
        _ => "unknown".to_owned(),
    }
}

fn detail(catalog: &Catalog, row: SagaRow, history: Vec<HistoryEntry>) -> ApiResult<SagaDetail> {
    // A saga this version cannot read is still shown, without its steps, with the reason.
    let version = u32::try_from(row.definition_version).unwrap_or_default();
    let readable = catalog
        .version(&row.definition, version)
        .ok_or_else(|| {
            format!(
                "no definition `{}` version {} here",
                row.definition, row.definition_version
            )
        })
        .and_then(|definition| {
            serde_json::from_value::<SagaState>(row.state.clone())
                .map(|state| (definition, state))
                .map_err(|err| format!("unreadable state: {err}"))
        });
    let (definition, state) = match readable {
        Ok(readable) => readable,
        Err(reason) => {
            return Ok(SagaDetail {
                id: row.id,
                definition: row.definition,
                definition_version: row.definition_version,
                status: row.status,
                current_step: row.current_step,
                version: row.version,
                created_at: row.created_at,
                updated_at: row.updated_at,
                failure: None,
                quarantine: Some(row.quarantine.unwrap_or(reason)),
                payload: row.payload,
                steps: Vec::new(),
                history,
            });
        }
    };
    let steps = definition
        .steps
        .iter()
        .zip(state.steps)
        .zip(0u32..)
        .map(|((step, progress), index)| StepView {
            index,
            name: step.name.clone(),
            kind: step.kind_name().to_owned(),
            stage: u32::try_from(step.stage).unwrap_or(u32::MAX),
            role: step.task().map(|task| task.role.clone()),
            command: step.task().map(|task| task.command.clone()),
            compensation: step.compensation().map(str::to_owned),
            state: phase_name(progress.forward),
            attempts: progress.attempt,
            compensation_state: phase_name(progress.compensation),
            compensation_attempts: progress.compensation_attempt,
            output: progress.output,
            last_error: progress.last_error,
        })
        .collect();
    Ok(SagaDetail {
        id: row.id,
        definition: row.definition,
        definition_version: row.definition_version,
        status: row.status,
        current_step: row.current_step,
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
        failure: state.failure,
        quarantine: row.quarantine,
        payload: row.payload,
        steps,
        history,
    })
}

async fn summary(state: &State, id: Uuid) -> ApiResult<SagaSummary> {
    let mut conn = state.database.get().await?;
    sagas::table
        .find(id)
        .select(SagaSummary::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("saga", id))
}

/// Why an operator acts; recorded in the saga's history with the key's name.
#[derive(Debug, Object)]
struct Action {
    /// Free text for whoever reads the history later (at most 500 characters).
    #[oai(validator(max_length = 500))]
    reason: Option<String>,
}

/// Why an operator ends a saga by hand; required.
#[derive(Debug, Object)]
struct Resolution {
    /// What was settled outside sagaflow, for whoever reads the history later (1 to 500
    /// characters).
    #[oai(validator(min_length = 1, max_length = 500))]
    reason: String,
}

fn operator(
    caller: &Caller,
    action: Option<Action>,
    if_match: Option<&str>,
) -> ApiResult<Operator> {
    Ok(Operator {
        actor: caller.name.clone(),
        reason: action.and_then(|action| action.reason),
        expected_version: if_match.map(version_in).transpose()?.flatten(),
    })
}

/// An action that needs a reason (resolve, lifting a quarantine): a blank one is a 400
/// that says what to write (`why`).
fn with_reason(
    caller: &Caller,
    resolution: Resolution,
    if_match: Option<&str>,
    why: &str,
) -> ApiResult<Operator> {
    let reason = resolution.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(ApiError::invalid("reason", why));
    }
    let action = Action {
        reason: Some(reason),
    };
    operator(caller, Some(action), if_match)
}

/// The version an `If-Match` names: `"7"` (or `W/"7"`); `*` names any.
fn version_in(if_match: &str) -> ApiResult<Option<i64>> {
    let value = if_match.trim();
    // `*` names any version; an empty header names none.
    if value == "*" || value.is_empty() {
        return Ok(None);
    }
    value
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .map(Some)
        .map_err(|_| {
            ApiError::invalid(
                "If-Match",
                "expected the saga's ETag, a quoted version such as \"7\", or *",
            )
        })
}

/// The saga `id` if `caller` may read it: a client only the sagas it started (another's is
/// as unknown as a missing one), everyone else any.
pub(super) fn readable_by<'a>(
    caller: &'a Caller,
    id: Uuid,
) -> sagas::BoxedQuery<'a, diesel::pg::Pg> {
    let query = sagas::table.find(id).into_boxed();
    match caller.owner() {
        Some(client) => query.filter(sagas::started_by.eq(client)),
        None => query,
    }
}

/// Which sagas a list (or a bulk job) is about; every field narrows it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct SagaFilter {
    pub definition: Option<String>,
    pub status: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub updated_before: Option<DateTime<Utc>>,
    pub user_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub campaign_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
}

/// The sagas `filter` names, as a query to narrow or page further; a bad value is 400
/// naming its field.
pub(super) fn filtered(
    filter: &SagaFilter,
    catalog: &Catalog,
) -> ApiResult<sagas::BoxedQuery<'static, diesel::pg::Pg>> {
    let mut query = sagas::table.into_boxed();
    if let Some(name) = &filter.definition {
        let known = catalog.current(name).ok_or_else(|| {
            let names: Vec<_> = catalog.flows().into_iter().map(|(name, ..)| name).collect();
            ApiError::invalid(
                "definition",
                format!("unknown definition `{name}`; known: {}", names.join(", ")),
            )
        })?;
        query = query.filter(sagas::definition.eq(known.name.clone()));
    }
    if let Some(status) = &filter.status {
        let status: Status = status.parse().map_err(|_| {
            let names: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::invalid(
                "status",
                format!("unknown status `{status}`; known: {}", names.join(", ")),
            )
        })?;
        query = query.filter(sagas::status.eq(status.as_str()));
    }
    if let (Some(after), Some(before)) = (filter.created_after, filter.created_before)
        && after > before
    {
        return Err(ApiError::invalid(
            "created_after",
            "created_after must not be later than created_before",
        ));
    }
    if let Some(after) = filter.created_after {
        query = query.filter(sagas::created_at.ge(after));
    }
    if let Some(before) = filter.created_before {
        query = query.filter(sagas::created_at.lt(before));
    }
    if let Some(before) = filter.updated_before {
        query = query.filter(sagas::updated_at.lt(before));
    }
    for (key, value) in [
        ("user_id", filter.user_id),
        ("order_id", filter.order_id),
        ("campaign_id", filter.campaign_id),
    ] {
        if let Some(value) = value {
            // Matches the expression indexes of migration 000010.
            query = query.filter(
                sql::<Bool>(&format!("payload->>'{key}' = ")).bind::<Text, _>(value.to_string()),
            );
        }
    }
    if let Some(key) = &filter.idempotency_key {
        query = query.filter(
            sql::<Bool>(
                "id IN (SELECT (response->>'saga_id')::uuid FROM idempotency_keys \
                 WHERE key = ",
            )
            .bind::<Text, _>(key.clone())
            .sql(" AND response ? 'saga_id')"),
        );
    }
    Ok(query)
}

/// A saga as `GET /v1/sagas/{id}` shows it, if the caller may read it (one pooled
/// connection, given back before any wait).
pub(crate) async fn read_detail(state: &State, caller: &Caller, id: Uuid) -> ApiResult<SagaDetail> {
    let pooled = state.database.get().await?;
    // Both reads in one round trip (pipelined); the history of a saga the caller may not
    // read is dropped unseen. The history is read first: each statement sees what had
    // committed when it began, so the row is never older than the last entry shown. A
    // reader that follows the saga's events from that entry (the console) then never
    // misses a change: the other order could show a step's entry beside the row from
    // before it, and no later event would come to correct it.
    let shared: &Connection = &pooled;
    let (history, row) = futures_util::try_join!(
        async {
            let mut conn = shared;
            saga_history::table
                .filter(saga_history::saga_id.eq(id))
                .order(saga_history::id.asc())
                .select(HistoryEntry::as_select())
                .load(&mut conn)
                .await
        },
        async {
            let mut conn = shared;
            readable_by(caller, id)
                .select(SagaRow::as_select())
                .first(&mut conn)
                .await
                .optional()
        },
    )?;
    let row = row.ok_or_else(|| ApiError::not_found("saga", id))?;
    detail(state.engine.catalog(), row, history)
}

/// The saga as `GET /v1/sagas/{id}` shows it, and whether it has settled: the read a
/// request waiting for a saga repeats ([`crate::api::wait::until_settled`]).
pub async fn read_settling(
    state: &State,
    caller: &Caller,
    id: Uuid,
) -> ApiResult<(SagaDetail, bool)> {
    let detail = read_detail(state, caller, id).await?;
    let settled = detail
        .status
        .parse::<Status>()
        .is_ok_and(Status::is_settled);
    Ok((detail, settled))
}

#[OpenApi(tag = "crate::api::Tag::Sagas")]
impl SagasApi {
    /// Get a saga
    ///
    /// The saga's status and input, one entry per step of its definition (forward and
    /// compensation progress, attempts, output, last error) and its full timeline, oldest
    /// first. 404 when no saga has this id.
    ///
    /// Instead of polling, ask to wait: `Prefer: wait=N` or `?wait=N` (seconds, at most 25)
    /// answers as soon as the saga settles (a final status, or FAILED), or after N seconds
    /// with its current state; `Preference-Applied: wait=N` says the request waited. When
    /// too many requests wait already (`HTTP_MAX_WAITS`), the answer comes at once without
    /// that header.
    #[oai(path = "/v1/sagas/:id", method = "get")]
    async fn get(
        &self,
        state: Data<&State>,
        #[oai(example = "crate::api::example_id")] id: Path<Uuid>,
        /// Seconds to wait for the saga to settle (0 to 25); wins over `Prefer: wait`.
        #[oai(validator(minimum(value = "0"), maximum(value = "25")))]
        wait: Query<Option<u32>>,
        /// RFC 7240 preferences; `wait=N` waits up to N seconds for the saga to settle.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Found> {
        let wait = crate::api::wait::requested(&state, prefer.0.as_deref(), wait.0)?;
        let read = || read_settling(&state, &caller, id.0);
        let waited =
            crate::api::wait::until_settled(&state.waiters, &caller.name, id.0, wait, None, read)
                .await?;
        let (detail, applied) = (waited.value, waited.applied);
        let etag = format!("\"{}\"", detail.version);
        Ok(Found::Ok(Json(detail), etag, applied))
    }

    /// Page through a saga's history
    ///
    /// Oldest first, `limit` entries (1 to 200, default 50) after the entry `after`; the
    /// answer's `next_after` leads to the next page. 404 when no saga has this id (or, for a
    /// client, when it did not start it).
    #[oai(path = "/v1/sagas/:id/history", method = "get")]
    async fn history(
        &self,
        state: Data<&State>,
        #[oai(example = "crate::api::example_id")] id: Path<Uuid>,
        /// The `next_after` of the previous page.
        after: Query<Option<i64>>,
        /// Page size, 1 to 200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Json<HistoryPage>> {
        let limit = pagination::limit(limit.0)?;
        let mut conn = state.database.get().await?;
        readable_by(&caller, id.0)
            .select(sagas::id)
            .first::<Uuid>(&mut conn)
            .await
            .optional()?
            .ok_or_else(|| ApiError::not_found("saga", id.0))?;
        let mut items: Vec<HistoryEntry> = saga_history::table
            .filter(saga_history::saga_id.eq(id.0))
            .filter(saga_history::id.gt(after.0.unwrap_or(0)))
            .order(saga_history::id.asc())
            .limit(limit + 1)
            .select(HistoryEntry::as_select())
            .load(&mut conn)
            .await?;
        let next_after = if items.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
            items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            items.last().map(|entry| entry.id)
        } else {
            None
        };
        Ok(Json(HistoryPage { items, next_after }))
    }

    /// List sagas
    ///
    /// Newest first, filtered by definition, status, creation time, last change
    /// (`updated_before` finds stuck sagas), and business keys: the user, order or coupon
    /// campaign in the saga's input, or the `Idempotency-Key` the request that started it
    /// carried. Pages are cut by `limit`; pass the answer's `next_cursor` as `cursor` for
    /// the next page (absent on the last one). An unknown definition or status, or
    /// `created_after` later than `created_before`, is 400 naming the parameter.
    #[oai(path = "/v1/sagas", method = "get")]
    // poem-openapi takes each query parameter as its own argument; there is no struct form.
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: Data<&State>,
        /// Only sagas of this kind (`order`, `coupon_use`).
        #[oai(example = "example_definition")]
        definition: Query<Option<String>>,
        /// Only sagas in this status: RUNNING, COMPENSATING, COMPLETED, COMPENSATED, CANCELLED
        /// FAILED or RESOLVED.
        #[oai(example = "example_status")]
        status: Query<Option<String>>,
        /// Only sagas created at or after this instant (RFC 3339).
        created_after: Query<Option<DateTime<Utc>>>,
        /// Only sagas created before this instant (RFC 3339).
        created_before: Query<Option<DateTime<Utc>>>,
        /// Only sagas whose last change is before this instant (RFC 3339): with
        /// `status=RUNNING`, the ones that stopped moving.
        updated_before: Query<Option<DateTime<Utc>>>,
        /// Only sagas for this user (`user_id` in their input).
        user_id: Query<Option<Uuid>>,
        /// Only the saga of this order.
        order_id: Query<Option<Uuid>>,
        /// Only coupon uses of this campaign.
        campaign_id: Query<Option<Uuid>>,
        /// Only sagas started by a request with this `Idempotency-Key` (any caller's).
        #[oai(validator(min_length = 1, max_length = 200))]
        idempotency_key: Query<Option<String>>,
        /// Page size, 1 to 200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<Uuid>>,
    ) -> ApiResult<Listed> {
        let limit = pagination::limit(limit.0)?;
        let filter = SagaFilter {
            definition: definition.0,
            status: status.0,
            created_after: created_after.0,
            created_before: created_before.0,
            updated_before: updated_before.0,
            user_id: user_id.0,
            order_id: order_id.0,
            campaign_id: campaign_id.0,
            idempotency_key: idempotency_key.0,
        };
        let mut query = filtered(&filter, state.engine.catalog())?;
        if let Some(cursor) = cursor.0 {
            query = query.filter(sagas::id.lt(cursor));
        }
        let mut conn = state.database.get().await?;
        let rows = query
            .order(sagas::id.desc())
            .limit(limit + 1)
            .select(SagaSummary::as_select())
            .load(&mut conn)
            .await?;
        let (items, page) = pagination::split(rows, limit, |saga| saga.id);
        Ok(Listed::Ok(Json(SagaPage { items, page })))
    }

    /// Retry a failed saga
    ///
    /// Only for a FAILED saga: a compensation that exhausted its budget runs again with a
    /// fresh one, or a forward-only step that exhausted its own is sent again (the saga
    /// runs on). Answers 202 with the saga as it is
    /// now; 409 with `current_status` in any other status, 404 when unknown, 412 when
    /// `If-Match` names an older version.
    #[oai(path = "/v1/sagas/:id/retry", method = "post")]
    async fn retry(
        &self,
        state: Data<&State>,
        #[oai(example = "crate::api::example_id")] id: Path<Uuid>,
        body: Json<Option<Action>>,
        /// Act only if the saga is still at this version (its `ETag`); 412 otherwise.
        #[oai(
            name = "If-Match",
            validator(pattern = r#"^(|\*|(W/)?"[0-9]{1,18}")$"#)
        )]
        if_match: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Changed> {
        let operator = operator(&caller, body.0, if_match.0.as_deref())?;
        state
            .engine
            .retry_by(&state.database, id.0, &operator)
            .await?;
        Ok(Changed::Accepted(Json(summary(&state, id.0).await?)))
    }

    /// Start a saga
    ///
    /// Starts a saga of any registered flow: `definition` names it, `version` pins one
    /// (else the default version runs), and `input` must satisfy the version's input schema
    /// (400 naming the field, as `input/...`). Answers 202 at once with the saga's id. With
    /// an `Idempotency-Key`, repeating the request returns the first answer
    /// (`Idempotent-Replayed: true`) and starts nothing; the same key with another body is
    /// 422. A client's sagas are its own to read. With `Prefer: wait=N` (seconds, at most
    /// 25) the answer is 200 with the saga as `GET /v1/sagas/{id}` shows it when it settles
    /// within N seconds, else the 202.
    #[oai(path = "/v1/sagas", method = "post")]
    async fn start(
        &self,
        state: Data<&State>,
        caller: Data<&Caller>,
        body: Json<start::NewSaga>,
        /// Makes retries safe: the same key always answers with the same saga.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 200))]
        idempotency_key: Header<Option<String>>,
        /// RFC 7240 preferences; `wait=N` waits up to N seconds for the saga to settle.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
    ) -> ApiResult<start::StartResponse> {
        let wait = crate::api::wait::requested(&state, prefer.0.as_deref(), None)?;
        let response = start::start(Data(*state), Data(*caller), body, idempotency_key).await?;
        let start::StartResponse::Accepted(started, location, replayed) = response else {
            return Ok(response);
        };
        if wait.is_zero() {
            return Ok(start::StartResponse::Accepted(started, location, replayed));
        }
        let id = started.saga_id;
        let read = || read_settling(&state, &caller, id);
        let waited =
            crate::api::wait::until_settled(&state.waiters, &caller.name, id, wait, None, read)
                .await?;
        if waited.settled {
            Ok(start::StartResponse::Settled(
                Json(waited.value),
                location,
                waited.applied,
            ))
        } else {
            Ok(start::StartResponse::Accepted(started, location, replayed))
        }
    }

    /// Resolve a failed saga by hand
    ///
    /// Only for a FAILED saga whose compensation can never succeed: it ends RESOLVED, nothing
    /// more is sent, and whatever was not undone stays as it is, the operator's to settle.
    /// `reason` is required and recorded in the history with the key's name. Answers 202
    /// with the saga; 409 in any other status, 404 when unknown, 412 when `If-Match` names
    /// an older version.
    #[oai(path = "/v1/sagas/:id/resolve", method = "post")]
    async fn resolve(
        &self,
        state: Data<&State>,
        #[oai(example = "crate::api::example_id")] id: Path<Uuid>,
        body: Json<Resolution>,
        /// Act only if the saga is still at this version (its `ETag`); 412 otherwise.
        #[oai(
            name = "If-Match",
            validator(pattern = r#"^(|\*|(W/)?"[0-9]{1,18}")$"#)
        )]
        if_match: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Changed> {
        let why = "say why the saga is resolved by hand";
        let operator = with_reason(&caller, body.0, if_match.0.as_deref(), why)?;
        state
            .engine
            .resolve_by(&state.database, id.0, &operator)
            .await?;
        Ok(Changed::Accepted(Json(summary(&state, id.0).await?)))
    }

    /// Lift a saga's quarantine
    ///
    /// For a saga the engine set aside (its row could not be read or moved: `quarantine`
    /// says why) once the cause is fixed: the engine moves it again, at once. `reason` is
    /// required and recorded in the history with the key's name and what the quarantine
    /// said. Answers 202 with the saga; 409 when it is not quarantined, 404 when unknown,
    /// 412 when `If-Match` names an older version. A saga still unreadable is quarantined
    /// again, with the reason.
    #[oai(path = "/v1/sagas/:id/quarantine/lift", method = "post")]
    async fn lift_quarantine(
        &self,
        state: Data<&State>,
        #[oai(example = "crate::api::example_id")] id: Path<Uuid>,
        body: Json<Resolution>,
        /// Act only if the saga is still at this version (its `ETag`); 412 otherwise.
        #[oai(
            name = "If-Match",
            validator(pattern = r#"^(|\*|(W/)?"[0-9]{1,18}")$"#)
        )]
        if_match: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Changed> {
        let why = "say why the quarantine can be lifted";
        let operator = with_reason(&caller, body.0, if_match.0.as_deref(), why)?;
        state
            .engine
            .lift_quarantine(&state.database, id.0, &operator)
            .await?;
        Ok(Changed::Accepted(Json(summary(&state, id.0).await?)))
    }

    /// Cancel a running saga
    ///
    /// Only for a RUNNING saga: its dispatched steps are compensated, newest first, and it
    /// ends CANCELLED. Answers 202 with the saga as it is now (COMPENSATING while steps are
    /// undone); 409 with `current_status` in any other status, 404 when unknown, 412 when
    /// `If-Match` names an older version.
    #[oai(path = "/v1/sagas/:id/cancel", method = "post")]
    async fn cancel(
        &self,
        state: Data<&State>,
        #[oai(example = "crate::api::example_id")] id: Path<Uuid>,
        body: Json<Option<Action>>,
        /// Act only if the saga is still at this version (its `ETag`); 412 otherwise.
        #[oai(
            name = "If-Match",
            validator(pattern = r#"^(|\*|(W/)?"[0-9]{1,18}")$"#)
        )]
        if_match: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Changed> {
        let operator = operator(&caller, body.0, if_match.0.as_deref())?;
        state
            .engine
            .cancel_by(&state.database, id.0, &operator)
            .await?;
        Ok(Changed::Accepted(Json(summary(&state, id.0).await?)))
    }
}
