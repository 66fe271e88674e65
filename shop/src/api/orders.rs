//! Orders: `POST /v1/orders` writes the order, its saga, the saga's first history entry and
//! its first command in ONE transaction and answers 202; nothing is published in the
//! request. An `Idempotency-Key` makes a retried request return the first one's answer,
//! also when the duplicates arrive concurrently; the same key with another request is 422
//! (see [`engine::api::idempotency`]).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use platform::db::Connection;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use engine::api::State;
use engine::api::problem::{ApiError, ApiResult};
use engine::api::{idempotency, wait};
use engine::auth::Caller;
use engine::saga::Status;
use engine::shell::Queued;
use engine::shell::store::Glance;

use crate::inputs::{self, Address, OrderInput, OrderLine};
use crate::pricing::{self, Unpriced};
use crate::schema::{orders, users};

pub struct OrdersApi;

/// An order to place.
#[derive(Debug, Object, Serialize)]
#[oai(example)]
struct NewOrder {
    user_id: Uuid,
    #[oai(validator(min_items = 1, max_items = 50))]
    lines: Vec<OrderLine>,
    shipping_address: Address,
}

impl poem_openapi::types::Example for NewOrder {
    fn example() -> Self {
        Self {
            user_id: Uuid::nil(),
            lines: vec![OrderLine {
                sku: "MUG-01".into(),
                quantity: 2,
            }],
            shipping_address: Address {
                country: "KR".into(),
                city: "Seoul".into(),
                line1: "1 Seongsu-ro".into(),
                postal_code: "04790".into(),
            },
        }
    }
}

/// An accepted order: poll `status_url` (or the saga) for the outcome.
#[derive(Debug, Object, Serialize, Deserialize)]
struct Accepted {
    order_id: Uuid,
    saga_id: Uuid,
    status_url: String,
    saga_url: String,
}

/// An order and where its saga stands.
#[derive(Debug, Object)]
struct Order {
    id: Uuid,
    user_id: Uuid,
    lines: Vec<OrderLine>,
    total_cents: i64,
    shipping_address: Address,
    /// PENDING, COMPLETED, CANCELLING, REJECTED, CANCELLED or NEEDS_ATTENTION.
    status: String,
    /// Why the order did not complete, when it did not.
    #[oai(skip_serializing_if_is_none)]
    reason: Option<String>,
    saga_id: Uuid,
    saga_status: String,
    created_at: DateTime<Utc>,
}

// The settled order is the larger answer, and the rarer; boxing it would obscure the type
// the OpenAPI document shows.
#[allow(clippy::large_enum_variant)]
#[derive(ApiResponse)]
enum Placed {
    /// Accepted; the saga runs in the background. `Idempotent-Replayed: true` marks the
    /// stored answer to an earlier request with the same `Idempotency-Key`.
    #[oai(status = 202)]
    Accepted(
        Json<Accepted>,
        #[oai(header = "Location")] String,
        #[oai(header = "Idempotent-Replayed")] Option<bool>,
    ),
    /// With `Prefer: wait=N`: the order settled within N seconds; here it is, as
    /// `GET /v1/orders/{id}` shows it.
    #[oai(status = 200)]
    Settled(
        Json<Order>,
        #[oai(header = "Location")] String,
        #[oai(header = "Preference-Applied")] Option<String>,
    ),
}

#[derive(ApiResponse)]
enum Found {
    #[oai(status = 200)]
    Ok(
        Json<Order>,
        /// `wait=N` when the request waited (up to N seconds) for the order to settle.
        #[oai(header = "Preference-Applied")]
        Option<String>,
    ),
}

/// An order's row (its saga is read through the engine: [`Glance`]).
#[derive(Queryable)]
struct OrderRow {
    id: Uuid,
    user_id: Uuid,
    lines: serde_json::Value,
    total_cents: i64,
    address: serde_json::Value,
    saga_id: Uuid,
    created_at: DateTime<Utc>,
}

/// The order's status as a customer sees it, from its saga's.
fn order_status(saga_status: &str) -> &'static str {
    match saga_status {
        "RUNNING" => "PENDING",
        "COMPLETED" => "COMPLETED",
        "COMPENSATING" => "CANCELLING",
        "COMPENSATED" => "REJECTED",
        "CANCELLED" => "CANCELLED",
        // An operator closed it by hand; the history says why.
        "RESOLVED" => "RESOLVED",
        _ => "NEEDS_ATTENTION",
    }
}

