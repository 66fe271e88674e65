//! Strict request bodies: checks each JSON body against its operation's request schema from
//! the API's own OpenAPI document before poem-openapi parses it.
//!
//! Two reasons. poem-openapi is lenient where the schema is not (it turns `false` into the
//! string `"false"` and reads `null` as "absent"), so a request that violates the spec could
//! be accepted. And its type errors do not say which field is wrong. This check answers 400
//! with the path of the first offending field (`lines[1].quantity`). It checks JSON types,
//! nulls, required properties and formats (`uuid`, `date-time`, the ranges of `int32` and
//! `int64`); validators (bounds, lengths, patterns) stay with poem-openapi, whose messages
//! already name the field. Malformed JSON is left to poem-openapi as well. A string field
//! with U+0000, or U+0000 in the path or query, is refused (400, naming where): no stored
//! text can hold it, and the document says so as each free string's `pattern`. (Fields
//! the schema does not name are dropped unread, whatever they hold.)

use poem::http::Method;
use poem::{IntoResponse, Request, Response};
use serde_json::Value;

use super::problem::ApiError;

/// (method, path template segments) -> request body schema, and whether the body may be
/// left out; read from the served document (the engine's operations and its application's).
pub struct Operations {
    components: Value,
    bodies: Vec<(Method, Vec<String>, Value, bool)>,
}

impl Operations {
    pub fn of(spec: &Value) -> Self {
        let mut bodies = Vec::new();
        for (path, operations) in spec["paths"].as_object().into_iter().flatten() {
            for (method, operation) in operations.as_object().into_iter().flatten() {
                let schema = &operation["requestBody"]["content"]["application/json; charset=utf-8"]
                    ["schema"];
                let schema = if schema.is_null() {
                    &operation["requestBody"]["content"]["application/json"]["schema"]
                } else {
                    schema
                };
                if let (false, Ok(method)) =
                    (schema.is_null(), method.to_uppercase().parse::<Method>())
                {
                    let segments = path.split('/').map(str::to_owned).collect();
                    let optional = operation["requestBody"]["required"] != Value::Bool(true);
                    bodies.push((method, segments, schema.clone(), optional));
                }
            }
        }
        Operations {
            components: spec["components"]["schemas"].clone(),
            bodies,
        }
    }

    fn body_schema(&self, method: &Method, path: &str) -> Option<(&Value, bool)> {
        let path: Vec<&str> = path.split('/').collect();
        self.bodies
            .iter()
            .find(|(m, template, _, _)| {
                m == method
                    && template.len() == path.len()
                    && template
                        .iter()
                        .zip(&path)
                        .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
            })
            .map(|(_, _, schema, optional)| (schema, *optional))
    }

    /// Follows `$ref` (and poem-openapi's single-element `allOf` wrappers).
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut schema = schema;
        for _ in 0..8 {
            if let Some(reference) = schema["$ref"].as_str() {
                let name = reference.rsplit('/').next().unwrap_or_default();
                schema = &self.components[name];
            } else if let Some([only]) = schema["allOf"].as_array().map(Vec::as_slice) {
                schema = only;
            } else {
                break;
            }
        }
        schema
    }

    /// The first place `value` breaks `schema`: (field path, what is wrong).
    fn check(&self, value: &Value, schema: &Value, path: &str) -> Option<(String, String)> {
        let schema = self.resolve(schema);
        let Some(expected) = schema["type"].as_str() else {
            // A free-form value (a saga's input, a signal's body) is stored as it comes: a
            // NUL anywhere in it, key or string, would reach Postgres. (Undeclared fields
            // of a typed object are never read, so they are not looked at.)
            return nul_at(value, path).map(|field| (field, NUL.to_owned()));
        };
        let fits = match expected {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => true,
        };
        if !fits {
            let field = if path.is_empty() { "body" } else { path };
            return Some((
                field.to_owned(),
                format!("expected {expected}, got {}", kind(value)),
            ));
        }
        match value {
            Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
                self.check(item, &schema["items"], &format!("{path}[{index}]"))
            }),
            Value::Object(fields) => {
                let join = |name: &str| field_path(path, name);
                let required = schema["required"].as_array().into_iter().flatten();
                for name in required.filter_map(Value::as_str) {
                    if !fields.contains_key(name) {
                        return Some((join(name), "is required".to_owned()));
                    }
                }
                let properties = schema["properties"].as_object()?;
                fields
                    .iter()
                    .find_map(|(name, field)| self.check(field, properties.get(name)?, &join(name)))
            }
            Value::String(text) if text.contains('\0') => {
                let field = if path.is_empty() { "body" } else { path };
                Some((field.to_owned(), NUL.to_owned()))
            }
            _ => format_error(value, schema["format"].as_str()?).map(|detail| {
                let field = if path.is_empty() { "body" } else { path };
                (field.to_owned(), detail)
            }),
        }
    }
}

/// Why a string with U+0000 is refused (the document states it as each string's pattern).
const NUL: &str = "must not contain U+0000 (NUL), which no stored text can hold";

/// Where the first U+0000 sits in `value`, in a string or a key, wherever the schema leaves
/// the shape open (a signal's body, a saga's input): Postgres `jsonb` cannot hold it.
fn nul_at(value: &Value, path: &str) -> Option<String> {
    let here = || {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path.to_owned()
        }
    };
    match value {
        Value::String(text) => text.contains('\0').then(here),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| nul_at(item, &format!("{path}[{index}]"))),
        Value::Object(fields) => fields.iter().find_map(|(name, field)| {
            let at = field_path(path, name);
            if name.contains('\0') {
                Some(at)
            } else {
                nul_at(field, &at)
            }
        }),
        _ => None,
    }
}

