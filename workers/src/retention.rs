//! What the workers delete as it ages (run by `platform::retention`): the command inbox and
//! the step fences, after the inbox window (a redelivered command can only come from the
//! broker, whose retention is shorter), and old notifications.

use std::time::Duration;

use platform::db::Pool;
use platform::env::RetentionEnv;
use platform::retention::{Rule, Window};
use tokio_util::sync::CancellationToken;

/// How often the sweep runs.
pub const EVERY: Duration = Duration::from_secs(600);

pub static RULES: &[Rule] = &[
    Rule {
        table: "processed_commands",
        age: "processed_at",
        and: "",
        window: Window::Inbox,
    },
    Rule {
        table: "step_fences",
        age: "COALESCE(fenced_at, applied_at)",
        and: "",
        window: Window::Inbox,
    },
    Rule {
        table: "notifications",
        age: "recorded_at",
        and: "",
        window: Window::History,
    },
];

/// Sweeps the workers' tables every [`EVERY`] until shutdown.
pub async fn run(pool: Pool, windows: RetentionEnv, shutdown: CancellationToken) {
    platform::retention::run(pool, RULES, windows, EVERY, shutdown).await;
}