fn accepted(order_id: Uuid, saga_id: Uuid) -> Accepted {
    Accepted {
        order_id,
        saga_id,
        status_url: format!("/v1/orders/{order_id}"),
        saga_url: format!("/v1/sagas/{saga_id}"),
    }
}

fn placed(accepted: Accepted, replayed: bool) -> Placed {
    let location = accepted.status_url.clone();
    Placed::Accepted(Json(accepted), location, replayed.then_some(true))
}

/// Checks the user and the SKUs and prices the order: the saga's input and the total the
/// `orders` row keeps (which the payment role charges).
async fn priced(conn: &mut Connection, order: &NewOrder) -> ApiResult<(OrderInput, i64)> {
    let known_user: i64 = users::table
        .filter(users::id.eq(order.user_id))
        .count()
        .get_result(conn)
        .await?;
    if known_user == 0 {
        return Err(ApiError::unprocessable(
            "user_id",
            format!("user {} does not exist", order.user_id),
        ));
    }
    let total_cents = match pricing::total(conn, &order.lines).await? {
        Ok(total) => total,
        Err(unpriced @ Unpriced::UnknownProduct { index, .. }) => {
            return Err(ApiError::unprocessable(
                &format!("lines[{index}].sku"),
                unpriced.to_string(),
            ));
        }
        Err(unpriced @ Unpriced::OutOfRange) => {
            return Err(ApiError::unprocessable("lines", unpriced.to_string()));
        }
    };
    if total_cents <= 0 {
        return Err(ApiError::unprocessable(
            "lines",
            "the order total must be positive",
        ));
    }
    let input = OrderInput {
        order_id: Uuid::now_v7(),
        user_id: order.user_id,
        lines: order.lines.clone(),
        shipping_address: order.shipping_address.clone(),
    };
    Ok((input, total_cents))
}

#[OpenApi(tag = "crate::api::Tag::Orders")]
impl OrdersApi {
    /// Place an order
    ///
    /// Starts an order saga: reserve stock, charge the user's wallet, prepare the shipment.
    /// Answers 202 at once with the order and saga ids. With an `Idempotency-Key`, repeating
    /// the request returns the first request's answer (marked `Idempotent-Replayed: true`)
    /// and starts nothing new; the same key with a different request is 422. Keys are kept
    /// for 24 hours. Unknown users or SKUs are 422, naming the field. With
    /// `Prefer: wait=N` (seconds, at most 25) the answer is 200 with the order when it
    /// settles within N seconds, else the 202.
    #[oai(path = "/v1/orders", method = "post")]
    async fn place(
        &self,
        state: Data<&State>,
        body: Json<NewOrder>,
        /// Makes retries safe: the same key always answers with the same order.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 200))]
        idempotency_key: Header<Option<String>>,
        /// RFC 7240 preferences; `wait=N` waits up to N seconds for the order to settle.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Placed> {
        let wait = wait::requested(&state, prefer.0.as_deref(), None)?;
        let placed = place_now(&state, &body, idempotency_key, &caller).await?;
        let Placed::Accepted(accepted, location, replayed) = placed else {
            return Ok(placed);
        };
        if wait.is_zero() {
            return Ok(Placed::Accepted(accepted, location, replayed));
        }
        let read = || read_order(&state, &caller, accepted.order_id);
        let waited = wait::until_settled(
            &state.waiters,
            &caller.name,
            accepted.saga_id,
            wait,
            None,
            read,
        )
        .await?;
        Ok(if waited.settled {
            Placed::Settled(Json(waited.value), location, waited.applied)
        } else {
            Placed::Accepted(accepted, location, replayed)
        })
    }

    /// Get an order
    ///
    /// The order and its status, derived from its saga: PENDING while it runs, COMPLETED,
    /// REJECTED (compensated after a failure, `reason` says why), CANCELLED, or
    /// NEEDS_ATTENTION (a compensation is stuck; an operator can retry the saga). Shipping
    /// is to these countries only: KR, JP, US, CA, GB, DE, FR, NL.
    #[oai(path = "/v1/orders/:id", method = "get")]
    async fn get(
        &self,
        state: Data<&State>,
        #[oai(example = "engine::api::example_id")] id: Path<Uuid>,
        /// Seconds to wait for the order to settle (0 to 25); wins over `Prefer: wait`.
        #[oai(validator(minimum(value = "0"), maximum(value = "25")))]
        wait: Query<Option<u32>>,
        /// RFC 7240 preferences; `wait=N` waits up to N seconds for the order to settle.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        caller: Data<&Caller>,
    ) -> ApiResult<Found> {
        let wait = wait::requested(&state, prefer.0.as_deref(), wait.0)?;
        let read = || read_order(&state, &caller, id.0);
        let first = read().await?;
        let saga = first.0.saga_id;
        let waited =
            wait::until_settled(&state.waiters, &caller.name, saga, wait, Some(first), read)
                .await?;
        Ok(Found::Ok(Json(waited.value), waited.applied))
    }
}

