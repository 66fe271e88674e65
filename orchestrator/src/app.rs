//! Wiring: builds the pools and clients once, starts the HTTP server and the background
//! loops on one [`TaskTracker`], and stops them all on one [`CancellationToken`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use poem::Server;
use poem::listener::{Acceptor, Listener, TcpListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use platform::contract::Role;
use platform::health::Probes;
use platform::kafka::{Cluster, Producer};
use platform::{cache, db};

use crate::api;
use crate::config::Config;

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

pub async fn start(
    config: &Config,
    cluster: Cluster,
    mode: Mode,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    db::prepare(&config.stores.database_url).await?;
    let database = db::pool(
        &config.stores.database_url,
        config.stores.database_pool_size,
    )?;
    let redis = cache::pool(&config.stores.redis_url)?;
    cluster
        .ensure_topics()
        .await
        .context("creating Kafka topics")?;
    let producer = cluster.producer()?;

    let tasks = TaskTracker::new();
    if mode == Mode::Dev {
        let deps = workers::Deps {
            database: database.clone(),
            redis: redis.clone(),
            cluster: cluster.clone(),
            producer: producer.clone(),
        };
        workers::spawn_roles(&Role::ALL, &deps, &tasks, &shutdown)?;
    }

    let state = api::State {
        probes: Probes {
            database,
            redis,
            kafka: producer.clone(),
        },
    };
    let acceptor = TcpListener::bind(config.http_addr.to_string())
        .into_acceptor()
        .await
        .with_context(|| format!("binding HTTP_ADDR {}", config.http_addr))?;
    let local_addr = acceptor
        .local_addr()
        .into_iter()
        .find_map(|addr| addr.as_socket_addr().copied())
        .context("listener has no socket address")?;
    let server = Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
        api::routes(state),
        shutdown.clone().cancelled_owned(),
        Some(Duration::from_secs(10)),
    );
    tasks.spawn(async move {
        if let Err(err) = server.await {
            tracing::error!(error = %err, "HTTP server failed");
        }
    });
    Ok(Running {
        local_addr,
        tasks,
        producer,
    })
}
