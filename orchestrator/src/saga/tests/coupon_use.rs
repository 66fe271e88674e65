//! The coupon-use saga, whose last step (the vendor payout) has no compensation.

use super::super::definitions::COUPON_USE;
use super::super::{CompensationPhase, ForwardPhase, Input, Status};
use super::{Run, lines};

#[test]
fn happy_path_claims_then_pays_out() {
    let (mut run, actions) = Run::start(&COUPON_USE);
    assert_eq!(
        actions,
        lines(&[
            "saga.started",
            "step.dispatched 0",
            "dispatch 0#1 coupon.claim@coupon",
            "timer +30000ms",
        ])
    );
    assert_eq!(
        run.succeed(0),
        lines(&[
            "step.succeeded 0",
            "step.dispatched 1",
            "dispatch 1#1 vendor.payout@vendor",
            "timer +30000ms",
        ])
    );
    assert_eq!(
        run.succeed(1),
        lines(&["step.succeeded 1", "saga.completed", "finish COMPLETED"])
    );
}

#[test]
fn payout_rejection_unclaims_the_coupon() {
    let (mut run, _) = Run::start(&COUPON_USE);
    run.succeed(0);
    assert_eq!(
        run.reject(1),
        lines(&[
            "step.failed 1",
            "compensation.started",
            "compensation.dispatched 0",
            "compensate 0#1 coupon.unclaim@coupon",
            "timer +30000ms",
        ])
    );
    assert_eq!(
        run.compensated(0),
        lines(&[
            "compensation.succeeded 0",
            "saga.compensated",
            "finish COMPENSATED"
        ])
    );
}

#[test]
fn claim_rejection_ends_compensated_at_once() {
    let (mut run, _) = Run::start(&COUPON_USE);
    assert_eq!(
        run.reject(0),
        lines(&[
            "step.failed 0",
            "compensation.started",
            "saga.compensated",
            "finish COMPENSATED",
        ])
    );
}

#[test]
fn payout_timeout_skips_the_payout_it_cannot_undo_and_unclaims() {
    let (mut run, _) = Run::start(&COUPON_USE);
    run.succeed(0);
    assert_eq!(
        run.tick_when_due(),
        lines(&[
            "step.timed_out 1",
            "compensation.started",
            "compensation.dispatched 0",
            "compensate 0#1 coupon.unclaim@coupon",
            "timer +30000ms",
        ])
    );
    assert_eq!(run.step(1).forward, ForwardPhase::OutcomeUnknown);
    assert_eq!(run.step(1).compensation, CompensationPhase::NotStarted);
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
}

#[test]
fn payout_retry_then_success_completes() {
    let (mut run, _) = Run::start(&COUPON_USE);
    run.succeed(0);
    assert_eq!(
        run.fail_retryable(1),
        lines(&["step.retry_scheduled 1", "timer +100ms"])
    );
    assert_eq!(
        run.tick_when_due(),
        lines(&[
            "step.dispatched 1",
            "dispatch 1#2 vendor.payout@vendor",
            "timer +28900ms"
        ])
    );
    run.succeed(1);
    assert_eq!(run.status(), Status::Completed);
}

#[test]
fn cancel_during_payout_unclaims_and_ends_cancelled() {
    let (mut run, _) = Run::start(&COUPON_USE);
    run.succeed(0);
    run.advance_ms(1000);
    assert_eq!(
        run.apply(Input::CancelRequested),
        lines(&[
            "compensation.started",
            "compensation.dispatched 0",
            "compensate 0#1 coupon.unclaim@coupon",
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
}

#[test]
fn stuck_unclaim_parks_and_operator_retry_finishes() {
    let (mut run, _) = Run::start(&COUPON_USE);
    run.succeed(0);
    run.reject(1);
    for _ in 0..7 {
        run.tick_when_due(); // the compensation deadline passes
        run.tick_when_due(); // the retry goes out
    }
    assert_eq!(
        run.tick_when_due(),
        lines(&["compensation.failed 0", "saga.failed", "finish FAILED"])
    );
    assert_eq!(
        run.apply(Input::RetryRequested),
        lines(&[
            "saga.retried 0",
            "compensation.dispatched 0",
            "compensate 0#9 coupon.unclaim@coupon",
            "timer +30000ms",
        ])
    );
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
}
