//! RFC 9457 problem details: the body of every 4xx and 5xx response, and the one place
//! where errors become HTTP.
//!
//! Handlers return [`ApiError`]. Errors poem raises before a handler runs (malformed JSON,
//! a wrong type, a failed validator, an unknown route, an oversized body) are turned into
//! the same shape by [`catch_all`], naming the offending field where the message does.
//! A 500 never carries internals: the cause is logged once, here, with an error id that the
//! body repeats.

use poem::Response;
use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use uuid::Uuid;

use crate::shell;

/// `application/problem+json` body.
#[derive(Debug, Clone, Object)]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[oai(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// The request field at fault, for validation errors.
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
    /// The resource's current status, for conflicts about it.
    #[oai(skip_serializing_if_is_none)]
    pub current_status: Option<String>,
    /// Every fault of a refused document (a saga definition), each with a JSON pointer.
    #[oai(skip_serializing_if_is_none)]
    pub faults: Option<Vec<Fault>>,
}

/// Where a document went wrong: a JSON pointer into it, and why.
#[derive(Debug, Clone, Object)]
pub struct Fault {
    pub pointer: String,
    pub message: String,
}

impl Problem {
    pub fn new(status: u16, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://sagaflow.dev/problems/{kind}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            field: None,
            current_status: None,
            faults: None,
        }
    }
}

