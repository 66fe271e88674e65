//! Tracing set-up: human-readable text by default, JSON lines with `LOG_FORMAT=json`.
//! The filter comes from `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

use crate::env::LogFormat;

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
