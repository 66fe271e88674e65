//! The engine's notion of "now". Production reads the system clock; tests move it forward
//! to reach deadlines and retry times without sleeping through them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock (tests only ever move it forward).
    offset_ms: Arc<AtomicI64>,
    /// When set, time stands still at this instant (plus the offset): no deadline passes
    /// while a slow test machine catches up, only when the test advances the clock.
    frozen_at: Option<DateTime<Utc>>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that moves only with [`Clock::advance`] (tests).
    pub fn frozen() -> Self {
        Self {
            frozen_at: Some(Utc::now()),
            ..Self::default()
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let base = self.frozen_at.unwrap_or_else(Utc::now);
        base + TimeDelta::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone) forward.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}
