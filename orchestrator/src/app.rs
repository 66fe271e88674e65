//! Starts an orchestrator: the engine's core, then (in `dev`) the shop's participant roles on
//! the same tasks and shutdown token, then the HTTP server with the shop's API mounted beside
//! the engine's.

use tokio_util::sync::CancellationToken;

use engine::app::{Core, Serving};
use platform::contract::Role;
use platform::db;
use platform::kafka::Cluster;
use shop::adjuster::Adjuster;
use shop::direct::DirectUse;

use crate::config::Config;

pub use engine::app::{Options, Running};

/// Which processes run inside this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// API and engine loops.
    Serve,
    /// API, engine loops and every worker role: the all-in-one first run.
    Dev,
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
    let auth = &config.engine.auth;
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
    let core = Core::start(
        &config.engine,
        &shop::definitions::BUILT_IN,
        cluster,
        options,
        shutdown,
    )
    .await?;
    if mode == Mode::Dev {
        let stores = &config.engine.stores;
        let deps = shop::Deps {
            // The workers get their own pool, as in their own process.
            database: db::pool_with(
                &stores.database_url,
                stores.pool_options(stores.database_engine_pool_size),
            )?,
            redis: core.redis.clone(),
            cluster: core.cluster.clone(),
            producer: core.producer.clone(),
            runtime: config.workers.clone(),
        };
        core.tasks.spawn(shop::retention::run(
            deps.database.clone(),
            config.engine.retention.clone(),
            core.shutdown.clone(),
        ));
        shop::spawn_roles(&Role::ALL, &deps, &core.tasks, &core.shutdown)?;
    }
    // The direct coupon use and stock/balance changes run the participants' code in the
    // request, under the same concurrency strategy as the workers.
    let redis_prefix = format!("{}:", core.cluster.topics().prefix());
    let shop = shop::api::Shop {
        direct: DirectUse::new(
            core.database.clone(),
            core.redis.clone(),
            &redis_prefix,
            config.workers.clone(),
        ),
        adjuster: Adjuster::new(
            core.database.clone(),
            core.redis.clone(),
            &redis_prefix,
            config.workers.clone(),
        ),
    };
    let serving = Serving {
        demo: mode == Mode::Dev,
        metrics: (mode == Mode::Dev).then_some(register_participant_metrics as fn(&mut _)),
    };
    core.serve(&config.engine, shop::api::mount(shop), serving)
        .await
}

/// The OpenAPI document this orchestrator serves (checked in as `openapi/openapi.json`).
pub fn spec_json() -> String {
    engine::api::spec_json(
        shop::api::apis(),
        &engine::auth::Policy::new(shop::api::RULES),
    )
}

fn register_participant_metrics(registry: &mut prometheus_client::registry::Registry) {
    shop::metrics::METRICS.register(registry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_served_has_an_access_rule_and_every_rule_an_operation() {
        let spec: serde_json::Value = serde_json::from_str(&spec_json()).unwrap();
        let policy = engine::auth::Policy::new(shop::api::RULES);
        assert_eq!(policy.mismatches(&spec), Vec::<String>::new());
    }

    #[test]
    fn operation_ids_stay_unique_with_the_shop_mounted() {
        let spec: serde_json::Value = serde_json::from_str(&spec_json()).unwrap();
        let mut ids = std::collections::HashSet::new();
        for operations in spec["paths"].as_object().unwrap().values() {
            for operation in operations.as_object().unwrap().values() {
                let id = operation["operationId"].as_str().unwrap().to_owned();
                assert!(ids.insert(id.clone()), "operationId {id} twice");
            }
        }
        assert!(ids.contains("placeOrder") && ids.contains("startSaga"));
    }
}
