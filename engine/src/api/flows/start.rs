//! `POST /v1/sagas`: start a saga of a registered flow on an input its definition's schema
//! accepts, if the caller's key has one of the scopes the flow's document names
//! (`start_scopes`, operator when unset). A flow an application fronts is refused for every
//! key, naming its front: the shop's `POST /v1/orders` prices the lines, which a generic
//! start could only take from its caller.

use diesel_async::AsyncConnection as _;
use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use platform::db::Connection;

use crate::api::State;
use crate::api::idempotency;
use crate::api::problem::{ApiError, ApiResult, Problem};
use crate::auth::{Caller, Scope};
use crate::saga::Definition;
use crate::shell::{self, Queued, Start};

/// A saga to start.
#[derive(Debug, Object, Serialize)]
#[oai(example)]
pub(crate) struct NewSaga {
    /// The flow's name.
    #[oai(validator(pattern = r"^[a-z][a-z0-9_]{0,62}$"))]
    definition: String,
    /// Pins a version; without it the flow's default version runs.
    #[oai(
        validator(minimum(value = "1"), maximum(value = "1000000")),
        skip_serializing_if_is_none
    )]
    version: Option<u32>,
    /// The saga's input, checked against the version's input schema.
    input: Value,
}

impl poem_openapi::types::Example for NewSaga {
    fn example() -> Self {
        Self {
            definition: "coupon_use".to_owned(),
            version: None,
            input: serde_json::json!({
                "campaign_id": "0190f5c2-7b1e-7c3a-9d4e-2f6a8b0c1d2e",
                "user_id": "0190f5c2-7b1e-7c3a-9d4e-2f6a8b0c1d2f"
            }),
        }
    }
}

/// The saga that was started (or, with a reused `Idempotency-Key`, found).
#[derive(Debug, Object, Serialize, Deserialize)]
pub(crate) struct SagaStarted {
    pub(crate) saga_id: Uuid,
    definition: String,
    /// The version it runs on, to its end.
    version: u32,
    saga_url: String,
}

#[derive(ApiResponse)]
pub(crate) enum StartResponse {
    /// Accepted; the saga runs in the background. `Idempotent-Replayed: true` marks the
    /// stored answer to an earlier request with the same `Idempotency-Key`.
    #[oai(status = 202)]
    Accepted(
        Json<SagaStarted>,
        #[oai(header = "Location")] String,
        #[oai(header = "Idempotent-Replayed")] Option<bool>,
    ),
    /// With `Prefer: wait=N`: the saga settled within N seconds; here it is, as
    /// `GET /v1/sagas/{id}` shows it.
    #[oai(status = 200)]
    Settled(
        Json<crate::api::operator::sagas::SagaDetail>,
        #[oai(header = "Location")] String,
        #[oai(header = "Preference-Applied")] Option<String>,
    ),
}

/// The first fault the version's input schema (compiled once, in the catalog) finds,
/// named by its JSON pointer under `input`.
fn check_input(validator: &jsonschema::Validator, input: &Value) -> ApiResult<()> {
    match validator.iter_errors(input).next() {
        None => Ok(()),
        Some(error) => {
            let field = format!("input{}", error.instance_path());
            Err(ApiError::invalid(&field, format!("{field}: {error}")))
        }
    }
}

/// An engine error as the start answers it: the definition and version are the body's
/// references (422), a start the input cannot make is the input's fault (400).
fn refused(err: shell::Error) -> ApiError {
    match err {
        shell::Error::UnknownDefinition(name) => {
            ApiError::unprocessable("definition", format!("no saga definition `{name}`"))
        }
        shell::Error::UnknownVersion { name, version } => ApiError::unprocessable(
            "version",
            format!("saga definition `{name}` has no version {version}"),
        ),
        shell::Error::BadInput(reason) => ApiError::invalid("input", reason),
        other => ApiError::from(other),
    }
}

/// Whether `caller` may start `definition` here: never a fronted flow, otherwise a key
/// with one of the scopes its document names.
fn may_start(state: &State, caller: &Caller, definition: &Definition) -> ApiResult<()> {
    if let Some(front) = state.engine.catalog().front(&definition.name) {
        let mut problem = Problem::new(
            403,
            "fronted-flow",
            "Start it through its front",
            format!(
                "`{}` starts only through {front}, which derives what the generic start \
                 would take from its caller",
                definition.name
            ),
        );
        problem.field = Some("definition".to_owned());
        return Err(ApiError::Forbidden(Json(problem)));
    }
    let allowed = definition
        .start_scopes
        .iter()
        .filter_map(|scope| scope.parse::<Scope>().ok())
        .any(|scope| caller.has(scope));
    if allowed {
        return Ok(());
    }
    let mut problem = Problem::new(
        403,
        "forbidden",
        "Forbidden",
        format!(
            "`{}` version {} may be started by a key with scope {}",
            definition.name,
            definition.version,
            definition.start_scopes.join(" or ")
        ),
    );
    problem.field = Some("definition".to_owned());
    Err(ApiError::Forbidden(Json(problem)))
}

/// The handler of `POST /v1/sagas` (declared in `operator::sagas`, beside `GET /v1/sagas`:
/// poem-openapi keeps one path's operations in one API).
pub(crate) async fn start(
    state: Data<&State>,
    caller: Data<&Caller>,
    body: Json<NewSaga>,
    idempotency_key: Header<Option<String>>,
) -> ApiResult<StartResponse> {
    let key = idempotency::Key::of(
        &caller,
        idempotency_key.0.as_deref(),
        "POST",
        "/v1/sagas",
        &*body,
    )?;
    let engine = &state.engine;
    let definition = engine
        .definition_for(&body.definition, body.version)
        .map_err(refused)?;
    may_start(&state, &caller, &definition)?;
    let stored = engine
        .catalog()
        .stored_version(&definition.name, definition.version)
        .ok_or_else(|| refused(shell::Error::UnknownDefinition(definition.name.clone())))?;
    check_input(&stored.input, &body.input)?;
    let mut pooled = state.database.get().await?;
    let conn: &mut Connection = &mut pooled;
    let (started, replayed, queued) = conn
        .transaction::<_, ApiError, _>(async |conn: &mut Connection| {
            if let Some(key) = &key
                && let Some(first) = idempotency::begin::<SagaStarted>(conn, key).await?
            {
                return Ok((first, true, Queued::default()));
            }
            let start = Start {
                version: Some(definition.version),
                started_by: caller.owner(),
                ..Start::new(&definition.name, &body.input)
            };
            let started = engine.start_with(conn, start).await.map_err(refused)?;
            let answer = SagaStarted {
                saga_id: started.id,
                definition: definition.name.clone(),
                version: definition.version,
                saga_url: format!("/v1/sagas/{}", started.id),
            };
            if let Some(key) = &key {
                idempotency::finish(conn, key, 202, &answer).await?;
            }
            Ok((answer, false, started.queued))
        })
        .await?;
    // Committed: the saga's first command leaves now.
    engine.publish(queued);
    let location = started.saga_url.clone();
    Ok(StartResponse::Accepted(
        Json(started),
        location,
        replayed.then_some(true),
    ))
}
