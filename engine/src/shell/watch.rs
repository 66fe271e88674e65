//! Wake-ups for requests that wait on sagas, on any replica: reads that wait for a saga to
//! settle (`Prefer: wait=N`) and event streams (SSE).
//!
//! Every batch that changes sagas (a start, replies, ticks, operator actions) issues
//! `NOTIFY sagaflow_changed` with their ids in the same transaction
//! ([`super::batch::Writes::flush`]), so the notification leaves with the commit and never
//! before it. Every replica runs one listener ([`Waiters::listen`]) that wakes the requests
//! watching those ids ([`Waiters::watch`]) or every saga ([`Waiters::watch_all`]). A
//! request registers before it reads again, so a change between its first read and its
//! registration is not missed. The number of watching requests is bounded: past the bound,
//! a watch is refused and the request is answered at once.
//!
//! A saga the batch settled (final, or FAILED) is marked in the payload (`!id`): a read
//! waiting for the end wakes only then ([`Waiters::watch_settling`]), not at each of the
//! saga's steps, so a waiting read costs its saga one read more, not one per step. Streams
//! wake at every change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The channel the engine notifies changed sagas on (payload: their ids, comma-separated).
pub const CHANNEL: &str = "sagaflow_changed";

/// The longest `NOTIFY` payload sent (Postgres allows just under 8000 bytes).
pub const MAX_PAYLOAD: usize = 7_000;

/// The requests of this replica waiting for sagas to settle, or streaming their events:
/// at most `limit` in all, and at most `per_key` of one caller, so that one key cannot
/// take every place.
#[derive(Debug)]
pub struct Waiters {
    limit: usize,
    per_key: usize,
    watched: Mutex<Watched>,
}

/// Why a registration was turned down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every place of this replica is taken.
    All,
    /// The caller holds its own bound of places.
    Key,
}

/// A saga changed, and whether that change settled it.
pub type Change = (Uuid, bool);

/// How often a watched saga (or any saga) changed, and settled, so far.
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    changes: u64,
    settles: u64,
}

#[derive(Debug)]
struct Watched {
    by_saga: HashMap<Uuid, watch::Sender<Count>>,
    /// Bumped on every change of any saga.
    any: watch::Sender<Count>,
    waiting: usize,
    /// Places held per caller (API key name).
    by_key: HashMap<String, usize>,
}

impl Default for Watched {
    fn default() -> Self {
        Self {
            by_saga: HashMap::new(),
            any: watch::channel(Count::default()).0,
            waiting: 0,
            by_key: HashMap::new(),
        }
    }
}

/// One request's registration; dropping it unregisters.
#[derive(Debug)]
pub struct Watch {
    waiters: Arc<Waiters>,
    /// The caller whose place this is.
    key: String,
    /// `None`: every saga.
    id: Option<Uuid>,
    changes: watch::Receiver<Count>,
    /// Wake only when the saga settled (or may have: a reconnect), with the settles seen.
    settling: Option<u64>,
}

