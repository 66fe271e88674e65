//! What the OpenAPI document states beyond what poem-openapi writes from the types: the
//! closed sets of values some string parameters take (statuses, event kinds, dead-letter
//! states), taken from the same constants the handlers check against, and an
//! `operationId` per operation, derived from its summary ("List sagas" -> `listSagas`).

use serde_json::{Value, json};

use crate::saga::{EventKind, Status};

/// (path, method, parameter) -> the values it takes.
fn enums() -> Vec<(&'static str, &'static str, &'static str, Vec<&'static str>)> {
    let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
    let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    vec![
        ("/v1/sagas", "get", "status", statuses),
        ("/v1/notifications", "get", "kind", kinds),
        (
            "/v1/dead-letters",
            "get",
            "state",
            vec!["waiting", "replayed", "discarded"],
        ),
    ]
}

/// The operation id a summary gives: its words in lower camel case, articles dropped.
pub fn operation_id(summary: &str) -> String {
    let mut id = String::new();
    let summary = summary.replace("'s", "").replace("\u{2019}s", "");
    for word in summary
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| {
            !word.is_empty() && !["a", "an", "the"].contains(&word.to_ascii_lowercase().as_str())
        })
    {
        let mut chars = word.chars();
        let first = chars.next().unwrap_or_default();
        if id.is_empty() {
            id.extend(first.to_lowercase());
        } else {
            id.extend(first.to_uppercase());
        }
        id.push_str(&chars.as_str().to_ascii_lowercase());
    }
    id
}

/// (schema, property) -> the values it takes, for request bodies.
fn body_enums() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    // Definitions are data registered at run time: their names are no closed set.
    Vec::new()
}

/// Writes the enums and operation ids into `spec`.
/// A free string schema (no format, enum or pattern of its own) gets the pattern that
/// states what `strict` refuses: U+0000.
fn refuse_nul(schema: &mut Value) {
    let free = schema["type"] == "string"
        && schema["format"].is_null()
        && schema["enum"].is_null()
        && schema["pattern"].is_null();
    if free {
        schema["pattern"] = json!("^[^\\u0000]*$");
    }
}

pub fn complete(spec: &mut Value) {
    for (schema, property, values) in body_enums() {
        let property = &mut spec["components"]["schemas"][schema]["properties"][property];
        if property.is_object() {
            property["enum"] = json!(values);
        }
    }
    for (path, method, name, values) in enums() {
        if let Some(parameters) = spec["paths"][path][method]["parameters"].as_array_mut() {
            for parameter in parameters.iter_mut().filter(|p| p["name"] == name) {
                parameter["schema"]["enum"] = json!(values);
            }
        }
    }
    // Every free string (no format, enum or pattern of its own) says what `strict` refuses:
    // U+0000, which Postgres text cannot hold.
    if let Some(schemas) = spec["components"]["schemas"].as_object_mut() {
        for schema in schemas.values_mut() {
            let properties = schema
                .get_mut("properties")
                .and_then(Value::as_object_mut)
                .into_iter()
                .flatten();
            properties.for_each(|(_, property)| refuse_nul(property));
        }
    }
    let paths = spec.get_mut("paths").and_then(Value::as_object_mut);
    for operation in paths
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|operations| operations.values_mut())
    {
        let parameters = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut);
        for schema in parameters
            .into_iter()
            .flatten()
            .filter_map(|parameter| parameter.get_mut("schema"))
        {
            refuse_nul(schema);
        }
    }
    if let Some(paths) = spec["paths"].as_object_mut() {
        for operations in paths.values_mut() {
            for operation in operations
                .as_object_mut()
                .into_iter()
                .flat_map(|o| o.values_mut())
            {
                if let Some(summary) = operation["summary"].as_str() {
                    operation["operationId"] = json!(operation_id(summary));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_read_like_their_summaries() {
        assert_eq!(operation_id("List sagas"), "listSagas");
        assert_eq!(operation_id("Get a saga"), "getSaga");
        assert_eq!(
            operation_id("Resolve a failed saga by hand"),
            "resolveFailedSagaByHand"
        );
        assert_eq!(
            operation_id("Page through a saga's history"),
            "pageThroughSagaHistory"
        );
    }

    #[test]
    fn every_operation_has_a_unique_operation_id_and_every_enum_its_parameter() {
        let spec: Value =
            serde_json::from_str(&crate::api::spec_json((), &crate::auth::Policy::default()))
                .unwrap();
        let mut ids = std::collections::HashSet::new();
        for (path, operations) in spec["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                let id = operation["operationId"].as_str();
                let id = id.unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            }
        }
        for (path, method, name, values) in enums() {
            let parameter = spec["paths"][path][method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"));
            assert_eq!(parameter["schema"]["enum"], json!(values));
        }
        for (schema, property, values) in body_enums() {
            let stated = &spec["components"]["schemas"][schema]["properties"][property]["enum"];
            assert_eq!(*stated, json!(values), "{schema}.{property}");
        }
    }
}
