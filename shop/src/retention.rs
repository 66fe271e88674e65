//! What the workers delete as it ages (run by `platform::retention`): the command inbox and
//! the step fences, after the inbox window (a redelivered command can only come from the
//! broker, whose retention is shorter) **and only once their saga has finished**, and old
//! notifications.
//!
//! A fence answers "did the original take effect?" from the step's fence row and its
//! forward command's inbox row, however long the saga has been parked: an operator may
//! retry a coupon use that sat FAILED for a month. Deleting either while the saga still
//! moves would make a payout that happened look as if it had not. The sagas live in the
//! same database (one schema history), so the rule reads their status.

use platform::db::Pool;
use platform::env::RetentionEnv;
use platform::retention::{Rule, Window};
use tokio_util::sync::CancellationToken;

pub use platform::retention::EVERY;

pub static RULES: &[Rule] = &[
    Rule {
        table: "processed_commands",
        age: "processed_at",
        and: "NOT EXISTS (SELECT 1 FROM sagas WHERE sagas.id = processed_commands.saga_id \
              AND sagas.status IN ('RUNNING', 'COMPENSATING', 'FAILED'))",
        window: Window::Inbox,
    },
    Rule {
        table: "step_fences",
        age: "COALESCE(fenced_at, applied_at)",
        and: "NOT EXISTS (SELECT 1 FROM sagas WHERE sagas.id = step_fences.saga_id \
              AND sagas.status IN ('RUNNING', 'COMPENSATING', 'FAILED'))",
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
