//! The sagaflow workers: the participants of both saga flows and the notification worker.
//!
//! Each role is one Kafka consumer group, so replicas of a role share its partitions. The
//! workers talk to the orchestrator only through [`platform::contract`]; they never depend
//! on the HTTP stack.
//!
//! # Layout
//! - [`config`]: environment variables of the `worker` binary.
//! - [`notification`]: records every lifecycle event.
//! - [`schema`]: diesel table definitions of the workers' data.

pub mod config;
pub mod notification;
pub mod schema;

use platform::contract::Role;
use platform::kafka::{Cluster, ConsumerLoop, ConsumerOptions, DeadLetter, Producer};
use platform::{cache, db};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every role needs, built once per process.
#[derive(Clone)]
pub struct Deps {
    pub database: db::Pool,
    pub redis: cache::Pool,
    pub cluster: Cluster,
    pub producer: Producer,
}

impl Deps {
    /// The consumer group of a role: replicas of one role share its partitions.
    pub fn group_id(&self, role: Role) -> String {
        format!("{}.{}", self.cluster.topics().prefix(), role.as_str())
    }

    fn dead_letter(&self) -> DeadLetter {
        DeadLetter::new(self.producer.clone(), self.cluster.topics().dead_letter())
    }
}

/// Starts one consumer loop per role on `tasks`; they stop when `shutdown` is cancelled.
pub fn spawn_roles(
    roles: &[Role],
    deps: &Deps,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    for &role in roles {
        match role {
            Role::Notification => {
                let options =
                    ConsumerOptions::new(deps.group_id(role), vec![deps.cluster.topics().events()]);
                let handler = notification::Recorder::new(deps.database.clone());
                let consumer = ConsumerLoop::new(
                    deps.cluster.brokers(),
                    options,
                    handler,
                    deps.dead_letter(),
                )?;
                tasks.spawn(log_exit(role, consumer.run(shutdown.clone())));
            }
            participant => {
                // The participants arrive with their business logic; until then the role
                // starts, stays idle and stops cleanly, without consuming commands.
                tracing::warn!(role = %participant, "role has no participant yet; idle");
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    shutdown.cancelled().await;
                });
            }
        }
    }
    Ok(())
}

async fn log_exit(role: Role, run: impl Future<Output = anyhow::Result<()>>) {
    if let Err(err) = run.await {
        tracing::error!(role = %role, error = format!("{err:#}"), "role stopped with an error");
    }
}
