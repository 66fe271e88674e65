//! The coupon-use saga, whose last step (the vendor payout) has no compensation.

use serde_json::json;

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
            "timer +5000ms",
        ])
    );
    assert_eq!(
        run.succeed(0),
        lines(&[
            "step.succeeded 0",
            "step.dispatched 1",
            "dispatch 1#1 vendor.payout@vendor",
            "timer +5000ms",
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
fn payout_timeout_fences_the_payout_before_it_unclaims() {
    let (mut run, _) = Run::start(&COUPON_USE);
    run.succeed(0);
    assert_eq!(
        run.tick_at_deadline(1),
        lines(&[
            "step.timed_out 1",
            "compensation.started",
            "fence.dispatched 1",
            "fence 1#1 vendor.payout@vendor",
            "timer +30000ms",
        ])
    );
    assert_eq!(run.step(1).forward, ForwardPhase::OutcomeUnknown);
    // The claim is not touched while the payout might still land.
    assert_eq!(run.step(0).compensation, CompensationPhase::NotStarted);
    assert_eq!(
        run.fence_held(1),
        lines(&[
            "step.fenced 1",
            "compensation.dispatched 0",
            "compensate 0#1 coupon.unclaim@coupon",
            "timer +30000ms",
        ])
    );
    assert_eq!(run.step(1).forward, ForwardPhase::Fenced);
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
}

#[test]
fn a_payout_that_landed_before_its_fence_completes_the_saga_and_keeps_the_claim() {
    let (mut run, _) = Run::start(&COUPON_USE);
    run.succeed(0);
    run.tick_at_deadline(1);
    assert_eq!(
        run.fence_found_applied(1, json!({ "ledger_id": 9 })),
        lines(&["step.succeeded 1", "saga.completed", "finish COMPLETED"])
    );
    assert_eq!(run.step(1).output, Some(json!({ "ledger_id": 9 })));
    assert_eq!(run.step(0).compensation, CompensationPhase::NotStarted);
}

#[test]
fn a_failing_fence_is_retried_and_parks_like_a_compensation() {
    let (mut run, _) = Run::start(&COUPON_USE);
    run.succeed(0);
    run.tick_at_deadline(1);
    assert_eq!(
        run.compensation_fails(1),
        lines(&["compensation.failed 1", "timer +250ms"])
    );
    assert_eq!(
        run.tick_when_due(),
        lines(&[
            "fence.dispatched 1",
            "fence 1#2 vendor.payout@vendor",
            "timer +30000ms"
        ])
    );
    // A compensation reply cannot answer a fence.
    run.ignore(Input::CompensationSucceeded {
        step: 1,
        attempt: 2,
    });
    run.fence_held(1);
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
            "timer +5000ms"
        ])
    );
    run.succeed(1);
    assert_eq!(run.status(), Status::Completed);
}

#[test]
fn cancel_during_payout_fences_it_unclaims_and_ends_cancelled() {
    let (mut run, _) = Run::start(&COUPON_USE);
    run.succeed(0);
    run.advance_ms(1000);
    assert_eq!(
        run.apply(Input::CancelRequested),
        lines(&[
            "compensation.started",
            "fence.dispatched 1",
            "fence 1#1 vendor.payout@vendor",
            "timer +30000ms",
        ])
    );
    assert_eq!(
        run.fence_held(1),
        lines(&[
            "step.fenced 1",
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

#[test]
fn a_cancel_that_comes_after_the_payout_landed_is_dropped() {
    let (mut run, _) = Run::start(&COUPON_USE);
    run.succeed(0);
    run.advance_ms(1000);
    run.apply(Input::CancelRequested);
    assert_eq!(
        run.fence_found_applied(1, json!({})),
        lines(&["step.succeeded 1", "saga.completed", "finish COMPLETED"])
    );
    assert!(!run.state.cancel_requested);
    assert_eq!(run.state.failure, None);
}
