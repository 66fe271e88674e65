//! `POST /v1/sagas/{id}/signals/{name}`: the outside event a signal step waits for (a
//! pickup, a provider's callback). The body becomes the step's output; the scope a caller
//! needs is the one the definition names, and a client may signal only its own sagas.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;
use uuid::Uuid;

use crate::api::State;
use crate::api::problem::{ApiError, ApiResult};
use crate::auth::{Caller, Scope};
use crate::saga::StepKind;
use crate::schema::sagas;
use crate::shell::Operator;

pub struct SignalsApi;

/// A signal that was taken.
#[derive(Debug, Object)]
struct SignalTaken {
    saga_id: Uuid,
    signal: String,
    /// The saga's status right after.
    status: String,
}

#[derive(ApiResponse)]
enum Signalled {
    /// Taken: the signal step succeeded with the body as its output.
    #[oai(status = 202)]
    Accepted(Json<SignalTaken>),
}

#[OpenApi(tag = "crate::api::Tag::Sagas")]
impl SignalsApi {
    /// Send a signal to a saga
    ///
    /// Ends the wait of the saga's signal step `name`; the JSON body becomes that step's
    /// output and the saga goes on. The key needs the scope the definition names for the
    /// signal (a `client` key only for sagas it started). 404 when the saga or its
    /// definition has no such signal, 409 when the saga is not waiting for it (not yet,
    /// or any more: it timed out, was cancelled, or took it already).
    #[oai(path = "/v1/sagas/:id/signals/:name", method = "post")]
    async fn signal(
        &self,
        state: Data<&State>,
        caller: Data<&Caller>,
        #[oai(example = "crate::api::example_id")] id: Path<Uuid>,
        #[oai(validator(pattern = r"^[a-z][a-z0-9_]{0,62}$"))] name: Path<String>,
        body: Json<Value>,
    ) -> ApiResult<Signalled> {
        // Held until the answer: one key's crowd of signals waits on its own places.
        let _place = state.signals.take(&caller.name).ok_or_else(|| {
            ApiError::too_many(
                "this key has as many signals in flight as one key may \
                 (HTTP_MAX_SIGNALS_PER_KEY)",
                1,
            )
        })?;
        let mut query = sagas::table.find(id.0).into_boxed();
        if let Some(client) = caller.owner() {
            query = query.filter(sagas::started_by.eq(client));
        }
        let mut conn = state.database.get().await?;
        let (definition, version): (String, i32) = query
            .select((sagas::definition, sagas::definition_version))
            .first(&mut conn)
            .await
            .optional()?
            .ok_or_else(|| ApiError::not_found("saga", id.0))?;
        drop(conn);
        let shape = state
            .engine
            .catalog()
            .version(&definition, u32::try_from(version).unwrap_or_default())
            .ok_or_else(|| ApiError::conflict(format!("saga {} cannot be read here", id.0)))?;
        let step = shape
            .signal(&name.0)
            .and_then(|index| shape.step(index))
            .ok_or_else(|| ApiError::not_found("signal", format!("{} of {definition}", name.0)))?;
        let StepKind::Signal(signal) = &step.kind else {
            return Err(ApiError::not_found("signal", &name.0));
        };
        let allowed = signal
            .scope
            .parse::<Scope>()
            .is_ok_and(|scope| caller.has(scope));
        if !allowed {
            return Err(ApiError::forbidden(format!(
                "signal `{}` needs a key with scope `{}`",
                name.0, signal.scope
            )));
        }
        let operator = Operator {
            actor: caller.name.clone(),
            reason: None,
            expected_version: None,
        };
        state
            .engine
            .signal_by(&state.database, id.0, &name.0, body.0, &operator)
            .await?;
        let status: String = sagas::table
            .find(id.0)
            .select(sagas::status)
            .first(&mut state.database.get().await?)
            .await?;
        Ok(Signalled::Accepted(Json(SignalTaken {
            saga_id: id.0,
            signal: name.0,
            status,
        })))
    }
}
