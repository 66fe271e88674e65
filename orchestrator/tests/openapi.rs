//! The checked-in OpenAPI document must match what the code generates.

#[test]
fn checked_in_openapi_document_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let generated = orchestrator::app::spec_json();
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in.trim_end() == generated.trim_end(),
        "openapi/openapi.json is stale; refresh it with:\n  \
         cargo run -q -p orchestrator -- openapi > openapi/openapi.json"
    );
}

/// `problem::catch_all` names a malformed path parameter `id`: true only while every
/// non-string path parameter is called `id`.
#[test]
fn every_typed_path_parameter_is_named_id() {
    let spec: serde_json::Value = serde_json::from_str(&orchestrator::app::spec_json()).unwrap();
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for operation in operations.as_object().unwrap().values() {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let typed = parameter["schema"]["format"].is_string();
                if parameter["in"] == "path" && typed {
                    assert_eq!(parameter["name"], "id", "{path}");
                }
            }
        }
    }
}