/// `path.name` (or `name` at the top), with a NUL in the name written as `\u0000`: the
/// answer naming it must hold no NUL itself.
fn field_path(path: &str, name: &str) -> String {
    let name = name.replace('\0', "\\u0000");
    if path.is_empty() {
        name
    } else {
        format!("{path}.{name}")
    }
}

/// The query parameter whose name or value holds an encoded U+0000, by its name.
fn nul_parameter(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        pair.to_ascii_lowercase().contains("%00").then(|| {
            let name = pair.split('=').next().unwrap_or_default();
            if name.is_empty() || name.to_ascii_lowercase().contains("%00") {
                "query".to_owned()
            } else {
                name.to_owned()
            }
        })
    })
}

/// What is wrong with a scalar of the given format, if anything.
fn format_error(value: &Value, format: &str) -> Option<String> {
    let fits = match format {
        "uuid" => value
            .as_str()
            .is_some_and(|text| uuid::Uuid::parse_str(text).is_ok()),
        "date-time" => value
            .as_str()
            .is_some_and(|text| chrono::DateTime::parse_from_rfc3339(text).is_ok()),
        "int32" => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        "int64" => value.is_i64(),
        "uint32" => value.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
        "uint64" => value.is_u64(),
        _ => true,
    };
    (!fits).then(|| match format {
        "uuid" => "expected a UUID".to_owned(),
        "date-time" => "expected an RFC 3339 date-time, e.g. 2026-11-25T09:00:00Z".to_owned(),
        "int32" => format!("expected an integer from {} to {}", i32::MIN, i32::MAX),
        "uint32" => format!("expected an integer from 0 to {}", u32::MAX),
        "uint64" => format!("expected an integer from 0 to {}", u64::MAX),
        _ => format!("expected an integer from {} to {}", i64::MIN, i64::MAX),
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What the strict rules decide before a request's body is read.
pub enum Before<'a> {
    /// Answered at once: U+0000 in the path or query.
    Answer(Response),
    /// Its JSON body must be read and checked against its operation's schema (this one).
    CheckBody(&'a Value),
    /// Nothing to check.
    Pass,
}

/// The rules that need no body: U+0000 in the path or query is a 400; an optional body that
/// is left out (no content, no content type: `curl -X POST`) is given a JSON content type,
/// so that it is read as absent rather than refused with 415. Then, whether the body is
/// JSON that [`check_body`] must see.
pub fn before_body<'a>(operations: &'a Operations, request: &mut Request) -> Before<'a> {
    // Postgres text and jsonb cannot hold U+0000: refused at the door, never a 500 later.
    let uri = request.uri().to_string();
    if uri.to_ascii_lowercase().contains("%00") {
        let at = if request.uri().path().to_ascii_lowercase().contains("%00") {
            "path".to_owned()
        } else {
            nul_parameter(request.uri().query().unwrap_or_default())
                .unwrap_or_else(|| "query".to_owned())
        };
        return Before::Answer(ApiError::invalid(&at, format!("{at}: {NUL}")).into_response());
    }
    let operation = operations.body_schema(request.method(), request.uri().path());
    let left_out = request.header("content-type").is_none()
        && request.header("transfer-encoding").is_none()
        && request
            .header("content-length")
            .is_none_or(|length| length.trim() == "0");
    if let (Some((_, true)), true) = (operation, left_out) {
        request.headers_mut().insert(
            poem::http::header::CONTENT_TYPE,
            poem::http::HeaderValue::from_static("application/json"),
        );
    }
    let is_json = request
        .header("content-type")
        .is_some_and(|value| value.starts_with("application/json"));
    match operation {
        Some((schema, _)) if is_json => Before::CheckBody(schema),
        _ => Before::Pass,
    }
}

/// Reads a JSON body and checks it against its operation's schema (from
/// [`Before::CheckBody`]): a body that breaks the schema's types is answered 400 naming the
/// field. The body is put back for the handler; malformed JSON is left to poem-openapi.
pub async fn check_body(
    operations: &Operations,
    schema: &Value,
    request: &mut Request,
) -> poem::Result<Option<Response>> {
    let bytes = request.take_body().into_bytes().await?;
    if let Ok(value) = serde_json::from_slice::<Value>(&bytes)
        && let Some((field, detail)) = operations.check(&value, schema, "")
    {
        return Ok(Some(
            ApiError::invalid(&field, format!("{field}: {detail}")).into_response(),
        ));
    }
    request.set_body(bytes);
    Ok(None)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_nul_is_named_wherever_it_hides() {
        let body = json!({ "input": { "lines": [{ "sku": "A\u{0}" }] } });
        assert_eq!(nul_at(&body, "").as_deref(), Some("input.lines[0].sku"));
        let key = json!({ "signal": { "bad\u{0}key": 1 } });
        assert_eq!(nul_at(&key, "").as_deref(), Some("signal.bad\\u0000key"));
        assert_eq!(nul_at(&json!({ "fine": ["a", 1, null] }), ""), None);
        assert_eq!(
            nul_parameter("limit=5&cursor=%00%ff").as_deref(),
            Some("cursor")
        );
        assert_eq!(nul_parameter("%00=1").as_deref(), Some("query"));
    }

    #[test]
    fn unsigned_integers_are_checked_against_their_range() {
        assert!(format_error(&json!(9_223_372_036_854_775_808u64), "uint32").is_some());
        assert!(format_error(&json!(-1), "uint32").is_some());
        assert!(format_error(&json!(7), "uint32").is_none());
    }
}
