use serde_json::{Value, json};

use super::*;

const LOST: Duration = Duration::from_secs(60);

fn faults(document: Value) -> Vec<(String, String)> {
    parse(&document, LOST)
        .expect_err("refused")
        .into_iter()
        .map(|fault| (fault.pointer, fault.message))
        .collect()
}

fn pointers(document: Value) -> Vec<String> {
    faults(document).into_iter().map(|(at, _)| at).collect()
}

fn flow(steps: Value) -> Value {
    json!({ "name": "test_flow", "version": 1, "input": { "type": "object" }, "steps": steps })
}

fn task(name: &str, role: &str) -> Value {
    json!({
        "name": name, "kind": "task", "role": role,
        "command": format!("{role}.do"), "compensation": format!("{role}.undo")
    })
}

/// A step as (name, command, compensation).
type Shape = (String, String, Option<String>);

#[test]
fn the_sample_documents_are_accepted_with_the_agreed_shape() {
    let built = samples();
    let shape: Vec<(String, Vec<Shape>)> = built
        .iter()
        .map(|definition| {
            let steps = definition
                .steps
                .iter()
                .map(|step| {
                    let task = step.task().expect("built-ins are tasks");
                    (
                        step.name.clone(),
                        task.command.clone(),
                        task.compensation.clone(),
                    )
                })
                .collect();
            (definition.name.clone(), steps)
        })
        .collect();
    let owned = |name: &str, command: &str, undo: Option<&str>| {
        (name.to_owned(), command.to_owned(), undo.map(str::to_owned))
    };
    assert_eq!(
        shape,
        [
            (
                "order".to_owned(),
                vec![
                    owned(
                        "reserve_stock",
                        "inventory.reserve",
                        Some("inventory.release")
                    ),
                    owned("charge_payment", "payment.charge", Some("payment.refund")),
                    owned(
                        "prepare_shipment",
                        "shipment.prepare",
                        Some("shipment.cancel")
                    ),
                ]
            ),
            (
                "coupon_use".to_owned(),
                vec![
                    owned("claim_coupon", "coupon.claim", Some("coupon.unclaim")),
                    owned("vendor_payout", "vendor.payout", None),
                ]
            ),
        ]
    );
    assert!(built.iter().all(|definition| definition.version == 1));
    assert_eq!(built[0].roles(), ["inventory", "payment", "shipment"]);
}

#[test]
fn the_format_is_checked_with_a_pointer_to_each_fault() {
    let unknown_kind = flow(json!([{ "name": "a", "kind": "teleport" }]));
    assert_eq!(pointers(unknown_kind), ["/steps/0/kind"]);
    let bad_role = flow(json!([task("a", "Not A Role")]));
    let found = pointers(bad_role);
    assert!(found.contains(&"/steps/0/role".to_owned()), "{found:?}");
    let extra =
        flow(json!([{ "name": "a", "kind": "task", "role": "r", "command": "r.do", "colour": 1 }]));
    assert_eq!(pointers(extra), ["/steps/0"]);
    let no_steps = json!({ "name": "x", "version": 1, "input": {}, "steps": [] });
    assert_eq!(pointers(no_steps), ["/steps"]);
    let bad_name =
        json!({ "name": "Bad-Name", "version": 0, "input": {}, "steps": [task("a", "r")] });
    assert_eq!(pointers(bad_name), ["/name", "/version"]);
}

#[test]
fn an_input_that_is_not_a_json_schema_is_refused_at_input() {
    let mut document = flow(json!([task("a", "r")]));
    document["input"] = json!({ "type": "no-such-type" });
    let found = faults(document);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "/input");
}

#[test]
fn rules_a_schema_cannot_state_are_checked() {
    let duplicate = flow(json!([task("a", "r"), task("a", "s")]));
    assert_eq!(pointers(duplicate), ["/steps/1/name"]);
    let foreign = flow(json!([{ "name": "a", "kind": "task", "role": "r", "command": "s.do" }]));
    assert_eq!(pointers(foreign), ["/steps/0/command"]);
    let reserved = flow(
        json!([{ "name": "a", "kind": "task", "role": "notification", "command": "notification.do" }]),
    );
    assert_eq!(pointers(reserved), ["/steps/0/role"]);
    let hasty = flow(json!([{
        "name": "a", "kind": "task", "role": "r", "command": "r.do",
        "deadline_ms": 30000, "attempt_timeout_ms": 30000
    }]));
    let found = faults(hasty);
    assert_eq!(found[0].0, "/steps/0/attempt_timeout_ms");
    assert_eq!(found[1].0, "/steps/0/deadline_ms");
    assert!(found[1].1.contains("lost consumer member"), "{found:?}");
}

