//! `openapi/asyncapi.json` describes the Kafka contract that `platform::contract` defines.
//! This test keeps the two in step: the enums name exactly the contract's roles,
//! directions, command names and event kinds, and real messages, serialised from the
//! contract's types, fit their schemas (types, required and unknown fields, formats,
//! constants, one-of), while messages that break the contract do not.

use chrono::Utc;
use engine::saga::EventKind;
use platform::contract::{
    Command, CommandPayload, Direction, Dispatch, Event, Fenced, Outcome, Reply, Role, commands,
};
use serde_json::{Value, json};
use uuid::Uuid;

fn document() -> Value {
    serde_json::from_str(include_str!("../../openapi/asyncapi.json"))
        .expect("asyncapi.json is JSON")
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

/// Why `value` breaks `schema`, if it does (the subset of JSON Schema the document uses).
fn check(doc: &Value, value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return check(doc, value, schema_of(doc, name), at);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let fits = options
            .iter()
            .filter(|option| check(doc, value, option, at).is_ok())
            .count();
        return if fits == 1 {
            Ok(())
        } else {
            Err(format!("{at}: fits {fits} of oneOf"))
        };
    }
    if let Some(constant) = schema.get("const")
        && value != constant
    {
        return Err(format!("{at}: {value} is not {constant}"));
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {values:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !types.contains(&kind) {
            return Err(format!("{at}: {kind} where {types:?} is expected"));
        }
    }
    match (schema["format"].as_str(), value.as_str()) {
        (Some("uuid"), Some(text)) if Uuid::parse_str(text).is_err() => {
            return Err(format!("{at}: not a uuid"));
        }
        (Some("date-time"), Some(text)) if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
            return Err(format!("{at}: not a date-time"));
        }
        _ => {}
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_u64(), value.as_u64())
        && n > max
    {
        return Err(format!("{at}: {n} over {max}"));
    }
    if let Value::Object(fields) = value {
        for name in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !fields.contains_key(name) {
                return Err(format!("{at}.{name}: required"));
            }
        }
        let properties = schema["properties"].as_object();
        for (name, field) in fields {
            match properties.and_then(|p| p.get(name)) {
                Some(property) => check(doc, field, property, &format!("{at}.{name}"))?,
                None if schema["additionalProperties"] == false => {
                    return Err(format!("{at}.{name}: not in the contract"));
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn schema_of<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let found = schema(doc, name);
    assert!(found.is_object(), "no schema {name}");
    found
}

fn fits(doc: &Value, name: &str, value: &Value) {
    if let Err(reason) = check(doc, value, schema_of(doc, name), name) {
        panic!("{name} breaks asyncapi.json: {reason}\n{value:#}");
    }
}

fn breaks(doc: &Value, name: &str, value: &Value) {
    assert!(
        check(doc, value, schema_of(doc, name), name).is_err(),
        "{name} should not fit: {value}"
    );
}

fn command() -> Command {
    let mut outputs = std::collections::BTreeMap::new();
    outputs.insert(
        "reserve_stock".into(),
        platform::contract::StepOutput {
            by: platform::contract::Producer::Command {
                role: "inventory".into(),
                command: "inventory.reserve".into(),
            },
            output: json!({ "reserved": [{ "sku": "MUG-01", "quantity": 2 }] }),
        },
    );
    let dispatch = Dispatch {
        step: 1,
        attempt: 2,
        direction: Direction::Forward,
    };
    let payload = CommandPayload {
        input: json!({ "user_id": Uuid::nil(), "lines": [{ "sku": "MUG-01", "quantity": 2 }] }),
        outputs,
    };
    Command::new(
        Uuid::now_v7(),
        "order",
        dispatch,
        commands::PAYMENT_CHARGE,
        payload,
        Utc::now(),
    )
}

#[test]
fn the_enums_name_exactly_what_the_contract_has() {
    let doc = document();
    let names = |schema: &Value| -> Vec<String> {
        schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let roles: Vec<String> = Role::ALL.iter().map(|r| r.as_str().to_owned()).collect();
    assert_eq!(names(schema(&doc, "Role")), roles);
    let participants: Vec<String> = Role::PARTICIPANTS
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    assert_eq!(
        names(&doc["channels"]["commands"]["parameters"]["role"]),
        participants
    );
    let directions: Vec<String> = [Direction::Forward, Direction::Compensate, Direction::Fence]
        .iter()
        .map(|d| {
            serde_json::to_value(d)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names(schema(&doc, "Direction")), directions);
    assert_eq!(names(schema(&doc, "CommandName")), commands::ALL);
    let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names(&schema(&doc, "Event")["properties"]["kind"]), kinds);
}

#[test]
fn real_messages_fit_their_schemas_and_broken_ones_do_not() {
    let doc = document();
    let command = command();
    fits(&doc, "Command", &serde_json::to_value(&command).unwrap());
    for outcome in [
        Outcome::Succeeded {
            output: json!({ "amount_cents": 3000 }),
        },
        Outcome::Rejected {
            reason: "insufficient funds".into(),
        },
        Outcome::Failed {
            reason: "bank unavailable".into(),
        },
    ] {
        fits(
            &doc,
            "Reply",
            &serde_json::to_value(Reply::answering(&command, outcome)).unwrap(),
        );
    }
    let fenced = Fenced {
        applied: true,
        output: Some(json!({ "claim_id": 7 })),
    };
    fits(&doc, "Fenced", &serde_json::to_value(&fenced).unwrap());
    for step in [Some(2), None] {
        let event = Event {
            id: Uuid::now_v7(),
            saga_id: command.saga_id,
            saga: "order".into(),
            kind: EventKind::StepFailed.as_str().into(),
            step,
            message: "prepare_shipment rejected".into(),
            occurred_at: Utc::now(),
        };
        fits(&doc, "Event", &serde_json::to_value(&event).unwrap());
    }

    let mut unknown_field = serde_json::to_value(&command).unwrap();
    unknown_field["priority"] = json!(1);
    breaks(&doc, "Command", &unknown_field);
    let mut missing = serde_json::to_value(&command).unwrap();
    missing.as_object_mut().unwrap().remove("issued_at");
    breaks(&doc, "Command", &missing);
    let mut unknown_name = serde_json::to_value(&command).unwrap();
    unknown_name["name"] = json!("payment.steal");
    breaks(&doc, "Command", &unknown_name);
    let reply = serde_json::to_value(Reply::answering(
        &command,
        Outcome::Rejected {
            reason: "no".into(),
        },
    ))
    .unwrap();
    let mut bad_outcome = reply.clone();
    bad_outcome["outcome"] = json!({ "status": "maybe" });
    breaks(&doc, "Reply", &bad_outcome);
    let mut bad_id = reply;
    bad_id["command_id"] = json!("not-a-uuid");
    breaks(&doc, "Reply", &bad_id);
}

#[test]
fn dead_letter_headers_are_the_ones_the_consumer_loop_writes() {
    let doc = document();
    let required: Vec<&str> = schema(&doc, "DeadLetterHeaders")["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let written = include_str!("../../platform/src/kafka/producer.rs");
    for header in &required {
        assert!(
            written.contains(&format!("(\"{header}\"")),
            "{header} is not written"
        );
    }
    let read = include_str!("../../platform/src/kafka/dead_letters.rs");
    for header in &required {
        assert!(
            read.contains(&format!("\"{header}\"")),
            "{header} is not read"
        );
    }
}

#[test]
fn commands_replies_and_events_declare_the_trace_header_the_code_carries() {
    let doc = document();
    let headers = schema(&doc, "TraceHeaders");
    assert!(
        headers["properties"][platform::telemetry::TRACEPARENT].is_object(),
        "the header the code reads and writes is the one documented"
    );
    for message in ["Command", "Reply", "Event"] {
        assert_eq!(
            doc["components"]["messages"][message]["headers"]["$ref"],
            "#/components/schemas/TraceHeaders",
            "{message} declares the trace header"
        );
    }
}
