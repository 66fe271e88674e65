//! Wiring: builds the pools and clients once, starts the HTTP server and the background
//! loops on one [`TaskTracker`], and stops them all on one [`CancellationToken`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use platform::contract::Role;
use platform::health::Probes;
use platform::kafka::{Cluster, Producer};
use platform::liveness::Loops;
use platform::{cache, db};

use workers::adjuster::Adjuster;
use workers::direct::DirectUse;

use crate::api;
use crate::clock::Clock;
use crate::config::Config;
use crate::engine::Engine;
use crate::engine::catalog::Catalog;
use crate::loops::relay::RelayOptions;

/// Which processes run inside this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// API and engine loops.
    Serve,
    /// API, engine loops and every worker role: the all-in-one first run.
    Dev,
}

/// A started orchestrator.
pub struct Running {
    pub local_addr: SocketAddr,
    pub engine: Engine,
    /// The background loops, as `/healthz` reports them.
    pub loops: Loops,
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

pub async fn start(
    config: &Config,
    cluster: Cluster,
    mode: Mode,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    start_with(config, cluster, mode, Options::default(), shutdown).await
}

pub async fn start_with(
    config: &Config,
    cluster: Cluster,
    mode: Mode,
    options: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let auth = &config.auth;
    if mode == Mode::Serve && auth.enabled && auth.keys.is_empty() {
        anyhow::bail!(
            "no API keys: set API_KEYS or API_KEYS_FILE (see README, \"Access control\"), \
             or AUTH=off to serve without access control"
        );
    }
    if !auth.enforced() {
        tracing::warn!(
            "access control is off: anyone who reaches the port may do everything \
             (set API_KEYS to switch it on)"
        );
    }
    db::prepare(&config.stores.database_url).await?;
    let stores = &config.stores;
    // The API and the engine loops draw from separate pools, so requests cannot starve the
    // relay, timers and reply consumers (and in `dev`, the workers get their own too).
    let database = db::pool_with(
        &stores.database_url,
        stores.pool_options(stores.database_pool_size),
    )?;
    let engine_database = db::pool_with(
        &stores.database_url,
        stores.pool_options(stores.database_engine_pool_size),
    )?;
    let redis = cache::pool(&config.stores.redis_url)?;
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
    let catalog = Arc::new(Catalog::open(&engine_database).await?);
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
    let wiring = crate::loops::Wiring {
        engine: &engine,
        engine_database: &engine_database,
        database_url: &config.stores.database_url,
        cluster: &cluster,
        producer: &producer,
        retention: &config.retention,
        options: &options,
    };
    for (name, running) in crate::loops::all(&wiring, &shutdown)? {
        loops.spawn(&tasks, name, &shutdown, running);
    }
    if mode == Mode::Dev {
        let deps = workers::Deps {
            database: db::pool_with(
                &stores.database_url,
                stores.pool_options(stores.database_engine_pool_size),
            )?,
            redis: redis.clone(),
            cluster: cluster.clone(),
            producer: producer.clone(),
            runtime: config.workers.clone(),
        };
        tasks.spawn(workers::retention::run(
            deps.database.clone(),
            config.retention.clone(),
            shutdown.clone(),
        ));
        workers::spawn_roles(&Role::ALL, &deps, &tasks, &shutdown)?;
    }

    let mut state = api_state(config, &cluster, &database, &redis, &producer, &engine);
    state.loops = loops.clone();
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
    state.demo = mode == Mode::Dev;
    state.auth_enforced = config.auth.enforced();
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP_ADDR {}", config.http_addr))?;
    let local_addr = listener.local_addr().context("listener address")?;
    let server = api::server::serve(
        listener,
        api::routes(state, crate::auth::Gate::new(config.auth.clone())),
        config.http,
        shutdown.clone(),
    );
    loops.spawn(&tasks, "http", &shutdown, async move {
        server.await.context("HTTP server")
    });
    Ok(Running {
        local_addr,
        loops,
        tasks,
        producer,
        engine,
    })
}

/// The API's shared state; the direct coupon use and stock/balance changes run the
/// participants' code in-process, under the same concurrency strategy as the workers.
fn api_state(
    config: &Config,
    cluster: &Cluster,
    database: &db::Pool,
    redis: &cache::Pool,
    producer: &Producer,
    engine: &Engine,
) -> api::State {
    let redis_prefix = format!("{}:", cluster.topics().prefix());
    api::State {
        probes: Probes {
            database: database.clone(),
            redis: redis.clone(),
            kafka: producer.clone(),
        },
        engine: engine.clone(),
        database: database.clone(),
        cluster: cluster.clone(),
        lag: std::sync::Arc::new(platform::kafka::LagProbe::new(cluster)),
        demo: false,
        auth_enforced: false,
        direct: DirectUse::new(
            database.clone(),
            redis.clone(),
            &redis_prefix,
            config.workers.clone(),
        ),
        adjuster: Adjuster::new(
            database.clone(),
            redis.clone(),
            &redis_prefix,
            config.workers.clone(),
        ),
        http: api::observe::HttpMetrics::default(),
        lag_cache: api::metrics::LagCache::default(),
        snapshots: api::snapshot::Snapshots::default(),
        loops: Loops::default(),
    }
}
