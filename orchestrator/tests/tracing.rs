//! One saga is one trace, across every hop: the HTTP request, the outbox row, the Kafka
//! command, the worker's handling, its reply and the engine's transition, through real
//! Postgres, Redis and Kafka. The spans go to an in-memory exporter through the same
//! `platform::telemetry` set-up the binaries use, and the log lines (JSON) are captured, so
//! that the trace id can be looked for in them too.
//!
//! Its own test binary: the tracing subscriber is global to a process.

mod support;

use std::sync::{Arc, Mutex};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use engine::schema::{outbox, sagas};
use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use platform::contract::commands;
use platform::env::LogFormat;
use platform::testkit::TestEnv;
use serde_json::{Value, json};
use shop::fixtures::{add_product, add_user};
use support::{Orchestrator, eventually, wait_for_status};
use uuid::Uuid;

/// The caller's trace: the saga must join it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Log output, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The saga's spans, once the last hop (the event of its completion) was recorded.
async fn spans_of(exporter: &InMemorySpanExporter, saga: Uuid) -> Vec<SpanData> {
    let saga = saga.to_string();
    let mut spans = Vec::new();
    eventually(
        "the saga's completion event recorded in its trace",
        async || {
            spans = exporter
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .filter(|span| span.span_context.trace_id().to_string() == TRACE_ID)
                .collect();
            spans.iter().any(|span| {
                span.name == "event.recorded"
                    && attribute(span, "saga.id").as_deref() == Some(saga.as_str())
                    && attribute(span, "event.kind").as_deref() == Some("saga.completed")
            })
        },
    )
    .await;
    spans
}

#[tokio::test(flavor = "multi_thread")]
async fn one_saga_is_one_trace_across_the_outbox_the_broker_and_the_workers() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let logs = Captured::default();
    let writer = logs.clone();
    let _telemetry = platform::telemetry::init_with(
        Some(provider),
        LogFormat::Json,
        Some("warn,shop=debug"),
        move || writer.clone(),
    );

    let env = TestEnv::start().await;
    let orchestrator = Orchestrator::dev(&env).await;
    add_product(&env.db.pool, "MUG-01", 10, 1_000).await;
    let user = add_user(&env.db.pool, 5_000).await;
    let placed = reqwest::Client::new()
        .post(format!("{}/v1/orders", orchestrator.base()))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&json!({
            "user_id": user,
            "lines": [{ "sku": "MUG-01", "quantity": 2 }],
            "shipping_address": { "country": "KR", "city": "Seoul", "line1": "1 Main St", "postal_code": "04524" },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let body: Value = placed.json().await.unwrap();
    let saga: Uuid = body["saga_id"].as_str().unwrap().parse().unwrap();
    wait_for_status(&env, saga, "COMPLETED").await;
    let spans = spans_of(&exporter, saga).await;

    let named =
        |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };
    let by_id = |id: SpanId| spans.iter().find(|s| s.span_context.span_id() == id);
    let one = |name: &str| -> &SpanData {
        let found = named(name);
        assert_eq!(
            found.len(),
            1,
            "one {name} span in the trace, got {}",
            found.len()
        );
        found[0]
    };

    // The request joined the caller's trace; the saga started under it.
    let request = one("POST placeOrder");
    assert_eq!(request.parent_span_id.to_string(), CALLER_SPAN);
    assert_eq!(attribute(request, "http.status").as_deref(), Some("202"));
    let start = one("saga.start");
    assert_eq!(start.parent_span_id, request.span_context.span_id());

    // Each command's handling is a child of the relay's publish of its outbox row, and that
    // publish a child of the transition that wrote the row: the start for the first step,
    // the previous step's reply after it. So the context crossed the outbox (a stored
    // column) and every Kafka hop (a header), both ways.
    let mut cause = start.span_context.span_id();
    for name in [
        commands::INVENTORY_RESERVE,
        commands::PAYMENT_CHARGE,
        commands::SHIPMENT_PREPARE,
    ] {
        let command = one(name);
        assert_eq!(attribute(command, "outcome").as_deref(), Some("succeeded"));
        let publish = by_id(command.parent_span_id)
            .unwrap_or_else(|| panic!("the parent of {name} is not in the trace"));
        assert_eq!(publish.name, "outbox.publish", "the parent of {name}");
        assert_eq!(
            publish.parent_span_id, cause,
            "{name} was published from the transition that asked for it"
        );
        let replies: Vec<&SpanData> = named("saga.reply")
            .into_iter()
            .filter(|reply| reply.parent_span_id == command.span_context.span_id())
            .collect();
        assert_eq!(replies.len(), 1, "one reply span under {name}");
        cause = replies[0].span_context.span_id();
    }
    assert!(
        named("event.recorded").len() >= 4,
        "every lifecycle event recorded in the trace"
    );

    // The context is stored with the saga and with each of its outbox rows.
    let mut conn = env.db.pool.get().await.unwrap();
    let stored: Option<String> = sagas::table
        .find(saga)
        .select(sagas::traceparent)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(stored.is_some_and(|t| t.contains(TRACE_ID)));
    let rows: Vec<Option<String>> = outbox::table
        .filter(outbox::message_key.eq(saga.to_string()))
        .select(outbox::traceparent)
        .load(&mut conn)
        .await
        .unwrap();
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .all(|t| t.as_ref().is_some_and(|t| t.contains(TRACE_ID)))
    );

    // A log line written while a command was handled carries the trace and saga ids.
    let saga_text = saga.to_string();
    let answered = logs
        .lines()
        .into_iter()
        .find(|line| {
            line["message"] == "command answered" && line["span"]["saga.id"] == saga_text.as_str()
        })
        .expect("a 'command answered' line for the saga");
    assert_eq!(answered["span"]["trace_id"], TRACE_ID);

    orchestrator.stop().await;
}
