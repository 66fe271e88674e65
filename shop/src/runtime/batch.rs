//! A batch of commands, as the consumer loop hands it over, processed together.
//!
//! What a command costs on its own (the locks, a transaction with its claim, its reply and
//! its commit) is paid once per batch:
//! 1. with the Lua gate, each forward command takes its capacity (a lease of its own);
//! 2. with Redis locks, the union of the batch's resources is locked once, in sorted order
//!    (see [`Locks::lock_all`](crate::lock::Locks::lock_all)), so two batches with
//!    overlapping resources cannot deadlock;
//! 3. one transaction: one claim of every command, then each command in batch order (which
//!    keeps each saga's commands in order), then one statement storing every reply, and one
//!    commit. Commands run together first, with no savepoint between them: that is the
//!    common case, where every one succeeds. The first one rejected or failing aborts that
//!    attempt, and the batch runs again with each command in its own savepoint, so that a
//!    rejection or a failure rolls back only its own change. After a batch with a refusal
//!    the next one starts apart, so that a run of refusals (a coupon rush) is not paid
//!    twice;
//! 4. forward commands the participant can decide as a set (`Participant::apply_set`: a
//!    rush of claims on one campaign) are applied together in a few statements, and their
//!    steps claimed against the fences in one more; a rejection in a set changed nothing,
//!    so it needs no savepoint and no second run. A set whose step turns out fenced rolls
//!    back and runs one by one;
//! 5. a command the claim found answered before (a redelivery, or another replica's
//!    retry that committed first) gets that stored reply, read after the commit, and
//!    nothing else: its lock and gate capacity were taken for nothing and are given back.
//!    Redeliveries are rare, so the claim finds them instead of a read before every batch.
//!
//! A command that fails (a business rule is not a failure; an infrastructure error is)
//! rolls back its savepoint only and gives its claim back: its neighbours commit, and the
//! consumer loop retries it on its own.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use chrono::Utc;
use diesel_async::AsyncConnection as _;
use platform::contract::{Command, Direction, Outcome, Reply};
use platform::db::Connection;
use uuid::Uuid;

use super::{CommandRuntime, inbox};
use crate::fence;
use crate::gate::Want;
use crate::participant::{Context, Failure, Participant, Strategy};

/// What became of one command of a batch: its reply (stored, not yet published), or the
/// error that keeps it for a retry.
pub type Answer = anyhow::Result<Reply>;

/// A command that still needs its transaction.
struct Work<'a> {
    /// Its place in the batch.
    index: usize,
    command: &'a Command,
    resources: Vec<String>,
    /// Capacity taken from the Lua gate, settled after the transaction.
    wants: Vec<Want>,
    op: Uuid,
    /// A reply decided before any business change (a rejection).
    early: Option<Reply>,
}

/// How a claimed command ended inside the transaction.
enum Ended {
    Replied(Reply),
    Failed(anyhow::Error),
    /// Answered before (a redelivery), or claimed by another replica's transaction that
    /// committed first: its stored reply is read after ours.
    Elsewhere,
}

impl<P: Participant> CommandRuntime<P> {
    /// Processes `commands` (in order per saga) and answers each, in the same order. `Err`
    /// means the batch as a whole could not run (database down, locks not had in time);
    /// nothing of it took effect.
    pub async fn process_batch(&self, commands: &[&Command]) -> anyhow::Result<Vec<Answer>> {
        let mut pooled = self.database.get().await?;
        self.process_batch_on(&mut pooled, commands).await
    }

