//! Time travel and audit: `GET …/document[?at=T]` and
//! `GET …/history?after=&before=&limit=`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{BufMut, Bytes, BytesMut};

use super::{known, ApiError, AppState};
use crate::log::{At, History};
use crate::model::Point;

/// Largest `limit` of one history page.
pub const MAX_HISTORY_LIMIT: usize = 1000;
const DEFAULT_HISTORY_LIMIT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/resources/{id}/document", get(get_document))
        .route("/v1/resources/{id}/history", get(get_history))
}

/// Parses a point-valued query parameter, or a 400 naming it.
pub(crate) fn point(q: &HashMap<String, String>, name: &str) -> Result<Option<Point>, ApiError> {
    q.get(name)
        .map(|raw| {
            Point::parse(raw).map_err(|e| ApiError::BadRequest(format!("invalid {name}: {e}")))
        })
        .transpose()
}

async fn get_document(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = known(&state, &raw)?;
    let store = state.registry.store();
    let (event, json) = match point(&q, "at")? {
        None => match store.head(&id)? {
            Some(h) => (h.id, h.json),
            None => return Err(ApiError::NotYet("now".into())),
        },
        Some(p) => match store.document_at(&id, p)? {
            At::Found { id, doc } => (
                id,
                Bytes::from(serde_json::to_vec(&*doc).map_err(|e| ApiError::Internal(e.into()))?),
            ),
            At::NotYet => return Err(ApiError::NotYet(q["at"].clone())),
            At::Compacted { horizon } => {
                return Err(ApiError::Compacted {
                    point: q["at"].clone(),
                    horizon,
                })
            }
        },
    };
    let etag = format!("\"{event}\"");
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(json))
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::ETAG, header_value(&etag)?);
    h.insert("patchfeed-event-id", header_value(&event.to_string())?);
    Ok(resp)
}

fn header_value(s: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(s).map_err(|e| ApiError::Internal(e.into()))
}

async fn get_history(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = known(&state, &raw)?;
    let after = point(&q, "after")?;
    let before = point(&q, "before")?;
    let limit = match q.get("limit") {
        None => DEFAULT_HISTORY_LIMIT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "invalid limit {raw:?}: expected an integer from 1 to {MAX_HISTORY_LIMIT}"
                )))
            }
        },
    };
    match state.registry.store().history(&id, after, before, limit)? {
        History::Events { events, next_after } => {
            // Patches are stored as JSON text: splice them in unparsed.
            let mut out = BytesMut::with_capacity(
                64 + events.iter().map(|e| e.patch.len() + 96).sum::<usize>(),
            );
            out.put_slice(b"{\"events\":[");
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                out.put_slice(
                    format!(
                        "{{\"id\":\"{}\",\"time\":\"{}\",\"patch\":",
                        e.id,
                        e.id.time_rfc3339()
                    )
                    .as_bytes(),
                );
                out.put_slice(&e.patch);
                out.put_u8(b'}');
            }
            out.put_slice(b"],\"next_after\":");
            match next_after {
                Some(c) => out.put_slice(format!("\"{c}\"").as_bytes()),
                None => out.put_slice(b"null"),
            }
            out.put_u8(b'}');
            Ok(([(header::CONTENT_TYPE, "application/json")], out.freeze()).into_response())
        }
        History::Compacted { horizon } => Err(ApiError::Compacted {
            point: q.get("after").cloned().unwrap_or_default(),
            horizon,
        }),
    }
}
