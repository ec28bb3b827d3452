//! `GET /v1/openapi.json`: the OpenAPI 3.1 description of this HTTP API,
//! `docs/openapi.json` compiled into the binary as it is in the repository.
//! Under `/v1`, so it takes the same credentials as the rest of the API.
//! `tests/it/openapi.rs` keeps the document and the router in step.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

/// The document, byte for byte as committed.
const DOCUMENT: &str = include_str!("../../docs/openapi.json");

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/openapi.json", get(get_openapi))
}

async fn get_openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::DOCUMENT;

    #[test]
    fn the_document_is_openapi_3_1_json() {
        let v: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON");
        let version = v["openapi"].as_str().expect("an `openapi` string");
        assert!(version.starts_with("3.1."), "{version}");
        assert_eq!(v["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
}
