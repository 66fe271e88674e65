//! The saga definitions the engine runs, as operators (and the console's diagrams) read
//! them: each step's role, command, compensation, retry budgets and deadlines.

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use crate::saga::definition::{Definition, RetryPolicy, Step};
use crate::saga::definitions;

pub struct DefinitionsApi;

/// One saga definition: its steps in order.
#[derive(Debug, Object)]
struct SagaDefinition {
    /// The name sagas carry as `definition` (`order`, `coupon_use`).
    name: String,
    /// The version new sagas start on; sagas carry theirs as `definition_version`.
    version: u32,
    steps: Vec<StepDefinition>,
}

/// One step of a definition.
#[derive(Debug, Object)]
struct StepDefinition {
    name: String,
    /// The participant role that runs the command and its compensation.
    role: String,
    command: String,
    /// The command that undoes the step; absent for a step that cannot be undone (a pivot:
    /// before compensating past it, its outcome is fenced).
    #[oai(skip_serializing_if_is_none)]
    compensation: Option<String>,
    retry: RetryBudget,
    compensation_retry: RetryBudget,
    /// Covers every forward attempt together.
    deadline_ms: u64,
    /// Start-to-close timeout of one forward attempt; past it the same command is sent again.
    attempt_timeout_ms: u64,
    /// Covers one compensation attempt.
    compensation_deadline_ms: u64,
}

/// How often, and how far apart, a failing command is tried.
#[derive(Debug, Object)]
struct RetryBudget {
    max_attempts: u32,
    initial_backoff_ms: u64,
    multiplier: u32,
    max_backoff_ms: u64,
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl From<&RetryPolicy> for RetryBudget {
    fn from(policy: &RetryPolicy) -> Self {
        Self {
            max_attempts: policy.max_attempts,
            initial_backoff_ms: millis(policy.initial_backoff),
            multiplier: policy.multiplier,
            max_backoff_ms: millis(policy.max_backoff),
        }
    }
}

impl From<&Step> for StepDefinition {
    fn from(step: &Step) -> Self {
        Self {
            name: step.name.to_owned(),
            role: step.role.as_str().to_owned(),
            command: step.command.to_owned(),
            compensation: step.compensation.map(str::to_owned),
            retry: (&step.retry).into(),
            compensation_retry: (&step.compensation_retry).into(),
            deadline_ms: millis(step.deadline),
            attempt_timeout_ms: millis(step.attempt_timeout),
            compensation_deadline_ms: millis(step.compensation_deadline),
        }
    }
}

impl From<&Definition> for SagaDefinition {
    fn from(definition: &Definition) -> Self {
        Self {
            name: definition.name.to_owned(),
            version: definition.version,
            steps: definition.steps.iter().map(StepDefinition::from).collect(),
        }
    }
}

#[OpenApi(tag = "crate::api::Tag::Sagas")]
impl DefinitionsApi {
    /// List saga definitions
    ///
    /// Every definition the engine runs, with each step's role, command, compensation,
    /// retry budgets and deadlines.
    #[oai(path = "/v1/saga-definitions", method = "get")]
    async fn list(&self) -> Json<Vec<SagaDefinition>> {
        Json(
            definitions::ALL
                .iter()
                .map(|definition| SagaDefinition::from(*definition))
                .collect(),
        )
    }
}
