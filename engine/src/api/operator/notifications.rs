//! The notifications the notification worker recorded: one row per saga lifecycle event.
//! Read-only here; rows arrive through Kafka, so a list lags the saga by the worker's
//! consumer lag, and nothing appears while no notification worker runs.

use crate::schema::notifications;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use uuid::Uuid;

use crate::api::State;
use crate::api::pagination::{self, PageInfo};
use crate::api::problem::{ApiError, ApiResult};
use crate::saga::EventKind;

pub struct NotificationsApi;

/// One saga lifecycle event.
#[derive(Debug, Object, Queryable, Selectable)]
#[diesel(table_name = notifications)]
#[oai(example)]
struct Notification {
    /// The event's id (uuid v7, so time-ordered); a redelivered event keeps it.
    event_id: Uuid,
    saga_id: Uuid,
    /// The saga's definition.
    saga: String,
    /// The event type, e.g. `saga.started`, `step.failed`, `saga.completed`.
    kind: String,
    /// The step the event is about, for step and compensation events.
    #[oai(skip_serializing_if_is_none)]
    step: Option<i32>,
    message: String,
    /// When the orchestrator emitted the event.
    occurred_at: DateTime<Utc>,
    /// When the worker stored it.
    recorded_at: DateTime<Utc>,
}

impl poem_openapi::types::Example for Notification {
    fn example() -> Self {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        Self {
            event_id: Uuid::nil(),
            saga_id: Uuid::nil(),
            saga: "order".into(),
            kind: "step.failed".into(),
            step: Some(2),
            message: "prepare_shipment rejected: address not serviceable".into(),
            occurred_at: at,
            recorded_at: at,
        }
    }
}

/// A page of notifications, newest first.
#[derive(Debug, Object)]
struct NotificationPage {
    items: Vec<Notification>,
    #[oai(flatten)]
    page: PageInfo,
}

#[derive(ApiResponse)]
enum Listed {
    #[oai(status = 200)]
    Ok(Json<NotificationPage>),
}

fn example_kind() -> Option<String> {
    Some("saga.completed".into())
}

#[OpenApi(tag = "crate::api::Tag::Notifications")]
impl NotificationsApi {
    /// List notifications
    ///
    /// Newest first (by event id), optionally of one saga and of one event type. Pages are
    /// cut by `limit`; pass the answer's `next_cursor` as `cursor` for the next page. An
    /// unknown `kind` is 400 naming it.
    #[oai(path = "/v1/notifications", method = "get")]
    async fn list(
        &self,
        state: Data<&State>,
        /// Only events of this saga.
        saga_id: Query<Option<Uuid>>,
        /// Only events of this type (`saga.started`, `step.succeeded`, `saga.failed`...).
        #[oai(example = "example_kind")]
        kind: Query<Option<String>>,
        /// Page size, 1 to 200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<Uuid>>,
    ) -> ApiResult<Listed> {
        let limit = pagination::limit(limit.0)?;
        let mut query = notifications::table.into_boxed();
        if let Some(saga_id) = saga_id.0 {
            query = query.filter(notifications::saga_id.eq(saga_id));
        }
        if let Some(kind) = &kind.0 {
            // A typo would otherwise look like "no such events": say so instead.
            if !EventKind::ALL.iter().any(|known| known.as_str() == kind) {
                let names: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(ApiError::invalid(
                    "kind",
                    format!("unknown kind `{kind}`; known: {}", names.join(", ")),
                ));
            }
            query = query.filter(notifications::kind.eq(kind));
        }
        if let Some(cursor) = cursor.0 {
            query = query.filter(notifications::event_id.lt(cursor));
        }
        let mut conn = state.database.get().await?;
        let rows = query
            .order(notifications::event_id.desc())
            .limit(limit + 1)
            .select(Notification::as_select())
            .load(&mut conn)
            .await?;
        let (items, page) = pagination::split(rows, limit, |item| item.event_id);
        Ok(Listed::Ok(Json(NotificationPage { items, page })))
    }
}
