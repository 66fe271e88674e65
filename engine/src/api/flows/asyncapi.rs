//! `GET /asyncapi.json`: the Kafka contract as this deployment has it. The checked-in
//! `openapi/asyncapi.json` describes the built-in flows; served, its roles and command
//! names are every registered definition's, so a participant written for a role that a
//! definition registered a minute ago finds its channel and commands here.

use serde_json::{Value, json};

use crate::shell::catalog::Catalog;

/// The checked-in document: the built-in flows' snapshot.
const SNAPSHOT: &str = include_str!("../../../../openapi/asyncapi.json");

/// The document with the roles and commands of every registered definition.
pub fn live(catalog: &Catalog) -> Value {
    let mut document: Value = serde_json::from_str(SNAPSHOT).unwrap_or(Value::Null);
    let mut roles: Vec<String> = enum_of(&document["channels"]["commands"]["parameters"]["role"]);
    let mut commands: Vec<String> = enum_of(&document["components"]["schemas"]["CommandName"]);
    for (_, versions, _) in catalog.flows() {
        for version in versions {
            for step in &version.definition.steps {
                let Some(task) = step.task() else { continue };
                roles.push(task.role.clone());
                commands.push(task.command.clone());
                commands.extend(task.compensation.clone());
            }
        }
    }
    dedup(&mut roles);
    dedup(&mut commands);
    document["channels"]["commands"]["parameters"]["role"]["enum"] = json!(roles);
    let mut all_roles = roles;
    all_roles.push("notification".to_owned());
    document["components"]["schemas"]["Role"]["enum"] = json!(all_roles);
    document["components"]["schemas"]["CommandName"]["enum"] = json!(commands);
    document
}

fn enum_of(schema: &Value) -> Vec<String> {
    schema["enum"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// Keeps the first of each, in order (the snapshot's own first).
fn dedup(values: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    values.retain(|value| seen.insert(value.clone()));
}
