//! Registered flows: list and read their versions, register a new version, set the
//! default, retire a version (no new sagas) or reinstate it, remove a version no saga
//! needs, and see every compensation path a version can take. The documents' own format is `/saga-definition.schema.json`.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection as _;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;

use platform::db::Connection;

use crate::api::State;
use crate::api::problem::{ApiError, ApiResult, Fault, Problem};
use crate::auth::Caller;
use crate::saga::definition::{RetryPolicy, Step, StepKind, Wake};
use crate::shell::catalog::{Catalog, Refused, Version};

pub struct DefinitionsApi;

/// A flow: its default version's shape and every version registered.
#[derive(Debug, Object)]
struct SagaDefinition {
    /// The name sagas carry as `definition` (`order`, `coupon_use`, ...).
    name: String,
    /// The version new sagas start on (the highest unless an admin set another).
    version: u32,
    description: String,
    /// Every registered version, oldest first.
    versions: Vec<VersionInfo>,
    /// The default version's steps, in stage order.
    steps: Vec<StepDefinition>,
}

/// Who registered a version, and when; whether it still starts sagas.
#[derive(Debug, Object)]
struct VersionInfo {
    version: u32,
    created_by: String,
    created_at: DateTime<Utc>,
    /// Present when the version starts no new sagas.
    #[oai(skip_serializing_if_is_none)]
    retired: Option<RetirementView>,
}

/// Why a version starts no new sagas (those already on it finish).
#[derive(Debug, Object)]
struct RetirementView {
    reason: String,
    /// The admin key's name, or `built-in` when the application retired it.
    retired_by: String,
    retired_at: DateTime<Utc>,
}

/// Why to retire a version.
#[derive(Debug, Object)]
struct Retire {
    #[oai(validator(min_length = 1, max_length = 500))]
    reason: String,
}

/// One version: its shape, the document it was registered from, and its input schema.
#[derive(Debug, Object)]
struct DefinitionVersion {
    name: String,
    version: u32,
    description: String,
    /// Whether new sagas start on it when a start pins no version.
    default: bool,
    /// Present when the version starts no new sagas.
    #[oai(skip_serializing_if_is_none)]
    retired: Option<RetirementView>,
    /// Who may start it through `POST /v1/sagas` (keys with one of these scopes).
    start_scopes: Vec<String>,
    /// The application endpoint that starts this flow, when one does: the generic start
    /// then refuses it for every key.
    #[oai(skip_serializing_if_is_none)]
    front: Option<String>,
    created_by: String,
    created_at: DateTime<Utc>,
    steps: Vec<StepDefinition>,
    /// The JSON Schema a saga's input must satisfy.
    input_schema: Value,
    /// The document as registered.
    document: Value,
}

/// One step of a definition.
#[derive(Debug, Object)]
struct StepDefinition {
    name: String,
    /// `task`, `wait` or `signal`.
    kind: String,
    /// Steps that share a stage run together (a parallel stage).
    stage: u32,
    /// Once it succeeded the saga is never undone.
    pivot: bool,
    /// Retried until it succeeds, never compensated.
    forward_only: bool,
    /// The participant role that runs the command and its compensation (tasks).
    #[oai(skip_serializing_if_is_none)]
    role: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    command: Option<String>,
    /// The command that undoes the step; absent for a task that cannot be undone (before
    /// compensating past it, its outcome is fenced).
    #[oai(skip_serializing_if_is_none)]
    compensation: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    retry: Option<RetryBudget>,
    #[oai(skip_serializing_if_is_none)]
    compensation_retry: Option<RetryBudget>,
    /// Covers every forward attempt together (tasks that are not forward-only).
    #[oai(skip_serializing_if_is_none)]
    deadline_ms: Option<u64>,
    /// Start-to-close timeout of one forward attempt; past it the same command is sent again.
    #[oai(skip_serializing_if_is_none)]
    attempt_timeout_ms: Option<u64>,
    /// Covers one compensation attempt.
    #[oai(skip_serializing_if_is_none)]
    compensation_deadline_ms: Option<u64>,
    /// A wait: how long it lasts.
    #[oai(skip_serializing_if_is_none)]
    wait_ms: Option<u64>,
    /// A wait: the JSON pointer into the input to the time it ends.
    #[oai(skip_serializing_if_is_none)]
    wait_until: Option<String>,
    /// A signal: the scope a caller needs to send it.
    #[oai(skip_serializing_if_is_none)]
    signal_scope: Option<String>,
    /// A signal: how long it is awaited before the saga compensates.
    #[oai(skip_serializing_if_is_none)]
    signal_timeout_ms: Option<u64>,
}

