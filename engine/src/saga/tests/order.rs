//! The order saga's forward paths: success, rejection, retries and deadlines at each step.

use chrono::TimeDelta;
use serde_json::json;

use super::super::definitions::ORDER;
use super::super::{CompensationPhase, FailureKind, ForwardPhase, Input, Status};
use super::{Run, epoch, failed, lines};

#[test]
fn start_dispatches_the_first_step_with_its_deadline() {
    let (run, actions) = Run::start(&ORDER);
    assert_eq!(
        actions,
        lines(&[
            "saga.started",
            "step.dispatched 0",
            "dispatch 0#1 inventory.reserve@inventory",
            "timer +5000ms",
        ])
    );
    assert_eq!(run.status(), Status::Running);
    assert_eq!(run.step(0).forward, ForwardPhase::InFlight);
    assert_eq!(
        run.step(0).deadline_at,
        Some(epoch() + TimeDelta::seconds(90))
    );
    // The first timer is the attempt's start-to-close timeout, well before the deadline.
    assert_eq!(run.step(0).resend_at, Some(epoch() + TimeDelta::seconds(5)));
    assert_eq!(run.state.next_timer(), run.step(0).resend_at);
    assert_eq!(run.step(1).forward, ForwardPhase::Pending);
}

#[test]
fn happy_path_runs_every_step_in_order_and_completes() {
    let (mut run, _) = Run::start(&ORDER);
    assert_eq!(
        run.succeed(0),
        lines(&[
            "step.succeeded 0",
            "step.dispatched 1",
            "dispatch 1#1 payment.charge@payment",
            "timer +5000ms",
        ])
    );
    assert_eq!(
        run.succeed(1),
        lines(&[
            "step.succeeded 1",
            "step.dispatched 2",
            "dispatch 2#1 shipment.prepare@shipment",
            "timer +5000ms",
        ])
    );
    assert_eq!(
        run.succeed(2),
        lines(&["step.succeeded 2", "saga.completed", "finish COMPLETED"])
    );
    assert_eq!(run.status(), Status::Completed);
    assert_eq!(run.state.next_timer(), None);
    assert_eq!(run.step(1).output, Some(json!({ "step": 1, "attempt": 1 })));
    assert!(
        run.state
            .steps
            .iter()
            .all(|step| step.forward == ForwardPhase::Succeeded)
    );
}

#[test]
fn rejection_of_the_first_step_has_nothing_to_compensate() {
    let (mut run, _) = Run::start(&ORDER);
    assert_eq!(
        run.reject(0),
        lines(&[
            "step.failed 0",
            "compensation.started",
            "saga.compensated",
            "finish COMPENSATED",
        ])
    );
    assert_eq!(run.step(0).compensation, CompensationPhase::NotStarted);
    assert_eq!(
        run.state.failure.as_deref(),
        Some("reserve_stock rejected: Rejected by participant")
    );
}

#[test]
fn rejection_of_the_second_step_compensates_the_first() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    assert_eq!(
        run.reject(1),
        lines(&[
            "step.failed 1",
            "compensation.started",
            "compensation.dispatched 0",
            "compensate 0#1 inventory.release@inventory",
            "timer +30000ms",
        ])
    );
    assert_eq!(run.status(), Status::Compensating);
    assert_eq!(
        run.compensated(0),
        lines(&[
            "compensation.succeeded 0",
            "saga.compensated",
            "finish COMPENSATED"
        ])
    );
    assert_eq!(run.step(1).compensation, CompensationPhase::NotStarted);
}

#[test]
fn rejection_of_the_third_step_compensates_the_second_then_the_first() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    run.succeed(1);
    assert_eq!(
        run.reject(2),
        lines(&[
            "step.failed 2",
            "compensation.started",
            "compensation.dispatched 1",
            "compensate 1#1 payment.refund@payment",
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
    assert_eq!(
        run.compensated(0),
        lines(&[
            "compensation.succeeded 0",
            "saga.compensated",
            "finish COMPENSATED"
        ])
    );
    assert_eq!(run.status(), Status::Compensated);
    assert_eq!(run.step(2).compensation, CompensationPhase::NotStarted);
}

#[test]
fn retryable_failure_is_retried_after_backoff_within_the_same_deadline() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    let deadline = run.step(1).deadline_at;
    assert_eq!(
        run.fail_retryable(1),
        lines(&["step.retry_scheduled 1", "timer +100ms"])
    );
    assert_eq!(run.step(1).forward, ForwardPhase::AwaitingRetry);
    assert!(run.ignore(Input::Tick).starts_with("nothing due"));
    // A reply to the failed attempt is a duplicate now.
    run.ignore(failed(1, 1, FailureKind::Retryable));

    assert_eq!(
        run.tick_when_due(),
        lines(&[
            "step.dispatched 1",
            "dispatch 1#2 payment.charge@payment",
            "timer +5000ms"
        ])
    );
    assert_eq!(run.step(1).deadline_at, deadline);
    assert_eq!(
        run.fail_retryable(1),
        lines(&["step.retry_scheduled 1", "timer +200ms"])
    );
    assert_eq!(
        run.tick_when_due(),
        lines(&[
            "step.dispatched 1",
            "dispatch 1#3 payment.charge@payment",
            "timer +5000ms"
        ])
    );
    run.succeed(1);
    assert_eq!(run.step(1).attempt, 3);
    run.succeed(2);
    assert_eq!(run.status(), Status::Completed);
}

#[test]
fn exhausted_retries_fail_the_step_without_compensating_it() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    run.fail_retryable(1);
    run.tick_when_due();
    run.fail_retryable(1);
    run.tick_when_due();
    assert_eq!(
        run.fail_retryable(1),
        lines(&[
            "step.failed 1",
            "compensation.started",
            "compensation.dispatched 0",
            "compensate 0#1 inventory.release@inventory",
            "timer +30000ms",
        ])
    );
    assert_eq!(run.step(1).forward, ForwardPhase::Failed);
    assert_eq!(run.step(1).attempt, 3);
    assert_eq!(run.step(1).retry_at, None);
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
}

