//! What the orchestrator deletes as it ages (run by `platform::retention`): its reply inbox,
//! the history of sagas that finished long ago (the saga rows stay: orders refer to them),
//! and expired idempotency keys.

use platform::db::Pool;
use platform::env::RetentionEnv;
use platform::retention::{Rule, Window};
use tokio_util::sync::CancellationToken;

pub static RULES: &[Rule] = &[
    Rule {
        table: "processed_replies",
        age: "processed_at",
        and: "",
        window: Window::Inbox,
    },
    Rule {
        table: "saga_history",
        age: "recorded_at",
        and: "saga_id IN (SELECT id FROM sagas WHERE status IN ('COMPLETED', 'COMPENSATED', 'CANCELLED') AND updated_at < $1)",
        window: Window::History,
    },
    Rule {
        table: "idempotency_keys",
        age: "created_at",
        and: "",
        window: Window::Fixed(crate::api::idempotency::RETENTION),
    },
];

/// Sweeps the orchestrator's tables every `workers::retention::EVERY` until shutdown.
pub async fn run(pool: Pool, windows: RetentionEnv, shutdown: CancellationToken) {
    let every = workers::retention::EVERY;
    platform::retention::run(pool, RULES, windows, every, shutdown).await;
}
