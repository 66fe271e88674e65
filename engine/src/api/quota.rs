//! Per-key bounds on work a request holds while it runs (signals in flight): one caller's
//! crowd takes its own places only, and every other key keeps its own. Waiting requests
//! and streams are bounded the same way by [`crate::shell::watch::Waiters`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// At most `limit` places per key.
#[derive(Debug)]
pub struct PerKey {
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One place, given back when dropped.
#[derive(Debug)]
pub struct Place {
    owner: Arc<PerKey>,
    key: String,
}

impl PerKey {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::default(),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A place for `key`, or `None` when it holds `limit` already.
    pub fn take(self: &Arc<Self>, key: &str) -> Option<Place> {
        let mut held = self.held();
        let count = held.entry(key.to_owned()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Place {
            owner: Arc::clone(self),
            key: key.to_owned(),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.owner.held();
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_places_and_gets_them_back() {
        let signals = PerKey::new(2);
        let first = signals.take("crowd").unwrap();
        let _second = signals.take("crowd").unwrap();
        assert!(signals.take("crowd").is_none(), "past its own bound");
        assert!(
            signals.take("other").is_some(),
            "another key is not crowded out"
        );
        drop(first);
        assert!(
            signals.take("crowd").is_some(),
            "a place comes back when dropped"
        );
    }
}
