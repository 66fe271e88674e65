//! Definition documents: a flow as JSON, checked and turned into a [`Definition`].
//!
//! A document is checked in three passes, and every fault is reported with a JSON pointer
//! into the document: the format's own JSON Schema (`openapi/saga-definition.schema.json`,
//! published at `/saga-definition.schema.json`), then the document's `input`, which must be
//! a valid JSON Schema itself, then the rules a schema cannot state (unique names, commands
//! of their role, timings that outlast a lost consumer member, what may follow a pivot).

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::definition::{Definition, RetryPolicy, Signal, Step, StepKind, Task, Wake};

/// The format's JSON Schema, as published.
pub const FORMAT: &str = include_str!("../../../openapi/saga-definition.schema.json");

/// Who may start a flow through the generic door when its document does not say.
pub const DEFAULT_START_SCOPE: &str = "operator";

/// Roles that exist but take no commands (the notification worker reads events).
const RESERVED_ROLES: [&str; 1] = ["notification"];

/// One reason a document is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// JSON pointer to the offending value (`""` is the whole document).
    pub pointer: String,
    pub message: String,
}

impl Fault {
    fn at(pointer: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {}", self.message)
    }
}

static FORMAT_VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(FORMAT).expect("the format schema is JSON");
    jsonschema::validator_for(&schema).expect("the format schema is a valid JSON Schema")
});

/// Checks a document and builds its definition; `lost_member` is how long a dead consumer
/// can hold a partition (`platform::kafka::LOST_MEMBER_COST`), which every step deadline
/// must outlast. This is registration: every rule applies.
pub fn parse(document: &Value, lost_member: Duration) -> Result<Definition, Vec<Fault>> {
    let (definition, mut faults) = read(document, lost_member)?;
    check_termination(&definition, &mut faults);
    check_limits(&definition, &mut faults);
    if faults.is_empty() {
        Ok(definition)
    } else {
        Err(faults)
    }
}

/// Reads a stored version as it was registered: the format and the rules it was stored
/// under, without those added since, which registration alone enforces. Returns the
/// definition and what registration would refuse in it today: such a version is retired,
/// never skipped, so the sagas already on it still finish on it.
pub fn load(document: &Value) -> Result<(Definition, Vec<Fault>), Vec<Fault>> {
    let (definition, faults) = read(document, Duration::ZERO)?;
    if !faults.is_empty() {
        return Err(faults);
    }
    let mut later = Vec::new();
    check_termination(&definition, &mut later);
    Ok((definition, later))
}

/// The format, the input schema and the rules every stored version met.
fn read(document: &Value, lost_member: Duration) -> Result<(Definition, Vec<Fault>), Vec<Fault>> {
    let faults: Vec<Fault> = FORMAT_VALIDATOR
        .iter_errors(document)
        .map(|error| Fault::at(error.instance_path().to_string(), error.to_string()))
        .collect();
    if !faults.is_empty() {
        return Err(faults);
    }
    let doc = Doc::deserialize(document)
        .map_err(|err| vec![Fault::at("", format!("unreadable document: {err}"))])?;
    let mut faults = Vec::new();
    if let Err(error) = jsonschema::validator_for(&doc.input) {
        faults.push(Fault::at(
            "/input",
            format!("not a valid JSON Schema: {error}"),
        ));
    }
    let definition = build(doc);
    check_rules(&definition, lost_member, &mut faults);
    Ok((definition, faults))
}

/// Most steps a flow may have in all (a stage holds at most 20 tasks, a flow at most 50
/// stages: the format's schema says so): every request about a version, its compensation
/// paths included, costs a bounded amount.
pub const MAX_STEPS: usize = 100;

fn check_limits(definition: &Definition, faults: &mut Vec<Fault>) {
    if definition.steps.len() > MAX_STEPS {
        faults.push(Fault::at(
            "/steps",
            format!(
                "{} steps in all; a flow has at most {MAX_STEPS}",
                definition.steps.len()
            ),
        ));
    }
}

/// Shapes the engine cannot finish, refused at registration: a forward-only step is retried
/// until it lands and never undone, so it may only follow the pivot (before it, a later
/// failure would have to undo it), and never sit in a parallel stage (a sibling's failure
/// would have to undo it, and its stage could never complete).
fn check_termination(definition: &Definition, faults: &mut Vec<Fault>) {
    let pivot_stage = definition
        .steps
        .iter()
        .find(|step| step.pivot)
        .map(|step| step.stage);
    for (index, step) in definition.steps.iter().enumerate() {
        if !step.forward_only {
            continue;
        }
        let at = pointer_of(definition, index);
        if pivot_stage.is_none_or(|pivot| step.stage <= pivot) {
            faults.push(Fault::at(
                format!("{at}/forward_only"),
                format!(
                    "step `{}` is forward-only but does not follow the pivot: a later failure \
                     would have to undo what is never undone",
                    step.name
                ),
            ));
        }
        if definition.members(step.stage).count() > 1 {
            faults.push(Fault::at(
                format!("{at}/forward_only"),
                format!(
                    "step `{}` is forward-only inside a parallel stage: a sibling's failure \
                     would have to undo it, and the stage could never complete",
                    step.name
                ),
            ));
        }
    }
}

