//! The shape of a saga: its stages in order, what each step does, and how hard to try.
//!
//! A definition is an owned value read from a document ([`super::document`]): adding or
//! changing a flow is data, never a new branch in the state machine. A saga records the
//! name and version it started on and finishes on that shape whatever is registered later.
//!
//! Steps are kept flat, in stage order, because the saga state holds one entry per step;
//! a parallel stage is several consecutive steps that share a `stage` number.

use std::time::Duration;

use serde_json::Value;

/// A saga kind at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// Stable identifier, stored with every saga instance; never rename a deployed one.
    pub name: String,
    /// Which shape of the flow this is; a version once used by a saga is never changed.
    pub version: u32,
    pub description: String,
    /// The JSON Schema a saga's input must satisfy (checked when a saga starts).
    pub input_schema: Value,
    /// The API scopes of which a key needs one to start it through `POST /v1/sagas`
    /// (`operator` unless the document says otherwise).
    pub start_scopes: Vec<String>,
    /// Every step, in stage order (members of one parallel stage are adjacent).
    pub steps: Vec<Step>,
}

impl Definition {
    pub fn step(&self, index: usize) -> Option<&Step> {
        self.steps.get(index)
    }

    /// How many stages the flow has.
    pub fn stages(&self) -> usize {
        self.steps.last().map_or(0, |step| step.stage + 1)
    }

    /// The indices of the steps of `stage`.
    pub fn members(&self, stage: usize) -> impl Iterator<Item = usize> + '_ {
        self.steps
            .iter()
            .enumerate()
            .filter(move |(_, step)| step.stage == stage)
            .map(|(index, _)| index)
    }

    /// The index of the signal step called `name`.
    pub fn signal(&self, name: &str) -> Option<usize> {
        self.steps
            .iter()
            .position(|step| step.name == name && matches!(step.kind, StepKind::Signal(_)))
    }

    /// Every role the flow sends commands to, once each, in order of first use.
    pub fn roles(&self) -> Vec<&str> {
        let mut roles: Vec<&str> = Vec::new();
        for task in self.steps.iter().filter_map(Step::task) {
            if !roles.contains(&task.role.as_str()) {
                roles.push(&task.role);
            }
        }
        roles
    }
}

/// One step: a task, a durable wait or a wait for a signal.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Unique within the definition; a signal step's name is the signal's name.
    pub name: String,
    /// The stage this step belongs to; the next stage starts when every member succeeded.
    pub stage: usize,
    pub kind: StepKind,
    /// Once this step succeeded the saga can no longer be undone: it is never compensated
    /// or cancelled from then on, and every later step is `forward_only`.
    pub pivot: bool,
    /// Never compensated (the steps after a pivot): tried again, failure or silence, within
    /// its retry budget ([`RetryPolicy::FORWARD_ONLY`] unless the document says), then
    /// parked as FAILED for an operator.
    pub forward_only: bool,
}

impl Step {
    pub fn task(&self) -> Option<&Task> {
        match &self.kind {
            StepKind::Task(task) => Some(task),
            StepKind::Wait(_) | StepKind::Signal(_) => None,
        }
    }

    /// Whether compensation has something to send for this step (an undo, or a fence).
    pub fn compensation(&self) -> Option<&str> {
        self.task().and_then(|task| task.compensation.as_deref())
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            StepKind::Task(_) => "task",
            StepKind::Wait(_) => "wait",
            StepKind::Signal(_) => "signal",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Task(Task),
    Wait(Wake),
    Signal(Signal),
}

/// A command to a participant role and, optionally, the command that undoes it.
///
/// A task without a compensation is still *fenced* before the saga compensates past it
/// while its outcome is unknown: a fence makes the participant refuse the original for
/// ever, or report that it already took effect; then the step stands and the saga goes
/// forward instead.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The participant role that executes both the command and the compensation.
    pub role: String,
    pub command: String,
    pub compensation: Option<String>,
    pub retry: RetryPolicy,
    pub compensation_retry: RetryPolicy,
    /// Covers every forward attempt together: a step still failing when it passes is given
    /// up on, so a saga cannot sit on one step forever. Forward-only steps have none.
    pub deadline: Duration,
    /// Start-to-close timeout of one forward attempt: when no reply came within it, the same
    /// command (same command id) is sent again, because the command or its reply may have
    /// been lost with a broker or a worker. The participant's inbox makes the re-send
    /// harmless. Only the step `deadline` or the retry budget makes the saga compensate.
    pub attempt_timeout: Duration,
    /// Covers one compensation attempt: compensations must eventually succeed, so each attempt
    /// gets a fresh window and only the attempt budget bounds the total.
    pub compensation_deadline: Duration,
}

