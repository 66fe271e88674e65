//! The stage kinds beyond one task: a parallel group, a durable wait, a signal, and a
//! pivot followed by forward-only steps.

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::json;

use super::super::document::parse;
use super::super::{Definition, FailureKind, ForwardPhase, Input, Outcome, Status, start};
use super::{Run, epoch, failed, lines};

/// hold (reserve ‖ charge) → picked_up (signal, pivot) → settle (wait 1 s) → award.
static PICKUP: LazyLock<Definition> = LazyLock::new(|| {
    let document = json!({
        "name": "pickup", "version": 1, "input": {},
        "steps": [
            { "name": "hold", "kind": "parallel", "tasks": [
                { "name": "reserve", "kind": "task", "role": "inventory",
                  "command": "inventory.reserve", "compensation": "inventory.release" },
                { "name": "charge", "kind": "task", "role": "payment",
                  "command": "payment.charge", "compensation": "payment.refund" }
            ]},
            { "name": "picked_up", "kind": "signal", "scope": "operator",
              "timeout_ms": 60000, "pivot": true },
            { "name": "settle", "kind": "wait", "duration_ms": 1000 },
            { "name": "award", "kind": "task", "role": "loyalty", "command": "loyalty.award",
              "forward_only": true }
        ]
    });
    parse(&document, Duration::from_secs(60)).expect("valid")
});

fn signal(name: &str) -> Input {
    Input::Signal {
        name: name.to_owned(),
        payload: json!({ "desk": 3 }),
    }
}

#[test]
fn a_parallel_stage_dispatches_together_and_joins_when_all_succeeded() {
    let (mut run, actions) = Run::start(&PICKUP);
    assert_eq!(
        actions,
        lines(&[
            "saga.started",
            "step.dispatched 0",
            "dispatch 0#1 inventory.reserve@inventory",
            "step.dispatched 1",
            "dispatch 1#1 payment.charge@payment",
            "timer +5000ms",
        ])
    );
    assert_eq!(run.succeed(1), lines(&["step.succeeded 1"]));
    assert_eq!(
        run.succeed(0),
        lines(&["step.succeeded 0", "step.dispatched 2", "timer +60000ms"])
    );
    assert_eq!(run.step(2).forward, ForwardPhase::InFlight);
}

#[test]
fn one_failure_in_a_parallel_stage_settles_the_other_and_undoes_what_may_exist() {
    let (mut run, _) = Run::start(&PICKUP);
    run.succeed(0);
    // The charge is refused while nothing else is in flight: only the reservation is undone.
    let actions = run.reject(1);
    assert_eq!(
        actions,
        lines(&[
            "step.failed 1",
            "compensation.started",
            "compensation.dispatched 0",
            "compensate 0#1 inventory.release@inventory",
            "timer +30000ms",
        ])
    );
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);

    // The reservation refused while the charge is still out: the charge's outcome is
    // unknown, so it is compensated (the refund fences it).
    let (mut run, _) = Run::start(&PICKUP);
    let actions = run.reject(0);
    assert!(
        actions.contains(&"compensate 1#1 payment.refund@payment".to_owned()),
        "{actions:?}"
    );
    assert_eq!(run.step(1).forward, ForwardPhase::OutcomeUnknown);
    assert_eq!(run.state.next_timer(), run.step(1).deadline_at);
    run.compensated(1);
    assert_eq!(run.status(), Status::Compensated);
}

#[test]
fn a_signal_moves_the_saga_on_and_its_timeout_compensates() {
    let (mut run, _) = Run::start(&PICKUP);
    run.succeed(0);
    run.succeed(1);
    // Not a signal of this flow, or not one it waits for: ignored with a reason.
    assert!(run.ignore(signal("nope")).contains("no signal `nope`"));
    assert!(run.ignore(signal("settle")).contains("no signal"));
    assert_eq!(
        run.apply(signal("picked_up")),
        lines(&["step.succeeded 2", "step.dispatched 3", "timer +1000ms"])
    );
    assert_eq!(run.step(2).output, Some(json!({ "desk": 3 })));
    assert!(run.ignore(signal("picked_up")).contains("not waiting"));

    let (mut run, _) = Run::start(&PICKUP);
    run.succeed(0);
    run.succeed(1);
    let actions = run.tick_at_deadline(2);
    assert_eq!(
        actions[..4],
        lines(&[
            "step.timed_out 2",
            "compensation.started",
            "compensation.dispatched 1",
            "compensate 1#1 payment.refund@payment",
        ])
    );
    run.compensated(1);
    run.compensated(0);
    assert_eq!(run.status(), Status::Compensated);
}

#[test]
fn a_signal_at_or_after_its_deadline_is_refused_before_the_tick_runs() {
    let (mut run, _) = Run::start(&PICKUP);
    run.succeed(0);
    run.succeed(1);
    let deadline = run
        .step(2)
        .deadline_at
        .expect("the signal waits until its timeout");
    run.now = deadline;
    assert!(
        run.ignore(signal("picked_up"))
            .contains("after its deadline"),
        "the wait is over even though no tick ran yet"
    );
    assert_eq!(run.step(2).forward, ForwardPhase::InFlight);
    // Just before it, the signal is taken.
    run.now = deadline - chrono::TimeDelta::milliseconds(1);
    assert_eq!(
        run.apply(signal("picked_up")),
        lines(&["step.succeeded 2", "step.dispatched 3", "timer +1000ms"])
    );
}