/// How often, and how far apart, a failing command is tried.
#[derive(Debug, Object)]
struct RetryBudget {
    max_attempts: u32,
    initial_backoff_ms: u64,
    multiplier: u32,
    max_backoff_ms: u64,
}

/// Which version new sagas start on.
#[derive(Debug, Object)]
struct DefaultVersion {
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000")))]
    version: u32,
}

/// One failure point and what follows it.
#[derive(Debug, Object)]
struct CompensationPath {
    /// The step that fails.
    step: String,
    /// `rejected` (a task's participant refuses) or `timed_out` (no signal in time).
    failure: String,
    /// What the saga sends to undo, in order (`fence` for a task without compensation).
    undo: Vec<UndoStep>,
    /// How the saga ends.
    ends: String,
}

#[derive(Debug, Object)]
struct UndoStep {
    step: String,
    command: String,
}

#[derive(ApiResponse)]
enum RegisterResponse {
    /// Stored as a new version.
    #[oai(status = 201)]
    Created(Json<DefinitionVersion>),
    /// The same document was registered before: nothing changed.
    #[oai(status = 200)]
    Unchanged(Json<DefinitionVersion>),
}

#[derive(ApiResponse)]
enum Removed {
    /// Removed.
    #[oai(status = 204)]
    Gone,
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl From<&RetryPolicy> for RetryBudget {
    fn from(policy: &RetryPolicy) -> Self {
        Self {
            max_attempts: policy.max_attempts,
            initial_backoff_ms: millis(policy.initial_backoff),
            multiplier: policy.multiplier,
            max_backoff_ms: millis(policy.max_backoff),
        }
    }
}

impl From<&Step> for StepDefinition {
    fn from(step: &Step) -> Self {
        let mut view = Self {
            name: step.name.clone(),
            kind: step.kind_name().to_owned(),
            stage: u32::try_from(step.stage).unwrap_or(u32::MAX),
            pivot: step.pivot,
            forward_only: step.forward_only,
            role: None,
            command: None,
            compensation: None,
            retry: None,
            compensation_retry: None,
            deadline_ms: None,
            attempt_timeout_ms: None,
            compensation_deadline_ms: None,
            wait_ms: None,
            wait_until: None,
            signal_scope: None,
            signal_timeout_ms: None,
        };
        match &step.kind {
            StepKind::Task(task) => {
                view.role = Some(task.role.clone());
                view.command = Some(task.command.clone());
                view.compensation = task.compensation.clone();
                view.retry = Some((&task.retry).into());
                view.compensation_retry = Some((&task.compensation_retry).into());
                view.deadline_ms = (!step.forward_only).then(|| millis(task.deadline));
                view.attempt_timeout_ms = Some(millis(task.attempt_timeout));
                view.compensation_deadline_ms = Some(millis(task.compensation_deadline));
            }
            StepKind::Wait(Wake::After(duration)) => view.wait_ms = Some(millis(*duration)),
            StepKind::Wait(Wake::At(pointer)) => view.wait_until = Some(pointer.clone()),
            StepKind::Signal(signal) => {
                view.signal_scope = Some(signal.scope.clone());
                view.signal_timeout_ms = signal.timeout.map(millis);
            }
        }
        view
    }
}

fn retirement_view(catalog: &Catalog, name: &str, version: u32) -> Option<RetirementView> {
    catalog
        .retirement(name, version)
        .map(|retirement| RetirementView {
            reason: retirement.reason,
            retired_by: retirement.retired_by,
            retired_at: retirement.retired_at,
        })
}

fn version_view(catalog: &Catalog, stored: &Version, default: bool) -> DefinitionVersion {
    let definition = &stored.definition;
    DefinitionVersion {
        name: definition.name.clone(),
        version: definition.version,
        description: definition.description.clone(),
        default,
        retired: retirement_view(catalog, &definition.name, definition.version),
        start_scopes: definition.start_scopes.clone(),
        front: catalog.front(&definition.name).map(str::to_owned),
        created_by: stored.created_by.clone(),
        created_at: stored.created_at,
        steps: definition.steps.iter().map(StepDefinition::from).collect(),
        input_schema: definition.input_schema.clone(),
        document: stored.document.clone(),
    }
}

fn flow_view(
    catalog: &Catalog,
    name: String,
    versions: &[Version],
    default: u32,
) -> SagaDefinition {
    let current = versions
        .iter()
        .find(|stored| stored.definition.version == default)
        .or_else(|| versions.last());
    SagaDefinition {
        name,
        version: default,
        description: current
            .map(|stored| stored.definition.description.clone())
            .unwrap_or_default(),
        versions: versions
            .iter()
            .map(|stored| VersionInfo {
                version: stored.definition.version,
                created_by: stored.created_by.clone(),
                created_at: stored.created_at,
                retired: retirement_view(
                    catalog,
                    &stored.definition.name,
                    stored.definition.version,
                ),
            })
            .collect(),
        steps: current
            .map(|stored| {
                stored
                    .definition
                    .steps
                    .iter()
                    .map(StepDefinition::from)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A version in a path: versions are whole numbers from 1, so anything else names none.
fn version_of(text: &str) -> ApiResult<u32> {
    text.parse::<u32>()
        .ok()
        .filter(|version| *version >= 1)
        .ok_or_else(|| ApiError::not_found("saga definition version", text))
}

/// One flow as the API shows it.
fn flow(state: &State, name: &str) -> ApiResult<SagaDefinition> {
    let catalog = state.engine.catalog();
    let (name, versions, default) = catalog
        .flows()
        .into_iter()
        .find(|(flow, ..)| flow == name)
        .ok_or_else(|| ApiError::not_found("saga definition", name))?;
    Ok(flow_view(catalog, name, &versions, default))
}

/// The stored version `name`/`version` with whether it is the default.
fn find_version(state: &State, name: &str, version: u32) -> ApiResult<(Version, bool)> {
    let catalog = state.engine.catalog();
    let stored = catalog.stored_version(name, version).ok_or_else(|| {
        ApiError::not_found("saga definition version", format!("{name}/{version}"))
    })?;
    let default = catalog
        .current(name)
        .is_some_and(|current| current.version == version);
    Ok((stored, default))
}

fn refused(err: Refused) -> ApiError {
    match err {
        Refused::NotFound { name, version } => {
            ApiError::not_found("saga definition version", format!("{name}/{version}"))
        }
        conflict @ (Refused::Immutable { .. }
        | Refused::InUse { .. }
        | Refused::IsDefault { .. }
        | Refused::RetiredByApplication { .. }
        | Refused::RefusedNow { .. }
        | Refused::Removed { .. }
        | Refused::BuiltIn { .. }) => ApiError::conflict(conflict.to_string()),
        Refused::Invalid(faults) => {
            let detail: Vec<String> = faults.iter().map(ToString::to_string).collect();
            let mut problem = Problem::new(
                400,
                "invalid-definition",
                "Invalid saga definition",
                detail.join("; "),
            );
            problem.field = faults.first().map(|fault| fault.pointer.clone());
            problem.faults = Some(
                faults
                    .into_iter()
                    .map(|fault| Fault {
                        pointer: fault.pointer,
                        message: fault.message,
                    })
                    .collect(),
            );
            ApiError::BadRequest(Json(problem))
        }
        Refused::Pool(err) => ApiError::from(err),
        Refused::Database(err) => ApiError::from(err),
    }
}

#[OpenApi(tag = "crate::api::Tag::Definitions")]
impl DefinitionsApi {
    /// List saga definitions
    ///
    /// Every registered flow with its versions, and the default version's steps: each
    /// step's kind, stage, role, command, compensation, retry budgets and deadlines.
    #[oai(path = "/v1/saga-definitions", method = "get")]
    async fn list(&self, state: Data<&State>) -> Json<Vec<SagaDefinition>> {
        let catalog = state.engine.catalog();
        Json(
            catalog
                .flows()
                .into_iter()
                .map(|(name, versions, default)| flow_view(catalog, name, &versions, default))
                .collect(),
        )
    }

    /// Register a saga definition version
    ///
    /// Stores a definition document (format: `/saga-definition.schema.json`) as a new
    /// version of its flow, seen by every replica without a restart; a role it names gets
    /// its command topic. The document is checked first: the format, its input schema, and
    /// the rules a schema cannot state (unique step names, commands of their role, attempt
    /// timeouts shorter than deadlines, deadlines longer than a lost consumer member costs,
    /// forward-only steps after a pivot). A refusal is 400 listing every fault with a JSON
    /// pointer. The same document again is 200; another document under a stored version is
    /// 409 (versions are immutable).
    #[oai(path = "/v1/saga-definitions", method = "post")]
    async fn register(
        &self,
        state: Data<&State>,
        caller: Data<&Caller>,
        document: Json<Value>,
    ) -> ApiResult<RegisterResponse> {
        let catalog = state.engine.catalog();
        let mut pooled = state.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        let registered = catalog
            .register(conn, &document.0, &caller.name)
            .await
            .map_err(refused)?;
        catalog.reload(conn).await?;
        let roles: Vec<String> = registered
            .definition
            .roles()
            .into_iter()
            .map(str::to_owned)
            .collect();
        state.cluster.ensure_role_topics(&roles).await?;
        let definition = &registered.definition;
        let (stored, default) = find_version(&state, &definition.name, definition.version)?;
        let view = version_view(catalog, &stored, default);
        Ok(if registered.created {
            RegisterResponse::Created(Json(view))
        } else {
            RegisterResponse::Unchanged(Json(view))
        })
    }

    /// Get a saga definition
    ///
    /// One flow: its versions and its default version's steps.
    #[oai(path = "/v1/saga-definitions/:name", method = "get")]
    async fn get(
        &self,
        state: Data<&State>,
        name: Path<String>,
    ) -> ApiResult<Json<SagaDefinition>> {
        Ok(Json(flow(&state, &name.0)?))
    }

    /// Get a saga definition version
    ///
    /// One version: its steps, its input schema, the document it was registered from,
    /// who registered it and whether new sagas start on it.
    #[oai(path = "/v1/saga-definitions/:name/versions/:version", method = "get")]
    async fn version(
        &self,
        state: Data<&State>,
        name: Path<String>,
        version: Path<String>,
    ) -> ApiResult<Json<DefinitionVersion>> {
        let (stored, default) = find_version(&state, &name.0, version_of(&version.0)?)?;
        Ok(Json(version_view(state.engine.catalog(), &stored, default)))
    }

    /// Retire a saga definition version
    ///
    /// No new saga starts on it, through any door; the sagas already on it finish. The
    /// default an admin pinned is 409 (set another first); unpinned, the highest version
    /// that is not retired becomes the default. Retiring again changes nothing.
    #[oai(
        path = "/v1/saga-definitions/:name/versions/:version/retirement",
        method = "put"
    )]
    async fn retire(
        &self,
        state: Data<&State>,
        caller: Data<&Caller>,
        name: Path<String>,
        version: Path<String>,
        body: Json<Retire>,
    ) -> ApiResult<Json<DefinitionVersion>> {
        let version = version_of(&version.0)?;
        let catalog = state.engine.catalog();
        let mut pooled = state.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        conn.transaction::<_, ApiError, _>(async |conn: &mut Connection| {
            catalog
                .retire(conn, &name.0, version, &caller.name, &body.reason)
                .await
                .map_err(refused)
        })
        .await?;
        catalog.reload(conn).await?;
        let (stored, default) = find_version(&state, &name.0, version)?;
        Ok(Json(version_view(catalog, &stored, default)))
    }

    /// Reinstate a retired saga definition version
    ///
    /// It starts sagas again. A version its application retired (a built-in one whose
    /// rule changed in a newer version) is 409: it stays retired.
    #[oai(
        path = "/v1/saga-definitions/:name/versions/:version/retirement",
        method = "delete"
    )]
    async fn reinstate(
        &self,
        state: Data<&State>,
        name: Path<String>,
        version: Path<String>,
    ) -> ApiResult<Json<DefinitionVersion>> {
        let version = version_of(&version.0)?;
        let catalog = state.engine.catalog();
        let mut pooled = state.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        catalog
            .reinstate(conn, &name.0, version)
            .await
            .map_err(refused)?;
        catalog.reload(conn).await?;
        let (stored, default) = find_version(&state, &name.0, version)?;
        Ok(Json(version_view(catalog, &stored, default)))
    }

    /// Remove a saga definition version
    ///
    /// Only a version no saga still needs: one a saga that is not over runs on is 409, and
    /// so are the default an admin set and the built-in versions (the shop's fronts start
    /// them). No saga can start on it while this runs. The (name, version) is never used
    /// again: registering it later, whatever the document, is 409.
    #[oai(
        path = "/v1/saga-definitions/:name/versions/:version",
        method = "delete"
    )]
    async fn remove(
        &self,
        state: Data<&State>,
        caller: Data<&Caller>,
        name: Path<String>,
        version: Path<String>,
    ) -> ApiResult<Removed> {
        let version = version_of(&version.0)?;
        let catalog = state.engine.catalog();
        let mut pooled = state.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        conn.transaction::<_, ApiError, _>(async |conn: &mut Connection| {
            catalog
                .remove(conn, &name.0, version, &caller.name)
                .await
                .map_err(refused)
        })
        .await?;
        catalog.reload(conn).await?;
        Ok(Removed::Gone)
    }

    /// Set a saga definition's default version
    ///
    /// New sagas of the flow start on this version unless the start request pins another
    /// (to roll back, set an older one). Sagas already running keep theirs.
    #[oai(path = "/v1/saga-definitions/:name/default", method = "put")]
    async fn set_default(
        &self,
        state: Data<&State>,
        caller: Data<&Caller>,
        name: Path<String>,
        body: Json<DefaultVersion>,
    ) -> ApiResult<Json<SagaDefinition>> {
        let catalog = state.engine.catalog();
        let mut pooled = state.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        catalog
            .set_default(conn, &name.0, body.version, &caller.name)
            .await
            .map_err(refused)?;
        catalog.reload(conn).await?;
        Ok(Json(flow(&state, &name.0)?))
    }

    /// List a saga definition version's compensation paths
    ///
    /// For every point where the flow can fail (a task rejected, a signal not sent in
    /// time), what the saga then undoes, in order, and how it ends: found by running the
    /// engine's own state machine against a scripted participant. Steps past the pivot
    /// cannot fail and have none.
    #[oai(
        path = "/v1/saga-definitions/:name/versions/:version/paths",
        method = "get"
    )]
    async fn paths(
        &self,
        state: Data<&State>,
        name: Path<String>,
        version: Path<String>,
    ) -> ApiResult<Json<Vec<CompensationPath>>> {
        let (stored, _) = find_version(&state, &name.0, version_of(&version.0)?)?;
        Ok(Json(
            stored
                .paths()
                .await
                .iter()
                .map(|path| CompensationPath {
                    step: path.step.clone(),
                    failure: path.failure.to_owned(),
                    undo: path
                        .undo
                        .iter()
                        .map(|undo| UndoStep {
                            step: undo.step.clone(),
                            command: undo.command.clone(),
                        })
                        .collect(),
                    ends: path.ends.as_str().to_owned(),
                })
                .collect(),
        ))
    }
}
