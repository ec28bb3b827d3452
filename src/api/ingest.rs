//! Every way in besides polling: `POST …/poll` (poll now) and, for push
//! resources, `PUT …/document` (a whole document) and `PATCH …/document`
//! (RFC 6902 or RFC 7396), with `If-Match` for optimistic concurrency.
//!
//! Bodies here may be as large as an upstream's
//! (`limits.upstream_max_body_bytes`), so this router carries its own body
//! limit (`api::router` puts the general one only on the other routes).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, AppState, Known};
use crate::model::{parse_ulid, EventId, ResourceId};
use crate::service::{Change, PollNow, Pushed};

/// The media types `PATCH …/document` takes (also sent as `Accept-Patch`).
pub const JSON_PATCH: &str = "application/json-patch+json";
pub const MERGE_PATCH: &str = "application/merge-patch+json";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/resources/{id}/poll", post(poll_now))
        .route(
            "/v1/resources/{id}/document",
            put(put_document).patch(patch_document),
        )
}

async fn poll_now(State(state): State<AppState>, Known(id): Known) -> Result<Response, ApiError> {
    match state.service.poll_now(&id)? {
        PollNow::Triggered => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "id": id.as_str(), "poll": "queued" })),
        )
            .into_response()),
        PollNow::Push => Err(ApiError::PushResource(id.to_string())),
    }
}

async fn put_document(
    State(state): State<AppState>,
    Known(id): Known,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    match media_type(&headers).as_deref() {
        None | Some("application/json") => {}
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "PUT takes the whole document as application/json, not {other}"
            )))
        }
    }
    let if_match = if_match(&headers)?;
    let (bytes, heavy) = read_body(&state, &headers, body).await?;
    let doc = parse(bytes, heavy).await?;
    push(&state, &id, Change::Document(doc), if_match, heavy).await
}

async fn patch_document(
    State(state): State<AppState>,
    Known(id): Known,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = media_type(&headers);
    let merge = match kind.as_deref() {
        Some(JSON_PATCH) => false,
        Some(MERGE_PATCH) => true,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "PATCH takes {JSON_PATCH} (RFC 6902) or {MERGE_PATCH} (RFC 7396), not {}",
                other.unwrap_or("a body without Content-Type")
            )))
        }
    };
    let if_match = if_match(&headers)?;
    let (bytes, heavy) = read_body(&state, &headers, body).await?;
    let value = parse(bytes, heavy).await?;
    let change = if merge {
        Change::MergePatch(value)
    } else {
        Change::JsonPatch(serde_json::from_value(value).map_err(|e| {
            ApiError::BadRequest(format!("body is not an RFC 6902 JSON Patch: {e}"))
        })?)
    };
    push(&state, &id, change, if_match, heavy).await
}

async fn push(
    state: &AppState,
    id: &ResourceId,
    change: Change,
    if_match: Option<EventId>,
    heavy: bool,
) -> Result<Response, ApiError> {
    match state.service.push(id, change, if_match, heavy).await? {
        Pushed::Done { event_id, changed } => {
            let mut resp = Json(json!({
                "event_id": event_id.map(|e| e.to_string()),
                "changed": changed,
            }))
            .into_response();
            if let Some(e) = event_id {
                // The new version's tag: what the next `If-Match` names.
                let etag = HeaderValue::from_str(&format!("\"{e}\""))
                    .map_err(|e| ApiError::Internal(e.into()))?;
                resp.headers_mut().insert(header::ETAG, etag);
            }
            Ok(resp)
        }
        Pushed::PreconditionFailed { head } => Err(ApiError::PreconditionFailed(match head {
            Some(h) => format!("If-Match does not name the newest event, {h}"),
            None => "If-Match names an event, but the resource has none yet".into(),
        })),
        Pushed::PatchFailed(why) => Err(ApiError::PatchFailed(why)),
        Pushed::Polled => Err(ApiError::PolledResource(id.to_string())),
    }
}

/// The media type of the body, lower case, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?;
    let s = String::from_utf8_lossy(v.as_bytes());
    Some(
        s.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

/// No event has the nil id: ids are at least the time they were made.
const NO_EVENT: EventId = EventId(ulid::Ulid::nil());

/// `If-Match: "<event id>"`: the event that must be the newest. A tag that
/// is not an event id can match none (412, like any other mismatch); a
/// header that is not one quoted tag is a 400.
fn if_match(headers: &HeaderMap) -> Result<Option<EventId>, ApiError> {
    let mut values = headers.get_all(header::IF_MATCH).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadRequest(
            "If-Match must be one quoted event id, as the ETag of the document: \"<event id>\""
                .into(),
        )
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let s = v.to_str().map_err(|_| bad())?.trim();
    let tag = s
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.contains('"'))
        .ok_or_else(bad)?;
    Ok(Some(parse_ulid(tag).map(EventId).unwrap_or(NO_EVENT)))
}

/// The body, at most `limits.upstream_max_body_bytes` (413 past it), and
/// whether it is large enough to parse off the request's thread.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, bool), ApiError> {
    let max = state.service.max_push_body();
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the body is over limits.upstream_max_body_bytes ({max} bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    // Reading stops at the limit; an error here is that or a client gone.
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large())?;
    let heavy = bytes.len() > crate::cpu::INLINE_BYTES;
    Ok((bytes, heavy))
}

/// The body as JSON (a large one parsed on the blocking pool), or a 400.
async fn parse(bytes: Bytes, heavy: bool) -> Result<Value, ApiError> {
    crate::cpu::run(heavy, move || serde_json::from_slice::<Value>(&bytes))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))
}
