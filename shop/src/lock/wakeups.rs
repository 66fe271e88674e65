//! Waking a lock's waiters when its holder releases it, as Redisson does.
//!
//! - The release script publishes the lock's key on `{prefix}lock-released`. One
//!   subscription per [`Locks`](super::Locks) (so per process and prefix) hears it and wakes
//!   the waiters of that key in this process, wherever the holder ran.
//! - A waiter registers before it tries, so a release between its failed try and its
//!   sleep still wakes it.
//! - Pub/sub keeps nothing: a message sent while the subscription is down is lost. So a
//!   wake only makes a retry come sooner; every waiter still retries on its backoff, which
//!   is also what notices a lease that lapsed without a release. After (re)subscribing, every
//!   waiter tries again at once, since releases may have been missed meanwhile.
//! - The subscription starts with the first wait and ends when the last clone of its
//!   `Locks` is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool_redis::redis::Client;
use futures_util::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// How long a first waiter waits for the subscription to be live before it tries: a
/// release right after its first try would otherwise go unheard.
const FIRST_SUBSCRIPTION: Duration = Duration::from_secs(1);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Listener {
    NotStarted,
    Subscribing,
    Listening,
    /// Lost, or never reached: waiters fall back on their backoff alone.
    Down,
}

pub(super) struct Wakeups {
    client: Client,
    channel: String,
    /// Per lock key, what wakes its waiters in this process.
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
    listener: watch::Sender<Listener>,
    stop: CancellationToken,
}

impl Wakeups {
    pub(super) fn new(client: Client, prefix: &str) -> Arc<Self> {
        Arc::new(Self {
            client,
            channel: format!("{prefix}lock-released"),
            waiting: Mutex::new(HashMap::new()),
            listener: watch::Sender::new(Listener::NotStarted),
            stop: CancellationToken::new(),
        })
    }

    /// Registers a waiter on `key`, starting the subscription if this is the first.
    /// Returns once the subscription is live (or has failed, or a second has passed).
    pub(super) async fn wait_on(self: &Arc<Self>, key: &str) -> Waiting {
        let notify = {
            let mut waiting = self.waiting.lock().expect("waiters");
            waiting.entry(key.to_owned()).or_default().clone()
        };
        let started = self.listener.send_if_modified(|state| {
            let first = *state == Listener::NotStarted;
            if first {
                *state = Listener::Subscribing;
            }
            first
        });
        if started {
            tokio::spawn(listen(
                Arc::downgrade(self),
                self.client.clone(),
                self.channel.clone(),
                self.listener.clone(),
                self.stop.clone(),
            ));
        }
        let mut state = self.listener.subscribe();
        let _ = tokio::time::timeout(
            FIRST_SUBSCRIPTION,
            state.wait_for(|state| *state != Listener::Subscribing),
        )
        .await;
        Waiting {
            wakeups: self.clone(),
            key: key.to_owned(),
            notify,
        }
    }

    /// The channel the release script announces on.
    pub(super) fn channel(&self) -> &str {
        &self.channel
    }

    fn wake(&self, key: &[u8]) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        if let Some(notify) = self.waiting.lock().expect("waiters").get(key) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for notify in self.waiting.lock().expect("waiters").values() {
            notify.notify_waiters();
        }
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A waiter's registration on one key; dropping it removes the key once nobody waits.
pub(super) struct Waiting {
    wakeups: Arc<Wakeups>,
    key: String,
    notify: Arc<Notify>,
}

impl Waiting {
    /// What a release of the key (or a resubscription) wakes. Enable it before trying.
    pub(super) fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut waiting = self.wakeups.waiting.lock().expect("waiters");
        // Only the map's handle and ours left: nobody else waits on this key. (Another
        // waiter's handles are its registration, made under this mutex, and its pending
        // wake, which it drops before its registration.)
        if Arc::strong_count(&self.notify) == 2 {
            waiting.remove(&self.key);
        }
    }
}

/// The subscription: wakes the waiters of each key announced, and resubscribes after a
/// loss. Holds only a weak handle, so it ends with its `Locks`.
async fn listen(
    wakeups: Weak<Wakeups>,
    client: Client,
    channel: String,
    state: watch::Sender<Listener>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, deadpool_redis::redis::RedisError>(pubsub)
            } => subscribed,
        };
        match subscribed {
            Ok(pubsub) => {
                backoff = Duration::from_millis(100);
                state.send_replace(Listener::Listening);
                let Some(live) = wakeups.upgrade() else {
                    return;
                };
                live.wake_all();
                drop(live);
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        () = stop.cancelled() => return,
                        message = messages.next() => message,
                    };
                    let Some(message) = message else {
                        break;
                    };
                    let Some(live) = wakeups.upgrade() else {
                        return;
                    };
                    live.wake(message.get_payload_bytes());
                }
                tracing::warn!(%channel, "lock release subscription lost; resubscribing");
            }
            Err(err) => {
                tracing::warn!(%channel, error = %err, "no lock release subscription; waiters rely on their backoff");
            }
        }
        state.send_replace(Listener::Down);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
    }
}
