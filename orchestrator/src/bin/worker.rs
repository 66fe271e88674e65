//! `worker --role <role> [--role <role>...]` or `worker --role all`; `worker --help` lists
//! every setting with its flag, variable and default.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use platform::contract::Role;
use platform::kafka::Cluster;
use platform::{cache, db};
use shop::config::{Config, Settings};
use tokio_util::task::TaskTracker;

/// Runs participant roles; each role is one Kafka consumer group, so more processes of a
/// role share its work. Every setting is a flag or an environment variable.
#[derive(Parser)]
#[command(name = "worker", version)]
struct Cli {
    /// A role to run: inventory, payment, shipment, coupon, vendor, notification, or all.
    /// Repeat it or separate roles with commas.
    #[arg(long = "role", required = true, value_delimiter = ',', value_parser = parse_role)]
    roles: Vec<Roles>,
    #[command(flatten)]
    settings: Settings,
}

/// One `--role` value: a role, or every role.
#[derive(Debug, Clone)]
struct Roles(Vec<Role>);

fn parse_role(value: &str) -> Result<Roles, String> {
    if value == "all" {
        return Ok(Roles(Role::ALL.to_vec()));
    }
    value.parse().map(|role| Roles(vec![role]))
}

/// The process's name in traces, unless `OTEL_SERVICE_NAME` names it.
const SERVICE: &str = "sagaflow-worker";

/// Many small, short-lived allocations (JSON, messages, futures): mimalloc spends less on
/// them than glibc's malloc (README, "Benchmarks").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut roles: Vec<Role> = cli.roles.into_iter().flat_map(|roles| roles.0).collect();
    roles.dedup();
    let config = match Config::from_vars(&cli.settings.vars) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let filter = cli.settings.vars.optional("RUST_LOG").ok().flatten();
    // Held to the end of main: dropping it flushes the spans not yet exported.
    let _telemetry = platform::telemetry::init(SERVICE, config.log_format, filter.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the Tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, roles)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "worker failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, roles: Vec<Role>) -> anyhow::Result<()> {
    let shutdown = platform::shutdown::on_signal()?;
    let cluster = Cluster::from_env(&config.kafka, false)?;
    db::prepare(&config.stores.database_url).await?;
    cluster
        .ensure_topics()
        .await
        .context("creating Kafka topics")?;
    let deps = shop::Deps {
        database: db::pool_with(
            &config.stores.database_url,
            config.stores.pool_options(config.stores.database_pool_size),
        )?,
        redis: cache::pool(&config.stores.redis_url)?,
        producer: cluster.producer()?,
        cluster,
        runtime: config.runtime.clone(),
    };
    let tasks = TaskTracker::new();
    if let Some(addr) = config.metrics_addr.clone() {
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(err) = shop::metrics::serve(addr, stop).await {
                tracing::error!(error = format!("{err:#}"), "metrics server failed");
            }
        });
    }
    shop::spawn_roles(&roles, &deps, &tasks, &shutdown)?;
    tasks.spawn(shop::retention::run(
        deps.database.clone(),
        config.retention.clone(),
        shutdown.clone(),
    ));
    tracing::info!(roles = ?roles, "worker started");
    tasks.close();
    tasks.wait().await;
    deps.producer.flush(std::time::Duration::from_secs(5));
    if let Some(reason) = shop::metrics::fatal_reason() {
        anyhow::bail!("{reason}");
    }
    tracing::info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn roles(args: &[&str]) -> Result<Vec<Role>, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("worker").chain(args.iter().copied()))?;
        Ok(cli.roles.into_iter().flat_map(|roles| roles.0).collect())
    }

    #[test]
    fn roles_are_parsed_repeated_comma_separated_or_all() {
        assert_eq!(
            roles(&["--role", "payment", "--role=vendor,coupon"]).unwrap(),
            vec![Role::Payment, Role::Vendor, Role::Coupon]
        );
        assert_eq!(roles(&["--role", "all"]).unwrap().len(), 6);
        assert!(roles(&[]).is_err());
        assert!(
            roles(&["--role", "billing"])
                .unwrap_err()
                .to_string()
                .contains("billing")
        );
    }

    #[test]
    fn every_setting_is_a_flag_with_its_variable_in_help() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        let missing = platform::settings::missing_from_help(&help, Settings::TABLES);
        assert!(missing.is_empty(), "not in --help: {missing:?}");
    }
}
