//! sagaflow started as separate processes for a run: a Redis of its own, a database of its
//! own, and either one `orchestrator dev` (embedded broker, every worker in-process) or
//! `orchestrator serve` replicas plus `worker` processes on a real broker (a tansu of its own,
//! or `KAFKA_BROKERS`). Used by the chaos run and by the load generator.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cluster::{Kind, Proc, free_port, wait_for_port};

/// Every worker role, in the order processes are started.
pub const ROLES: [&str; 6] = [
    "inventory",
    "payment",
    "shipment",
    "coupon",
    "vendor",
    "notification",
];

#[derive(Debug, Clone)]
pub struct Options {
    /// Names the run's directory, database and topic prefix (`chaos`, `load`).
    pub name: &'static str,
    /// Where the `orchestrator` and `worker` binaries are.
    pub bin: PathBuf,
    /// One `orchestrator dev` instead of separate processes.
    pub dev: bool,
    /// `orchestrator serve` replicas (not with `dev`).
    pub replicas: usize,
    /// Worker processes per role (not with `dev`); roles not named get one.
    pub workers: Vec<(String, usize)>,
    /// Run this tansu as the broker; else `KAFKA_BROKERS` (not with `dev`).
    pub tansu: Option<PathBuf>,
    /// The broker keeps its data on disk (SQLite), so that it survives a kill.
    pub durable_broker: bool,
    /// Extra environment for every sagaflow process.
    pub env: Vec<(String, String)>,
    /// A Postgres cluster of the run's own (initdb on a spare port), which chaos may kill;
    /// else the server `DATABASE_URL` names (the machine's, never touched).
    pub own_postgres: bool,
    /// Register the click-and-collect flow (`participants/python/click_and_collect.json`)
    /// and run its Python loyalty participant: on a real broker only, and only where
    /// python3 has confluent-kafka.
    pub click_and_collect: bool,
}

impl Options {
    pub fn new(name: &'static str, bin: PathBuf) -> Self {
        Self {
            name,
            bin,
            dev: false,
            replicas: 2,
            workers: Vec::new(),
            tansu: std::env::var_os("TANSU").map(PathBuf::from),
            durable_broker: false,
            env: Vec::new(),
            own_postgres: false,
            click_and_collect: false,
        }
    }

    fn workers_of(&self, role: &str) -> usize {
        self.workers
            .iter()
            .find(|(name, _)| name == role)
            .map_or(1, |(_, n)| *n)
    }
}

pub struct System {
    pub procs: Vec<Proc>,
    /// HTTP ports of the orchestrators.
    pub ports: Vec<u16>,
    pub database_url: String,
    pub dir: PathBuf,
    /// What the broker is: `embedded`, `tansu` or `KAFKA_BROKERS`.
    pub broker: &'static str,
    /// Whether the click-and-collect flow and its loyalty participant run.
    pub click_and_collect: bool,
}

impl System {
    /// Starts every process and waits until each orchestrator is ready.
    pub async fn start(options: &Options) -> anyhow::Result<Self> {
        let run = format!("{}{}", options.name, std::process::id());
        let dir = std::env::temp_dir().join(format!("sagaflow-{run}"));
        std::fs::create_dir_all(dir.join("data"))?;
        let mut procs: Vec<Proc> = Vec::new();
        let server = if options.own_postgres {
            let (postgres, url) = start_postgres(&dir).await?;
            procs.push(postgres);
            url
        } else {
            std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
        };
        let (admin, _) = platform::db::split_database_url(&server)?;
        let server_root = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(root, _)| root);
        let database_url = format!("{server_root}/sagaflow_{run}");
        // The binaries under test create and migrate their database: another build's
        // (`--bin`) runs on its own schema, not on this build's.
        let mut migrate = Command::new(options.bin.join("orchestrator"));
        migrate
            .arg("migrate")
            .env("DATABASE_URL", &database_url)
            .env("RUST_LOG", "warn");
        let migrated = tokio::task::spawn_blocking(move || migrate.status())
            .await?
            .context("running `orchestrator migrate`")?;
        anyhow::ensure!(
            migrated.success(),
            "`orchestrator migrate` failed: {migrated}"
        );

