//! What `/readyz` and `/metrics` answer from: one snapshot of the dependencies and of the
//! database's gauges, refreshed in the background ([`Snapshots::refresh`]) every
//! [`Snapshots::EVERY`]. A probe or a scrape reads the last snapshot and never waits on
//! Postgres, Redis, the broker or a lock, so a flood of probes costs the dependencies
//! nothing and cannot make readiness itself fail. A snapshot older than [`Snapshots::STALE`]
//! (the refresher is stuck) reads as not ready.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Nullable, Text};
use diesel_async::RunQueryDsl;
use tokio_util::sync::CancellationToken;

use platform::db;
use platform::health::{Check, Probes};

/// The database's gauges, read in one round of the refresher.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Outbox messages not yet published.
    pub outbox_backlog: i64,
    /// Age of the oldest of them, in seconds.
    pub outbox_oldest_seconds: Option<f64>,
    /// Sagas per moving status (`RUNNING`, `COMPENSATING`, `FAILED`).
    pub moving: Vec<(String, i64)>,
    /// Dead letters neither replayed nor discarded.
    pub dead_letters_waiting: i64,
}

/// One round of the refresher.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: Instant,
    /// Postgres, Redis and Kafka, each reachable or not.
    pub dependencies: Vec<Check>,
    /// `None` when Postgres did not answer the gauges' queries this round.
    pub gauges: Option<Gauges>,
}

impl Snapshot {
    pub fn age(&self) -> Duration {
        self.taken_at.elapsed()
    }
}

/// A cheap handle on the last snapshot.
#[derive(Clone, Default)]
pub struct Snapshots(Arc<RwLock<Option<Arc<Snapshot>>>>);

impl Snapshots {
    /// How often the refresher reads.
    pub const EVERY: Duration = Duration::from_secs(1);
    /// Past this age a snapshot says nothing about now: readiness answers 503.
    pub const STALE: Duration = Duration::from_secs(10);

    /// The last snapshot, `None` before the first round finished.
    pub fn last(&self) -> Option<Arc<Snapshot>> {
        self.0.read().ok().and_then(|last| last.clone())
    }

    fn store(&self, snapshot: Snapshot) {
        if let Ok(mut last) = self.0.write() {
            *last = Some(Arc::new(snapshot));
        }
    }

    /// Takes one snapshot now (at start, so that the first probe has an answer). Bounded
    /// by the probes' own time limits.
    pub async fn take(&self, probes: &Probes) {
        let (dependencies, gauges) = tokio::join!(probes.check(), read_gauges(&probes.database));
        self.store(Snapshot {
            taken_at: Instant::now(),
            dependencies,
            gauges,
        });
    }

    /// Takes a snapshot every [`Self::EVERY`] until `shutdown`. A hung dependency delays
    /// the next round, never a request.
    pub async fn refresh(self, probes: Probes, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Self::EVERY) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.take(&probes) => {}
            }
        }
    }
}

#[derive(QueryableByName)]
struct Outbox {
    #[diesel(sql_type = BigInt)]
    backlog: i64,
    #[diesel(sql_type = Nullable<Double>)]
    oldest: Option<f64>,
}

#[derive(QueryableByName)]
struct Counted {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Each query is indexed and bounded by what is pending or moving, never the whole table.
async fn read_gauges(database: &db::Pool) -> Option<Gauges> {
    let read = async {
        let mut conn = database.get().await.ok()?;
        // The partial index of pending rows gives the oldest one at once.
        let outbox: Outbox = diesel::sql_query(
            "SELECT count(*) AS backlog, \
             extract(epoch FROM now() - min(created_at))::float8 AS oldest \
             FROM outbox WHERE published_at IS NULL",
        )
        .get_result(&mut conn)
        .await
        .ok()?;
        let moving: Vec<Counted> = diesel::sql_query(
            "SELECT status, count(*) AS count FROM sagas \
             WHERE status IN ('RUNNING', 'COMPENSATING', 'FAILED') GROUP BY status",
        )
        .load(&mut conn)
        .await
        .ok()?;
        let dead: Counted = diesel::sql_query(
            "SELECT 'waiting' AS status, count(*) AS count FROM dead_letters \
             WHERE state = 'waiting'",
        )
        .get_result(&mut conn)
        .await
        .ok()?;
        Some(Gauges {
            outbox_backlog: outbox.backlog,
            outbox_oldest_seconds: outbox.oldest.map(|age| age.max(0.0)),
            moving: moving
                .into_iter()
                .map(|row| (row.status, row.count))
                .collect(),
            dead_letters_waiting: dead.count,
        })
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .ok()
        .flatten()
}
