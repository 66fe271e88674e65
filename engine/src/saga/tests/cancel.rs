//! Cancel requests and operator retries, including where they do not apply.

use super::super::definitions::ORDER;
use super::super::{CompensationPhase, FailureKind, ForwardPhase, Input, Status};
use super::{Run, failed, lines, succeeded};

#[test]
fn cancel_while_running_compensates_the_in_flight_step_first() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    run.advance_ms(1000);
    assert_eq!(
        run.apply(Input::CancelRequested),
        lines(&[
            "compensation.started",
            "compensation.dispatched 1",
            "compensate 1#1 payment.refund@payment",
            "timer +30000ms",
        ])
    );
    assert!(run.state.cancel_requested);
    assert_eq!(run.status(), Status::Compensating);
    assert_eq!(run.step(1).forward, ForwardPhase::OutcomeUnknown);
    assert_eq!(
        run.compensated(1),
        lines(&[
            "compensation.succeeded 1",
            "compensation.dispatched 0",
            "compensate 0#1 inventory.release@inventory",
            "timer +30000ms",
        ])
    );
    assert_eq!(
        run.compensated(0),
        lines(&[
            "compensation.succeeded 0",
            "saga.cancelled",
            "finish CANCELLED"
        ])
    );
    assert_eq!(run.status(), Status::Cancelled);
    assert_eq!(run.step(2).forward, ForwardPhase::Pending);
}

#[test]
fn cancel_right_after_start_undoes_the_first_step() {
    let (mut run, _) = Run::start(&ORDER);
    run.advance_ms(10);
    run.apply(Input::CancelRequested);
    assert_eq!(run.step(0).compensation, CompensationPhase::InFlight);
    run.compensated(0);
    assert_eq!(run.status(), Status::Cancelled);
}

#[test]
fn cancel_during_a_retry_wait_drops_the_retry_and_undoes_nothing_of_that_step() {
    let (mut run, _) = Run::start(&ORDER);
    run.fail_retryable(0);
    assert_eq!(
        run.apply(Input::CancelRequested),
        lines(&["compensation.started", "saga.cancelled", "finish CANCELLED"])
    );
    assert_eq!(run.step(0).forward, ForwardPhase::Failed);
    assert_eq!(run.state.next_timer(), None);
}

#[test]
fn a_late_success_of_the_cancelled_step_is_recorded_and_still_compensated() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    run.advance_ms(1000);
    run.apply(Input::CancelRequested);
    assert_eq!(
        run.apply(succeeded(1, 1, serde_json::json!({ "charge": 9 }))),
        lines(&["step.succeeded 1"])
    );
    assert_eq!(run.step(1).forward, ForwardPhase::Succeeded);
    assert_eq!(run.step(1).compensation, CompensationPhase::InFlight);
    run.compensated(1);
    run.compensated(0);
    assert_eq!(run.status(), Status::Cancelled);
}

#[test]
fn cancel_is_ignored_unless_running() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    run.reject(1);
    assert_eq!(run.status(), Status::Compensating);
    let reason = run.ignore(Input::CancelRequested);
    assert!(reason.contains("only to a RUNNING saga"), "{reason}");

    for _ in 0..8 {
        run.compensation_fails(0);
        if run.status() == Status::Compensating {
            run.tick_when_due();
        }
    }
    assert_eq!(run.status(), Status::Failed);
    run.ignore(Input::CancelRequested);

    run.apply(Input::RetryRequested);
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
    run.ignore(Input::CancelRequested);

    let (mut cancelled, _) = Run::start(&ORDER);
    cancelled.apply(Input::CancelRequested);
    cancelled.ignore(Input::CancelRequested);
    cancelled.compensated(0);
    cancelled.ignore(Input::CancelRequested);

    let (mut completed, _) = Run::start(&ORDER);
    for step in 0..3 {
        completed.succeed(step);
    }
    completed.ignore(Input::CancelRequested);
}

#[test]
fn retry_is_ignored_unless_failed() {
    let (mut run, _) = Run::start(&ORDER);
    let reason = run.ignore(Input::RetryRequested);
    assert!(reason.contains("only to a FAILED saga"), "{reason}");
    run.succeed(0);
    run.apply(failed(1, 1, FailureKind::Rejected));
    run.ignore(Input::RetryRequested);
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
    run.ignore(Input::RetryRequested);

    let (mut completed, _) = Run::start(&ORDER);
    for step in 0..3 {
        completed.succeed(step);
    }
    completed.ignore(Input::RetryRequested);

    let (mut cancelled, _) = Run::start(&ORDER);
    cancelled.apply(Input::CancelRequested);
    cancelled.compensated(0);
    cancelled.ignore(Input::RetryRequested);
}
