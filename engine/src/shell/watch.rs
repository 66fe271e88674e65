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

/// The requests of this replica waiting for sagas to settle.
#[derive(Debug)]
pub struct Waiters {
    limit: usize,
    watched: Mutex<Watched>,
}

#[derive(Debug)]
struct Watched {
    by_saga: HashMap<Uuid, watch::Sender<u64>>,
    /// Bumped on every change of any saga.
    any: watch::Sender<u64>,
    waiting: usize,
}

impl Default for Watched {
    fn default() -> Self {
        Self {
            by_saga: HashMap::new(),
            any: watch::channel(0).0,
            waiting: 0,
        }
    }
}

/// One request's registration; dropping it unregisters.
#[derive(Debug)]
pub struct Watch {
    waiters: Arc<Waiters>,
    /// `None`: every saga.
    id: Option<Uuid>,
    changes: watch::Receiver<u64>,
}

impl Watch {
    /// Resolves when the saga may have settled since the registration (a wake-up for its
    /// id, or the listener reconnecting, which may have missed one).
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.waiters.lock();
        watched.waiting -= 1;
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
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            watched: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Registers a request waiting for `id`; `None` when `limit` requests already wait.
    pub fn watch(self: &Arc<Self>, id: Uuid) -> Option<Watch> {
        let mut watched = self.lock();
        if watched.waiting >= self.limit {
            return None;
        }
        watched.waiting += 1;
        let changes = watched
            .by_saga
            .entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Some(Watch {
            waiters: Arc::clone(self),
            id: Some(id),
            changes,
        })
    }

    /// Registers a request watching every saga (a stream of all sagas' events); `None`
    /// past the bound.
    pub fn watch_all(self: &Arc<Self>) -> Option<Watch> {
        let mut watched = self.lock();
        if watched.waiting >= self.limit {
            return None;
        }
        watched.waiting += 1;
        let changes = watched.any.subscribe();
        Some(Watch {
            waiters: Arc::clone(self),
            id: None,
            changes,
        })
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Wakes the requests watching `ids` or every saga.
    pub fn wake(&self, ids: impl IntoIterator<Item = Uuid>) {
        let watched = self.lock();
        for id in ids {
            if let Some(sender) = watched.by_saga.get(&id) {
                sender.send_modify(|n| *n += 1);
            }
        }
        watched.any.send_modify(|n| *n += 1);
    }

    /// Wakes every watching request (they read again and wait on).
    pub fn wake_all(&self) {
        let watched = self.lock();
        for sender in watched.by_saga.values() {
            sender.send_modify(|n| *n += 1);
        }
        watched.any.send_modify(|n| *n += 1);
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
                                Some(Ok(notification)) => self.wake(
                                    notification.payload.split(',').filter_map(|id| id.parse().ok()),
                                ),
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

/// The `NOTIFY` payloads for these ids, each under [`MAX_PAYLOAD`] bytes.
pub fn payloads(ids: &[Uuid]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for id in ids {
        if current.len() + 37 > MAX_PAYLOAD {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&id.to_string());
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_notify_limit_and_keep_every_id() {
        let ids: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
        let payloads = payloads(&ids);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let back: Vec<Uuid> = payloads
            .iter()
            .flat_map(|p| p.split(','))
            .map(|id| id.parse().unwrap())
            .collect();
        assert_eq!(back, ids);
    }

    #[tokio::test]
    async fn a_wake_reaches_the_waiters_of_its_saga_only_and_the_bound_holds() {
        let waiters = Waiters::new(2);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut first = waiters.watch(a).unwrap();
        let mut second = waiters.watch(b).unwrap();
        assert!(
            waiters.watch(a).is_none(),
            "a third waiter is over the bound"
        );
        waiters.wake([a]);
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
        assert!(waiters.watch(a).is_some(), "a freed place is taken again");
        drop(second);
        let mut all = waiters.watch_all().unwrap();
        waiters.wake([Uuid::now_v7()]);
        tokio::time::timeout(Duration::from_secs(5), all.changed())
            .await
            .expect("a stream of every saga wakes for any saga");
    }
}
