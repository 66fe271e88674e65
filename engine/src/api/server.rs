//! The HTTP server: it protects itself before any handler runs.
//!
//! - **Connections are capped** ([`ServerLimits::max_connections`]): past the cap a new
//!   connection gets a `503` with `Retry-After` at once and is closed, so slow or idle
//!   clients can never exhaust the process's file descriptors.
//! - **Slow clients are cut off**: a request's headers must arrive within
//!   `header_timeout` (hyper's own timer, for HTTP/1; a client that sends a byte a second
//!   is closed), and a connection with no request in flight and no bytes moving for
//!   `idle_timeout` is closed, whatever its protocol.
//! - **Requests are capped and bounded**: past `max_requests` in flight a request is
//!   answered `503` with `Retry-After` at once; a request that takes longer than
//!   `request_timeout` is answered `503` and its handler dropped.
//! - Shutdown stops accepting, lets each connection finish what it has in flight, and
//!   gives up on them after [`GRACE`].
//!
//! The endpoint (routes, gate, body cap: see [`super::routes`]) runs inside these limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use poem::endpoint::{DynEndpoint, ToDynEndpoint};
use poem::http;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for connections to finish what they have in flight.
pub const GRACE: Duration = Duration::from_secs(10);

/// The server's limits (`HTTP_*` settings).
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_requests: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_connections: 2048,
            max_requests: 1024,
        }
    }
}

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;

/// Serves `endpoint` on `listener` until `shutdown`.
pub async fn serve<E>(
    listener: TcpListener,
    endpoint: E,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    E: Endpoint<Output = poem::Response> + 'static,
{
    let endpoint: Arc<dyn DynEndpoint<Output = poem::Response>> = Arc::new(ToDynEndpoint(endpoint));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let requests = Arc::new(Semaphore::new(limits.max_requests));
    let local = listener.local_addr()?;
    let tracker = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, or a connection reset before accept: keep going.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracker.spawn(turn_away(stream));
            continue;
        };
        let connection = Connection {
            endpoint: endpoint.clone(),
            requests: requests.clone(),
            limits,
            local,
            remote,
        };
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            connection.serve(stream, shutdown).await;
            drop(permit);
        });
    }
    tracker.close();
    if tokio::time::timeout(GRACE + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace");
    }
    Ok(())
}

/// The answer past the connection cap: written raw (no protocol negotiated yet), then
/// closed. A client that does not read it is dropped after a second.
async fn turn_away(mut stream: TcpStream) {
    let body = r#"{"type":"https://sagaflow.dev/problems/unavailable","title":"Service Unavailable","status":503,"detail":"too many connections; try again shortly"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
         content-type: application/problem+json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

struct Connection {
    endpoint: Arc<dyn DynEndpoint<Output = poem::Response>>,
    requests: Arc<Semaphore>,
    limits: ServerLimits,
    local: SocketAddr,
    remote: SocketAddr,
}

impl Connection {
    async fn serve(self, stream: TcpStream, shutdown: CancellationToken) {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let Connection {
            endpoint,
            requests,
            limits,
            local,
            remote,
        } = self;
        let in_flight = activity.clone();
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let endpoint = endpoint.clone();
            let requests = requests.clone();
            let in_flight = in_flight.clone();
            async move {
                in_flight.requests.fetch_add(1, Ordering::Relaxed);
                let response = answer(&*endpoint, &requests, limits, request, local, remote).await;
                in_flight.requests.fetch_sub(1, Ordering::Relaxed);
                in_flight.touch();
                Ok::<_, Infallible>(http::Response::<Body>::from(response))
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(limits.idle_timeout / 2))
            .keep_alive_timeout(limits.header_timeout);
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = activity.idle_for(limits.idle_timeout) => {
                tracing::debug!(remote = %remote, "closing an idle connection");
            }
            _ = shutdown.cancelled() => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(GRACE, conn).await;
    }
}

async fn answer(
    endpoint: &dyn DynEndpoint<Output = poem::Response>,
    requests: &Semaphore,
    limits: ServerLimits,
    request: http::Request<Incoming>,
    local: SocketAddr,
    remote: SocketAddr,
) -> poem::Response {
    let Ok(_permit) = requests.try_acquire() else {
        return unavailable("too many requests in flight; try again shortly");
    };
    let request = poem::Request::from((
        request,
        LocalAddr(Addr::SocketAddr(local)),
        RemoteAddr(Addr::SocketAddr(remote)),
        http::uri::Scheme::HTTP,
    ));
    // The endpoint's boxed future, made at once: nothing here holds the request beside it.
    let answered = DynEndpoint::call(endpoint, request);
    match tokio::time::timeout(limits.request_timeout, answered).await {
        Ok(response) => response.unwrap_or_else(|err| err.into_response()),
        Err(_) => unavailable(&format!(
            "the request took longer than {} ms",
            limits.request_timeout.as_millis()
        )),
    }
}

fn unavailable(detail: &str) -> poem::Response {
    let body = serde_json::json!({
        "type": "https://sagaflow.dev/problems/unavailable",
        "title": "Service Unavailable",
        "status": 503,
        "detail": detail,
    });
    poem::Response::builder()
        .status(http::StatusCode::SERVICE_UNAVAILABLE)
        .header(http::header::RETRY_AFTER, "1")
        .content_type("application/problem+json")
        .body(body.to_string())
}

/// When bytes last moved on a connection, and how many requests it has in flight.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    requests: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once the connection has had no request in flight and no bytes moving for
    /// `limit`; checks a few times per `limit`, so it costs one timer per connection.
    async fn idle_for(&self, limit: Duration) {
        let every = (limit / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            let now = self.started.elapsed();
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            if self.requests.load(Ordering::Relaxed) == 0 && now.saturating_sub(last) >= limit {
                return;
            }
        }
    }
}

/// A socket that records when bytes move (for the idle timeout).
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