#[test]
fn what_follows_a_pivot_must_be_forward_only() {
    let document = flow(json!([
        task("reserve", "inventory"),
        { "name": "pay", "kind": "task", "role": "payment", "command": "payment.charge", "pivot": true },
        { "name": "cool_off", "kind": "wait", "duration_ms": 1000 },
        task("ship", "shipment"),
        { "name": "award", "kind": "task", "role": "loyalty", "command": "loyalty.award", "forward_only": true },
    ]));
    let found = faults(document);
    assert_eq!(
        found.iter().map(|(at, _)| at.as_str()).collect::<Vec<_>>(),
        ["/steps/3/forward_only"]
    );
    assert!(found[0].1.contains("follows the pivot `pay`"), "{found:?}");
    let undoable_pivot = flow(json!([{
        "name": "pay", "kind": "task", "role": "payment", "command": "payment.charge",
        "compensation": "payment.refund", "pivot": true
    }]));
    assert_eq!(pointers(undoable_pivot), ["/steps/0/compensation"]);
}

/// The stranded stage: a parallel group of a reservation, a charge and a forward-only
/// task. With the stock gone, the stage can never complete and nothing undoes the charge.
/// Refused, as is a forward-only step anywhere before (or without) a pivot.
#[test]
fn forward_only_steps_only_follow_the_pivot_and_never_in_a_parallel_stage() {
    let stranded = flow(json!([
        { "name": "hold", "kind": "parallel", "tasks": [
            task("reserve_stock", "inventory"),
            task("charge_payment", "payment"),
            { "name": "note", "kind": "task", "role": "audit", "command": "audit.note", "forward_only": true }
        ]}
    ]));
    let found = faults(stranded);
    assert_eq!(
        found.iter().map(|(at, _)| at.as_str()).collect::<Vec<_>>(),
        [
            "/steps/0/tasks/2/forward_only",
            "/steps/0/tasks/2/forward_only"
        ]
    );
    assert!(
        found[0].1.contains("does not follow the pivot"),
        "{found:?}"
    );
    assert!(found[1].1.contains("parallel stage"), "{found:?}");
    let before_the_pivot = flow(json!([
        { "name": "note", "kind": "task", "role": "audit", "command": "audit.note", "forward_only": true },
        { "name": "pay", "kind": "task", "role": "payment", "command": "payment.charge", "pivot": true },
    ]));
    assert_eq!(pointers(before_the_pivot), ["/steps/0/forward_only"]);
    let signal_without_pivot = flow(json!([
        task("reserve", "inventory"),
        { "name": "picked_up", "kind": "signal", "scope": "client", "forward_only": true },
    ]));
    assert_eq!(pointers(signal_without_pivot), ["/steps/1/forward_only"]);
    // Stored before the rule: loaded, with what registration would refuse now.
    let (definition, refused_now) = load(&flow(json!([
        task("reserve", "inventory"),
        { "name": "note", "kind": "task", "role": "audit", "command": "audit.note", "forward_only": true },
    ])))
    .expect("a stored version still loads");
    assert_eq!(definition.steps.len(), 2);
    assert_eq!(refused_now.len(), 1, "{refused_now:?}");
}

#[test]
fn parallel_members_need_compensations_and_signals_need_a_timeout() {
    let document = flow(json!([
        { "name": "both", "kind": "parallel", "tasks": [
            task("reserve", "inventory"),
            { "name": "pay", "kind": "task", "role": "payment", "command": "payment.charge" }
        ]},
        { "name": "picked_up", "kind": "signal", "scope": "operator" }
    ]));
    assert_eq!(
        pointers(document),
        ["/steps/0/tasks/1/compensation", "/steps/1"]
    );
}

#[test]
fn stages_are_numbered_and_parallel_members_share_one() {
    let document = flow(json!([
        { "name": "both", "kind": "parallel", "tasks": [task("reserve", "inventory"), task("pay", "payment")] },
        { "name": "picked_up", "kind": "signal", "scope": "operator", "timeout_ms": 60000, "pivot": true },
        { "name": "cool_off", "kind": "wait", "until": "/award_after" },
        { "name": "award", "kind": "task", "role": "loyalty", "command": "loyalty.award", "forward_only": true }
    ]));
    let definition = parse(&document, LOST).expect("accepted");
    let stages: Vec<(&str, usize, &str)> = definition
        .steps
        .iter()
        .map(|step| (step.name.as_str(), step.stage, step.kind_name()))
        .collect();
    assert_eq!(
        stages,
        [
            ("reserve", 0, "task"),
            ("pay", 0, "task"),
            ("picked_up", 1, "signal"),
            ("cool_off", 2, "wait"),
            ("award", 3, "task")
        ]
    );
    assert_eq!(definition.stages(), 4);
    assert_eq!(definition.members(0).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(definition.signal("picked_up"), Some(2));
    assert_eq!(definition.signal("cool_off"), None);
    assert_eq!(definition.roles(), ["inventory", "payment", "loyalty"]);
    assert_eq!(
        definition.steps[3].kind,
        StepKind::Wait(Wake::At("/award_after".into()))
    );
}