/// Sample flows for the pure core's tests: the shop's two documents, read as fixtures (the
/// engine embeds no flow; the shop hands its documents to the catalog).
#[cfg(test)]
pub(crate) const SAMPLES: [&str; 2] = [
    include_str!("../../../shop/definitions/order.v1.json"),
    include_str!("../../../shop/definitions/coupon_use.json"),
];

/// The sample flows, parsed.
#[cfg(test)]
pub(crate) fn samples() -> Vec<Definition> {
    SAMPLES
        .iter()
        .map(|text| {
            let document: Value = serde_json::from_str(text).expect("built-in document is JSON");
            parse(&document, platform::kafka::LOST_MEMBER_COST)
                .unwrap_or_else(|faults| panic!("sample definition refused: {faults:?}"))
        })
        .collect()
}

#[derive(Deserialize)]
struct Doc {
    name: String,
    version: u32,
    #[serde(default)]
    description: String,
    input: Value,
    start_scopes: Option<Vec<String>>,
    steps: Vec<StageDoc>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StageDoc {
    Task(TaskDoc),
    Parallel {
        #[allow(dead_code)]
        name: String,
        tasks: Vec<TaskDoc>,
    },
    Wait {
        name: String,
        duration_ms: Option<u64>,
        until: Option<String>,
        #[serde(default)]
        forward_only: bool,
    },
    Signal {
        name: String,
        scope: String,
        timeout_ms: Option<u64>,
        #[serde(default)]
        pivot: bool,
        #[serde(default)]
        forward_only: bool,
    },
}

#[derive(Deserialize)]
struct TaskDoc {
    name: String,
    role: String,
    command: String,
    compensation: Option<String>,
    retry: Option<RetryDoc>,
    compensation_retry: Option<RetryDoc>,
    deadline_ms: Option<u64>,
    attempt_timeout_ms: Option<u64>,
    compensation_deadline_ms: Option<u64>,
    #[serde(default)]
    pivot: bool,
    #[serde(default)]
    forward_only: bool,
}

#[derive(Deserialize)]
struct RetryDoc {
    max_attempts: Option<u32>,
    initial_backoff_ms: Option<u64>,
    multiplier: Option<u32>,
    max_backoff_ms: Option<u64>,
}

impl RetryDoc {
    fn over(self, default: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(default.max_attempts),
            initial_backoff: self
                .initial_backoff_ms
                .map_or(default.initial_backoff, Duration::from_millis),
            multiplier: self.multiplier.unwrap_or(default.multiplier),
            max_backoff: self
                .max_backoff_ms
                .map_or(default.max_backoff, Duration::from_millis),
        }
    }
}

fn task(doc: TaskDoc, stage: usize) -> Step {
    let mut task = Task::new(&doc.role, &doc.command, doc.compensation.as_deref());
    if doc.forward_only {
        task.retry = RetryPolicy::FORWARD_ONLY;
    }
    if let Some(retry) = doc.retry {
        task.retry = retry.over(task.retry);
    }
    if let Some(retry) = doc.compensation_retry {
        task.compensation_retry = retry.over(task.compensation_retry);
    }
    task.deadline = doc.deadline_ms.map_or(task.deadline, Duration::from_millis);
    task.attempt_timeout = doc
        .attempt_timeout_ms
        .map_or(task.attempt_timeout, Duration::from_millis);
    task.compensation_deadline = doc
        .compensation_deadline_ms
        .map_or(task.compensation_deadline, Duration::from_millis);
    Step {
        name: doc.name,
        stage,
        kind: StepKind::Task(task),
        pivot: doc.pivot,
        forward_only: doc.forward_only,
    }
}

fn build(doc: Doc) -> Definition {
    let mut steps = Vec::new();
    for (stage, stage_doc) in doc.steps.into_iter().enumerate() {
        match stage_doc {
            StageDoc::Task(doc) => steps.push(task(doc, stage)),
            StageDoc::Parallel { tasks, .. } => {
                steps.extend(tasks.into_iter().map(|doc| task(doc, stage)));
            }
            StageDoc::Wait {
                name,
                duration_ms,
                until,
                forward_only,
            } => {
                let wake = match (duration_ms, until) {
                    (Some(ms), _) => Wake::After(Duration::from_millis(ms)),
                    (None, pointer) => Wake::At(pointer.unwrap_or_default()),
                };
                steps.push(Step {
                    name,
                    stage,
                    kind: StepKind::Wait(wake),
                    pivot: false,
                    forward_only,
                });
            }
            StageDoc::Signal {
                name,
                scope,
                timeout_ms,
                pivot,
                forward_only,
            } => steps.push(Step {
                name,
                stage,
                kind: StepKind::Signal(Signal {
                    scope,
                    timeout: timeout_ms.map(Duration::from_millis),
                }),
                pivot,
                forward_only,
            }),
        }
    }
    Definition {
        name: doc.name,
        version: doc.version,
        description: doc.description,
        input_schema: doc.input,
        start_scopes: doc
            .start_scopes
            .unwrap_or_else(|| vec![DEFAULT_START_SCOPE.to_owned()]),
        steps,
    }
}