/// Writes the order and starts its saga in one transaction (or finds the first answer to
/// the same `Idempotency-Key`).
async fn place_now(
    state: &State,
    body: &NewOrder,
    idempotency_key: Header<Option<String>>,
    caller: &Caller,
) -> ApiResult<Placed> {
    let key = idempotency::Key::of(
        caller,
        idempotency_key.0.as_deref(),
        "POST",
        "/v1/orders",
        body,
    )?;
    let mut pooled = state.database.get().await?;
    let conn: &mut Connection = &mut pooled;
    let engine = &state.engine;
    let (placed, queued) = conn
        .transaction::<_, ApiError, _>(async |conn: &mut Connection| {
            if let Some(key) = &key
                && let Some(first) = idempotency::begin::<Accepted>(conn, key).await?
            {
                return Ok((placed(first, true), Queued::default()));
            }
            let (input, total_cents) = priced(conn, body).await?;
            let started = engine
                .start_for_in(conn, "order", &inputs::to_value(&input), caller.owner())
                .await?;
            diesel::insert_into(orders::table)
                .values((
                    orders::id.eq(input.order_id),
                    orders::user_id.eq(input.user_id),
                    orders::lines.eq(inputs::to_value(&input.lines)),
                    orders::total_cents.eq(total_cents),
                    orders::shipping_address.eq(inputs::to_value(&input.shipping_address)),
                    orders::saga_id.eq(started.id),
                ))
                .execute(conn)
                .await?;
            let accepted = accepted(input.order_id, started.id);
            if let Some(key) = &key {
                idempotency::finish(conn, key, 202, &accepted).await?;
            }
            Ok((placed(accepted, false), started.queued))
        })
        .await?;
    // Committed: the saga's first command leaves now.
    engine.publish(queued);
    Ok(placed)
}

/// An order as `GET /v1/orders/{id}` shows it, and whether its saga settled.
async fn read_order(state: &State, caller: &Caller, id: Uuid) -> ApiResult<(Order, bool)> {
    let mut conn = state.database.get().await?;
    let row: Option<OrderRow> = orders::table
        .filter(orders::id.eq(id))
        .select((
            orders::id,
            orders::user_id,
            orders::lines,
            orders::total_cents,
            orders::shipping_address,
            orders::saga_id,
            orders::created_at,
        ))
        .first(&mut conn)
        .await
        .optional()?;
    let Some(OrderRow {
        id,
        user_id,
        lines,
        total_cents,
        address,
        saga_id,
        created_at,
    }) = row
    else {
        return Err(ApiError::not_found("order", id));
    };
    let saga = engine::shell::store::glance(&mut conn, saga_id).await?;
    let Some(Glance {
        status: saga_status,
        state: saga_state,
        started_by,
    }) = saga
    else {
        return Err(ApiError::not_found("order", id));
    };
    // A client sees only its own orders; another's is as unknown as a missing one.
    if caller
        .owner()
        .is_some_and(|client| started_by.as_deref() != Some(client))
    {
        return Err(ApiError::not_found("order", id));
    }
    let status = order_status(&saga_status);
    let reason = (status != "COMPLETED" && status != "PENDING")
        .then(|| saga_state["failure"].as_str().map(str::to_owned))
        .flatten();
    let settled = saga_status.parse::<Status>().is_ok_and(Status::is_settled);
    let order = Order {
        id,
        user_id,
        lines: serde_json::from_value(lines).map_err(ApiError::internal)?,
        total_cents,
        shipping_address: serde_json::from_value(address).map_err(ApiError::internal)?,
        status: status.to_owned(),
        reason,
        saga_id,
        saga_status,
        created_at,
    };
    Ok((order, settled))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_saga_status_maps_to_an_order_status() {
        for status in engine::saga::Status::ALL {
            assert_ne!(super::order_status(status.as_str()), "", "{status}");
        }
        assert_eq!(super::order_status("COMPENSATED"), "REJECTED");
        assert!(crate::participants::shipment::SERVICEABLE_COUNTRIES.contains(&"KR"));
    }
}
