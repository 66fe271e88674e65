//! Bounded waits instead of polls: a read of a saga (or of a front onto one, like an order)
//! with `Prefer: wait=N` (RFC 7240) or `?wait=N` answers as soon as the saga settles (a
//! final status, or FAILED), or after N seconds with its current state. The wake-up comes
//! through Postgres `NOTIFY` ([`crate::shell::watch`]), so any replica answers for any saga
//! at the moment it settles, and a waiting request holds no database connection. Past
//! `HTTP_MAX_WAITS` waiting requests, a request is answered at once, and its answer says so
//! by leaving out `Preference-Applied`; past `HTTP_MAX_WAITS_PER_KEY` of one key (streams
//! included), that key's request is 429, so one caller cannot take every place.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use uuid::Uuid;

use super::State;
use super::problem::{ApiError, ApiResult};
use crate::shell::watch::{Full, Waiters};

/// The longest wait a request may ask for, in seconds.
pub const MAX_WAIT_SECONDS: u32 = 25;

/// The wait a request asks for: `?wait=N` wins over `Prefer: wait=N`; at most
/// [`MAX_WAIT_SECONDS`], and never as long as the server's request timeout.
pub fn requested(state: &State, prefer: Option<&str>, query: Option<u32>) -> ApiResult<Duration> {
    let from_header = match prefer {
        None => None,
        Some(header) => preferred_wait(header)?,
    };
    let seconds = query.or(from_header).unwrap_or(0).min(MAX_WAIT_SECONDS);
    Ok(Duration::from_secs(u64::from(seconds)).min(state.max_wait))
}

/// `wait=N` among the preferences of a `Prefer` header (others are ignored, as RFC 7240
/// says); a malformed `wait` is a 400 naming the header.
fn preferred_wait(header: &str) -> ApiResult<Option<u32>> {
    for preference in header.split(',') {
        let token = preference.split(';').next().unwrap_or_default().trim();
        let Some((name, value)) = token.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("wait") {
            let value = value.trim().trim_matches('"');
            // Longer than any wait granted is the longest one (it is clamped anyway).
            return value
                .parse::<u64>()
                .map(|seconds| Some(u32::try_from(seconds).unwrap_or(u32::MAX)))
                .map_err(|_| {
                    ApiError::invalid(
                        "Prefer",
                        format!("Prefer: wait must be a whole number of seconds, got `{value}`"),
                    )
                });
        }
    }
    Ok(None)
}

/// What a wait ended with: the last read, whether the saga had settled by then, and the
/// `Preference-Applied` value when the wait was honoured (also when the saga had settled
/// already); a wait turned down by the bound leaves it out.
pub struct Waited<T> {
    pub value: T,
    pub settled: bool,
    pub applied: Option<String>,
}

