//! Compensation retries, the budget, parking as FAILED and the operator retry.

use super::super::definitions::ORDER;
use super::super::{CompensationPhase, Input, Status};
use super::{Run, lines};

/// An order whose shipment was rejected: refunding the payment (step 1) is in flight.
fn refunding() -> Run {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    run.succeed(1);
    run.reject(2);
    assert_eq!(run.step(1).compensation, CompensationPhase::InFlight);
    run
}

/// Fails the refund until its budget of 8 attempts is spent; returns the last actions.
fn exhaust_refund(run: &mut Run) -> Vec<String> {
    let expected_backoffs = [250, 500, 1000, 2000, 4000, 8000, 15_000];
    for backoff in expected_backoffs {
        let timer = format!("timer +{backoff}ms");
        assert_eq!(
            run.compensation_fails(1),
            lines(&["compensation.failed 1", &timer])
        );
        run.tick_when_due();
    }
    run.compensation_fails(1)
}

#[test]
fn failed_compensation_is_retried_after_backoff_then_continues() {
    let mut run = refunding();
    assert_eq!(
        run.compensation_fails(1),
        lines(&["compensation.failed 1", "timer +250ms"])
    );
    assert_eq!(run.step(1).compensation, CompensationPhase::AwaitingRetry);
    assert!(run.ignore(Input::Tick).starts_with("nothing due"));
    assert_eq!(
        run.tick_when_due(),
        lines(&[
            "compensation.dispatched 1",
            "compensate 1#2 payment.refund@payment",
            "timer +30000ms",
        ])
    );
    assert_eq!(
        run.compensated(1),
        lines(&[
            "compensation.succeeded 1",
            "compensation.dispatched 0",
            "compensate 0#1 inventory.release@inventory",
            "timer +30000ms",
        ])
    );
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
}

#[test]
fn compensation_deadline_counts_as_a_failed_attempt() {
    let mut run = refunding();
    assert_eq!(
        run.tick_when_due(),
        lines(&["compensation.failed 1", "timer +250ms"])
    );
    assert_eq!(run.step(1).compensation_attempts_in_budget, 1);
    assert_eq!(
        run.tick_when_due(),
        lines(&[
            "compensation.dispatched 1",
            "compensate 1#2 payment.refund@payment",
            "timer +30000ms",
        ])
    );
}

#[test]
fn late_success_of_a_timed_out_compensation_attempt_is_taken() {
    let mut run = refunding();
    run.tick_when_due();
    assert_eq!(
        run.apply(Input::CompensationSucceeded {
            step: 1,
            attempt: 1
        }),
        lines(&[
            "compensation.succeeded 1",
            "compensation.dispatched 0",
            "compensate 0#1 inventory.release@inventory",
            "timer +30000ms",
        ])
    );
    assert_eq!(run.step(1).retry_at, None);
}

#[test]
fn exhausted_compensation_budget_parks_the_saga_as_failed() {
    let mut run = refunding();
    assert_eq!(
        exhaust_refund(&mut run),
        lines(&["compensation.failed 1", "saga.failed", "finish FAILED"])
    );
    assert_eq!(run.status(), Status::Failed);
    assert!(!run.status().is_terminal());
    assert_eq!(run.step(1).compensation, CompensationPhase::Exhausted);
    assert_eq!(run.step(1).compensation_attempt, 8);
    assert_eq!(run.state.next_timer(), None);
    let failure = run.state.failure.clone().unwrap_or_default();
    assert!(
        failure.contains("payment.refund gave up after 8 attempts"),
        "{failure}"
    );
    // Parked: only an operator moves it on.
    assert!(run.ignore(Input::Tick).starts_with("nothing due"));
    run.ignore(Input::CompensationFailed {
        step: 1,
        attempt: 8,
        reason: "again".into(),
    });
    // The inventory was never released: the saga stopped at the refund.
    assert_eq!(run.step(0).compensation, CompensationPhase::NotStarted);
}

#[test]
fn operator_retry_from_failed_resumes_with_a_fresh_budget_and_finishes() {
    let mut run = refunding();
    exhaust_refund(&mut run);
    assert_eq!(
        run.apply(Input::RetryRequested),
        lines(&[
            "saga.retried 1",
            "compensation.dispatched 1",
            "compensate 1#9 payment.refund@payment",
            "timer +30000ms",
        ])
    );
    assert_eq!(run.status(), Status::Compensating);
    assert_eq!(run.step(1).compensation_attempts_in_budget, 1);
    run.ignore(Input::CompensationSucceeded {
        step: 1,
        attempt: 8,
    });
    run.compensated(1);
    assert_eq!(
        run.compensated(0),
        lines(&[
            "compensation.succeeded 0",
            "saga.compensated",
            "finish COMPENSATED"
        ])
    );
    assert_eq!(run.status(), Status::Compensated);
}

#[test]
fn a_retried_compensation_can_park_again_and_be_retried_again() {
    let mut run = refunding();
    exhaust_refund(&mut run);
    run.apply(Input::RetryRequested);
    assert_eq!(
        exhaust_refund(&mut run),
        lines(&["compensation.failed 1", "saga.failed", "finish FAILED"])
    );
    assert_eq!(run.step(1).compensation_attempt, 16);
    let actions = run.apply(Input::RetryRequested);
    assert!(actions.contains(&"compensate 1#17 payment.refund@payment".to_owned()));
}

#[test]
fn a_compensation_success_after_the_budget_ran_out_resumes_the_compensation() {
    let mut run = refunding();
    exhaust_refund(&mut run);
    assert_eq!(run.status(), Status::Failed);
    // The last attempt's reply was only late: the refund did happen.
    assert_eq!(
        run.compensated(1),
        lines(&[
            "compensation.succeeded 1",
            "compensation.dispatched 0",
            "compensate 0#1 inventory.release@inventory",
            "timer +30000ms",
        ])
    );
    assert_eq!(run.status(), Status::Compensating);
    // An older attempt's late success stays stale.
    run.ignore(Input::CompensationSucceeded {
        step: 1,
        attempt: 7,
    });
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
}

#[test]
fn an_operator_resolves_a_parked_saga_and_nothing_moves_it_after() {
    let mut run = refunding();
    run.ignore(Input::ResolveRequested); // only a FAILED saga can be resolved
    exhaust_refund(&mut run);
    assert_eq!(
        run.apply(Input::ResolveRequested),
        lines(&["saga.resolved", "finish RESOLVED"])
    );
    assert_eq!(run.status(), Status::Resolved);
    assert!(Status::Resolved.is_terminal());
    assert_eq!(run.state.next_timer(), None, "no timer is left to fire");
    run.ignore(Input::RetryRequested);
    run.ignore(Input::CancelRequested);
    run.ignore(Input::ResolveRequested);
}