/// A forward-only step that keeps failing, or whose participant never answers, does not
/// retry for ever: past its budget the saga parks as FAILED with the reason. An operator's
/// retry sends the step again with a fresh budget; resolve ends the saga by hand.
#[test]
fn a_forward_only_step_past_its_budget_parks_and_an_operator_retries_or_resolves_it() {
    static BUDGETED: LazyLock<Definition> = LazyLock::new(|| {
        let document = json!({
            "name": "budgeted", "version": 1, "input": {},
            "steps": [
                { "name": "pay", "kind": "task", "role": "payment", "command": "payment.charge",
                  "pivot": true },
                { "name": "award", "kind": "task", "role": "loyalty", "command": "loyalty.award",
                  "forward_only": true, "retry": { "max_attempts": 2 } }
            ]
        });
        parse(&document, Duration::from_secs(60)).expect("valid")
    });
    let (mut run, _) = Run::start(&BUDGETED);
    run.succeed(0);
    assert_eq!(run.step(1).attempt, 1);
    run.fail_retryable(1);
    run.tick_when_due();
    assert_eq!(run.step(1).attempt, 2, "retried within the budget");
    run.fail_retryable(1);
    assert_eq!(run.status(), Status::Failed, "parked past the budget");
    assert!(
        run.state
            .failure
            .as_deref()
            .is_some_and(|why| why.contains("award gave up after 2 attempts")),
        "{:?}",
        run.state.failure
    );
    assert_eq!(
        run.state.next_timer(),
        None,
        "a parked saga writes nothing more"
    );
    assert!(run.ignore(Input::Tick).contains("nothing due"));
    // An operator's retry sends the step again, with a fresh budget and a new attempt.
    let retried = run.apply(Input::RetryRequested);
    assert!(
        retried.contains(&"dispatch 1#3 loyalty.award@loyalty".to_owned()),
        "{retried:?}"
    );
    assert_eq!(run.status(), Status::Running);
    run.succeed(1);
    assert_eq!(run.status(), Status::Completed);

    // Silence counts too: a participant that never answers is sent the command as often
    // as the budget allows attempts, then the saga parks, and resolve ends it by hand.
    let (mut run, _) = Run::start(&BUDGETED);
    run.succeed(0);
    run.tick_when_due();
    assert_eq!(run.step(1).deliveries, 2);
    run.tick_when_due();
    assert_eq!(run.status(), Status::Failed);
    assert!(
        run.state
            .failure
            .as_deref()
            .is_some_and(|why| why.contains("no reply after 2 sends")),
        "{:?}",
        run.state.failure
    );
    run.apply(Input::ResolveRequested);
    assert_eq!(run.status(), Status::Resolved);
}

#[test]
fn past_the_pivot_nothing_is_undone_and_forward_only_steps_retry_until_they_land() {
    let (mut run, _) = Run::start(&PICKUP);
    run.succeed(0);
    run.succeed(1);
    run.apply(signal("picked_up"));
    assert!(
        run.ignore(Input::CancelRequested)
            .contains("past its pivot")
    );
    // The wait is a durable timer: it ends at its time, not before.
    assert!(run.ignore(Input::Tick).contains("nothing due"));
    assert_eq!(
        run.tick_when_due(),
        lines(&[
            "step.succeeded 3",
            "step.dispatched 4",
            "dispatch 4#1 loyalty.award@loyalty",
            "timer +5000ms",
        ])
    );
    // Forward-only: no step deadline, and even a rejection is tried again.
    assert_eq!(run.step(4).deadline_at, None);
    for attempt in 1..=5 {
        run.advance_ms(1000);
        run.apply(failed(4, attempt, FailureKind::Rejected));
        assert_eq!(run.step(4).forward, ForwardPhase::AwaitingRetry);
        let actions = run.tick_when_due();
        assert!(
            actions.contains(&format!("dispatch 4#{} loyalty.award@loyalty", attempt + 1)),
            "{actions:?}"
        );
    }
    run.succeed(4);
    assert_eq!(run.status(), Status::Completed);
}

#[test]
fn a_wait_until_a_time_in_the_input_reads_it_at_start() {
    let document = json!({
        "name": "later", "version": 1, "input": {},
        "steps": [
            { "name": "until", "kind": "wait", "until": "/pay/after" },
            { "name": "pay", "kind": "task", "role": "vendor", "command": "vendor.payout" }
        ]
    });
    let definition = parse(&document, Duration::from_secs(60)).expect("valid");
    let at = epoch() + chrono::TimeDelta::days(14);
    let started = start(
        &definition,
        &json!({ "pay": { "after": at.to_rfc3339() } }),
        epoch(),
    );
    assert_eq!(started.outcome, Outcome::Applied);
    assert_eq!(started.state.next_timer(), Some(at));
    let refused = start(&definition, &json!({ "pay": {} }), epoch());
    match refused.outcome {
        Outcome::Ignored { reason } => assert!(reason.contains("input/pay/after"), "{reason}"),
        Outcome::Applied => panic!("a start without the wait's time was applied"),
    }
    // Past the horizon (a year and a day), a caller's input would park the saga for good.
    let far = epoch() + super::super::transition::WAIT_HORIZON + chrono::TimeDelta::seconds(1);
    let refused = start(
        &definition,
        &json!({ "pay": { "after": far.to_rfc3339() } }),
        epoch(),
    );
    match refused.outcome {
        Outcome::Ignored { reason } => assert!(reason.contains("horizon"), "{reason}"),
        Outcome::Applied => panic!("a wait past the horizon was applied"),
    }
}
