//! The one HTTP test client: requests against an orchestrator's API, and the assertions on
//! its answers that every API test shares.

use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

/// An HTTP client pointed at one orchestrator.
pub struct Http {
    pub base: String,
    pub client: Client,
}

impl Http {
    pub fn new(base: String) -> Self {
        Self {
            base,
            client: Client::new(),
        }
    }

    /// A client that sends `Authorization: Bearer <key>` with every request.
    pub fn with_key(base: String, key: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        Self {
            base,
            client: Client::builder().default_headers(headers).build().unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        let url = format!("{}{path}", self.base);
        self.client.get(url).send().await.unwrap()
    }

    /// POST with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Response {
        let url = format!("{}{path}", self.base);
        self.client.post(url).json(body).send().await.unwrap()
    }

    /// POST with a JSON body and an `Idempotency-Key`.
    pub async fn post_keyed(&self, path: &str, key: &str, body: &Value) -> Response {
        let url = format!("{}{path}", self.base);
        let request = self.client.post(url).header("Idempotency-Key", key);
        request.json(body).send().await.unwrap()
    }

    /// PUT with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Response {
        let url = format!("{}{path}", self.base);
        self.client.put(url).json(body).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        let url = format!("{}{path}", self.base);
        self.client.delete(url).send().await.unwrap()
    }

    /// POST without a body (operator actions).
    pub async fn post_empty(&self, path: &str) -> Response {
        let url = format!("{}{path}", self.base);
        self.client.post(url).send().await.unwrap()
    }
}

/// Asserts `status` and returns the JSON body.
pub async fn answer(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    response.json().await.unwrap()
}

/// Asserts a problem+json answer with `status`, and the `field` when given.
pub async fn problem(response: Response, status: u16, field: Option<&str>) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(),
        "{body}"
    );
    if let Some(field) = field {
        assert_eq!(body["field"], field, "{body}");
    }
    body
}