impl Task {
    /// A task with the project's default retry budgets and deadlines.
    pub fn new(role: &str, command: &str, compensation: Option<&str>) -> Task {
        Task {
            role: role.to_owned(),
            command: command.to_owned(),
            compensation: compensation.map(str::to_owned),
            retry: RetryPolicy::FORWARD,
            compensation_retry: RetryPolicy::COMPENSATION,
            // Longer than what a lost consumer member costs (60 s): see `document`.
            deadline: Duration::from_secs(90),
            attempt_timeout: Duration::from_secs(5),
            compensation_deadline: Duration::from_secs(30),
        }
    }
}

/// When a durable wait ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Wake {
    /// This long after the wait began.
    After(Duration),
    /// At the RFC 3339 time found at this JSON pointer in the saga's input.
    At(String),
}

/// A wait for `POST /v1/sagas/{id}/signals/{name}`; the body becomes the step's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// The API scope a caller needs to send it (`client`, `operator` or `admin`).
    pub scope: String,
    /// No signal within it fails the step and the saga compensates. Forward-only signals
    /// wait for ever.
    pub timeout: Option<Duration>,
}

/// How many attempts an action gets and how long to wait between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first; 0 is treated as 1 because the first attempt always
    /// happens.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub multiplier: u32,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Forward steps fail fast: a business failure is better reported than hidden behind
    /// long retries.
    pub const FORWARD: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(200),
        multiplier: 2,
        max_backoff: Duration::from_secs(5),
    };

    /// Forward-only steps (past the pivot) cannot be undone, so they try long, but not for
    /// ever: past this budget the saga parks as FAILED, where an operator retries the step
    /// or resolves the saga.
    pub const FORWARD_ONLY: RetryPolicy = RetryPolicy {
        max_attempts: 50,
        initial_backoff: Duration::from_millis(200),
        multiplier: 2,
        max_backoff: Duration::from_secs(30),
    };

    /// Compensations try much longer: giving up means a human has to step in.
    pub const COMPENSATION: RetryPolicy = RetryPolicy {
        max_attempts: 8,
        initial_backoff: Duration::from_millis(500),
        multiplier: 2,
        max_backoff: Duration::from_secs(30),
    };

    pub fn allows_another_attempt(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts.max(1)
    }

    /// Delay before the attempt that follows failed attempt number `attempt` (1-based).
    ///
    /// The ceiling is `initial_backoff * multiplier^(attempt-1)`, capped at `max_backoff`.
    /// "Equal jitter": the result lies in `[ceiling/2, ceiling)`, so retries of many sagas
    /// that failed together spread out, yet none retries immediately. `jitter` is supplied by
    /// the caller (randomness is an input of the pure core) and is clamped into `[0, 1]`.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self
            .multiplier
            .checked_pow(attempt.saturating_sub(1))
            .and_then(|factor| self.initial_backoff.checked_mul(factor))
            .map_or(self.max_backoff, |uncapped| uncapped.min(self.max_backoff));
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let half = ceiling / 2;
        half + half.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_from_half_the_ceiling() {
        let policy = RetryPolicy::FORWARD;
        assert_eq!(policy.backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(2, 0.0), Duration::from_millis(200));
        assert_eq!(policy.backoff(3, 0.0), Duration::from_millis(400));
        assert_eq!(policy.backoff(3, 0.5), Duration::from_millis(600));
    }

    #[test]
    fn backoff_is_capped_even_for_huge_attempt_numbers() {
        let policy = RetryPolicy::COMPENSATION;
        assert_eq!(policy.backoff(7, 0.0), Duration::from_secs(15));
        assert_eq!(policy.backoff(u32::MAX, 0.0), Duration::from_secs(15));
        assert_eq!(policy.backoff(u32::MAX, 1.0), Duration::from_secs(30));
    }

    #[test]
    fn backoff_tolerates_out_of_range_jitter() {
        let policy = RetryPolicy::FORWARD;
        assert_eq!(policy.backoff(1, f64::NAN), Duration::from_millis(100));
        assert_eq!(policy.backoff(1, -3.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(1, 7.0), Duration::from_millis(200));
        assert_eq!(policy.backoff(0, 0.0), Duration::from_millis(100));
    }

    #[test]
    fn zero_max_attempts_still_allows_the_first_attempt() {
        let policy = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::FORWARD
        };
        assert!(policy.allows_another_attempt(0));
        assert!(!policy.allows_another_attempt(1));
    }
}