        let redis_port = free_port()?;
        let mut redis = Proc::new(
            "redis",
            Kind::Redis,
            &PathBuf::from("redis-server"),
            &[
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            &dir,
        );
        redis.start()?;
        wait_for_port(redis_port, Duration::from_secs(10)).await?;
        procs.push(redis);

        let common = |proc: Proc| {
            let proc = proc
                .env("DATABASE_URL", &database_url)
                .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
                .env("TOPIC_PREFIX", &run)
                .env("RUST_LOG", "warn");
            options
                .env
                .iter()
                .fold(proc, |proc, (name, value)| proc.env(name, value))
        };
        let mut ports = Vec::new();
        let broker;
        let click_and_collect = options.click_and_collect && !options.dev && python_with_kafka();
        let mut loyalty = None;
        if options.dev {
            broker = "embedded";
            let port = free_port()?;
            let mut dev = common(Proc::new(
                "dev",
                Kind::Orchestrator,
                &options.bin.join("orchestrator"),
                &["dev"],
                &dir,
            ))
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            // `dev` means its embedded broker, even where KAFKA_BROKERS is set (as in CI):
            // a real broker outlives the killed process and, with tansu, keeps its dead
            // group members.
            .unset("KAFKA_BROKERS");
            dev.port = Some(port);
            ports.push(port);
            procs.push(dev);
        } else {
            let brokers = match &options.tansu {
                Some(tansu) => {
                    broker = "tansu";
                    let (proc, brokers) = start_tansu(tansu, &dir, options.durable_broker).await?;
                    procs.push(proc);
                    brokers
                }
                None => {
                    broker = "KAFKA_BROKERS";
                    std::env::var("KAFKA_BROKERS")
                        .context("give --tansu PATH (or TANSU), or KAFKA_BROKERS")?
                }
            };
            let definitions = dir.join("definitions");
            if click_and_collect {
                write_click_and_collect(&definitions)?;
                let name = "worker-loyalty-1";
                loyalty = Some(
                    common(Proc::new(
                        name,
                        Kind::Worker,
                        &PathBuf::from("python3"),
                        &[&participant("loyalty.py").to_string_lossy()],
                        &dir,
                    ))
                    .env("KAFKA_BROKERS", &brokers)
                    .env("KAFKA_INSTANCE_ID", name)
                    .env("INBOX_DB", dir.join("loyalty.db").to_string_lossy()),
                );
            }
            for replica in 0..options.replicas {
                let name = format!("orchestrator-{}", char::from(b'a' + replica as u8));
                let port = free_port()?;
                let mut proc = common(Proc::new(
                    &name,
                    Kind::Orchestrator,
                    &options.bin.join("orchestrator"),
                    &["serve"],
                    &dir,
                ))
                .env("KAFKA_BROKERS", &brokers)
                .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
                .env("KAFKA_INSTANCE_ID", &name)
                .env("API_KEYS", crate::load::API_KEY_ENTRY)
                .env("DATABASE_POOL_SIZE", "8")
                .env("DATABASE_ENGINE_POOL_SIZE", "12");
                if click_and_collect {
                    proc = proc.env("DEFINITIONS_DIR", definitions.to_string_lossy());
                }
                // The harness is one key for every simulated user: the per-key bounds,
                // which keep one caller from crowding out the others, would bound them all
                // (unless the run sets them, as the load generator's `--crowd` does).
                for (name, value) in [
                    ("HTTP_MAX_WAITS_PER_KEY", "768"),
                    ("HTTP_MAX_SIGNALS_PER_KEY", "1024"),
                ] {
                    if !options.env.iter().any(|(set, _)| set == name) {
                        proc = proc.env(name, value);
                    }
                }
                proc.port = Some(port);
                ports.push(port);
                procs.push(proc);
            }
            for role in ROLES {
                for n in 1..=options.workers_of(role) {
                    let name = format!("worker-{role}-{n}");
                    let proc = common(Proc::new(
                        &name,
                        Kind::Worker,
                        &options.bin.join("worker"),
                        &["--role", role],
                        &dir,
                    ))
                    .env("KAFKA_BROKERS", &brokers)
                    .env("KAFKA_INSTANCE_ID", &name)
                    .env("API_KEYS", crate::load::API_KEY_ENTRY)
                    .env("DATABASE_POOL_SIZE", "4");
                    procs.push(proc);
                }
            }
        }
        for proc in procs
            .iter_mut()
            .filter(|p| matches!(p.kind, Kind::Orchestrator | Kind::Worker))
        {
            proc.start()?;
        }
        for port in &ports {
            wait_ready(*port, Duration::from_secs(120)).await?;
        }
        // After the orchestrators: registering the flow created the loyalty topic.
        if let Some(mut loyalty) = loyalty {
            loyalty.start()?;
            procs.push(loyalty);
        }
        Ok(Self {
            procs,
            ports,
            database_url,
            dir,
            broker,
            click_and_collect,
        })
    }
}

