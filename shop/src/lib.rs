//! The shop: sagaflow's first application of the engine. Its tables, guarded writes, locks
//! and gate; the typed saga inputs ([`inputs`]) that its API fronts ([`api`]) and its
//! participants share; the participants of the order and coupon flows; the demo data
//! ([`seed`]). The engine never names the shop; the `orchestrator` crate (the binaries
//! and `dev`) joins them.
//!
//! Each role is one Kafka consumer group, so replicas of a role share its partitions. The
//! participants talk to the engine only through [`platform::contract`] (commands and
//! replies over Kafka).
//!
//! # Layout
//! - [`api`]: the shop's REST fronts, mounted beside the engine's API.
//! - [`inputs`]: the order's and the coupon use's saga inputs, one type each.
//! - [`definitions`]: the order and coupon-use flows as documents, handed to the engine.
//! - [`config`]: the participants' settings (`worker` and `dev`).
//! - [`direct`]: the direct coupon use, claim and payout in one transaction.
//! - [`adjuster`]: counter changes from outside sagas (API), under the same strategy.
//! - [`runtime`]: what every participant shares: inbox, locks, transaction, reply.
//! - [`fence`]: step fences, which keep a late forward command from taking effect.
//! - [`participant`]: the trait a participant implements; [`participants`]: one file per role.
//! - [`guarded`]: counter changes under each concurrency strategy (fencing included).
//! - [`lock`]: the Redis lock with watchdog and fencing tokens.
//! - [`gate`]: the Lua-script strategy's Redis gate.
//! - [`notification`]: records every lifecycle event.
//! - [`retention`]: the workers' tables that age out.
//! - [`schema`]: diesel table definitions of the shop's data.
//! - [`seed`]: the demo data set of `orchestrator seed`.
//! - `fixtures` (feature `testkit`): business rows for tests.

pub mod adjuster;
pub mod api;
pub mod config;
pub mod definitions;
pub mod direct;
pub mod fence;
#[cfg(feature = "testkit")]
pub mod fixtures;
pub mod gate;
pub mod guarded;
pub mod inputs;
pub mod lock;
pub mod metrics;
pub mod notification;
pub mod participant;
pub mod participants;
pub mod pricing;
pub mod retention;
pub mod runtime;
pub mod schema;
pub mod seed;

use platform::contract::Role;
use platform::kafka::{Cluster, ConsumerLoop, DeadLetter, Producer};
use platform::{cache, db};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::participant::Participant;
use crate::runtime::{CommandRuntime, RuntimeOptions};

/// What every role needs, built once per process.
#[derive(Clone)]
pub struct Deps {
    pub database: db::Pool,
    pub redis: cache::Pool,
    pub cluster: Cluster,
    pub producer: Producer,
    pub runtime: RuntimeOptions,
}

impl Deps {
    /// The consumer group of a role: replicas of one role share its partitions.
    pub fn group_id(&self, role: Role) -> String {
        format!("{}.{}", self.cluster.topics().prefix(), role.as_str())
    }

    /// Redis keys (locks, fencing counters, gate counters) live under the topic prefix, so
    /// deployments and tests sharing one Redis stay apart.
    pub fn redis_prefix(&self) -> String {
        format!("{}:", self.cluster.topics().prefix())
    }

    fn dead_letter(&self) -> DeadLetter {
        DeadLetter::new(self.producer.clone(), self.cluster.topics().dead_letter())
    }

    fn command_loop<P: Participant>(
        &self,
        participant: P,
    ) -> anyhow::Result<ConsumerLoop<platform::contract::Command, CommandRuntime<P>>> {
        let role = participant.role();
        let mut options = self.cluster.consumer_options(
            self.group_id(role),
            vec![self.cluster.topics().commands(role)],
        );
        // A command holds a connection while it runs: no more at once than the pool has.
        options.concurrency = options.concurrency.min(self.database.status().max_size);
        let runtime = CommandRuntime::new(
            participant,
            self.database.clone(),
            self.redis.clone(),
            &self.redis_prefix(),
            self.producer.clone(),
            self.cluster.topics(),
            self.runtime.clone(),
        );
        ConsumerLoop::new(self.cluster.brokers(), options, runtime, self.dead_letter())
    }
}

/// Starts one consumer loop per role on `tasks`; they stop when `shutdown` is cancelled.
pub fn spawn_roles(
    roles: &[Role],
    deps: &Deps,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use participants::{coupon, inventory, payment, shipment, vendor};
    for &role in roles {
        let stop = shutdown.clone();
        match role {
            Role::Inventory => {
                let run = deps.command_loop(inventory::Inventory)?.run(stop);
                tasks.spawn(log_exit(role, run, shutdown.clone()));
            }
            Role::Payment => {
                let run = deps.command_loop(payment::Payment)?.run(stop);
                tasks.spawn(log_exit(role, run, shutdown.clone()));
            }
            Role::Shipment => {
                let run = deps.command_loop(shipment::Shipment)?.run(stop);
                tasks.spawn(log_exit(role, run, shutdown.clone()));
            }
            Role::Coupon => {
                let run = deps.command_loop(coupon::Coupon::default())?.run(stop);
                tasks.spawn(log_exit(role, run, shutdown.clone()));
            }
            Role::Vendor => {
                let run = deps.command_loop(vendor::Vendor)?.run(stop);
                tasks.spawn(log_exit(role, run, shutdown.clone()));
            }
            Role::Notification => {
                let options = deps
                    .cluster
                    .consumer_options(deps.group_id(role), vec![deps.cluster.topics().events()]);
                let handler = notification::Recorder::new(deps.database.clone());
                let consumer = ConsumerLoop::new(
                    deps.cluster.brokers(),
                    options,
                    handler,
                    deps.dead_letter(),
                )?;
                tasks.spawn(log_exit(role, consumer.run(stop), shutdown.clone()));
            }
        }
    }
    Ok(())
}

async fn log_exit(
    role: Role,
    run: impl Future<Output = anyhow::Result<()>>,
    process: CancellationToken,
) {
    if let Err(err) = run.await {
        tracing::error!(role = %role, error = format!("{err:#}"), "role stopped with an error");
        // The worker's /healthz answers 503 from now on, so that it gets restarted.
        metrics::role_failed();
        if err
            .chain()
            .any(|cause| cause.is::<platform::kafka::Fatal>())
        {
            // Retrying cannot help: the process stops and exits saying why.
            metrics::fatal(format!("role {role}: {err:#}"));
            process.cancel();
        }
    }
}
