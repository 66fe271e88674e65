//! What the orchestrator deletes as it ages (run by `platform::retention`): its reply inbox,
//! the history of sagas that finished long ago (the saga rows stay: orders refer to them),
//! and expired idempotency keys.

use platform::retention::{Rule, Window};

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
