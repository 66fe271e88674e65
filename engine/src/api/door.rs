//! A request's way in: everything the API does around its routes, as one endpoint. In
//! order: the request's span and metrics ([`observe`]), the gate ([`crate::auth`]), the
//! handlers' shared data, the body's size limit and strict checks ([`strict`]); on the way
//! out, a poem error becomes problem+json ([`problem::catch_all`]), a 405 lists the allowed
//! methods and a 413 closes the connection.
//!
//! Why one endpoint and not a stack of poem's `around` layers: each layer's future held
//! the request (472 bytes) beside the future of the layer inside it, and nine layers made
//! a request's future about 15 KB. A request keeps its future for as long as it is in
//! flight, and a waiting read is in flight for up to 25 s, so this was a third of what
//! 1 000 waiting requests cost (README, "Benchmarks"). Here the checks before the routes
//! run at once, the request moves into the routes' future, and what comes after is a plain
//! function of their result: what waits is the routes' own future and a few words. Only a
//! request whose body must be read before the routes run (a body without a declared
//! length, or JSON to check against its schema) takes a boxed detour.

use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::Either;
use poem::http::{HeaderValue, StatusCode, Version, header};
use poem::{Endpoint, Request, Response, Route};
use tokio::io::AsyncReadExt as _;
use tracing::Instrument as _;

use super::observe::{HttpMetrics, Observed, RouteLabels};
use super::strict::{self, Before, Operations};
use super::{MAX_BODY_BYTES, State, problem};
use crate::auth::{Gate, Policy};

/// The routes, and what every request passes on its way to them and back.
pub struct Door<D> {
    pub(super) routes: Route,
    pub(super) gate: Gate,
    pub(super) policy: Policy,
    pub(super) operations: Arc<Operations>,
    pub(super) metrics: HttpMetrics,
    pub(super) labels: RouteLabels,
    pub(super) state: State,
    /// The application's own data for its handlers (the mount's).
    pub(super) data: D,
}

/// Where the checks before the routes sent a request.
enum Passage<'a> {
    /// Answered at the door: refused by the gate, a body too large, U+0000 in its URI.
    Answered(poem::Result<Response>),
    /// On to the routes.
    Routes(Request),
    /// A body without a declared length: read first, then the strict rules.
    Unsized(Request),
    /// JSON to check against its operation's schema (this one) first.
    Check(Request, &'a serde_json::Value),
}

impl<D: Clone + Send + Sync + 'static> Endpoint for Door<D> {
    type Output = Response;

    fn call(&self, request: Request) -> impl Future<Output = poem::Result<Response>> + Send {
        let observed = Observed::begin(&self.labels, &request);
        let reply = ReplyRules::of(&request);
        let passage = observed.span.in_scope(|| self.before(request));
        let answer = match passage {
            Passage::Answered(answer) => Either::Left(std::future::ready(answer)),
            Passage::Routes(request) => Either::Right(Either::Left(self.routes.call(request))),
            Passage::Unsized(request) => Either::Right(Either::Right(self.read_unsized(request))),
            Passage::Check(request, schema) => {
                Either::Right(Either::Right(self.checked(request, schema)))
            }
        };
        let span = observed.span.clone();
        answer.instrument(span).map(move |answer| {
            let mut response = answer.unwrap_or_else(problem::catch_all);
            reply.apply(&self.policy, &mut response);
            observed.end(&self.metrics, &response);
            Ok(response)
        })
    }
}

impl<D: Clone + Send + Sync + 'static> Door<D> {
    /// The checks that need no body, in order: the gate (adding the caller), the shared
    /// data, a declared length over the limit, then the strict rules.
    fn before(&self, mut request: Request) -> Passage<'_> {
        if let Some(refusal) = self.gate.refusal(&mut request) {
            return Passage::Answered(Ok(refusal));
        }
        request.extensions_mut().insert(self.data.clone());
        request.extensions_mut().insert(self.state.clone());
        match declared_length(&request) {
            Some(length) if length > MAX_BODY_BYTES => return Passage::Answered(Err(too_large())),
            None if !body_is_empty(&mut request) => return Passage::Unsized(request),
            _ => {}
        }
        match strict::before_body(&self.operations, &mut request) {
            Before::Answer(answer) => Passage::Answered(Ok(answer)),
            Before::CheckBody(schema) => Passage::Check(request, schema),
            Before::Pass => Passage::Routes(request),
        }
    }

    /// A body without a declared length (chunked, or an HTTP/2 stream that declares
    /// nothing) is read up to the limit, never further; then the strict rules, with the
    /// body's check; then the routes.
    fn read_unsized(&self, mut request: Request) -> Detour<'_> {
        Box::pin(async move {
            let mut body = Vec::new();
            request
                .take_body()
                .into_async_read()
                .take(MAX_BODY_BYTES as u64 + 1)
                .read_to_end(&mut body)
                .await
                .map_err(|err| {
                    poem::Error::from_string(err.to_string(), StatusCode::BAD_REQUEST)
                })?;
            if body.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            request.set_body(body);
            match strict::before_body(&self.operations, &mut request) {
                Before::Answer(answer) => Ok(answer),
                Before::CheckBody(schema) => self.checked(request, schema).await,
                Before::Pass => self.routes.call(request).await,
            }
        })
    }

    /// A JSON body checked against its operation's schema, then the routes.
    fn checked<'a>(&'a self, mut request: Request, schema: &'a serde_json::Value) -> Detour<'a> {
        Box::pin(async move {
            if let Some(answer) = strict::check_body(&self.operations, schema, &mut request).await?
            {
                return Ok(answer);
            }
            self.routes.call(request).await
        })
    }
}

/// The boxed way to the routes of a request whose body is read first.
type Detour<'a> = std::pin::Pin<Box<dyn Future<Output = poem::Result<Response>> + Send + 'a>>;

/// `Content-Length`, when the request declares one.
fn declared_length(request: &Request) -> Option<usize> {
    request
        .header("content-length")
        .and_then(|value| value.parse::<usize>().ok())
}

/// Whether the body is known to be empty (a request without content: most of them).
fn body_is_empty(request: &mut Request) -> bool {
    let body = request.take_body();
    let empty = body.is_empty();
    request.set_body(body);
    empty
}

fn too_large() -> poem::Error {
    poem::Error::from_string(
        format!("request body exceeds {MAX_BODY_BYTES} bytes"),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
}

/// RFC 9110: a 405 lists the methods the resource supports in `Allow`; a 413 closes the
/// connection.
struct ReplyRules {
    path: String,
    http1: bool,
}

impl ReplyRules {
    fn of(request: &Request) -> Self {
        ReplyRules {
            path: request.uri().path().to_owned(),
            http1: request.version() < Version::HTTP_2,
        }
    }

    fn apply(self, policy: &Policy, response: &mut Response) {
        if response.status() == StatusCode::METHOD_NOT_ALLOWED {
            let mut allowed = policy.allowed_methods(&self.path);
            if allowed.is_empty() {
                allowed = vec!["GET", "HEAD"]; // the documents and the console's files
            }
            if let Ok(value) = allowed.join(", ").parse() {
                response.headers_mut().insert("allow", value);
            }
        }
        // (HTTP/2 has no `Connection`: the stream is reset instead.)
        if self.http1 && response.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // The body was left unread: the connection cannot carry another request, so the
            // client must not reuse it (a reused one fails its next request half-sent).
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}
