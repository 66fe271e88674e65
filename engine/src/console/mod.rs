//! The operator console at `/ui`: one page, its script and its style sheet, embedded in the
//! binary (no build step, nothing fetched at run time). The page holds no data: its script
//! reads the JSON API with the key the operator pastes (kept in the tab's session storage),
//! so the console can do exactly what that key may do, and nothing else.

use poem::endpoint::make_sync;
use poem::http::header;
use poem::{Endpoint, EndpointExt as _, Response, Route, get};

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

fn asset(body: &'static str, content_type: &'static str) -> impl Endpoint {
    make_sync(move |_| {
        Response::builder()
            .content_type(content_type)
            // The page, not the data, is cached: every number comes from the API.
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-content-type-options", "nosniff")
            .body(body)
    })
}

/// `/ui`, `/ui/console.js`, `/ui/console.css`: `GET` (and so `HEAD`) only.
pub fn routes() -> impl Endpoint {
    Route::new()
        .at("/", get(asset(PAGE, "text/html; charset=utf-8")))
        .at(
            "/console.js",
            get(asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .at("/console.css", get(asset(STYLE, "text/css; charset=utf-8")))
        .with(poem::middleware::SetHeader::new().overriding(
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; frame-ancestors 'none'",
        ))
}
