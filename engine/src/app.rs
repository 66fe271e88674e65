//! The engine's wiring, in two steps. [`Core::start`] builds the pools and clients once,
//! opens the catalog of flows and spawns the background loops on one [`TaskTracker`];
//! [`Core::serve`] then serves the engine's API with an application's [`Mount`] beside it.
//! Between the two, the composition point (the `orchestrator` crate) may start more work
//! on the same tasks and shutdown token (`dev` starts the shop's participants there).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use poem_openapi::OpenApi;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use platform::health::Probes;
use platform::kafka::{Cluster, Producer};
use platform::liveness::Loops;
use platform::{cache, db};

use crate::api::{self, Mount};
use crate::clock::Clock;
use crate::config::Config;
use crate::loops::relay::RelayOptions;
use crate::shell::catalog::{BuiltIn, Catalog};
use crate::shell::watch::Waiters;
use crate::shell::{Engine, Publisher};

/// Knobs that tests turn; production uses the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    pub clock: Clock,
    pub relay: RelayOptions,
    /// `false` simulates an orchestrator that commits but never publishes (crash between
    /// commit and publish).
    pub relay_enabled: bool,
    pub timer_interval: Duration,
    /// Reply consumers (members of one group) in this process. One is enough: it applies
    /// replies of different sagas in parallel batches (`KAFKA_CONSUMER_CONCURRENCY`).
    pub reply_consumers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Clock::system(),
            relay: RelayOptions::default(),
            relay_enabled: true,
            timer_interval: Duration::from_millis(250),
            reply_consumers: 1,
        }
    }
}

/// A started engine whose API is not served yet.
pub struct Core {
    pub engine: Engine,
    /// The API's pool (the engine loops have their own).
    pub database: db::Pool,
    pub redis: cache::Pool,
    pub cluster: Cluster,
    pub producer: Producer,
    /// The background loops, as `/healthz` reports them.
    pub loops: Loops,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

/// A started orchestrator.
pub struct Running {
    pub local_addr: SocketAddr,
    pub engine: Engine,
    /// The background loops, as `/healthz` reports them.
    pub loops: Loops,
    /// The requests waiting for sagas and the open streams of this replica.
    pub waiters: Arc<Waiters>,
    tasks: TaskTracker,
    producer: Producer,
}

impl Running {
    /// Waits until every task stopped (after the shutdown token was cancelled).
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.producer.flush(Duration::from_secs(5));
    }
}

/// How the API is served: whether it is `dev` (the demo generators answer), and what the
/// application adds to `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serving {
    pub demo: bool,
    pub metrics: Option<fn(&mut prometheus_client::registry::Registry)>,
}

impl Core {
    /// `built_in`: the application's flow documents, stored as built-in versions, the flows
    /// it fronts and the built-in versions it retired.
    pub async fn start(
        config: &Config,
        built_in: &BuiltIn<'_>,
        cluster: Cluster,
        options: Options,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let stores = &config.stores;
        db::prepare(&stores.database_url).await?;
        // The API and the engine loops draw from separate pools, so requests cannot starve
        // the relay, timers and reply consumers.
        let database = db::pool_with(
            &stores.database_url,
            stores.pool_options(stores.database_pool_size),
        )?;
        let engine_database = db::pool_with(
            &stores.database_url,
            stores.pool_options(stores.database_engine_pool_size),
        )?;
        let redis = cache::pool(&stores.redis_url)?;
        cluster
            .ensure_topics()
            .await
            .context("creating Kafka topics")?;
        let producer = cluster.producer()?;

        let tasks = TaskTracker::new();
        // Every loop is spawned through `loops`, which tells `/healthz` when one stopped.
        let loops = Loops::stopping(shutdown.clone());
        // The registered flows: the built-in ones, then DEFINITIONS_DIR's, then whatever
        // admins registered over the API; every role they name gets its command topic.
        let catalog = Arc::new(Catalog::open(&engine_database, built_in).await?);
        if let Some(dir) = &config.definitions_dir {
            let count = catalog.register_dir(&engine_database, dir).await?;
            let mut pooled = engine_database.get().await?;
            catalog.reload(&mut pooled).await?;
            tracing::info!(count, dir = %dir.display(), "definitions registered from DEFINITIONS_DIR");
        }
        cluster
            .ensure_role_topics(&catalog.roles())
            .await
            .context("creating the command topics of registered roles")?;
        let engine = Engine::new(
            engine_database.clone(),
            cluster.topics().clone(),
            options.clock.clone(),
            Arc::clone(&catalog),
        );
        // With a relay, the engine publishes what it committed at once and the relay marks
        // it; without one (tests that watch the outbox), nothing is published.
        let (engine, marks) = if options.relay_enabled {
            let (publisher, marks) = Publisher::new(producer.clone());
            (engine.publishing(publisher), Some(marks))
        } else {
            (engine, None)
        };
        let wiring = crate::loops::Wiring {
            engine: &engine,
            engine_database: &engine_database,
            database_url: &stores.database_url,
            cluster: &cluster,
            producer: &producer,
            retention: &config.retention,
            options: &options,
            marks,
        };
        for (name, running) in crate::loops::all(wiring, &shutdown)? {
            loops.spawn(&tasks, name, &shutdown, running);
        }
        Ok(Self {
            engine,
            database,
            redis,
            cluster,
            producer,
            loops,
            tasks,
            shutdown,
        })
    }

