//! `orchestrator [dev | serve | migrate | seed | openapi]`; `orchestrator --help` lists every
//! setting with its flag, variable and default.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use orchestrator::app::{self, Mode};
use orchestrator::config::{Config, Settings};
use platform::kafka::Cluster;

/// sagaflow's orchestrator: the saga engine and its REST API. Every setting is a flag or an
/// environment variable (see README.md, "Configuration").
#[derive(Parser)]
#[command(name = "orchestrator", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Commands>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq, Debug)]
enum Commands {
    /// API, engine and every worker role in one process; an embedded Kafka when
    /// KAFKA_BROKERS is unset (the quick start, and the default command)
    Dev,
    /// API and engine (needs KAFKA_BROKERS); workers run as `worker --role ...`
    Serve,
    /// Create the database if missing and apply the migrations, then exit
    Migrate,
    /// Migrate, then add demo data (products, users, vendors, coupon campaigns)
    Seed,
    /// Print the OpenAPI document
    Openapi,
}

/// The process's name in traces, unless `OTEL_SERVICE_NAME` names it.
const SERVICE: &str = "sagaflow-orchestrator";

/// Many small, short-lived allocations (JSON, messages, futures): mimalloc spends less on
/// them than glibc's malloc (README, "Benchmarks").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Commands::Dev);
    if command == Commands::Openapi {
        println!("{}", orchestrator::app::spec_json());
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_vars(&cli.settings.vars) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let filter = cli.settings.vars.optional("RUST_LOG").ok().flatten();
    // Held to the end of main: dropping it flushes the spans not yet exported.
    let _telemetry =
        platform::telemetry::init(SERVICE, config.engine.log_format, filter.as_deref());
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
    let outcome = runtime.block_on(async {
        match command {
            Commands::Dev => run(&config, Mode::Dev).await,
            Commands::Serve => run(&config, Mode::Serve).await,
            Commands::Migrate => platform::db::prepare(&config.engine.stores.database_url).await,
            Commands::Seed => seed(&config).await,
            Commands::Openapi => Ok(()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "orchestrator failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: &Config, mode: Mode) -> anyhow::Result<()> {
    let shutdown = platform::shutdown::on_signal()?;
    let cluster = Cluster::from_env(&config.engine.kafka, mode == Mode::Dev)?;
    let running = app::start(config, cluster.clone(), mode, shutdown)
        .await
        .context("starting the orchestrator")?;
    let base = format!("http://{}", running.local_addr);
    tracing::info!(
        api = %base,
        swagger_ui = %format!("{base}/docs"),
        kafka = %cluster.brokers(),
        embedded_kafka = cluster.is_embedded(),
        ?mode,
        "sagaflow orchestrator ready",
    );
    println!("sagaflow is up: API {base}/v1  Swagger UI {base}/docs  readiness {base}/readyz");
    if !config.engine.auth.enforced() {
        println!(
            "!! ACCESS CONTROL IS OFF: anyone who reaches {base} may do everything, \
             minting money included. Fine on a laptop; set API_KEYS before sharing the port. !!"
        );
    }
    let loops = running.loops.clone();
    running.wait().await;
    if let Some(fatal) = loops.fatal() {
        anyhow::bail!("{} stopped: {}", fatal.name, fatal.reason);
    }
    if let Some(reason) = shop::metrics::fatal_reason() {
        anyhow::bail!("{reason}"); // `dev`: a worker role's
    }
    tracing::info!("orchestrator stopped");
    Ok(())
}

async fn seed(config: &Config) -> anyhow::Result<()> {
    platform::db::prepare(&config.engine.stores.database_url).await?;
    let pool = platform::db::pool(&config.engine.stores.database_url, 2)?;
    let seeded = shop::seed::run(&pool).await?;
    println!(
        "seeded {} products, {} users, {} vendors, {} coupon campaigns",
        seeded.products,
        seeded.users.len(),
        seeded.vendors.len(),
        seeded.campaigns.len()
    );
    println!("users: {:?}", seeded.users);
    println!("coupon campaigns: {:?}", seeded.campaigns);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn every_setting_is_a_flag_with_its_variable_in_help_and_dev_is_the_default() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        let missing = platform::settings::missing_from_help(&help, Settings::TABLES);
        assert!(missing.is_empty(), "not in --help: {missing:?}");
        let cli = Cli::try_parse_from(["orchestrator"]).unwrap();
        assert_eq!(cli.command, None);
        let cli =
            Cli::try_parse_from(["orchestrator", "serve", "--http-addr", "127.0.0.1:9"]).unwrap();
        assert_eq!(cli.command, Some(Commands::Serve));
        assert_eq!(
            cli.settings.vars.optional("HTTP_ADDR").unwrap().as_deref(),
            Some("127.0.0.1:9"),
            "a flag after the command still counts"
        );
    }

    #[test]
    fn a_bad_value_still_names_its_variable() {
        let cli = Cli::try_parse_from(["orchestrator", "--kafka-fetch-wait-ms", "0"]).unwrap();
        let err = Config::from_vars(&cli.settings.vars).unwrap_err();
        assert_eq!(err.name, "KAFKA_FETCH_WAIT_MS");
    }

    #[test]
    fn the_defaults_of_the_flags_are_the_defaults_of_the_code() {
        // From the tables, not from a parse, which would also read this process's variables.
        let defaults: Vec<(&str, &str)> = Settings::TABLES
            .iter()
            .flat_map(|table| table.iter())
            .filter_map(|setting| setting.default.map(|value| (setting.env, value)))
            .collect();
        let from_flags = Config::from_vars(&platform::env::Vars::from_pairs(defaults)).unwrap();
        let from_code = Config::from_vars(&platform::env::Vars::from_pairs([])).unwrap();
        assert_eq!(format!("{from_flags:?}"), format!("{from_code:?}"));
    }
}
