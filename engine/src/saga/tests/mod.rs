//! Scenario and property tests of the transition function, driven through [`Run`].
//!
//! Actions are compared in a compact text form (`"compensate 1#1 payment.refund@payment"`)
//! so a scenario reads like the message log it stands for; event messages are prose and are
//! deliberately left out.

mod cancel;
mod compensation;
mod coupon_use;
mod fencing;
mod order;
pub(crate) mod properties;
mod stages;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::json;

use super::{
    Action, Definition, FailureKind, Input, Outcome, SagaState, Status, StepState, start,
    transition,
};

pub(crate) fn epoch() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0)
        .single()
        .expect("valid timestamp")
}

/// One saga driven through a scenario. Every shortcut reply arrives one second after the
/// previous input, so consecutive deadlines differ and timer actions stay visible.
pub(super) struct Run {
    pub definition: &'static Definition,
    pub state: SagaState,
    pub now: DateTime<Utc>,
}

impl Run {
    pub fn start(definition: &'static Definition) -> (Run, Vec<String>) {
        let now = epoch();
        let started = start(definition, &json!({}), now);
        assert_eq!(started.outcome, Outcome::Applied);
        let actions = shape(&started.actions, now);
        let run = Run {
            definition,
            state: started.state,
            now,
        };
        (run, actions)
    }

    pub fn status(&self) -> Status {
        self.state.status
    }

    pub fn step(&self, index: usize) -> &StepState {
        &self.state.steps[index]
    }

    pub fn advance_ms(&mut self, ms: i64) {
        self.now += TimeDelta::milliseconds(ms);
    }

    /// Moves the clock to `at` (never backwards) and ticks.
    pub fn tick_at(&mut self, at: DateTime<Utc>) -> Vec<String> {
        self.now = self.now.max(at);
        self.apply(Input::Tick)
    }

    /// Moves the clock to the step's deadline and ticks: no reply came to any send of it.
    pub fn tick_at_deadline(&mut self, step: usize) -> Vec<String> {
        let at = self.step(step).deadline_at.expect("a deadline is set");
        self.tick_at(at)
    }

    /// Ticks exactly when the next timer is due.
    pub fn tick_when_due(&mut self) -> Vec<String> {
        let at = self.state.next_timer().expect("a timer is set");
        self.tick_at(at)
    }

    pub fn apply(&mut self, input: Input) -> Vec<String> {
        let result = transition(self.definition, &self.state, &input, self.now, 0.0);
        assert_eq!(
            result.outcome,
            Outcome::Applied,
            "{input:?} on {:?}",
            self.state
        );
        self.state = result.state;
        shape(&result.actions, self.now)
    }

    /// Asserts the input is ignored without any effect and returns the reason.
    pub fn ignore(&mut self, input: Input) -> String {
        let result = transition(self.definition, &self.state, &input, self.now, 0.0);
        assert_eq!(result.state, self.state, "{input:?} changed the state");
        assert!(result.actions.is_empty(), "{input:?} produced actions");
        match result.outcome {
            Outcome::Ignored { reason } => reason,
            Outcome::Applied => panic!("{input:?} was applied"),
        }
    }

    pub fn succeed(&mut self, step: usize) -> Vec<String> {
        self.advance_ms(1000);
        let attempt = self.step(step).attempt;
        let output = json!({ "step": step, "attempt": attempt });
        self.apply(succeeded(step, attempt, output))
    }

    pub fn reject(&mut self, step: usize) -> Vec<String> {
        self.advance_ms(1000);
        self.apply(failed(step, self.step(step).attempt, FailureKind::Rejected))
    }

    pub fn fail_retryable(&mut self, step: usize) -> Vec<String> {
        self.advance_ms(1000);
        self.apply(failed(
            step,
            self.step(step).attempt,
            FailureKind::Retryable,
        ))
    }

    pub fn compensated(&mut self, step: usize) -> Vec<String> {
        self.advance_ms(1000);
        let attempt = self.step(step).compensation_attempt;
        self.apply(Input::CompensationSucceeded { step, attempt })
    }

    pub fn fence_held(&mut self, step: usize) -> Vec<String> {
        self.advance_ms(1000);
        let attempt = self.step(step).compensation_attempt;
        self.apply(Input::StepFenced {
            step,
            attempt,
            applied: None,
        })
    }

    pub fn fence_found_applied(&mut self, step: usize, output: serde_json::Value) -> Vec<String> {
        self.advance_ms(1000);
        let attempt = self.step(step).compensation_attempt;
        self.apply(Input::StepFenced {
            step,
            attempt,
            applied: Some(output),
        })
    }

    pub fn compensation_fails(&mut self, step: usize) -> Vec<String> {
        self.advance_ms(1000);
        let attempt = self.step(step).compensation_attempt;
        self.apply(Input::CompensationFailed {
            step,
            attempt,
            reason: "participant unavailable".into(),
        })
    }
}

pub(super) fn succeeded(step: usize, attempt: u32, output: serde_json::Value) -> Input {
    Input::StepSucceeded {
        step,
        attempt,
        output,
    }
}

pub(super) fn failed(step: usize, attempt: u32, kind: FailureKind) -> Input {
    Input::StepFailed {
        step,
        attempt,
        kind,
        reason: format!("{kind:?} by participant"),
    }
}

/// Compact text form of actions; timers are shown relative to `now`.
pub(super) fn shape(actions: &[Action], now: DateTime<Utc>) -> Vec<String> {
    actions
        .iter()
        .map(|action| match action {
            Action::Dispatch {
                step,
                attempt,
                command,
                role,
            } => format!("dispatch {step}#{attempt} {command}@{role}"),
            Action::Resend {
                step,
                attempt,
                command,
                role,
            } => format!("resend {step}#{attempt} {command}@{role}"),
            Action::Compensate {
                step,
                attempt,
                command,
                role,
            } => format!("compensate {step}#{attempt} {command}@{role}"),
            Action::Fence {
                step,
                attempt,
                command,
                role,
            } => format!("fence {step}#{attempt} {command}@{role}"),
            Action::ScheduleTimer { at } => {
                format!("timer +{}ms", (*at - now).num_milliseconds())
            }
            Action::Emit(event) => match event.step {
                Some(step) => format!("{} {step}", event.kind.as_str()),
                None => event.kind.as_str().to_owned(),
            },
            Action::Finish(status) => format!("finish {status}"),
        })
        .collect()
}

/// Shorthand for expected action lists.
pub(super) fn lines(expected: &[&str]) -> Vec<String> {
    expected.iter().map(|line| (*line).to_owned()).collect()
}