/// Reads with `read` until the saga settled, the wait is over, or the bound on waiters
/// turns the wait down (the caller's own bound, `key`'s, is a 429). `first` is a read the caller already made (when it needed one to
/// learn which saga to wait for); without it, the watch is registered before the first
/// read, so an unsettled saga costs one read before the wait and one after it.
pub async fn until_settled<T, F, Fut>(
    waiters: &Arc<Waiters>,
    key: &str,
    saga: Uuid,
    wait: Duration,
    first: Option<(T, bool)>,
    mut read: F,
) -> ApiResult<Waited<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ApiResult<(T, bool)>>,
{
    if wait.is_zero() {
        let (value, settled) = match first {
            Some(first) => first,
            None => read().await?,
        };
        return Ok(Waited {
            value,
            settled,
            applied: None,
        });
    }
    let applied = Some(format!("wait={}", wait.as_secs()));
    if let Some((value, true)) = first {
        return Ok(Waited {
            value,
            settled: true,
            applied,
        });
    }
    let mut watch = match waiters.watch_settling(key, saga) {
        Ok(watch) => watch,
        Err(Full::Key) => {
            return Err(ApiError::too_many(
                "this key has as many requests waiting or streaming as one key may \
                 (HTTP_MAX_WAITS_PER_KEY)",
                1,
            ));
        }
        Err(Full::All) => {
            // Over the bound: the current state, at once.
            let (value, settled) = match first {
                Some(first) => first,
                None => read().await?,
            };
            return Ok(Waited {
                value,
                settled,
                applied: None,
            });
        }
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered first, then read: a settle in between is seen here, not missed.
        let (value, settled) = read().await?;
        if settled
            || tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
        {
            return Ok(Waited {
                value,
                settled,
                applied,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// A read that counts itself and finds the saga settled once `settled` is set.
    fn counted(
        reads: &AtomicUsize,
        settled: &AtomicBool,
    ) -> impl FnMut() -> std::future::Ready<ApiResult<(usize, bool)>> {
        move || {
            let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(Ok((n, settled.load(Ordering::SeqCst))))
        }
    }

    /// Lets the waiting task run until it waits (the test's runtime has one thread: it runs
    /// while this one yields).
    async fn settle_tasks() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn an_unsettled_saga_is_read_once_before_the_wait_and_once_when_it_settles() {
        let waiters = Waiters::new(8, 8);
        let saga = Uuid::now_v7();
        let reads = Arc::new(AtomicUsize::new(0));
        let settled = Arc::new(AtomicBool::new(false));
        let waiting = tokio::spawn({
            let (waiters, reads, settled) = (waiters.clone(), reads.clone(), settled.clone());
            async move {
                let read = counted(&reads, &settled);
                until_settled(&waiters, "k", saga, Duration::from_secs(20), None, read).await
            }
        });
        settle_tasks().await;
        assert_eq!(waiters.waiting(), 1, "registered");
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read before the wait");
        // A step that does not settle the saga wakes nothing.
        waiters.wake([(saga, false)]);
        settle_tasks().await;
        assert_eq!(reads.load(Ordering::SeqCst), 1, "no read for a step");
        settled.store(true, Ordering::SeqCst);
        waiters.wake([(saga, true)]);
        let waited = waiting
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("read failed"));
        assert!(waited.settled);
        assert_eq!(waited.value, 2, "one read after the wake-up");
        assert_eq!(waited.applied.as_deref(), Some("wait=20"));
        assert_eq!(waiters.waiting(), 0, "unregistered");
    }

    #[tokio::test]
    async fn a_first_read_already_made_is_not_made_again_and_past_the_bound_none_waits() {
        let waiters = Waiters::new(0, 0);
        let saga = Uuid::now_v7();
        let reads = AtomicUsize::new(0);
        let settled = AtomicBool::new(false);
        let answer = async |first| {
            let read = counted(&reads, &settled);
            until_settled(
                &waiters,
                "k",
                saga,
                Duration::from_secs(5),
                Some(first),
                read,
            )
            .await
            .unwrap_or_else(|_| panic!("read failed"))
        };
        // Settled already: answered with the caller's read.
        let waited = answer((7, true)).await;
        assert_eq!((waited.value, waited.settled), (7, true));
        assert_eq!(reads.load(Ordering::SeqCst), 0);
        // Over the bound (no waiter allowed): the caller's unsettled read, at once, and no
        // `Preference-Applied`.
        let waited = answer((7, false)).await;
        assert_eq!((waited.value, waited.settled), (7, false));
        assert_eq!(waited.applied, None);
        assert_eq!(reads.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_wait_preference_is_read_among_others_and_a_bad_one_names_the_header() {
        assert_eq!(preferred_wait("wait=5").unwrap(), Some(5));
        assert_eq!(
            preferred_wait("respond-async, wait=10; foo").unwrap(),
            Some(10)
        );
        assert_eq!(preferred_wait("return=minimal").unwrap(), None);
        assert_eq!(preferred_wait("Wait=\"3\"").unwrap(), Some(3));
        assert_eq!(preferred_wait("wait=99999999999").unwrap(), Some(u32::MAX));
        let refused = preferred_wait("wait=soon").unwrap_err();
        assert!(format!("{refused:?}").contains("Prefer"), "{refused:?}");
    }
}
