//! Bulk operator actions: retry or cancel every saga a filter names, as an asynchronous job
//! with progress. The job fixes its sagas when it is created (at most 10 000); the engine's
//! bulk loop (`crate::loops::bulk`) then acts on each as a single operator action would, with the
//! job's reason and requester in every saga's history. Retry only ever names FAILED sagas
//! and cancel RUNNING ones. With an `Idempotency-Key`, repeating the request returns the
//! same job.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use platform::db::Connection;
use poem::web::Data;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::sagas::{SagaFilter, filtered};
use crate::api::State;
use crate::api::idempotency;
use crate::api::problem::{ApiError, ApiResult};
use crate::auth::Caller;
use crate::schema::{bulk_job_items, bulk_jobs, sagas};

/// The most sagas one job may name.
const MAX_SAGAS: i64 = 10_000;

pub struct BulkJobsApi;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
enum BulkAction {
    /// Retry the parked compensation of FAILED sagas.
    Retry,
    /// Cancel RUNNING sagas.
    Cancel,
}

impl BulkAction {
    fn as_str(self) -> &'static str {
        match self {
            BulkAction::Retry => "retry",
            BulkAction::Cancel => "cancel",
        }
    }

    /// The only status the action applies to.
    fn status(self) -> &'static str {
        match self {
            BulkAction::Retry => "FAILED",
            BulkAction::Cancel => "RUNNING",
        }
    }
}

/// What to do to which sagas.
#[derive(Debug, Object, Serialize)]
struct NewBulkJob {
    action: BulkAction,
    /// Recorded in each saga's history with the key's name.
    #[oai(validator(max_length = 500))]
    reason: Option<String>,
    /// Only sagas of this kind (`order`, `coupon_use`).
    definition: Option<String>,
    /// Only sagas created before this instant.
    created_before: Option<DateTime<Utc>>,
    /// Only sagas whose last change is before this instant.
    updated_before: Option<DateTime<Utc>>,
    /// Only sagas of this user.
    user_id: Option<Uuid>,
    /// Only coupon uses of this campaign.
    campaign_id: Option<Uuid>,
}

