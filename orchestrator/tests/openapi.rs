//! The checked-in OpenAPI document must match what the code generates.

#[test]
fn checked_in_openapi_document_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let generated = orchestrator::api::spec_json();
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in.trim_end() == generated.trim_end(),
        "openapi/openapi.json is stale; refresh it with:\n  \
         cargo run -q -p orchestrator -- openapi > openapi/openapi.json"
    );
}
