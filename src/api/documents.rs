//! Time travel and audit: `GET …/document[?at=T]` and
//! `GET …/history?after=&before=&limit=`.
//!
//! Parses the points and the page limit, asks the service, and writes the
//! answers (the document with its `ETag`, a page of events); the reads
//! themselves are the store's.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{BufMut, BytesMut};

use serde::Deserialize;

use super::events::PathQuery;
use super::{ApiError, AppState, Known, Q};
use crate::model::Point;
use crate::service::Document;
use crate::store::History;

/// Largest `limit` of one history page.
pub const MAX_HISTORY_LIMIT: usize = 1000;
const DEFAULT_HISTORY_LIMIT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/resources/{id}/document", get(get_document))
        .route("/v1/resources/{id}/history", get(get_history))
}

/// Parses a point-valued query parameter, or a 400 naming it.
pub(crate) fn point(name: &str, raw: Option<&str>) -> Result<Option<Point>, ApiError> {
    raw.map(|raw| {
        Point::parse(raw).map_err(|e| ApiError::BadRequest(format!("invalid {name}: {e}")))
    })
    .transpose()
}

/// `GET …/document` query.
#[derive(Deserialize)]
struct DocumentQuery {
    at: Option<String>,
}

async fn get_document(
    State(state): State<AppState>,
    Known(id): Known,
    Q(q): Q<DocumentQuery>,
    Q(p): Q<PathQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let at = point("at", q.at.as_deref())?;
    let path = p.pointer()?;
    let shown = || q.at.clone().unwrap_or_else(|| "now".into());
    let document = match &path {
        None => state.service.document(&id, at).await?,
        Some(path) => state
            .service
            .document_subtree(&id, at, path)
            .await?
            .ok_or_else(|| ApiError::PathNotFound(path.as_str().to_owned()))?,
    };
    let (event, json) = match document {
        Document::Found { id, json } => (id, json),
        Document::NotYet => return Err(ApiError::NotYet(shown())),
        Document::Compacted { horizon } => {
            return Err(ApiError::Compacted {
                point: shown(),
                horizon,
            })
        }
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

/// `GET …/history` query.
#[derive(Deserialize)]
struct HistoryQuery {
    after: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

async fn get_history(
    State(state): State<AppState>,
    Known(id): Known,
    Q(q): Q<HistoryQuery>,
    Q(p): Q<PathQuery>,
) -> Result<Response, ApiError> {
    let path = p.pointer()?;
    let after = point("after", q.after.as_deref())?;
    let before = point("before", q.before.as_deref())?;
    let limit = match q.limit.as_deref() {
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
    let history = match &path {
        None => state.service.history(&id, after, before, limit).await?,
        Some(path) => {
            state
                .service
                .history_subtree(&id, after, before, limit, path)
                .await?
        }
    };
    match history {
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
            point: q.after.clone().unwrap_or_default(),
            horizon,
        }),
    }
}
