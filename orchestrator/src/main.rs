//! `orchestrator dev | serve | migrate | openapi`

use std::process::ExitCode;

use anyhow::Context as _;
use orchestrator::app::{self, Mode};
use orchestrator::config::Config;
use platform::kafka::Cluster;

const USAGE: &str = "usage: orchestrator <command>

commands:
  dev       API, engine and every worker role in one process; embedded Kafka when
            KAFKA_BROKERS is unset (the quick start)
  serve     API and engine (needs KAFKA_BROKERS); workers run as `worker --role ...`
  migrate   create the database if missing and apply migrations, then exit
  seed      migrate, then add demo data (products, users, vendors, coupon campaigns)
  openapi   print the OpenAPI document

Configuration is read from environment variables; see README.md.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.as_slice() {
        [command] => command.as_str(),
        [] => "dev",
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if matches!(command, "-h" | "--help" | "help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
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
    let outcome = runtime.block_on(async {
        match command {
            "dev" => run(&config, Mode::Dev).await,
            "serve" => run(&config, Mode::Serve).await,
            "migrate" => platform::db::prepare(&config.stores.database_url).await,
            "seed" => seed(&config).await,
            "openapi" => {
                println!("{}", orchestrator::api::spec_json());
                Ok(())
            }
            other => Err(anyhow::anyhow!("unknown command `{other}`\n\n{USAGE}")),
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
    let cluster = Cluster::from_env(&config.kafka, mode == Mode::Dev)?;
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
    if !config.auth.enforced() {
        println!(
            "!! ACCESS CONTROL IS OFF: anyone who reaches {base} may do everything, \
             minting money included. Fine on a laptop; set API_KEYS before sharing the port. !!"
        );
    }
    running.wait().await;
    tracing::info!("orchestrator stopped");
    Ok(())
}

async fn seed(config: &Config) -> anyhow::Result<()> {
    platform::db::prepare(&config.stores.database_url).await?;
    let pool = platform::db::pool(&config.stores.database_url, 2)?;
    let seeded = orchestrator::seed::run(&pool).await?;
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