/// A file of `participants/python/`.
fn participant(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../participants/python")
        .join(file)
}

fn python_with_kafka() -> bool {
    Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The shipped click-and-collect document with a run's timings: a pickup awaited 15 s
/// (the load generator sends most pickups; the rest time out and compensate) and a
/// settling wait of 1 s.
fn write_click_and_collect(dir: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(participant("click_and_collect.json"))?;
    let mut document: serde_json::Value = serde_json::from_str(&text)?;
    document["steps"][1]["timeout_ms"] = serde_json::json!(15_000);
    document["steps"][2]["duration_ms"] = serde_json::json!(1_000);
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("click_and_collect.json"), document.to_string())?;
    Ok(())
}

/// A Postgres cluster in `dir/pg` on a spare port: `initdb`, then `postgres` itself (not
/// `pg_ctl`, so that the process chaos kills is the server). Both refuse to run as root,
/// so as root they run as the `postgres` user. Returns the process and a server URL.
async fn start_postgres(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let bin = postgres_bin()?;
    let data = dir.join("pg");
    std::fs::create_dir_all(&data)?;
    let user = postgres_user()?;
    if let Some((uid, gid)) = user {
        let owner = format!("{uid}:{gid}");
        run(Command::new("chown").args(["-R", &owner]).arg(dir))?;
    }
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "--no-sync"])
        .stdout(std::process::Stdio::null());
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt as _;
        initdb.uid(uid).gid(gid);
    }
    run(&mut initdb)?;
    let port = free_port()?;
    let data = data.to_string_lossy().into_owned();
    let mut postgres = Proc::new(
        "postgres",
        Kind::Postgres,
        &bin.join("postgres"),
        &[
            "-D",
            &data,
            "-p",
            &port.to_string(),
            "-k",
            &data,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
            // The load generator's `--statements` counts statements per saga with it.
            "-c",
            "shared_preload_libraries=pg_stat_statements",
        ],
        dir,
    )
    .as_user(user);
    postgres.start()?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    // Listening is not ready: the server refuses queries while it starts up.
    postgres_answers(&url, Duration::from_secs(60)).await?;
    Ok((postgres, url))
}

/// Waits until the database answers a query on a fresh connection.
pub async fn postgres_answers(url: &str, within: Duration) -> anyhow::Result<()> {
    use diesel_async::{AsyncConnection as _, SimpleAsyncConnection as _};
    let deadline = Instant::now() + within;
    loop {
        if let Ok(mut conn) = diesel_async::AsyncPgConnection::establish(url).await
            && conn.batch_execute("SELECT 1").await.is_ok()
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no answer within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where `initdb` and `postgres` are: `pg_config --bindir`, else Debian's newest.
fn postgres_bin() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if bin.join("initdb").exists() {
            return Ok(bin);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no Postgres server binaries (initdb) on this machine")?
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().context("no initdb under /usr/lib/postgresql")
}

/// As root, the `postgres` user's (uid, gid); else `None` (run as ourselves).
fn postgres_user() -> anyhow::Result<Option<(u32, u32)>> {
    let id = |flag: &str, who: Option<&str>| -> anyhow::Result<u32> {
        let out = Command::new("id").arg(flag).args(who).output()?;
        anyhow::ensure!(out.status.success(), "id {flag} {who:?} failed");
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    if id("-u", None)? != 0 {
        return Ok(None);
    }
    Ok(Some((
        id("-u", Some("postgres"))?,
        id("-g", Some("postgres"))?,
    )))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("{command:?}"))?;
    anyhow::ensure!(status.success(), "{command:?}: {status}");
    Ok(())
}

async fn start_tansu(tansu: &Path, dir: &Path, durable: bool) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let listener = format!("tcp://127.0.0.1:{port}");
    let storage = if durable {
        "sqlite://data/tansu.db"
    } else {
        "memory://tansu/"
    };
    let mut broker = Proc::new(
        "broker",
        Kind::Broker,
        tansu,
        &[
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
            "--storage-engine",
            storage,
        ],
        dir,
    );
    broker.start()?;
    wait_for_port(port, Duration::from_secs(30)).await?;
    Ok((broker, format!("127.0.0.1:{port}")))
}

async fn wait_ready(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} not ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
