//! Logs and traces.
//!
//! Logs: human-readable text by default, JSON lines with `LOG_FORMAT=json`. The filter is
//! `RUST_LOG` / `--log-filter` (default `info`; librdkafka's own chatter is kept to
//! warnings unless the filter names `rdkafka`).
//!
//! Traces: OpenTelemetry, off by default, switched on by the standard variables: an OTLP
//! endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, OTLP over
//! HTTP/protobuf) or `OTEL_TRACES_EXPORTER=otlp`; `OTEL_TRACES_EXPORTER=none` or
//! `OTEL_SDK_DISABLED=true` keeps them off. `OTEL_SERVICE_NAME` and the exporter's own
//! `OTEL_EXPORTER_OTLP_*` settings are read by the OpenTelemetry SDK.
//!
//! A saga is one trace. Its context crosses every hop as a W3C `traceparent`: HTTP request
//! → saga row and outbox row (stored with them, so it survives a restart) → Kafka header of
//! the command → the worker's span → the reply's header → the engine's span for that reply
//! → the next outbox row. The helpers below are that hop: [`Span`]s with a `trace_id`
//! field, so that every log line inside one carries the trace id beside the saga id.

use std::collections::HashMap;
use std::io::IsTerminal as _;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::env::LogFormat;

/// The W3C header (and outbox column) that carries a trace context across a hop.
pub const TRACEPARENT: &str = "traceparent";

/// Keeps the trace exporter alive; dropping it flushes the spans not yet exported.
#[must_use = "dropping it at once stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("trace export did not shut down cleanly: {err}");
        }
    }
}

/// Sets up logs, and traces when the `OTEL_*` variables ask for them. `service` names the
/// process in traces unless `OTEL_SERVICE_NAME` does.
pub fn init(service: &str, format: LogFormat, filter: Option<&str>) -> Telemetry {
    let provider = match otlp_provider(service) {
        Ok(provider) => provider,
        Err(err) => {
            eprintln!("tracing stays off: the OTLP exporter could not be set up: {err:#}");
            None
        }
    };
    init_with(provider, format, filter, std::io::stdout)
}

/// Sets up logs into `writer`, and traces into `provider` when given (tests pass one with
/// an in-memory exporter, and a buffer). A second call keeps the first subscriber.
pub fn init_with<W>(
    provider: Option<SdkTracerProvider>,
    format: LogFormat,
    filter: Option<&str>,
    writer: W,
) -> Telemetry
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = match filter {
        Some(filter) if filter.contains("rdkafka") => filter.to_owned(),
        Some(filter) => format!("{filter},rdkafka=warn"),
        None => "info,rdkafka=warn".to_owned(),
    };
    let filter =
        EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    // Each layer has its own filter: the log filter decides what is printed, and spans go
    // to the trace exporter at `info` whatever the log level (RUST_LOG=warn still traces).
    let traces = provider.as_ref().map(|provider| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("sagaflow"))
            .with_filter(LevelFilter::INFO)
    });
    let logs = match format {
        // Colours only on a terminal: a log file or a collector gets plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(std::io::stdout().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_filter(filter)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(logs)
        .try_init();
    Telemetry { provider }
}

/// The OTLP exporter, when the standard variables switch traces on.
fn otlp_provider(service: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    };
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let exporter = var("OTEL_TRACES_EXPORTER").map(|v| v.to_ascii_lowercase());
    let endpoint =
        var("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    let wanted = match exporter.as_deref() {
        Some("none") => false,
        Some("otlp") => true,
        Some(other) => {
            anyhow::bail!("OTEL_TRACES_EXPORTER={other}: only otlp and none are built in")
        }
        None => endpoint.is_some(),
    };
    if disabled || !wanted {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if var("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter)
            .build(),
    ))
}

/// Makes `parent` (a `traceparent` value from a header or a stored row) the parent of
/// `span`, which must not have been entered yet, and records the trace id in the span's
/// `trace_id` field. Without a valid parent, or with tracing off, the span keeps its own.
pub fn continue_trace(span: &Span, parent: Option<&str>) {
    if let Some(context) = parent.and_then(decode) {
        let _ = span.set_parent(context);
    }
    if let Some(trace_id) = trace_id(span) {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The `traceparent` of `span`, to hand on to the next hop; `None` with tracing off.
pub fn traceparent(span: &Span) -> Option<String> {
    encode(&span.context())
}

/// What the next hop gets, when a context came in: this span's, or, with tracing off in
/// this process, the incoming one re-encoded (so that a trace passes through a process that
/// does not record, and nothing malformed is passed on). Without a valid incoming context,
/// nothing: the receiver then falls back on what it knows (the saga's own trace).
pub fn handed_on(span: &Span, incoming: Option<&str>) -> Option<String> {
    let incoming = encode(&incoming.and_then(decode)?)?;
    traceparent(span).or(Some(incoming))
}

/// The context a `traceparent` value carries, if it is a valid W3C trace context.
fn decode(traceparent: &str) -> Option<Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// The `traceparent` value of `context`, if it holds a valid span context.
fn encode(context: &Context) -> Option<String> {
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The trace id of `span` (32 hex digits); `None` with tracing off.
pub fn trace_id(span: &Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tracing_layer_an_incoming_context_is_handed_on_unchanged() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = tracing::info_span!("hop", trace_id = tracing::field::Empty);
        continue_trace(&span, Some(incoming));
        assert_eq!(traceparent(&span), None);
        assert_eq!(handed_on(&span, Some(incoming)).as_deref(), Some(incoming));
    }

    #[test]
    fn a_missing_or_malformed_context_is_not_handed_on() {
        let span = tracing::info_span!("hop", trace_id = tracing::field::Empty);
        assert_eq!(handed_on(&span, None), None);
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert_eq!(handed_on(&span, Some(bad)), None, "{bad:?}");
        }
    }
}