#[test]
fn deadline_at_each_step_compensates_the_timed_out_step_first() {
    let commands = [
        "inventory.release@inventory",
        "payment.refund@payment",
        "shipment.cancel@shipment",
    ];
    for timed_out in 0..3 {
        let (mut run, _) = Run::start(&ORDER);
        for step in 0..timed_out {
            run.succeed(step);
        }
        assert_eq!(
            run.tick_at_deadline(timed_out),
            lines(&[
                &format!("step.timed_out {timed_out}"),
                "compensation.started",
                &format!("compensation.dispatched {timed_out}"),
                &format!("compensate {timed_out}#1 {}", commands[timed_out]),
                "timer +30000ms",
            ])
        );
        assert_eq!(run.step(timed_out).forward, ForwardPhase::OutcomeUnknown);
        for step in (0..=timed_out).rev() {
            let actions = run.compensated(step);
            let expected: Vec<String> = if step == 0 {
                lines(&[
                    "compensation.succeeded 0",
                    "saga.compensated",
                    "finish COMPENSATED",
                ])
            } else {
                vec![
                    format!("compensation.succeeded {step}"),
                    format!("compensation.dispatched {}", step - 1),
                    format!("compensate {}#1 {}", step - 1, commands[step - 1]),
                    "timer +30000ms".to_owned(),
                ]
            };
            assert_eq!(actions, expected, "timeout at step {timed_out}");
        }
        assert_eq!(run.status(), Status::Compensated);
    }
}

#[test]
fn deadline_passing_during_a_retry_wait_fails_the_step_without_compensating_it() {
    let (mut run, _) = Run::start(&ORDER);
    run.advance_ms(89_950);
    // The retry would be due at 90.05 s, after the 90 s deadline, so the deadline is the
    // next timer (the attempt's re-send timer is gone with its reply).
    assert_eq!(
        run.apply(failed(0, 1, FailureKind::Retryable)),
        lines(&["step.retry_scheduled 0", "timer +50ms"])
    );
    assert_eq!(
        run.state.next_timer(),
        Some(epoch() + TimeDelta::seconds(90))
    );
    assert_eq!(
        run.tick_at(epoch() + TimeDelta::seconds(91)),
        lines(&[
            "step.failed 0",
            "compensation.started",
            "saga.compensated",
            "finish COMPENSATED",
        ])
    );
    assert_eq!(run.step(0).forward, ForwardPhase::Failed);
}

#[test]
fn tick_before_any_deadline_is_ignored() {
    let (mut run, _) = Run::start(&ORDER);
    run.advance_ms(4_999);
    let reason = run.ignore(Input::Tick);
    assert!(reason.starts_with("nothing due: next timer at"), "{reason}");
}

#[test]
fn an_attempt_without_reply_is_sent_again_with_the_same_attempt_until_the_deadline() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    let deadline = run.step(1).deadline_at.expect("deadline");
    assert_eq!(
        run.tick_when_due(),
        lines(&[
            "step.redelivered 1",
            "resend 1#1 payment.charge@payment",
            "timer +5000ms"
        ])
    );
    assert_eq!(run.step(1).attempt, 1);
    assert_eq!(run.step(1).deliveries, 2);
    assert_eq!(run.step(1).forward, ForwardPhase::InFlight);
    // Re-sends continue every attempt timeout; none of them is a new attempt.
    while run.state.next_timer() < Some(deadline) {
        run.tick_when_due();
        assert_eq!(run.step(1).attempt, 1);
    }
    assert!(run.step(1).deliveries >= 5, "{:?}", run.step(1));
    // The reply to any of the sends is the reply to attempt 1.
    assert_eq!(
        run.succeed(1),
        lines(&[
            "step.succeeded 1",
            "step.dispatched 2",
            "dispatch 2#1 shipment.prepare@shipment",
            "timer +5000ms",
        ])
    );
}

#[test]
fn only_the_step_deadline_turns_lost_sends_into_compensation() {
    let (mut run, _) = Run::start(&ORDER);
    run.succeed(0);
    let deadline = run.step(1).deadline_at.expect("deadline");
    while run.state.next_timer() < Some(deadline) {
        let actions = run.tick_when_due();
        assert!(actions.contains(&"resend 1#1 payment.charge@payment".to_owned()));
        assert_eq!(run.status(), Status::Running);
    }
    assert_eq!(
        run.tick_when_due(),
        lines(&[
            "step.timed_out 1",
            "compensation.started",
            "compensation.dispatched 1",
            "compensate 1#1 payment.refund@payment",
            "timer +30000ms",
        ])
    );
}
