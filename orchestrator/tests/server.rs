//! The HTTP server protects itself before any handler runs (`api::server`): slow clients
//! are cut off without slowing anyone else, connections and requests are capped with a
//! quick 503 and `Retry-After`, and the body cap holds for every framing.

mod support;

use std::time::{Duration, Instant};

use orchestrator::app::{Mode, Options};
use platform::testkit::TestEnv;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn serve(env: &TestEnv, vars: &[(&str, &str)]) -> Orchestrator {
    Orchestrator::start_with_vars(env, Mode::Serve, Options::default(), vars).await
}

/// Reads until the server closes the connection; what it said on the way out.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut said = Vec::new();
    let _ = stream.read_to_end(&mut said).await;
    String::from_utf8_lossy(&said).into_owned()
}

/// 500 connections that send their headers one byte a second: a normal request meanwhile
/// is answered long before the slow ones' header time is up, and each slow one is closed
/// once it is.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_closed_after_the_header_timeout_and_slow_nobody_else() {
    let env = TestEnv::start().await;
    let orchestrator = serve(&env, &[("HTTP_HEADER_TIMEOUT_MS", "5000")]).await;
    let addr = orchestrator.running.local_addr;
    let started = Instant::now();
    let (connected, mut all_connected) = tokio::sync::mpsc::channel::<()>(500);
    let slow: Vec<_> = (0..500)
        .map(|_| {
            let connected = connected.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let _ = connected.send(()).await;
                let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
                let (mut reader, mut writer) = stream.split();
                let mut seen = [0u8; 512];
                for byte in request {
                    tokio::select! {
                        // Closed (0 or an error), or the server's parting answer: cut off.
                        _ = reader.read(&mut seen) => return Some(started.elapsed()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    if writer.write_all(&[*byte]).await.is_err() {
                        return Some(started.elapsed());
                    }
                }
                None // sent the whole request: never cut off
            })
        })
        .collect();
    drop(connected);
    // Once every slow client holds its connection, normal requests stay fast. A server
    // that let slow clients hold it up would answer only as they are cut off, 5 s on.
    for _ in 0..500 {
        all_connected
            .recv()
            .await
            .expect("a slow client could not connect");
    }
    let client = reqwest::Client::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let asked = Instant::now();
        let answer = client
            .get(format!("{}/healthz", orchestrator.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a normal request took {slowest:?}"
    );
    for task in slow {
        let closed = task
            .await
            .unwrap()
            .expect("a slow client was never cut off");
        // The header timeout is 5 s; a loaded machine gets a generous margin, far below
        // the 70 s the request would take to trickle in.
        assert!(closed < Duration::from_secs(20), "closed after {closed:?}");
    }
    orchestrator.stop().await;
}

/// Past the connection cap a new connection is answered 503 with `Retry-After` at once
/// and closed; past the request cap, or the request timeout, a request is answered 503.
#[tokio::test(flavor = "multi_thread")]
async fn past_a_cap_the_answer_is_a_quick_503_with_retry_after() {
    let env = TestEnv::start().await;
    let orchestrator = serve(
        &env,
        &[
            ("HTTP_MAX_CONNECTIONS", "4"),
            ("HTTP_MAX_REQUESTS", "1"),
            ("HTTP_REQUEST_TIMEOUT_MS", "1500"),
        ],
    )
    .await;
    let addr = orchestrator.running.local_addr;

    // A request in flight: a body announced and sent slowly keeps its handler reading.
    let mut uploading = TcpStream::connect(addr).await.unwrap();
    uploading
        .write_all(
            b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"name\":",
        )
        .await
        .unwrap();
    // The request cap (1) is taken: another request is turned away at once.
    let busy = testkit_retry(async || {
        let answer = reqwest::get(format!("http://{addr}/healthz")).await.ok()?;
        (answer.status() == 503).then_some(answer)
    })
    .await;
    assert_eq!(busy.headers()["retry-after"], "1");
    // The slow request ends by the request timeout, answered 503.
    let timed_out = read_to_close_or_answer(&mut uploading).await;
    assert!(timed_out.starts_with("HTTP/1.1 503"), "{timed_out}");

    // The connection cap: four idle connections held, the fifth is answered and closed.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let asked = Instant::now();
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    let said = read_to_close(&mut fifth).await;
    assert!(said.starts_with("HTTP/1.1 503"), "{said}");
    assert!(said.contains("retry-after: 1"), "{said}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    drop(held);
    // Once they are gone, the server answers again.
    testkit_retry(async || {
        let answer = reqwest::get(format!("http://{addr}/healthz")).await.ok()?;
        (answer.status() == 200).then_some(())
    })
    .await;
    orchestrator.stop().await;
}

/// The status line of the first answer on `stream`.
async fn read_to_close_or_answer(stream: &mut TcpStream) -> String {
    let mut seen = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut seen))
        .await
        .expect("an answer")
        .unwrap_or(0);
    String::from_utf8_lossy(&seen[..n]).into_owned()
}

async fn testkit_retry<T>(mut attempt: impl AsyncFnMut() -> Option<T>) -> T {
    platform::testkit::poll_until(WAIT, async || attempt().await)
        .await
        .expect("the condition in time")
}

/// A body streamed over cleartext HTTP/2 without a length is cut at the cap: 413, not read
/// to its end.
#[tokio::test(flavor = "multi_thread")]
async fn an_unbounded_http2_body_is_413() {
    let env = TestEnv::start().await;
    let orchestrator = serve(&env, &[]).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // 20 MB in 64 KiB chunks, with no length declared.
    let chunks = (0..320).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024]));
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let answer = client
        .post(format!("{}/v1/users", orchestrator.base()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 413);
    orchestrator.stop().await;
}