    /// [`CommandRuntime::process_batch`] on a given connection (tests count its statements).
    pub async fn process_batch_on(
        &self,
        conn: &mut Connection,
        commands: &[&Command],
    ) -> anyhow::Result<Vec<Answer>> {
        let ids: Vec<Uuid> = commands.iter().map(|command| command.id).collect();
        let mut answers: Vec<Option<Answer>> = commands.iter().map(|_| None).collect();
        // A command id twice in one batch (a producer retry, a re-send) is processed once.
        let mut first: HashMap<Uuid, usize> = HashMap::new();
        let mut works = Vec::new();
        for (index, command) in commands.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(entry) = first.entry(command.id) {
                entry.insert(index);
                match self.prepare(index, command) {
                    Ok(work) => works.push(work),
                    Err(err) => answers[index] = Some(Err(err)),
                }
            }
        }
        self.take_capacity(conn, &mut works, &mut answers).await;
        let ended = self.run(conn, &works).await;
        let settled: Vec<(Uuid, &[Want], bool)> = works
            .iter()
            .filter(|work| !work.wants.is_empty())
            .map(|work| {
                let committed = matches!(&ended, Ok(ends) if matches!(
                    ends.get(&work.index),
                    Some(Ended::Replied(Reply { outcome: Outcome::Succeeded { .. }, .. }))
                ));
                (work.op, work.wants.as_slice(), committed)
            })
            .collect();
        self.settle(&settled).await;
        let mut ended = ended?;
        let elsewhere: Vec<Uuid> = works
            .iter()
            .filter(|work| matches!(ended.get(&work.index), Some(Ended::Elsewhere)))
            .map(|work| work.command.id)
            .collect();
        if !elsewhere.is_empty() {
            tracing::info!(commands = ?elsewhere, "redelivered commands; re-sending their stored replies");
        }
        let mut theirs = inbox::stored_replies(conn, &elsewhere).await?;
        for work in &works {
            let answer = match ended.remove(&work.index) {
                Some(Ended::Replied(reply)) => Ok(reply),
                Some(Ended::Failed(err)) => Err(err),
                Some(Ended::Elsewhere) | None => theirs
                    .remove(&work.command.id)
                    .context("inbox row without a reply"),
            };
            if self.options.strategy == Strategy::LuaGate
                && work.command.direction == Direction::Compensate
                && answer.is_ok()
            {
                // Capacity came back in Postgres: let the gate reseed from there. Until it
                // does, the gate admits less, never more.
                if let Err(err) = self.gate.forget(&work.resources).await {
                    tracing::warn!(error = format!("{err:#}"), "gate counters not reset");
                }
            }
            answers[work.index] = Some(answer);
        }
        for index in 0..commands.len() {
            if answers[index].is_none() {
                // The second copy of a command gets the first copy's answer.
                let copied = match &answers[first[&commands[index].id]] {
                    Some(Ok(reply)) => Ok(reply.clone()),
                    Some(Err(err)) => Err(anyhow::anyhow!("{err:#}")),
                    None => Err(anyhow::anyhow!("command {} was not answered", ids[index])),
                };
                answers[index] = Some(copied);
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// What a command needs before its transaction: its resources, and what it would take
    /// from the Lua gate.
    fn prepare<'a>(&self, index: usize, command: &'a Command) -> anyhow::Result<Work<'a>> {
        let mut work = Work {
            index,
            command,
            resources: Vec::new(),
            wants: Vec::new(),
            op: Uuid::now_v7(),
            early: None,
        };
        // A fence touches no business resource: it needs no lock.
        if command.direction == Direction::Fence {
            return Ok(work);
        }
        match self.participant.resources(command) {
            Ok(resources) => work.resources = resources,
            Err(Failure::Rejected(reason)) => {
                work.early = Some(Reply::answering(command, Outcome::Rejected { reason }));
                return Ok(work);
            }
            Err(Failure::Retry(err)) => return Err(err),
        }
        work.wants = self.wants(command)?;
        Ok(work)
    }

    /// Takes each forward command's capacity from the Lua gate (a no-op under the other
    /// strategies). A command turned away is rejected; one whose take failed is answered
    /// with the error and leaves the batch.
    async fn take_capacity(
        &self,
        conn: &mut Connection,
        works: &mut Vec<Work<'_>>,
        answers: &mut [Option<Answer>],
    ) {
        let wanting: Vec<usize> = (0..works.len())
            .filter(|&at| !works[at].wants.is_empty())
            .collect();
        if wanting.is_empty() {
            return;
        }
        let ops: Vec<(Uuid, &[Want])> = wanting
            .iter()
            .map(|&at| (works[at].op, works[at].wants.as_slice()))
            .collect();
        let taken = self.gate.take_all(conn, &ops, Utc::now()).await;
        for (n, &at) in wanting.iter().enumerate() {
            let work = &mut works[at];
            match &taken {
                Ok(taken) if taken[n] => {}
                Ok(_) => {
                    let short: Vec<&str> = work.wants.iter().map(|w| w.resource.as_str()).collect();
                    let reason = format!("not enough left of {}", short.join(", "));
                    work.wants.clear(); // nothing was taken
                    work.early = Some(Reply::answering(work.command, Outcome::Rejected { reason }));
                }
                Err(err) => {
                    work.wants.clear();
                    answers[work.index] = Some(Err(anyhow::anyhow!("{err:#}")));
                }
            }
        }
        works.retain(|work| answers[work.index].is_none());
    }