impl Watch {
    /// Resolves when the saga changed since the registration or the last call, or for a
    /// [`Waiters::watch_settling`] watch, when it may have settled (a wake-up marking it
    /// settled, or the listener reconnecting, which may have missed one).
    pub async fn changed(&mut self) {
        loop {
            if self.changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            let Some(seen) = self.settling else { return };
            let settles = self.changes.borrow_and_update().settles;
            if settles != seen {
                self.settling = Some(settles);
                return;
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.waiters.lock();
        watched.waiting -= 1;
        if let Some(held) = watched.by_key.get_mut(&self.key) {
            *held -= 1;
            if *held == 0 {
                watched.by_key.remove(&self.key);
            }
        }
        if let Some(id) = self.id
            && let Some(sender) = watched.by_saga.get(&id)
            // Ours is still counted until this receiver is dropped, after this function.
            && sender.receiver_count() <= 1
        {
            watched.by_saga.remove(&id);
        }
    }
}

impl Waiters {
    /// At most `limit` places in all, `per_key` of them for one caller.
    pub fn new(limit: usize, per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            per_key,
            watched: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Registers `key`'s request watching every change of `id` (a stream).
    pub fn watch(self: &Arc<Self>, key: &str, id: Uuid) -> Result<Watch, Full> {
        self.register(key, Some(id), false)
    }

    /// Registers `key`'s request waiting for `id` to settle (a waiting read).
    pub fn watch_settling(self: &Arc<Self>, key: &str, id: Uuid) -> Result<Watch, Full> {
        self.register(key, Some(id), true)
    }

    /// Registers `key`'s request watching every saga (a stream of all sagas' events).
    pub fn watch_all(self: &Arc<Self>, key: &str) -> Result<Watch, Full> {
        self.register(key, None, false)
    }

    fn register(
        self: &Arc<Self>,
        key: &str,
        id: Option<Uuid>,
        settling: bool,
    ) -> Result<Watch, Full> {
        let mut watched = self.lock();
        if watched.waiting >= self.limit {
            return Err(Full::All);
        }
        let held = watched.by_key.get(key).copied().unwrap_or(0);
        if held >= self.per_key {
            return Err(Full::Key);
        }
        watched.waiting += 1;
        *watched.by_key.entry(key.to_owned()).or_default() += 1;
        let changes = match id {
            Some(id) => watched
                .by_saga
                .entry(id)
                .or_insert_with(|| watch::channel(Count::default()).0)
                .subscribe(),
            None => watched.any.subscribe(),
        };
        let settles = changes.borrow().settles;
        Ok(Watch {
            waiters: Arc::clone(self),
            key: key.to_owned(),
            id,
            changes,
            settling: settling.then_some(settles),
        })
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Wakes the requests watching the changed sagas or every saga; those waiting for a
    /// saga to settle only if it did.
    pub fn wake(&self, changes: impl IntoIterator<Item = Change>) {
        let watched = self.lock();
        for (id, settled) in changes {
            if let Some(sender) = watched.by_saga.get(&id) {
                sender.send_modify(|count| {
                    count.changes += 1;
                    count.settles += u64::from(settled);
                });
            }
        }
        watched.any.send_modify(|count| count.changes += 1);
    }

    /// Wakes every watching request (they read again and wait on).
    pub fn wake_all(&self) {
        let bump = |count: &mut Count| {
            count.changes += 1;
            count.settles += 1;
        };
        let watched = self.lock();
        for sender in watched.by_saga.values() {
            sender.send_modify(bump);
        }
        watched.any.send_modify(bump);
    }

    /// Listens for changed sagas and wakes their watchers, until `shutdown`. A lost
    /// connection is re-established after `retry`; every waiter is woken then, because a
    /// notification may have been missed meanwhile.
    pub async fn listen(
        self: Arc<Self>,
        database_url: String,
        retry: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            match listener(&database_url).await {
                Ok(mut conn) => {
                    self.wake_all();
                    let mut stream = Box::pin(conn.notifications_stream());
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            next = stream.next() => match next {
                                Some(Ok(notification)) => self.wake(parse(&notification.payload)),
                                Some(Err(err)) => {
                                    tracing::warn!(error = %err, "changed-saga listener failed");
                                    break;
                                }
                                None => break,
                            },
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "changed-saga LISTEN failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }
}

/// A connection of its own that `LISTEN`s on `channel` (notifications are per connection,
/// so it never comes from a pool).
pub async fn listen_on(database_url: &str, channel: &str) -> anyhow::Result<AsyncPgConnection> {
    let mut conn = AsyncPgConnection::establish(database_url)
        .await
        .with_context(|| format!("connecting the {channel} listener"))?;
    diesel::sql_query(format!("LISTEN {channel}"))
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

async fn listener(database_url: &str) -> anyhow::Result<AsyncPgConnection> {
    listen_on(database_url, CHANNEL).await
}

/// The `NOTIFY` payloads for these changes, each under [`MAX_PAYLOAD`] bytes: the ids,
/// comma-separated, a settled saga's marked `!`.
pub fn payloads(changes: &[Change]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for (id, settled) in changes {
        if current.len() + 38 > MAX_PAYLOAD {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        if *settled {
            current.push('!');
        }
        current.push_str(&id.to_string());
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

/// The changes a payload names; what does not parse is left out.
fn parse(payload: &str) -> impl Iterator<Item = Change> + '_ {
    payload
        .split(',')
        .filter_map(|item| match item.strip_prefix('!') {
            Some(id) => Some((id.parse().ok()?, true)),
            None => Some((item.parse().ok()?, false)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_notify_limit_and_keep_every_change() {
        let changes: Vec<Change> = (0..500).map(|n| (Uuid::now_v7(), n % 3 == 0)).collect();
        let payloads = payloads(&changes);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let back: Vec<Change> = payloads.iter().flat_map(|p| parse(p)).collect();
        assert_eq!(back, changes);
    }

    #[tokio::test]
    async fn a_read_waiting_for_the_end_sleeps_through_steps_and_wakes_when_it_settles() {
        let waiters = Waiters::new(4, 4);
        let saga = Uuid::now_v7();
        let mut settling = waiters.watch_settling("k", saga).unwrap();
        let mut stream = waiters.watch("k", saga).unwrap();
        waiters.wake([(saga, false)]);
        tokio::time::timeout(Duration::from_secs(5), stream.changed())
            .await
            .expect("a stream wakes at every change");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), settling.changed())
                .await
                .is_err(),
            "a step does not wake a read waiting for the end"
        );
        waiters.wake([(saga, true)]);
        tokio::time::timeout(Duration::from_secs(5), settling.changed())
            .await
            .expect("the end wakes it");
        waiters.wake_all();
        tokio::time::timeout(Duration::from_secs(5), settling.changed())
            .await
            .expect("a reconnect may have missed the end: it wakes too");
    }

    #[tokio::test]
    async fn a_wake_reaches_the_waiters_of_its_saga_only_and_the_bound_holds() {
        let waiters = Waiters::new(2, 2);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut first = waiters.watch("k", a).unwrap();
        let mut second = waiters.watch("l", b).unwrap();
        assert_eq!(
            waiters.watch("m", a).unwrap_err(),
            Full::All,
            "a third waiter is over the bound"
        );
        waiters.wake([(a, true)]);
        // A wake before the wait is not lost: the receiver saw a change.
        tokio::time::timeout(Duration::from_secs(5), first.changed())
            .await
            .expect("woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.changed())
                .await
                .is_err(),
            "another saga's waiter stays asleep"
        );
        drop(first);
        assert_eq!(waiters.waiting(), 1);
        assert!(
            waiters.watch("m", a).is_ok(),
            "a freed place is taken again"
        );
        drop(second);
        let mut all = waiters.watch_all("k").unwrap();
        waiters.wake([(Uuid::now_v7(), false)]);
        tokio::time::timeout(Duration::from_secs(5), all.changed())
            .await
            .expect("a stream of every saga wakes for any saga");
    }

    #[test]
    fn one_key_takes_at_most_its_own_places_and_leaves_the_rest_to_others() {
        let waiters = Waiters::new(10, 3);
        let saga = Uuid::now_v7();
        let crowd: Vec<Watch> = (0..3)
            .map(|_| waiters.watch_settling("crowd", saga).unwrap())
            .collect();
        assert_eq!(
            waiters.watch_all("crowd").unwrap_err(),
            Full::Key,
            "a stream counts against the same key's places"
        );
        let other = waiters.watch_settling("other", saga);
        assert!(other.is_ok(), "another key still gets a place");
        drop(crowd);
        assert_eq!(waiters.waiting(), 1);
        assert!(waiters.watch("crowd", saga).is_ok(), "places come back");
    }
}
