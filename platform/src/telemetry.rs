//! Tracing set-up: human-readable text by default, JSON lines with `LOG_FORMAT=json`.
//! The filter is `RUST_LOG` / `--log-filter` (default `info`; librdkafka's own chatter is
//! kept to warnings unless the filter names `rdkafka`).

use tracing_subscriber::EnvFilter;

use crate::env::LogFormat;

pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = match filter {
        Some(filter) if filter.contains("rdkafka") => filter.to_owned(),
        Some(filter) => format!("{filter},rdkafka=warn"),
        None => "info,rdkafka=warn".to_owned(),
    };
    let filter =
        EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
