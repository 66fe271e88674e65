//! Every setting of the binaries, in one table per concern: each is a command-line flag and
//! an environment variable (clap), with its meaning and default in `--help`. The values then
//! go through the typed parsing of [`crate::env`], so a bad value still stops the process
//! with an error naming the variable. The README's configuration table is checked against
//! these tables by a test (`orchestrator/tests/settings.rs`), so the two cannot drift.

use clap::{Arg, ArgMatches, Command};

use crate::env::Vars;

/// One setting: `--long` or `ENV`, else its default.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub env: &'static str,
    pub long: &'static str,
    /// `None`: unset unless given.
    pub default: Option<&'static str>,
    pub help: &'static str,
    /// Its value is not shown in `--help` (keys).
    pub secret: bool,
}

const fn setting(
    env: &'static str,
    long: &'static str,
    default: Option<&'static str>,
    help: &'static str,
) -> Setting {
    Setting {
        env,
        long,
        default,
        help,
        secret: false,
    }
}

const fn secret(setting: Setting) -> Setting {
    Setting {
        secret: true,
        ..setting
    }
}

/// Postgres and Redis.
pub const STORES: &[Setting] = &[
    // URLs may carry a password: --help never shows their values.
    secret(setting(
        "DATABASE_URL",
        "database-url",
        Some("postgres://postgres@127.0.0.1:5432/sagaflow"),
        "Postgres database; created if it does not exist",
    )),
    setting(
        "DATABASE_POOL_SIZE",
        "database-pool-size",
        Some("16"),
        "Postgres connections of the API (a worker process: all of its connections)",
    ),
    setting(
        "DATABASE_ENGINE_POOL_SIZE",
        "database-engine-pool-size",
        Some("16"),
        "Postgres connections of the engine: one per loop (5), 3 for operator actions, the rest for reply batches (at most KAFKA_CONSUMER_CONCURRENCY); in dev the workers get a pool of this size too",
    ),
    setting(
        "DATABASE_POOL_WAIT_MS",
        "database-pool-wait-ms",
        Some("2000"),
        "longest wait for a free connection; past it the API answers 503 and the loops retry",
    ),
    setting(
        "DATABASE_STATEMENT_TIMEOUT_MS",
        "database-statement-timeout-ms",
        Some("30000"),
        "Postgres statement_timeout of every connection",
    ),
    secret(setting(
        "REDIS_URL",
        "redis-url",
        Some("redis://127.0.0.1:6379"),
        "Redis for the workers' locks",
    )),
];

/// Kafka.
pub const KAFKA: &[Setting] = &[
    setting(
        "KAFKA_BROKERS",
        "kafka-brokers",
        None,
        "host:port[,host:port]; unset: dev starts an embedded Kafka, serve and worker refuse to start",
    ),
    setting(
        "KAFKA_INSTANCE_ID",
        "kafka-instance-id",
        None,
        "static group membership: stable across restarts, unique among live processes",
    ),
    setting(
        "KAFKA_FETCH_WAIT_MS",
        "kafka-fetch-wait-ms",
        None,
        "longest time a fetch waits at the broker when there is nothing to read; unset: 10, \
         3 with dev's embedded Kafka",
    ),
    setting(
        "KAFKA_CONSUMER_CONCURRENCY",
        "kafka-consumer-concurrency",
        Some("8"),
        "batches of different saga ids one consumer runs at once",
    ),
    setting(
        "TOPIC_PREFIX",
        "topic-prefix",
        Some("sagaflow"),
        "prefix of every topic",
    ),
];

/// Retention windows.
pub const RETENTION: &[Setting] = &[
    setting(
        "RETENTION_INBOX_DAYS",
        "retention-inbox-days",
        Some("14"),
        "how long the inboxes and step fences are kept (longer than the broker's retention)",
    ),
    setting(
        "RETENTION_HISTORY_DAYS",
        "retention-history-days",
        Some("90"),
        "how long the history of finished sagas and the notifications are kept",
    ),
];

/// Logs.
pub const LOGS: &[Setting] = &[
    setting("LOG_FORMAT", "log-format", Some("text"), "text or json"),
    setting(
        "RUST_LOG",
        "log-filter",
        Some("info"),
        "log filter (tracing-subscriber syntax)",
    ),
];

/// The flags of `settings`, each also read from its environment variable.
pub fn args(settings: &[&'static [Setting]]) -> Vec<Arg> {
    settings
        .iter()
        .flat_map(|table| table.iter())
        .map(|s| {
            let mut arg = Arg::new(s.env)
                .long(s.long)
                .env(s.env)
                .value_name("VALUE")
                .help(s.help)
                .global(true)
                .hide_env_values(s.secret);
            if let Some(default) = s.default {
                arg = arg.default_value(default);
            }
            arg
        })
        .collect()
}

/// The values given (flag, then variable, then default), as the typed parsers read them.
pub fn vars(matches: &ArgMatches, settings: &[&'static [Setting]]) -> Vars {
    let pairs: Vec<(&str, String)> = settings
        .iter()
        .flat_map(|table| table.iter())
        .filter_map(|s| {
            matches
                .get_one::<String>(s.env)
                .map(|value| (s.env, value.clone()))
        })
        .collect();
    Vars::from_pairs(pairs.iter().map(|(name, value)| (*name, value.as_str())))
}

/// The settings of `tables` that `help` (a command's long help) does not show with their
/// flag and variable; empty when `--help` documents them all.
pub fn missing_from_help(help: &str, tables: &[&'static [Setting]]) -> Vec<&'static str> {
    tables
        .iter()
        .flat_map(|table| table.iter())
        .filter(|s| {
            !help.contains(&format!("--{}", s.long)) || !help.contains(&format!("env: {}", s.env))
        })
        .map(|s| s.env)
        .collect()
}

/// `command` with the flags of `settings` (for tests and tools that build a command).
pub fn command(command: Command, settings: &[&'static [Setting]]) -> Command {
    command.args(args(settings))
}

/// Implements clap's `Args` for a settings type made of tables.
#[macro_export]
macro_rules! settings_args {
    ($name:ident, [$($table:expr),* $(,)?]) => {
        /// Every setting of this binary, parsed by clap into typed-parser input.
        pub struct $name {
            pub vars: $crate::env::Vars,
        }

        impl $name {
            pub const TABLES: &'static [&'static [$crate::settings::Setting]] = &[$($table),*];
        }

        impl clap::FromArgMatches for $name {
            fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                Ok(Self { vars: $crate::settings::vars(matches, Self::TABLES) })
            }

            fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
                self.vars = $crate::settings::vars(matches, Self::TABLES);
                Ok(())
            }
        }

        impl clap::Args for $name {
            fn augment_args(command: clap::Command) -> clap::Command {
                command.args($crate::settings::args(Self::TABLES))
            }

            fn augment_args_for_update(command: clap::Command) -> clap::Command {
                Self::augment_args(command)
            }
        }
    };
}