    /// Locks the batch's resources, runs its transaction, releases the locks.
    async fn run(
        &self,
        conn: &mut Connection,
        works: &[Work<'_>],
    ) -> anyhow::Result<HashMap<usize, Ended>> {
        if works.is_empty() {
            return Ok(HashMap::new());
        }
        let resources: Vec<String> = works
            .iter()
            .filter(|work| work.early.is_none())
            .flat_map(|work| work.resources.iter().cloned())
            .collect();
        let guards = self.lock(&resources).await?;
        let context = Context {
            strategy: self.options.strategy,
            fences: guards
                .iter()
                .map(|guard| (guard.resource().to_owned(), guard.fence()))
                .collect(),
            now: Utc::now(),
            think_time: self.options.think_time,
        };
        let ended = self.transact(conn, works, &context).await;
        for guard in guards {
            if let Err(err) = guard.release().await {
                // The lease expires by itself; fencing keeps a late holder from writing.
                tracing::warn!(error = %err, "lock release failed");
            }
        }
        ended
    }

    /// The batch's transaction: one claim, the commands together, one reply store; or, when
    /// one of them must roll back alone, again with a savepoint per command.
    async fn transact(
        &self,
        conn: &mut Connection,
        works: &[Work<'_>],
        context: &Context,
    ) -> anyhow::Result<HashMap<usize, Ended>> {
        let first = if self.refusing.load(Ordering::Relaxed) {
            Isolation::Apart
        } else {
            Isolation::Together
        };
        let attempt = match self.transact_as(conn, works, context, first).await {
            Err(err) if err.is::<Apart>() => {
                self.transact_as(conn, works, context, Isolation::Apart)
                    .await
            }
            attempt => attempt,
        };
        if let Ok(attempt) = &attempt {
            self.refusing.store(attempt.refused, Ordering::Relaxed);
        }
        attempt.map(|attempt| attempt.ended)
    }

    async fn transact_as(
        &self,
        conn: &mut Connection,
        works: &[Work<'_>],
        context: &Context,
        isolation: Isolation,
    ) -> anyhow::Result<Attempt> {
        let participant = &self.participant;
        conn.transaction::<_, anyhow::Error, _>(async |conn: &mut Connection| {
            let claims: Vec<(&Command, Option<&Reply>)> = works
                .iter()
                .map(|work| (work.command, work.early.as_ref()))
                .collect();
            let claimed = inbox::claim(conn, participant.role(), &claims).await?;
            let mut ended = HashMap::with_capacity(works.len());
            let mut unstored: Vec<Reply> = Vec::new();
            let mut failed: Vec<Uuid> = Vec::new();
            for set in sets(participant, works, &claimed, context) {
                let commands: Vec<&Command> = set.iter().map(|work| work.command).collect();
                match apply_set(participant, conn, &commands, context, isolation).await {
                    Ok(answers) => {
                        for (work, answer) in set.iter().zip(answers) {
                            let outcome = match answer {
                                Ok(output) => Outcome::Succeeded { output },
                                Err(reason) => Outcome::Rejected { reason },
                            };
                            let reply = Reply::answering(work.command, outcome);
                            unstored.push(reply.clone());
                            ended.insert(work.index, Ended::Replied(reply));
                        }
                    }
                    // Together, the set's partial change cannot roll back alone.
                    Err(_) if isolation == Isolation::Together => return Err(Apart.into()),
                    // Rolled back to its savepoint: its commands run one by one below.
                    Err(err) => {
                        tracing::debug!(error = format!("{err:#}"), "a set ran one by one");
                    }
                }
            }
            let mut refused = false;
            for work in works {
                if ended.contains_key(&work.index) {
                    continue; // applied in a set
                }
                let command = work.command;
                let end = if !claimed.contains(&command.id) {
                    Ended::Elsewhere
                } else if let Some(reply) = &work.early {
                    Ended::Replied(reply.clone()) // stored with its claim
                } else {
                    if command.direction == Direction::Fence && !unstored.is_empty() {
                        // A fence reports its step's forward output, which may be a reply
                        // of this very batch.
                        inbox::store_replies(conn, &unstored).await?;
                        unstored.clear();
                    }
                    match apply(participant, conn, command, context, isolation).await {
                        Ok(outcome) => {
                            refused |= !matches!(outcome, Outcome::Succeeded { .. });
                            let reply = Reply::answering(command, outcome);
                            unstored.push(reply.clone());
                            Ended::Replied(reply)
                        }
                        // Together, nothing can roll back alone: this attempt is over.
                        Err(err) if isolation == Isolation::Together => return Err(err),
                        Err(err) => {
                            refused = true;
                            failed.push(command.id);
                            Ended::Failed(err)
                        }
                    }
                };
                ended.insert(work.index, end);
            }
            inbox::store_replies(conn, &unstored).await?;
            inbox::release(conn, &failed).await?;
            Ok(Attempt { ended, refused })
        })
        .await
    }
}

/// One run of a batch's transaction.
struct Attempt {
    ended: HashMap<usize, Ended>,
    /// A command applied one by one was rejected or failed: the next batch starts apart.
    refused: bool,
}

/// The sets of a batch: its claimed forward commands that the participant can decide
/// together, by command name, when there are two or more. A saga with more than one
/// command in the batch keeps them in order, one by one.
fn sets<'w, 'a, P: Participant>(
    participant: &P,
    works: &'w [Work<'a>],
    claimed: &HashSet<Uuid>,
    context: &Context,
) -> Vec<Vec<&'w Work<'a>>> {
    let mut per_saga: HashMap<Uuid, usize> = HashMap::new();
    for work in works {
        *per_saga.entry(work.command.saga_id).or_default() += 1;
    }
    let mut sets: Vec<Vec<&Work>> = Vec::new();
    for work in works {
        let command = work.command;
        let settable = claimed.contains(&command.id)
            && work.early.is_none()
            && command.direction == Direction::Forward
            && per_saga[&command.saga_id] == 1
            && participant.settable(command, context);
        if !settable {
            continue;
        }
        match sets
            .iter_mut()
            .find(|set| set[0].command.name == command.name)
        {
            Some(set) => set.push(work),
            None => sets.push(vec![work]),
        }
    }
    sets.retain(|set| set.len() > 1);
    sets
}

/// A set of forward commands: the participant decides them, then their steps are claimed
/// against the fences in one statement. Apart, inside a savepoint, so that a set with a
/// fenced step rolls back alone.
async fn apply_set<P: Participant>(
    participant: &P,
    conn: &mut Connection,
    commands: &[&Command],
    context: &Context,
    isolation: Isolation,
) -> anyhow::Result<Vec<Result<serde_json::Value, String>>> {
    let run = async |conn: &mut Connection| {
        let answers = participant.apply_set(conn, commands, context).await?;
        anyhow::ensure!(
            answers.len() == commands.len(),
            "a set of {} commands got {} answers",
            commands.len(),
            answers.len()
        );
        let applied: Vec<&Command> = commands
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_ok())
            .map(|(command, _)| *command)
            .collect();
        if !applied.is_empty() && !fence::claim_forwards(conn, &applied).await? {
            anyhow::bail!("a step of the set was fenced first");
        }
        Ok(answers)
    };
    match isolation {
        Isolation::Together => run(conn).await,
        Isolation::Apart => conn.transaction(run).await,
    }
}

/// How the commands of a batch are kept apart inside its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// No savepoints: every command is expected to succeed. The first that does not ends
    /// the attempt with [`Apart`].
    Together,
    /// Each command in its own savepoint: a rejection or a failure rolls back only its own
    /// business change.
    Apart,
}

