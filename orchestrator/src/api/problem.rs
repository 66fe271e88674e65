//! RFC 9457 problem details: the body of every 4xx and 5xx response.

use poem_openapi::Object;

/// `application/problem+json` body.
#[derive(Debug, Clone, Object)]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[oai(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// The request field at fault, for validation errors.
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
}

impl Problem {
    pub fn new(status: u16, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://sagaflow.dev/problems/{kind}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            field: None,
        }
    }
}
