//! `GET /v1/resources/{id}/events`: the SSE stream. Parses the resume point
//! (Last-Event-ID header > `last_event_id`/`lastEventId` query > `since`),
//! subscribes to the hub, opens a `Feed` and hands it to the SSE encoder.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::Router;

use super::documents::point;
use super::{ApiError, AppState, Known, Q};
use crate::feed::subtree::Pointer;
use crate::feed::Resume;
use crate::model::{is_overflowing_ulid, parse_ulid, ResourceId};
use crate::transport::sse::{self, Flavor};

/// The reconnection delay SSE clients are told (`retry:`).
const RETRY_MS: u64 = 2000;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/resources/{id}/events", get(stream_events))
}

/// The resume point a request may carry in its query.
#[derive(Default, serde::Deserialize)]
pub(crate) struct ResumeQuery {
    last_event_id: Option<String>,
    #[serde(rename = "lastEventId")]
    last_event_id_camel: Option<String>,
    since: Option<String>,
}

/// `?path=<JSON Pointer>`: a subtree of the document.
#[derive(Default, serde::Deserialize)]
pub(crate) struct PathQuery {
    path: Option<String>,
}

impl PathQuery {
    /// The pointer asked for (`None`: the whole document, also for
    /// `path=`), or a 400 `invalid_path`.
    pub(crate) fn pointer(&self) -> Result<Option<Pointer>, ApiError> {
        let Some(raw) = self.path.as_deref() else {
            return Ok(None);
        };
        Pointer::parse(raw).map_err(|e| {
            ApiError::InvalidPath(format!(
                "{:?}: {e}",
                raw.chars().take(80).collect::<String>()
            ))
        })
    }
}

/// The resume point of a request, or a 400 naming the bad value.
pub(crate) fn resume(headers: &HeaderMap, q: &ResumeQuery) -> Result<Resume, ApiError> {
    let id = |name: &str, raw: &str| {
        parse_ulid(raw.trim()).ok_or_else(|| {
            let why = if is_overflowing_ulid(raw.trim()) {
                "a 26-character ULID must start with 0-7 (larger values do not fit in 128 bits)"
            } else {
                "expected an event id (a 26-character ULID)"
            };
            ApiError::BadRequest(format!(
                "invalid {name} {:?}: {why}",
                raw.chars().take(80).collect::<String>()
            ))
        })
    };
    if let Some(v) = headers.get("last-event-id") {
        let raw = v
            .to_str()
            .map_err(|_| ApiError::BadRequest("invalid Last-Event-ID: not visible ASCII".into()))?;
        // EventSource sends an empty id when it has none: no resume point.
        if !raw.trim().is_empty() {
            return Ok(Resume::LastEventId(id("Last-Event-ID", raw)?));
        }
    }
    for (name, raw) in [
        ("last_event_id", &q.last_event_id),
        ("lastEventId", &q.last_event_id_camel),
    ] {
        if let Some(raw) = raw.as_deref().filter(|r| !r.trim().is_empty()) {
            return Ok(Resume::LastEventId(id(name, raw)?));
        }
    }
    Ok(match point("since", q.since.as_deref())? {
        Some(p) => Resume::Since(p),
        None => Resume::Fresh,
    })
}

async fn stream_events(
    State(state): State<AppState>,
    Known(id): Known,
    Q(q): Q<ResumeQuery>,
    Q(p): Q<PathQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resume = resume(&headers, &q)?;
    let path = p.pointer()?;
    Ok(sse_subtree_response(
        &state,
        id,
        resume,
        Flavor::Native,
        path,
    ))
}

/// An SSE response for `id`: the service subscribes before anything is
/// read from the log.
pub(crate) fn sse_response(
    state: &AppState,
    id: ResourceId,
    resume: Resume,
    flavor: Flavor,
) -> Response {
    match state.service.subscribe(&id, resume) {
        Ok(feed) => sse_body(state, feed, flavor),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// [`sse_response`] of the value at `path` (`None`: the whole document).
pub(crate) fn sse_subtree_response(
    state: &AppState,
    id: ResourceId,
    resume: Resume,
    flavor: Flavor,
    path: Option<Pointer>,
) -> Response {
    match state.service.subscribe_subtree(&id, resume, path) {
        Ok(feed) => sse_body(state, feed, flavor),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn sse_body(state: &AppState, feed: crate::feed::Feed, flavor: Flavor) -> Response {
    let body = sse::stream(feed, flavor, RETRY_MS, state.service.metrics().clone());
    stream_response(Body::from_stream(body), "text/event-stream")
}

/// A streaming response (SSE, NDJSON): its content type, no caching, and
/// no buffering by proxies (nginx), so every message goes through at once.
pub(crate) fn stream_response(body: Body, content_type: &'static str) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