/// A bulk job and how far it got.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
struct BulkJob {
    id: Uuid,
    action: String,
    /// The filter the sagas were chosen by (with the action's status).
    filter: serde_json::Value,
    #[oai(skip_serializing_if_is_none)]
    reason: Option<String>,
    requested_by: String,
    created_at: DateTime<Utc>,
    /// Set when no saga is left pending.
    #[oai(skip_serializing_if_is_none)]
    finished_at: Option<DateTime<Utc>>,
    total: i64,
    pending: i64,
    done: i64,
    /// Sagas the engine refused the action for (they had moved on), with why.
    skipped: i64,
    failed: i64,
    /// The skipped and failed sagas, at most 100, with why.
    problems: Vec<ItemProblem>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
struct ItemProblem {
    saga_id: Uuid,
    outcome: String,
    detail: String,
}

#[derive(ApiResponse)]
enum Created {
    /// Accepted: the job runs in the background; poll it for progress.
    #[oai(status = 202)]
    Accepted(
        Json<BulkJob>,
        #[oai(header = "Location")] String,
        /// `true` when this answers a repeated `Idempotency-Key`.
        #[oai(header = "Idempotent-Replayed")]
        Option<bool>,
    ),
}

#[OpenApi(tag = "crate::api::Tag::Sagas")]
impl BulkJobsApi {
    /// Start a bulk retry or cancel
    ///
    /// Names every saga the filter matches now (retry: FAILED ones only; cancel: RUNNING
    /// ones only; at most 10 000, else 422) and acts on each in the background. 202 with
    /// the job; poll `GET /v1/bulk-jobs/{id}`.
    #[oai(path = "/v1/bulk-jobs", method = "post")]
    async fn create(
        &self,
        state: Data<&State>,
        body: Json<NewBulkJob>,
        /// Makes repeats safe: the same key always answers with the same job.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 200))]
        idempotency_key: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Created> {
        let key = idempotency::Key::of(
            &caller,
            idempotency_key.0.as_deref(),
            "POST",
            "/v1/bulk-jobs",
            &*body,
        )?;
        // A definition that is not registered is a reference to nothing, like a user_id.
        if let Some(name) = &body.definition
            && state.engine.catalog().current(name).is_none()
        {
            return Err(ApiError::unprocessable(
                "definition",
                format!("no saga definition `{name}`"),
            ));
        }
        let filter = SagaFilter {
            definition: body.definition.clone(),
            status: Some(body.action.status().to_owned()),
            created_before: body.created_before,
            updated_before: body.updated_before,
            user_id: body.user_id,
            campaign_id: body.campaign_id,
            ..SagaFilter::default()
        };
        let chosen = filtered(&filter, state.engine.catalog())?;
        let mut pooled = state.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        let (job, replayed) = conn
            .transaction::<_, ApiError, _>(async |conn: &mut Connection| {
                if let Some(key) = &key
                    && let Some(first) = idempotency::begin::<BulkJob>(conn, key).await?
                {
                    return Ok((first, true));
                }
                let ids: Vec<Uuid> = chosen
                    .select(sagas::id)
                    .order(sagas::id)
                    .limit(MAX_SAGAS + 1)
                    .load(conn)
                    .await?;
                if ids.len() as i64 > MAX_SAGAS {
                    return Err(ApiError::unprocessable(
                        "filter",
                        format!("the filter names more than {MAX_SAGAS} sagas; narrow it"),
                    ));
                }
                let id = Uuid::now_v7();
                diesel::insert_into(bulk_jobs::table)
                    .values((
                        bulk_jobs::id.eq(id),
                        bulk_jobs::action.eq(body.action.as_str()),
                        bulk_jobs::filter
                            .eq(serde_json::to_value(&filter).map_err(ApiError::internal)?),
                        bulk_jobs::reason.eq(&body.reason),
                        bulk_jobs::requested_by.eq(&caller.name),
                    ))
                    .execute(conn)
                    .await?;
                for chunk in ids.chunks(5_000) {
                    let rows: Vec<_> = chunk
                        .iter()
                        .map(|saga| {
                            (
                                bulk_job_items::job_id.eq(id),
                                bulk_job_items::saga_id.eq(*saga),
                            )
                        })
                        .collect();
                    diesel::insert_into(bulk_job_items::table)
                        .values(rows)
                        .execute(conn)
                        .await?;
                }
                let job = load(conn, id)
                    .await?
                    .ok_or_else(|| ApiError::internal("job vanished"))?;
                if let Some(key) = &key {
                    idempotency::finish(conn, key, 202, &job).await?;
                }
                Ok((job, false))
            })
            .await?;
        let location = format!("/v1/bulk-jobs/{}", job.id);
        Ok(Created::Accepted(
            Json(job),
            location,
            replayed.then_some(true),
        ))
    }

    /// Get a bulk job
    ///
    /// Its sagas counted by outcome (pending, done, skipped, failed), and why each skipped
    /// or failed one was.
    #[oai(path = "/v1/bulk-jobs/:id", method = "get")]
    async fn get(
        &self,
        state: Data<&State>,
        #[oai(example = "crate::api::example_id")] id: Path<Uuid>,
    ) -> ApiResult<Json<BulkJob>> {
        let mut conn = state.database.get().await?;
        load(&mut conn, id.0)
            .await?
            .map(Json)
            .ok_or_else(|| ApiError::not_found("bulk job", id.0))
    }

    /// List bulk jobs
    ///
    /// The 50 newest, with their progress.
    #[oai(path = "/v1/bulk-jobs", method = "get")]
    async fn list(&self, state: Data<&State>) -> ApiResult<Json<Vec<BulkJob>>> {
        let mut conn = state.database.get().await?;
        let ids: Vec<Uuid> = bulk_jobs::table
            .order(bulk_jobs::id.desc())
            .limit(50)
            .select(bulk_jobs::id)
            .load(&mut conn)
            .await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(job) = load(&mut conn, id).await? {
                jobs.push(job);
            }
        }
        Ok(Json(jobs))
    }
}

async fn load(conn: &mut Connection, id: Uuid) -> ApiResult<Option<BulkJob>> {
    type Row = (
        Uuid,
        String,
        serde_json::Value,
        Option<String>,
        String,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
    );
    let Some((id, action, filter, reason, requested_by, created_at, finished_at)) =
        bulk_jobs::table
            .find(id)
            .select((
                bulk_jobs::id,
                bulk_jobs::action,
                bulk_jobs::filter,
                bulk_jobs::reason,
                bulk_jobs::requested_by,
                bulk_jobs::created_at,
                bulk_jobs::finished_at,
            ))
            .first::<Row>(conn)
            .await
            .optional()?
    else {
        return Ok(None);
    };
    let counts: Vec<(String, i64)> = bulk_job_items::table
        .filter(bulk_job_items::job_id.eq(id))
        .group_by(bulk_job_items::outcome)
        .select((bulk_job_items::outcome, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    let count = |outcome: &str| {
        counts
            .iter()
            .find(|(name, _)| name == outcome)
            .map_or(0, |(_, n)| *n)
    };
    let problems: Vec<(Uuid, String, Option<String>)> = bulk_job_items::table
        .filter(bulk_job_items::job_id.eq(id))
        .filter(bulk_job_items::outcome.eq_any(["skipped", "failed"]))
        .order(bulk_job_items::saga_id)
        .limit(100)
        .select((
            bulk_job_items::saga_id,
            bulk_job_items::outcome,
            bulk_job_items::detail,
        ))
        .load(conn)
        .await?;
    Ok(Some(BulkJob {
        id,
        action,
        filter,
        reason,
        requested_by,
        created_at,
        finished_at,
        total: counts.iter().map(|(_, n)| n).sum(),
        pending: count("pending"),
        done: count("done"),
        skipped: count("skipped"),
        failed: count("failed"),
        problems: problems
            .into_iter()
            .map(|(saga_id, outcome, detail)| ItemProblem {
                saga_id,
                outcome,
                detail: detail.unwrap_or_default(),
            })
            .collect(),
    }))
}
