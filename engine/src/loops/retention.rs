//! What the orchestrator deletes as it ages (run by `platform::retention`): its reply inbox,
//! the history of sagas that finished long ago, in any final status (RESOLVED included;
//! the saga rows stay: orders refer to them), and expired idempotency keys.

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
        and: "saga_id IN (SELECT id FROM sagas WHERE status IN ('COMPLETED', 'COMPENSATED', 'CANCELLED', 'RESOLVED') AND status_changed_at < $1)",
        window: Window::History,
    },
    Rule {
        table: "idempotency_keys",
        age: "created_at",
        and: "",
        window: Window::Fixed(crate::api::idempotency::RETENTION),
    },
];

pub struct Retention {
    pool: Pool,
    windows: RetentionEnv,
}

impl Retention {
    pub fn new(pool: Pool, windows: RetentionEnv) -> Self {
        Self { pool, windows }
    }

    /// Sweeps the orchestrator's tables every `platform::retention::EVERY` until shutdown.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let every = platform::retention::EVERY;
        platform::retention::run(self.pool, RULES, self.windows, every, shutdown).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::saga::Status;

    #[test]
    fn finished_history_is_every_final_status() {
        let rule = super::RULES[1].and;
        for status in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(rule.contains(&format!("'{}'", status.as_str())), "{status}");
        }
    }
}
