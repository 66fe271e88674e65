//! Inputs that do not fit: duplicates, stale attempts, replies for steps that are not
//! waiting, and anything sent to a finished saga. All must be ignored without effect.

use chrono::TimeDelta;
use serde_json::json;

use super::super::definitions::{COUPON_USE, ORDER};
use super::super::{
    CompensationPhase, FailureKind, ForwardPhase, Input, SagaState, Status, StepState, transition,
};
use super::super::{Definition, Outcome, start};
use super::{Run, epoch, failed, lines, succeeded};

fn every_input_kind() -> Vec<Input> {
    let mut inputs = Vec::new();
    for step in 0..3 {
        for attempt in 0..3 {
            inputs.push(succeeded(step, attempt, json!(null)));
            inputs.push(failed(step, attempt, FailureKind::Rejected));
            inputs.push(failed(step, attempt, FailureKind::Retryable));
            inputs.push(Input::CompensationSucceeded { step, attempt });
            inputs.push(Input::CompensationFailed {
                step,
                attempt,
                reason: "late".into(),
            });
        }
    }
    inputs.extend([Input::Tick, Input::CancelRequested, Input::RetryRequested]);
    inputs
}

#[test]
fn duplicate_and_stale_forward_replies_are_ignored() {
    let (mut run, _) = Run::start(&ORDER);
    let reason = run.ignore(succeeded(0, 2, json!({})));
    assert!(reason.contains("stale forward reply"), "{reason}");
    run.fail_retryable(0);
    run.tick_when_due();
    assert!(
        run.ignore(succeeded(0, 1, json!({})))
            .contains("latest attempt is 2")
    );
    run.succeed(0);
    run.ignore(succeeded(0, 2, json!({})));
    run.ignore(failed(0, 2, FailureKind::Rejected));
    assert_eq!(run.step(0).forward, ForwardPhase::Succeeded);
}

#[test]
fn replies_for_steps_not_in_flight_or_unknown_are_ignored() {
    let (mut run, _) = Run::start(&ORDER);
    let reason = run.ignore(succeeded(2, 0, json!({})));
    assert!(reason.contains("not awaiting a forward reply"), "{reason}");
    run.ignore(succeeded(2, 1, json!({})));
    let reason = run.ignore(succeeded(7, 1, json!({})));
    assert!(reason.starts_with("unknown step index 7"), "{reason}");
    run.ignore(Input::CompensationSucceeded {
        step: 0,
        attempt: 0,
    });
    run.ignore(Input::CompensationFailed {
        step: 9,
        attempt: 1,
        reason: "x".into(),
    });
}

#[test]
fn forward_replies_after_compensation_started_change_nothing() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    run.reject(1);
    // Step 1 replied with a failure, step 0 is being undone: neither awaits a forward reply.
    run.ignore(succeeded(1, 1, json!({})));
    run.ignore(failed(1, 1, FailureKind::Retryable));
    run.ignore(succeeded(0, 1, json!({})));
    run.ignore(failed(0, 1, FailureKind::Rejected));
}

#[test]
fn late_success_of_a_timed_out_step_is_recorded_and_compensation_still_runs() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    run.succeed(1);
    run.tick_at_deadline(2);
    assert_eq!(run.step(2).forward, ForwardPhase::OutcomeUnknown);
    run.ignore(failed(2, 1, FailureKind::Rejected));
    assert_eq!(
        run.apply(succeeded(2, 1, json!({ "parcel": 3 }))),
        lines(&["step.succeeded 2"])
    );
    assert_eq!(run.step(2).output, Some(json!({ "parcel": 3 })));
    assert_eq!(run.step(2).compensation, CompensationPhase::InFlight);
    run.ignore(succeeded(2, 1, json!({ "parcel": 3 })));
    run.compensated(2);
    run.compensated(1);
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
}

#[test]
fn late_success_after_the_step_was_compensated_is_ignored() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    run.tick_at_deadline(1);
    run.compensated(1);
    run.ignore(succeeded(1, 1, json!({})));
}

#[test]
fn stale_compensation_replies_are_ignored() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    run.reject(1);
    run.compensation_fails(0);
    run.ignore(Input::CompensationFailed {
        step: 0,
        attempt: 1,
        reason: "duplicate".into(),
    });
    run.tick_when_due();
    let reason = run.ignore(Input::CompensationSucceeded {
        step: 0,
        attempt: 1,
    });
    assert!(reason.contains("stale compensation reply"), "{reason}");
    run.ignore(Input::CompensationSucceeded {
        step: 1,
        attempt: 0,
    });
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
}

#[test]
fn terminal_states_ignore_every_input() {
    let (mut completed, _) = Run::start(&ORDER);
    for step in 0..3 {
        completed.succeed(step);
    }
    let (mut compensated, _) = Run::start(&ORDER);
    compensated.reject(0);
    let (mut cancelled, _) = Run::start(&ORDER);
    cancelled.apply(Input::CancelRequested);
    cancelled.compensated(0);

    for run in [&mut completed, &mut compensated, &mut cancelled] {
        assert!(run.status().is_terminal());
        run.advance_ms(3_600_000);
        for input in every_input_kind() {
            let reason = run.ignore(input);
            assert!(reason.contains("which is final"), "{reason}");
        }
    }
}

#[test]
fn a_state_that_does_not_match_the_definition_is_ignored() {
    let (run, _) = Run::start(&ORDER);
    let result = transition(&COUPON_USE, &run.state, &Input::Tick, epoch(), 0.0);
    assert!(!result.is_applied());
    assert_eq!(result.state, run.state);
}

#[test]
fn a_stray_timer_on_a_settled_step_is_dropped() {
    let mut settled = StepState::new();
    settled.forward = ForwardPhase::Succeeded;
    settled.attempt = 1;
    settled.deadline_at = Some(epoch());
    let mut in_flight = StepState::new();
    in_flight.forward = ForwardPhase::InFlight;
    in_flight.attempt = 1;
    in_flight.deadline_at = Some(epoch() + TimeDelta::seconds(30));
    let state = SagaState {
        status: Status::Running,
        steps: vec![settled, in_flight, StepState::new()],
        cancel_requested: false,
        failure: None,
    };
    let now = epoch() + TimeDelta::seconds(1);
    let result = transition(&ORDER, &state, &Input::Tick, now, 0.0);
    assert!(result.is_applied());
    assert_eq!(result.state.steps[0].deadline_at, None);
    assert_eq!(result.state.steps[1], state.steps[1]);
    assert_eq!(result.state.next_timer(), state.steps[1].deadline_at);
}

#[test]
fn a_definition_without_steps_completes_at_start() {
    let empty = Definition {
        name: "empty".into(),
        version: 1,
        description: String::new(),
        input_schema: json!({}),
        start_scopes: vec!["operator".into()],
        steps: Vec::new(),
    };
    let started = start(&empty, &json!({}), epoch());
    assert_eq!(started.outcome, Outcome::Applied);
    assert_eq!(started.state.status, Status::Completed);
    assert_eq!(
        super::shape(&started.actions, epoch()),
        lines(&["saga.started", "saga.completed", "finish COMPLETED"])
    );
}
