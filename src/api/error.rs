//! `ApiError`: the one place that knows status codes and the JSON error
//! shape `{"error": {"code", "message"}}`. Internal causes are logged, never
//! sent to clients.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::model::EventId;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no resource with id {0:?}")]
    ResourceNotFound(String),
    #[error("no such path")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("a resource with id {0:?} already exists")]
    ResourceExists(String),
    /// Malformed request: the message names the bad value.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed body with a bad field.
    #[error("{0}")]
    InvalidResource(String),
    #[error("{point} is before the horizon {horizon}: that history was compacted away")]
    Compacted { point: String, horizon: EventId },
    #[error("{0} is before the first version of the document")]
    NotYet(String),
    #[error("missing or wrong token")]
    Unauthorized,
    #[error("this token may only read")]
    Forbidden,
    /// The upstream guard refused a URL (streamdata proxy mode).
    #[error("{0}")]
    UpstreamRefused(String),
    /// Proxy mode is at `proxy.max_resources`.
    #[error("{0}")]
    ProxyFull(String),
    /// The resource's stored data could not be read at start-up; it is
    /// kept untouched and serves nothing until an operator repairs it.
    #[error("resource {id:?} is quarantined: its stored data could not be read ({reason}); other resources are unaffected")]
    Quarantined { id: String, reason: String },
    /// As many WebSocket sessions are open as `limits.max_connections`.
    #[error("the server is at its WebSocket session limit; retry later")]
    TooManyConnections,
    /// `PUT`/`PATCH …/document` of a polled resource.
    #[error(
        "resource {0:?} is polled: its versions come from its upstream, not from PUT or PATCH"
    )]
    PolledResource(String),
    /// `POST …/poll` of a push resource.
    #[error("resource {0:?} is a push resource: it has no upstream to poll")]
    PushResource(String),
    /// An `If-Match` that does not name the newest event.
    #[error("{0}")]
    PreconditionFailed(String),
    /// A JSON Patch that does not apply to the current document.
    #[error("the patch does not apply, nothing was stored: {0}")]
    PatchFailed(String),
    /// A document nested deeper than the log can store.
    #[error("{0}")]
    TooDeep(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No webhook with that id.
    #[error("no webhook with id {0:?}")]
    WebhookNotFound(String),
    /// `POST /v1/webhooks` with an id that is taken.
    #[error("a webhook with id {0:?} already exists")]
    WebhookExists(String),
    /// A well-formed webhook body with a bad field.
    #[error("{0}")]
    InvalidWebhook(String),
    /// `?path=` is not a JSON Pointer.
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// `document?path=`: the document has no value at the pointer.
    #[error("the document has no value at path {0:?}")]
    PathNotFound(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::ResourceNotFound(_)
            | ApiError::NotFound
            | ApiError::NotYet(_)
            | ApiError::WebhookNotFound(_)
            | ApiError::PathNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::WebhookExists(_) => StatusCode::CONFLICT,
            ApiError::InvalidWebhook(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ResourceExists(_)
            | ApiError::PolledResource(_)
            | ApiError::PushResource(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PatchFailed(_) | ApiError::TooDeep(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) | ApiError::InvalidPath(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidResource(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Compacted { .. } => StatusCode::GONE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::UpstreamRefused(_) => StatusCode::FORBIDDEN,
            ApiError::ProxyFull(_)
            | ApiError::Quarantined { .. }
            | ApiError::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable snake_case code: part of the public contract.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::ResourceNotFound(_) => "resource_not_found",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::ResourceExists(_) => "resource_exists",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidResource(_) => "invalid_resource",
            ApiError::Compacted { .. } => "compacted",
            ApiError::NotYet(_) => "not_yet",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::UpstreamRefused(_) => "upstream_refused",
            ApiError::ProxyFull(_) => "proxy_full",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::Quarantined { .. } => "resource_quarantined",
            ApiError::PolledResource(_) => "polled_resource",
            ApiError::PushResource(_) => "push_resource",
            ApiError::PreconditionFailed(_) => "precondition_failed",
            ApiError::PatchFailed(_) => "patch_failed",
            ApiError::TooDeep(_) => "too_deep",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::WebhookNotFound(_) => "webhook_not_found",
            ApiError::WebhookExists(_) => "webhook_exists",
            ApiError::InvalidWebhook(_) => "invalid_webhook",
            ApiError::InvalidPath(_) => "invalid_path",
            ApiError::PathNotFound(_) => "path_not_found",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// The JSON error body.
pub fn body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": { "code": code, "message": message } }).to_string()
}

/// A whole HTTP/1.1 error response as bytes, for answers written outside
/// the router: `status_line` (e.g. `HTTP/1.1 503 Service Unavailable`),
/// the JSON content type and length, `connection: close`, then `headers`
/// (whole `name: value` lines), then the JSON body of `code` and `message`.
pub(crate) fn raw_response<'a>(
    status_line: &str,
    code: &str,
    message: &str,
    headers: impl IntoIterator<Item = &'a str>,
) -> String {
    let body = body(code, message);
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for line in headers {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out
}

/// The answer to a connection over `limits.max_connections`.
pub(crate) fn too_many_connections() -> String {
    raw_response(
        "HTTP/1.1 503 Service Unavailable",
        "too_many_connections",
        "the server is at its connection limit; retry later",
        ["retry-after: 1"],
    )
}

/// A JSON error response with any status.
pub fn response(status: StatusCode, code: &str, message: &str) -> Response {
    let mut r = (status, body(code, message)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let mut r = response(self.status(), self.code(), &self.to_string());
        if matches!(self, ApiError::Unauthorized) {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, ApiError::UnsupportedMediaType(_)) {
            // RFC 5789: what PATCH takes.
            r.headers_mut().insert(
                "accept-patch",
                HeaderValue::from_static(
                    "application/json-patch+json, application/merge-patch+json",
                ),
            );
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchResource(id) => ApiError::ResourceNotFound(id.to_string()),
            StoreError::Quarantined { id, quarantine } => ApiError::Quarantined {
                id: id.to_string(),
                reason: quarantine.reason,
            },
            StoreError::TooDeep(e) => ApiError::TooDeep(e.to_string()),
            e => ApiError::Internal(e.into()),
        }
    }
}

/// Code and message for an error response produced outside our handlers
/// (axum rejections, tower-http layers), by status.
pub fn for_status(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        400 => ("bad_request", "malformed request"),
        401 => ("unauthorized", "missing or wrong token"),
        403 => ("forbidden", "forbidden"),
        404 => ("not_found", "no such path"),
        405 => ("method_not_allowed", "method not allowed"),
        408 => ("request_timeout", "the request took too long"),
        413 => ("payload_too_large", "request body too large"),
        414 => ("uri_too_long", "request URI too long"),
        415 => ("unsupported_media_type", "unsupported media type"),
        422 => ("invalid_request", "the request is not valid"),
        431 => ("headers_too_large", "request headers too large"),
        503 => ("unavailable", "service unavailable"),
        s if s >= 500 => ("internal", "internal error"),
        _ => ("error", "request failed"),
    }
}
