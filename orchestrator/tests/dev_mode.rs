//! The `orchestrator dev` binary as a person runs it: no Kafka configured, a database that
//! does not exist yet; it must create the database, start an embedded Kafka, answer
//! `/readyz` with 200, and exit 0 on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use platform::testkit::{TestDb, unique_name};

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_starts_with_embedded_kafka_and_stops_cleanly() {
    // A database name nobody created: the binary must create it.
    let scratch = TestDb::empty().await;
    let url = scratch
        .url
        .replace(scratch.name(), &unique_name("sagaflow_dev"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("dev")
        .env_remove("KAFKA_BROKERS")
        .env("DATABASE_URL", &url)
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("TOPIC_PREFIX", unique_name("dev"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let client = reqwest::Client::new();
    let ready = platform::testkit::poll_until(Duration::from_secs(90), async || {
        assert!(child.try_wait().unwrap().is_none(), "dev mode exited early");
        let readyz = format!("http://127.0.0.1:{port}/readyz");
        client.get(readyz).send().await.ok()
    })
    .await
    .expect("dev mode never answered");
    assert_eq!(ready.status(), 200);

    let docs = client
        .get(format!("http://127.0.0.1:{port}/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopped =
        platform::testkit::poll_until(Duration::from_secs(30), async || child.try_wait().unwrap())
            .await;
    let Some(status) = stopped else {
        let _ = child.kill();
        panic!("dev mode did not stop within 30 s of SIGTERM");
    };
    assert!(status.success(), "exit status {status}");

    // Clean up the database the binary created.
    let (admin, name) = platform::db::split_database_url(&url).unwrap();
    let mut conn =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&admin)
            .await
            .unwrap();
    let dropped = diesel_async::RunQueryDsl::execute(
        diesel::sql_query(format!(
            "DROP DATABASE {} WITH (FORCE)",
            platform::db::quote_identifier(&name)
        )),
        &mut conn,
    )
    .await;
    assert!(dropped.is_ok(), "the binary did not create {name}");
}
