//! `worker --role <role> [--role <role>...]` or `worker --role all`

use std::process::ExitCode;

use anyhow::Context as _;
use platform::contract::Role;
use platform::kafka::Cluster;
use platform::{cache, db};
use tokio_util::task::TaskTracker;
use workers::config::Config;

const USAGE: &str = "usage: worker --role <role> [--role <role>...]

roles: inventory, payment, shipment, coupon, vendor, notification, or `all`.
Each role is one Kafka consumer group; start more processes to scale a role.
Configuration is read from environment variables; see README.md.";

fn parse_roles(args: &[String]) -> Result<Vec<Role>, String> {
    let mut roles = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--role" => args.next().ok_or("--role needs a value")?.as_str(),
            other => match other.strip_prefix("--role=") {
                Some(value) => value,
                None => return Err(format!("unexpected argument `{other}`")),
            },
        };
        for name in value.split(',') {
            if name == "all" {
                roles.extend(Role::ALL);
            } else {
                roles.push(name.parse()?);
            }
        }
    }
    roles.dedup();
    if roles.is_empty() {
        return Err("at least one --role is required".to_owned());
    }
    Ok(roles)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let roles = match parse_roles(&args) {
        Ok(roles) => roles,
        Err(err) => {
            eprintln!("{err}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    platform::telemetry::init(config.log_format);
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
    let deps = workers::Deps {
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
    workers::spawn_roles(&roles, &deps, &tasks, &shutdown)?;
    tasks.spawn(workers::retention::run(
        deps.database.clone(),
        config.retention.clone(),
        shutdown.clone(),
    ));
    tracing::info!(roles = ?roles, "worker started");
    tasks.close();
    tasks.wait().await;
    deps.producer.flush(std::time::Duration::from_secs(5));
    tracing::info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn roles_are_parsed_repeated_or_all() {
        assert_eq!(
            parse_roles(&args(&["--role", "payment", "--role=vendor"])).unwrap(),
            vec![Role::Payment, Role::Vendor]
        );
        assert_eq!(parse_roles(&args(&["--role", "all"])).unwrap().len(), 6);
        assert!(parse_roles(&args(&[])).is_err());
        assert!(
            parse_roles(&args(&["--role", "billing"]))
                .unwrap_err()
                .contains("billing")
        );
    }
}