/// Where step `index` sits in the document: `/steps/3`, or `/steps/1/tasks/0` in a
/// parallel stage.
fn pointer_of(definition: &Definition, index: usize) -> String {
    let stage = definition.steps[index].stage;
    let members: Vec<usize> = definition.members(stage).collect();
    if members.len() > 1 {
        let position = members.iter().position(|m| *m == index).unwrap_or(0);
        format!("/steps/{stage}/tasks/{position}")
    } else {
        format!("/steps/{stage}")
    }
}

fn check_rules(definition: &Definition, lost_member: Duration, faults: &mut Vec<Fault>) {
    let mut names = HashSet::new();
    // The pivot's stage and name, once seen.
    let mut pivot_seen: Option<(usize, &str)> = None;
    for (index, step) in definition.steps.iter().enumerate() {
        let at = pointer_of(definition, index);
        if !names.insert(step.name.as_str()) {
            faults.push(Fault::at(
                format!("{at}/name"),
                format!("step name `{}` is used twice", step.name),
            ));
        }
        let parallel = definition.members(step.stage).count() > 1;
        if let Some((pivot_stage, pivot)) = pivot_seen
            && step.stage > pivot_stage
            && !step.forward_only
            && !matches!(step.kind, StepKind::Wait(_))
        {
            faults.push(Fault::at(
                format!("{at}/forward_only"),
                format!(
                    "step `{}` follows the pivot `{pivot}`, so it must be forward-only",
                    step.name
                ),
            ));
        }
        if step.pivot {
            if pivot_seen.is_some() {
                faults.push(Fault::at(format!("{at}/pivot"), "a flow has one pivot"));
            }
            if step.forward_only {
                faults.push(Fault::at(
                    format!("{at}/pivot"),
                    "a pivot can fail (and compensate what came before); it is not forward-only",
                ));
            }
            pivot_seen = Some((step.stage, &step.name));
        }
        match &step.kind {
            StepKind::Task(task) => check_task(task, step, &at, parallel, lost_member, faults),
            StepKind::Signal(signal) => {
                if step.forward_only && signal.timeout.is_some() {
                    faults.push(Fault::at(
                        format!("{at}/timeout_ms"),
                        "a forward-only signal waits for ever; its timeout could only compensate",
                    ));
                }
                if !step.forward_only && signal.timeout.is_none() {
                    faults.push(Fault::at(
                        at.clone(),
                        "a signal that is not forward-only needs `timeout_ms` (no signal: the saga compensates)",
                    ));
                }
            }
            StepKind::Wait(_) => {}
        }
    }
}

fn check_task(
    task: &Task,
    step: &Step,
    at: &str,
    parallel: bool,
    lost_member: Duration,
    faults: &mut Vec<Fault>,
) {
    if RESERVED_ROLES.contains(&task.role.as_str()) {
        faults.push(Fault::at(
            format!("{at}/role"),
            format!("role `{}` is reserved", task.role),
        ));
    }
    let prefix = format!("{}.", task.role);
    if !task.command.starts_with(&prefix) {
        faults.push(Fault::at(
            format!("{at}/command"),
            format!(
                "command `{}` does not belong to role `{}`",
                task.command, task.role
            ),
        ));
    }
    if let Some(undo) = &task.compensation {
        if !undo.starts_with(&prefix) {
            faults.push(Fault::at(
                format!("{at}/compensation"),
                format!(
                    "compensation `{undo}` does not belong to role `{}`",
                    task.role
                ),
            ));
        }
        if step.pivot || step.forward_only {
            faults.push(Fault::at(
                format!("{at}/compensation"),
                "a pivot or forward-only step is never compensated",
            ));
        }
    } else if parallel && !step.forward_only {
        // (A forward-only task in a parallel stage is refused on its own, at registration.)
        faults.push(Fault::at(
            format!("{at}/compensation"),
            "a task in a parallel stage needs a compensation: when a sibling fails it is undone",
        ));
    }
    if task.attempt_timeout >= task.deadline && !step.forward_only {
        faults.push(Fault::at(
            format!("{at}/attempt_timeout_ms"),
            format!(
                "attempt timeout {:?} is not shorter than its deadline {:?}",
                task.attempt_timeout, task.deadline
            ),
        ));
    }
    // A compensation attempt past its deadline only costs an attempt of a generous budget,
    // and a short one re-sends a lost compensation sooner: no rule for it.
    if task.deadline <= lost_member && !step.forward_only {
        faults.push(Fault::at(
            format!("{at}/deadline_ms"),
            format!(
                "deadline {:?} is not longer than what a lost consumer member costs ({lost_member:?})",
                task.deadline
            ),
        ));
    }
}

#[cfg(test)]
mod tests;
