//! `GET /v1/resources/{id}/events`: the SSE stream. Parses the resume point
//! (Last-Event-ID header > `last_event_id`/`lastEventId` query > `since`),
//! subscribes to the hub, opens a `Feed` and hands it to the SSE encoder.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::Router;

use super::documents::point;
use super::{known, ApiError, AppState};
use crate::feed::{Feed, Resume};
use crate::model::{is_overflowing_ulid, parse_ulid, ResourceId};
use crate::transport::sse::{self, Flavor};

/// The reconnection delay SSE clients are told (`retry:`).
const RETRY_MS: u64 = 2000;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/resources/{id}/events", get(stream_events))
}

/// The resume point of a request, or a 400 naming the bad value.
pub(crate) fn resume(headers: &HeaderMap, q: &HashMap<String, String>) -> Result<Resume, ApiError> {
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
    for name in ["last_event_id", "lastEventId"] {
        if let Some(raw) = q.get(name).filter(|r| !r.trim().is_empty()) {
            return Ok(Resume::LastEventId(id(name, raw)?));
        }
    }
    Ok(match point(q, "since")? {
        Some(p) => Resume::Since(p),
        None => Resume::Fresh,
    })
}

async fn stream_events(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = known(&state, &raw)?;
    let resume = resume(&headers, &q)?;
    Ok(sse_response(&state, id, resume, Flavor::Native))
}

/// An SSE response for `id`. Subscribes before anything is read from the
/// log, as `Feed::new` requires.
pub(crate) fn sse_response(
    state: &AppState,
    id: ResourceId,
    resume: Resume,
    flavor: Flavor,
) -> Response {
    if let Some(q) = state.registry.store().quarantine(&id) {
        return ApiError::Quarantined {
            id: id.to_string(),
            reason: q.reason,
        }
        .into_response();
    }
    let rx = state.hub.subscribe(&id);
    let failing = state.registry.last_error(&id);
    let feed = Feed::new(state.feed.clone(), id, rx, resume, failing);
    let body = sse::stream(feed, flavor, RETRY_MS, state.metrics.clone());
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell buffering proxies (nginx) to pass events through at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
