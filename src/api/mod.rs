//! The HTTP API: `router()` assembles one router per resource noun, the
//! tower layers (trace without query strings, body limit, timeout) and the
//! JSON error shape for every error, including axum's and tower's own.

mod auth;
mod changes;
mod console;
mod documents;
pub(crate) mod error;
mod events;
mod ingest;
mod openapi;
mod ops;
mod resources;
mod streamdata;
mod webhooks;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub(crate) use auth::Auth;
pub(crate) use error::ApiError;

use crate::model::ResourceId;
use crate::service::Service;

/// What every handler sees: the one service, and the credentials.
#[derive(Clone)]
pub struct AppState {
    pub(crate) service: Arc<Service>,
    pub(crate) auth: Arc<Auth>,
}

/// Limits applied by the router's layers.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Largest request body, in bytes; a larger one is 413
    /// `payload_too_large` (`limits.max_request_body_bytes`).
    pub max_request_body: usize,
    /// For producing a response; streams are not cut by it.
    pub request_timeout: Duration,
}

/// Every route of the API (`/healthz`, `/metrics`, `/v1/...`, the
/// streamdata route and its root alias) with credentials, body limit,
/// timeout, JSON error bodies and request logs, over `state`.
pub fn router(state: AppState, limits: &HttpLimits) -> Router {
    Router::new()
        .merge(ops::router())
        .merge(resources::router())
        .merge(documents::router())
        .merge(events::router())
        .merge(changes::router())
        .merge(ws::router())
        .merge(streamdata::router())
        .merge(openapi::router())
        .merge(console::router())
        .merge(webhooks::router())
        // The general body limit on the routes above only: pushed documents
        // are bounded by the upstream body limit, in `ingest` itself.
        .layer(RequestBodyLimitLayer::new(limits.max_request_body))
        .merge(ingest::router())
        .fallback(fallback)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state.clone())
        // Around the routes and the fallbacks alike, so that without a
        // token a /v1 path that matches nothing is 401 too, not 404/405.
        .layer(middleware::from_fn_with_state(state, auth::require))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        // Outside the body limit and the timeout, whose 413 and 408 are
        // plain text of their own.
        .layer(middleware::map_response(json_errors))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // The path only: query strings may carry access tokens; and an
            // upstream URL in a streamdata path is shown redacted.
            let path = streamdata::path_for_log(req.uri().path());
            tracing::info_span!("http", method = %req.method(), path = %path)
        }))
}

/// Unknown paths: 404, except upstream URLs at the root (`/https://...`),
/// the streamdata route's one-host-change alias.
async fn fallback(State(state): State<AppState>, req: Request) -> Response {
    if streamdata::is_root_alias(req.uri().path()) {
        return streamdata::serve(state, req).await;
    }
    ApiError::NotFound.into_response()
}

/// Gives every error response the JSON shape, whoever produced it.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return resp;
    }
    let (code, message) = error::for_status(status);
    let mut out = error::response(status, code, message);
    for (k, v) in resp.headers() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// A path's resource id, or a 400 naming it.
pub(crate) fn resource_id(raw: &str) -> Result<ResourceId, ApiError> {
    ResourceId::new(raw)
        .map_err(|e| ApiError::BadRequest(format!("invalid resource id {raw:?}: {e}")))
}

/// `{id}` in a path that names an existing resource: a bad id is 400
/// naming it, an unknown one 404 `resource_not_found`.
pub(crate) struct Known(pub ResourceId);

impl axum::extract::FromRequestParts<AppState> for Known {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let id = PathId::from_request_parts(parts, state).await?.0;
        if !state.service.exists(&id) {
            return Err(ApiError::ResourceNotFound(id.to_string()));
        }
        Ok(Known(id))
    }
}

/// `{id}` in a path: a valid resource id, or a 400 naming it.
pub(crate) struct PathId(pub ResourceId);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        resource_id(&raw).map(PathId)
    }
}

/// A typed query string; a value that does not parse is a 400 whose
/// message names it (the field types' own `Deserialize` say how).
pub(crate) struct Q<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| ApiError::BadRequest(query_error(&e.body_text())))
    }
}

/// axum's rejection text without its generic prefix.
fn query_error(text: &str) -> String {
    text.strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text)
        .to_owned()
}
