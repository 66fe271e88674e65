//! Shared by the engine tests and the engine benchmark: scripted participants that answer
//! commands over the real broker as a test dictates, and an orchestrator started on the
//! test's private database and topics.

#![allow(dead_code)]

pub mod browser;
pub mod http;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use engine::schema::sagas;
use engine::shell::store::SagaRow;
use orchestrator::app::{self, Mode, Options, Running};
use orchestrator::config::Config;
use platform::contract::{Command, Outcome, Reply, Role, Topics};
use platform::env::Vars;
use platform::kafka::{
    Cluster, ConsumerLoop, ConsumerOptions, DeadLetter, Delivery, Handler, Producer,
};
use platform::testkit::{self, TestEnv};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a scripted participant does with a command.
#[derive(Debug, Clone)]
pub enum Reaction {
    Reply(Outcome),
    /// The same reply (same id) twice: a redelivery.
    ReplyTwice(Outcome),
    Silence,
}

pub type Script = Arc<dyn Fn(&Command) -> Reaction + Send + Sync>;

pub fn succeed() -> Reaction {
    Reaction::Reply(Outcome::Succeeded {
        output: serde_json::json!({ "ok": true }),
    })
}

pub fn script(f: impl Fn(&Command) -> Reaction + Send + Sync + 'static) -> Script {
    Arc::new(f)
}

struct Scripted {
    producer: Producer,
    replies_topic: String,
    script: Arc<RwLock<Script>>,
    log: Arc<Mutex<Vec<Command>>>,
}

impl Handler<Command> for Scripted {
    async fn handle(&self, batch: &[Delivery<Command>]) -> anyhow::Result<()> {
        let mut replies = Vec::new();
        for delivery in batch {
            let command = &delivery.message;
            let script = self.script.read().unwrap().clone();
            let reaction = script(command);
            self.log.lock().unwrap().push(command.clone());
            let (outcome, times) = match reaction {
                Reaction::Reply(outcome) => (outcome, 1),
                Reaction::ReplyTwice(outcome) => (outcome, 2),
                Reaction::Silence => continue,
            };
            let reply = Reply::answering(command, outcome);
            replies.extend(std::iter::repeat_n(reply, times));
        }
        // Enqueued in order, acknowledged together: the producer pipelines the batch.
        let keys: Vec<String> = replies.iter().map(|r| r.saga_id.to_string()).collect();
        let sends = replies
            .iter()
            .zip(&keys)
            .map(|(reply, key)| self.producer.send_json(&self.replies_topic, key, reply));
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }
}