/// Every error a handler can answer with.
#[derive(ApiResponse, Debug)]
pub enum ApiError {
    /// The request is malformed or fails validation; `field` names the culprit.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No such resource.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The key lacks what this needs (a signal's scope, say).
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// The request conflicts with the resource's state or a limit.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// `If-Match` named a version that is no longer current: read the resource again.
    #[oai(status = 412, content_type = "application/problem+json")]
    PreconditionFailed(Json<Problem>),
    // 413 and 415 are produced before any handler runs (see `catch_all`); they are listed
    // here so the OpenAPI document declares them.
    /// The body is larger than 64 KiB.
    #[oai(status = 413, content_type = "application/problem+json")]
    TooLarge(Json<Problem>),
    /// The body is not `application/json`.
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// The request is well-formed but refers to something that cannot be used.
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(Json<Problem>),
    /// This key holds as many waiting requests, streams or signals in flight as one key
    /// may; others are served. Retry after the given number of seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooMany(Json<Problem>, #[oai(header = "Retry-After")] u64),
    /// A server fault; the body carries an error id to quote, never internals.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// Busy for now (a lock or the database); nothing changed. Retry after the given
    /// number of seconds.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u64),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        let mut problem = Problem::new(400, "validation", "Invalid request", detail);
        problem.field = Some(field.to_owned());
        Self::BadRequest(Json(problem))
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::NotFound(Json(Problem::new(
            404,
            "not-found",
            "Not found",
            format!("{what} {id} does not exist"),
        )))
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::Forbidden(Json(Problem::new(403, "forbidden", "Forbidden", detail)))
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::Conflict(Json(Problem::new(409, "conflict", "Conflict", detail)))
    }

    pub fn unprocessable(field: &str, detail: impl Into<String>) -> Self {
        let mut problem = Problem::new(422, "unprocessable", "Unprocessable request", detail);
        problem.field = Some(field.to_owned());
        Self::Unprocessable(Json(problem))
    }

    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::Unavailable(
            Json(Problem::new(503, "busy", "Busy, try again", detail)),
            retry_after_secs,
        )
    }

    /// The caller's own bound (named by its setting) is reached.
    pub fn too_many(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::TooMany(
            Json(Problem::new(
                429,
                "per-key-limit",
                "Too many for this key",
                detail,
            )),
            retry_after_secs,
        )
    }

    /// Logs the cause and answers with an id only.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(Json(internal_problem(cause)))
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(err: diesel::result::Error) -> Self {
        Self::internal(err)
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for ApiError {
    fn from(err: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        use diesel_async::pooled_connection::deadpool::PoolError;
        match err {
            // Every connection is busy: back-pressure, not a fault.
            PoolError::Timeout(_) => {
                Self::unavailable("the database is busy; try again shortly", 1)
            }
            other => Self::internal(other),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        Self::internal(format!("{err:#}"))
    }
}

impl From<shell::Error> for ApiError {
    fn from(err: shell::Error) -> Self {
        match err {
            shell::Error::NotFound(id) => Self::not_found("saga", id),
            shell::Error::Conflict { status, reason } => {
                let mut problem = Problem::new(
                    409,
                    "saga-status",
                    "Not possible in the saga's status",
                    format!("saga is {status}: {reason}"),
                );
                problem.current_status = Some(status.as_str().to_owned());
                Self::Conflict(Json(problem))
            }
            shell::Error::Corrupt { id, reason } => {
                let mut problem = Problem::new(
                    409,
                    "saga-quarantined",
                    "The saga is quarantined",
                    format!("saga {id} cannot be moved: {reason}"),
                );
                problem.current_status = Some("QUARANTINED".to_owned());
                Self::Conflict(Json(problem))
            }
            shell::Error::Stale {
                id,
                expected,
                current,
            } => {
                let mut problem = Problem::new(
                    412,
                    "stale-version",
                    "The saga changed",
                    format!(
                        "saga {id} is at version {current}, not {expected}: read it again \
                         and decide on what it is now"
                    ),
                );
                problem.field = Some("If-Match".to_owned());
                Self::PreconditionFailed(Json(problem))
            }
            shell::Error::Pool(err) => Self::from(err),
            unreadable @ shell::Error::VersionUnreadable { .. } => {
                Self::unavailable(unreadable.to_string(), 5)
            }
            retired @ shell::Error::Retired { .. } => {
                let mut problem =
                    Problem::new(409, "retired", "Version retired", retired.to_string());
                problem.field = Some("version".to_owned());
                Self::Conflict(Json(problem))
            }
            shell::Error::Concurrent(id) => {
                Self::conflict(format!("saga {id} changed concurrently; retry the request"))
            }
            other => Self::internal(other),
        }
    }
}

/// Turns errors raised outside handlers into problem+json.
pub fn catch_all(err: poem::Error) -> Response {
    // A handler's own `ApiError` arrives as an error wrapping its finished problem+json
    // response (no source); pass it through untouched.
    if !err.has_source() {
        return err.into_response();
    }
    let status = err.status();
    let message = err.to_string();
    let problem = if status.is_server_error() {
        internal_problem(&message)
    } else {
        let (kind, title) = match status {
            StatusCode::NOT_FOUND => ("not-found", "Not found"),
            StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed"),
            StatusCode::PAYLOAD_TOO_LARGE => ("too-large", "Request body too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("media-type", "Unsupported media type"),
            _ => ("validation", "Invalid request"),
        };
        let mut problem = Problem::new(status.as_u16(), kind, title, message.clone());
        problem.field = field_in(&message).map(|field| {
            // poem-openapi reports path parameters by position (`param0`); every typed path
            // parameter of this API is the resource `id` (a test on the spec keeps it so).
            if field.starts_with("param") {
                "id".to_owned()
            } else {
                field
            }
        });
        problem
    };
    let mut body = serde_json::json!({
        "type": problem.kind,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
    });
    if let Some(field) = problem.field {
        body["field"] = field.into();
    }
    Response::builder()
        .status(status)
        .content_type("application/problem+json")
        .body(body.to_string())
}

/// Logs a server fault once, with an id the response repeats.
fn internal_problem(cause: impl std::fmt::Display) -> Problem {
    let id = Uuid::now_v7();
    tracing::error!(error.id = %id, error = %cause, "request failed");
    Problem::new(
        500,
        "internal",
        "Internal server error",
        format!("the server failed; quote error id {id} when reporting it"),
    )
}

/// The field a poem / poem-openapi / serde message names (`` field `lines` ``,
/// `` parameter `id` ``, `` missing field `user_id` ``), if any.
fn field_in(message: &str) -> Option<String> {
    ["field `", "parameter `", "path `"]
        .iter()
        .filter_map(|marker| {
            let start = message.rfind(marker)? + marker.len();
            let end = message[start..].find('`')? + start;
            Some(message[start..end].to_owned())
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::field_in;

    #[test]
    fn the_offending_field_is_found_in_messages() {
        assert_eq!(
            field_in(r#"failed to parse "CreateOrder": field `lines`: verify failed"#).as_deref(),
            Some("lines")
        );
        assert_eq!(
            field_in("failed to parse parameter `id`: invalid uuid").as_deref(),
            Some("id")
        );
        assert_eq!(field_in("something else"), None);
    }
}