    /// Serves the engine's API and the application's on `HTTP_ADDR`.
    pub async fn serve<A, D>(
        self,
        config: &Config,
        mount: Mount<A, D>,
        serving: Serving,
    ) -> anyhow::Result<Running>
    where
        A: OpenApi + 'static,
        D: Clone + Send + Sync + 'static,
    {
        let Self {
            engine,
            database,
            redis,
            cluster,
            producer,
            loops,
            tasks,
            shutdown,
        } = self;
        let state = api::State {
            probes: Probes {
                database: database.clone(),
                redis: redis.clone(),
                kafka: producer.clone(),
            },
            engine: engine.clone(),
            database,
            cluster: cluster.clone(),
            lag: Arc::new(platform::kafka::LagProbe::new(&cluster)),
            demo: serving.demo,
            auth_enforced: config.auth.enforced(),
            application_metrics: serving.metrics,
            http: api::observe::HttpMetrics::default(),
            lag_cache: api::metrics::LagCache::default(),
            snapshots: api::snapshot::Snapshots::default(),
            loops: loops.clone(),
            // Per-key bounds tell keys apart: with access control off every caller is
            // `anonymous`, and only the server's own bounds apply.
            waiters: Waiters::new(
                config.http_max_waits,
                if config.auth.enforced() {
                    config.http_max_waits_per_key
                } else {
                    config.http_max_waits
                },
            ),
            max_wait: config
                .http
                .request_timeout
                .saturating_sub(Duration::from_secs(1)),
            max_stream: config.http_max_stream,
            signals: api::quota::PerKey::new(if config.auth.enforced() {
                config.http_max_signals_per_key
            } else {
                config.http.max_requests
            }),
        };
        loops.spawn(
            &tasks,
            "waits",
            &shutdown,
            Arc::clone(&state.waiters).listen(
                config.stores.database_url.clone(),
                Duration::from_secs(1),
                shutdown.clone(),
            ),
        );
        loops.spawn_infallible(
            &tasks,
            "lag",
            &shutdown,
            state.lag_cache.clone().refresh(
                state.lag.clone(),
                cluster.topics().clone(),
                shutdown.clone(),
            ),
        );
        state.snapshots.take(&state.probes).await;
        loops.spawn_infallible(
            &tasks,
            "probes",
            &shutdown,
            state
                .snapshots
                .clone()
                .refresh(state.probes.clone(), shutdown.clone()),
        );
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding HTTP_ADDR {}", config.http_addr))?;
        let local_addr = listener.local_addr().context("listener address")?;
        let waiters = Arc::clone(&state.waiters);
        let server = api::server::serve(
            listener,
            api::routes(state, config.auth.clone(), mount),
            config.http,
            shutdown.clone(),
        );
        loops.spawn(&tasks, "http", &shutdown, async move {
            server.await.context("HTTP server")
        });
        Ok(Running {
            local_addr,
            engine,
            loops,
            waiters,
            tasks,
            producer,
        })
    }
}