/// A command of a batch run together was rejected or failed: its change must roll back
/// alone, so the batch runs again apart.
#[derive(Debug, thiserror::Error)]
#[error("a command of the batch must roll back alone")]
struct Apart;

/// One command. The step fence orders it against its step's fence or compensation; a fence
/// command runs no business change, its reply says whether the original took effect.
async fn apply<P: Participant>(
    participant: &P,
    conn: &mut Connection,
    command: &Command,
    context: &Context,
    isolation: Isolation,
) -> anyhow::Result<Outcome> {
    let change = match isolation {
        Isolation::Together => change(participant, conn, command, context).await,
        Isolation::Apart => {
            conn.transaction::<_, Failure, _>(async |conn: &mut Connection| {
                change(participant, conn, command, context).await
            })
            .await
        }
    };
    if isolation == Isolation::Together && change.is_err() {
        return Err(Apart.into());
    }
    match change {
        Ok(output) => Ok(Outcome::Succeeded { output }),
        Err(Failure::Rejected(reason)) => Ok(Outcome::Rejected { reason }),
        Err(Failure::Retry(err)) => Err(err),
    }
}

/// The command's fence rule, then its business change.
async fn change<P: Participant>(
    participant: &P,
    conn: &mut Connection,
    command: &Command,
    context: &Context,
) -> Result<serde_json::Value, Failure> {
    match command.direction {
        Direction::Forward => fence::claim_forward(conn, command).await?,
        Direction::Compensate => {
            fence::fence(conn, command).await?;
        }
        Direction::Fence => {
            let fenced = fence::fence(conn, command).await?;
            return Ok(serde_json::to_value(fenced).map_err(anyhow::Error::from)?);
        }
    }
    participant.apply(conn, command, context).await
}
