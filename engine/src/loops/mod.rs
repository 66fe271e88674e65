//! The orchestrator's background loops, one file each and one shape: a value built from
//! what it needs, and `run(self, shutdown) -> anyhow::Result<()>`. [`all`] is the one list;
//! `app` spawns it through `platform::liveness::Loops`, which tells `/healthz` when a loop
//! stopped and stops the process on a fatal broker error.
//!
//! - [`relay`]: marks published what the engine sent after its commits, and sweeps up
//!   what was left unsent;
//! - [`replies`]: applies participants' replies (a consumer per slot);
//! - [`timers`]: feeds `Tick` to sagas whose timer is due;
//! - [`bulk`]: works through bulk jobs, one operator action per saga;
//! - [`dead_letters`]: records the dead-letter topic for operators;
//! - [`retention`]: deletes what aged out;
//! - `definitions`: keeps this replica's copy of the registered flows current
//!   ([`crate::shell::catalog::Catalog::follow`]).

pub mod bulk;
pub mod dead_letters;
pub mod relay;
pub mod replies;
pub mod retention;
pub mod timers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use platform::db;
use platform::env::RetentionEnv;
use platform::kafka::{Cluster, ConsumerLoop, DeadLetter, Producer};
use tokio_util::sync::CancellationToken;

use crate::app::Options;
use crate::shell::Engine;
use crate::shell::publish::Marks;

/// A loop ready to spawn.
pub type Running = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Engine loops that each hold one engine-pool connection while they work: relay, timers,
/// bulk jobs, dead letters, retention.
pub const HOLDING_A_CONNECTION: usize = 5;
/// Engine-pool connections kept for operator actions (retry, cancel, resolve, signals).
pub const OPERATOR_ACTIONS: usize = 3;

/// What the loops are built from.
pub struct Wiring<'a> {
    pub engine: &'a Engine,
    pub engine_database: &'a db::Pool,
    pub database_url: &'a str,
    pub cluster: &'a Cluster,
    pub producer: &'a Producer,
    pub retention: &'a RetentionEnv,
    pub options: &'a Options,
    /// What the engine sent after its commits, for the relay to mark.
    pub marks: Option<Marks>,
}

/// Every loop of an orchestrator, named as `/healthz` reports it.
pub fn all(
    wiring: Wiring<'_>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<(String, Running)>> {
    let Wiring {
        engine,
        engine_database,
        database_url,
        cluster,
        producer,
        retention,
        options,
        marks,
    } = wiring;
    let mut loops: Vec<(String, Running)> = Vec::new();
    let mut add = |name: String, running: Running| loops.push((name, running));
    add(
        "definitions".to_owned(),
        Box::pin(Arc::clone(engine.catalog()).follow(
            (*database_url).to_owned(),
            (*engine_database).clone(),
            Duration::from_secs(5),
            shutdown.clone(),
        )),
    );
    if let Some(marks) = marks {
        let relay = relay::Relay::new(
            (*engine_database).clone(),
            (*producer).clone(),
            options.clock.clone(),
            options.relay.clone(),
            marks,
        );
        add("relay".to_owned(), Box::pin(relay.run(shutdown.clone())));
    }
    let timers = timers::Timers::new((*engine).clone(), options.timer_interval);
    add("timers".to_owned(), Box::pin(timers.run(shutdown.clone())));
    // Bulk jobs are not latency-critical: a slower poll keeps an idle deployment quiet.
    let bulk = bulk::Bulk::new(
        (*engine).clone(),
        options.timer_interval.max(Duration::from_secs(1)),
    );
    add("bulk".to_owned(), Box::pin(bulk.run(shutdown.clone())));
    let letters = dead_letters::DeadLetters::new((*cluster).clone(), (*engine_database).clone());
    add(
        "dead-letters".to_owned(),
        Box::pin(letters.run(shutdown.clone())),
    );
    let sweep = retention::Retention::new((*engine_database).clone(), (*retention).clone());
    add(
        "retention".to_owned(),
        Box::pin(sweep.run(shutdown.clone())),
    );
    // Replies of different sagas are applied in parallel batches, one saga's in order. The
    // engine pool's rule: one connection for each loop that holds one, a few for operator
    // actions, and the rest for reply batches, so no user of the pool ever waits on
    // another kind of user.
    for slot in 0..options.reply_consumers {
        let mut consumer_options = cluster.consumer_options(
            format!("{}.orchestrator", cluster.topics().prefix()),
            vec![cluster.topics().replies()],
        );
        let for_replies = engine
            .pool()
            .status()
            .max_size
            .saturating_sub(HOLDING_A_CONNECTION + OPERATOR_ACTIONS)
            .max(1);
        consumer_options.concurrency = consumer_options.concurrency.min(for_replies);
        consumer_options.instance_id = cluster.member_id(&consumer_options.group_id, slot);
        let replies = ConsumerLoop::new(
            cluster.brokers(),
            consumer_options,
            replies::ReplyHandler::new((*engine).clone()),
            DeadLetter::new((*producer).clone(), cluster.topics().dead_letter()),
        )?;
        add(
            format!("replies-{slot}"),
            Box::pin(replies.run(shutdown.clone())),
        );
    }
    Ok(loops)
}