/// Participants of every role that answer as the script says.
pub struct Participants {
    log: Arc<Mutex<Vec<Command>>>,
    script: Arc<RwLock<Script>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Participants {
    pub fn start(cluster: &Cluster, script: Script) -> Self {
        let roles: Vec<&str> = Role::PARTICIPANTS
            .iter()
            .map(|role| role.as_str())
            .collect();
        Self::start_roles(cluster, &roles, script)
    }

    /// Participants of the roles named (a registered definition's new role, say); their
    /// command topics must exist.
    pub fn start_roles(cluster: &Cluster, roles: &[&str], script: Script) -> Self {
        let topics: &Topics = cluster.topics();
        let producer = cluster.producer().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(RwLock::new(script));
        let handler = Scripted {
            producer: producer.clone(),
            replies_topic: topics.replies(),
            script: script.clone(),
            log: log.clone(),
        };
        let command_topics = roles.iter().map(|role| topics.commands(role)).collect();
        let options = ConsumerOptions::new(format!("{}.scripted", topics.prefix()), command_topics);
        let consumer = ConsumerLoop::new(
            cluster.brokers(),
            options,
            handler,
            DeadLetter::new(producer, topics.dead_letter()),
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(consumer.run(shutdown.clone()));
        Self {
            log,
            script,
            shutdown,
            task,
        }
    }

    pub fn set_script(&self, script: Script) {
        *self.script.write().unwrap() = script;
    }

    /// Every command received so far, in arrival order.
    pub fn commands(&self) -> Vec<Command> {
        self.log.lock().unwrap().clone()
    }

    /// The command names one saga received, in order; a re-send of a command (same id)
    /// counts once.
    pub fn names_for(&self, saga: Uuid) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.commands()
            .into_iter()
            .filter(|c| c.saga_id == saga && seen.insert(c.id))
            .map(|c| c.name)
            .collect()
    }

    /// Every delivery one saga received, re-sends included, in arrival order.
    pub fn deliveries_for(&self, saga: Uuid) -> Vec<Command> {
        self.commands()
            .into_iter()
            .filter(|c| c.saga_id == saga)
            .collect()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// An orchestrator on the test's database and topics.
pub struct Orchestrator {
    pub running: Running,
    shutdown: CancellationToken,
}

impl Orchestrator {
    /// `serve` mode: API and engine; participants are the test's.
    pub async fn start(env: &TestEnv, options: Options) -> Self {
        Self::start_mode(env, Mode::Serve, options).await
    }

    /// `dev` mode: API, engine and every real participant in-process.
    pub async fn dev(env: &TestEnv) -> Self {
        Self::start_mode(env, Mode::Dev, Options::default()).await
    }

    /// The API's base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.running.local_addr)
    }

    async fn start_mode(env: &TestEnv, mode: Mode, options: Options) -> Self {
        Self::start_with_vars(env, mode, options, &[]).await
    }

    /// Like `start`, as a static group member named `instance` (what `KAFKA_INSTANCE_ID`
    /// does for a process): a restart under the same name takes the old member's place at
    /// once. A broker that never evicts a member (tansu) needs it when a stop can come
    /// while the member is still joining.
    pub async fn start_as(env: &TestEnv, options: Options, instance: &str) -> Self {
        let cluster = env
            .kafka
            .cluster
            .clone()
            .with_instance_id(Some(instance.to_owned()));
        Self::launch(env, cluster, Mode::Serve, options, &[]).await
    }

    /// Like `start`/`dev`, with extra configuration variables.
    pub async fn start_with_vars(
        env: &TestEnv,
        mode: Mode,
        options: Options,
        vars: &[(&str, &str)],
    ) -> Self {
        Self::launch(env, env.kafka.cluster.clone(), mode, options, vars).await
    }

    async fn launch(
        env: &TestEnv,
        cluster: platform::kafka::Cluster,
        mode: Mode,
        options: Options,
        vars: &[(&str, &str)],
    ) -> Self {
        let mut pairs = vec![
            ("DATABASE_URL", env.db.url.as_str()),
            ("HTTP_ADDR", "127.0.0.1:0"),
            // Tests send bursts past a service's budget; a loaded machine must not turn
            // them into 503s (the one test of that sets its own wait).
            ("DATABASE_POOL_WAIT_MS", "60000"),
            // Access control has tests of its own (`auth.rs`), which switch it on.
            ("AUTH", "off"),
        ];
        pairs.extend_from_slice(vars);
        let config = Config::from_vars(&Vars::from_pairs(pairs)).unwrap();
        let shutdown = CancellationToken::new();
        let running = app::start_with(&config, cluster, mode, options, shutdown.clone())
            .await
            .unwrap();
        Self { running, shutdown }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running.wait().await;
    }
}

pub async fn load(env: &TestEnv, id: Uuid) -> SagaRow {
    let mut conn = env.db.pool.get().await.unwrap();
    sagas::table
        .find(id)
        .select(SagaRow::as_select())
        .first(&mut conn)
        .await
        .unwrap()
}

/// How long a test waits for a condition before it fails.
pub const WAIT: Duration = Duration::from_secs(120);

/// Waits until the saga reaches `status`; each round, `tick` sees the row and may move the
/// clock.
pub async fn wait_for_status_with(
    env: &TestEnv,
    id: Uuid,
    status: &str,
    mut tick: impl FnMut(&SagaRow),
) -> SagaRow {
    let reached = testkit::poll_until(WAIT, async || {
        let row = load(env, id).await;
        if row.status == status {
            return Some(row);
        }
        tick(&row);
        None
    })
    .await;
    match reached {
        Some(row) => row,
        None => {
            let row = load(env, id).await;
            panic!(
                "saga {id} stuck in {} (wanted {status}): {}",
                row.status, row.state
            )
        }
    }
}

pub async fn wait_for_status(env: &TestEnv, id: Uuid, status: &str) -> SagaRow {
    wait_for_status_with(env, id, status, |_| {}).await
}

/// Whether some step of the saga waits for a retry time (forward or compensation).
pub fn awaiting_retry(row: &SagaRow) -> bool {
    row.state["steps"].as_array().is_some_and(|steps| {
        steps
            .iter()
            .any(|s| s["forward"] == "awaiting_retry" || s["compensation"] == "awaiting_retry")
    })
}

/// Sagas an orchestrator instance finished as COMPLETED.
pub fn completed(engine: &engine::shell::Engine) -> u64 {
    engine.metrics().completed.get()
}

/// Moves `clock` just past the saga's pending retry time, when it waits for one, and never
/// further: a stale read cannot push an attempt already in flight past its deadline.
pub fn skip_retry_wait(clock: &engine::clock::Clock, row: &SagaRow) {
    if !awaiting_retry(row) {
        return;
    }
    let retry_at = row.state["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|step| step["retry_at"].as_str())
        .filter_map(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .map(|at| at.with_timezone(&Utc))
        .min();
    if let Some(at) = retry_at
        && let Ok(gap) = (at - clock.now() + chrono::TimeDelta::milliseconds(10)).to_std()
    {
        clock.advance(gap);
    }
}

/// Waits (up to [`WAIT`]) until `condition` holds.
pub async fn eventually(what: &str, condition: impl AsyncFnMut() -> bool) {
    testkit::eventually(what, WAIT, condition).await;
}
