//! `GET /v1/resources/{id}/changes`: the feed as long-poll
//! (`feed=longpoll`, the default) or as NDJSON (`feed=continuous`), both
//! in the JSON message shape (`transport::json`) and under the same resume
//! rules as the SSE stream (`events::resume`).
//!
//! A waiting long-poll is one hub subscription and one timer, like an idle
//! SSE subscriber; every waiter of a resource is answered by the one
//! event that ends the wait.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use super::events::{resume, stream_response, PathQuery, ResumeQuery};
use super::{ApiError, AppState, Known, Q};
use crate::feed::{Feed, Message};
use crate::transport::json;

/// Long-poll wait when the request names none, and the most it may ask.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const MAX_TIMEOUT_MS: u64 = 60_000;
/// Messages per long-poll answer when the request names none, and the most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/resources/{id}/changes", get(get_changes))
}

/// The query of `…/changes` beyond the resume point.
#[derive(Deserialize)]
struct ChangesQuery {
    feed: Option<String>,
    timeout: Option<String>,
    limit: Option<String>,
    #[serde(flatten)]
    resume: ResumeQuery,
    #[serde(flatten)]
    path: PathQuery,
}

async fn get_changes(
    State(state): State<AppState>,
    Known(id): Known,
    Q(q): Q<ChangesQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let from = resume(&headers, &q.resume)?;
    let path = q.path.pointer()?;
    match q.feed.as_deref().unwrap_or("longpoll") {
        "longpoll" => {
            let timeout = bounded(
                "timeout",
                q.timeout.as_deref(),
                DEFAULT_TIMEOUT_MS,
                0,
                MAX_TIMEOUT_MS,
            )?;
            let limit = bounded(
                "limit",
                q.limit.as_deref(),
                DEFAULT_LIMIT as u64,
                1,
                MAX_LIMIT as u64,
            )?;
            // `limit` ≤ MAX_LIMIT, so it fits a usize.
            let limit = usize::try_from(limit).unwrap_or(MAX_LIMIT);
            let feed = state.service.subscribe_once(&id, from, limit, path)?;
            long_poll(&state, feed, Duration::from_millis(timeout), limit).await
        }
        "continuous" => {
            let feed = state.service.subscribe_subtree(&id, from, path)?;
            Ok(ndjson(feed))
        }
        other => Err(ApiError::BadRequest(format!(
            "invalid feed {:?}: expected \"longpoll\" or \"continuous\"",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

/// An integer query parameter in `min..=max`, or a 400 naming it.
fn bounded(
    name: &str,
    raw: Option<&str>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "invalid {name} {:?}: expected an integer from {min} to {max}",
            raw.chars().take(40).collect::<String>()
        ))),
    }
}

/// Answers with what follows the resume point at once, else with the first
/// thing that happens within `timeout` (an event, or a new upstream error),
/// else with no events (and the upstream's current error, if it is
/// failing). `last_event_id` is the last message's id, or else the feed's
/// cursor: the newest event at or before the point when nothing follows it
/// (the head), and past the events a subtree feed left out. Read from the
/// feed, not the store, so an event appended after the wait ended is not
/// skipped by the next request.
async fn long_poll(
    state: &AppState,
    mut feed: Feed,
    timeout: Duration,
    limit: usize,
) -> Result<Response, ApiError> {
    let batch = feed.next().await.unwrap_or_default();
    if batch.iter().any(|m| json::id(m).is_some()) {
        let body = answer(&feed, batch, limit);
        return Ok(json_response(Body::from(body)));
    }
    // Nothing yet: the head goes out now and the answer when something
    // happens. `limits.request_timeout` bounds the time to a response head,
    // so a wait the client may ask for (up to 60 s) is never cut into a 408.
    let service = state.service.clone();
    let body = futures_util::stream::once(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let batch = loop {
            match tokio::time::timeout_at(deadline, feed.next()).await {
                // Ended: deleted or shutting down; the next request says which.
                Ok(None) => break Vec::new(),
                Ok(Some(b)) if b.iter().all(|m| matches!(m, Message::KeepAlive)) => continue,
                Ok(Some(b)) => break b,
                Err(_) => {
                    break service
                        .last_error(feed.resource())
                        .map(|e| vec![Message::Error(std::sync::Arc::new(e))])
                        .unwrap_or_default();
                }
            }
        };
        Ok::<Bytes, std::convert::Infallible>(answer(&feed, batch, limit))
    });
    Ok(json_response(Body::from_stream(body)))
}

/// The long-poll answer of `batch` (at most `limit` messages).
fn answer(feed: &Feed, mut batch: Vec<Message>, limit: usize) -> Bytes {
    batch.truncate(limit);
    let last = batch.iter().rev().find_map(json::id).or(feed.cursor());
    let mut out = BytesMut::with_capacity(64 + batch.len() * 64);
    out.put_slice(b"{\"events\":[");
    let mut first = true;
    for m in &batch {
        if let Some(msg) = json::message(m) {
            if !first {
                out.put_u8(b',');
            }
            first = false;
            out.put_slice(&msg);
        }
    }
    out.put_slice(b"],\"last_event_id\":");
    match last {
        Some(l) => out.put_slice(format!("\"{l}\"").as_bytes()),
        None => out.put_slice(b"null"),
    }
    out.put_u8(b'}');
    out.freeze()
}

fn json_response(body: Body) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// One message per line; an empty line as heartbeat. Ends with the feed
/// (resource deleted, shutdown).
fn ndjson(feed: Feed) -> Response {
    let body = futures_util::stream::unfold(feed, |mut feed| async move {
        let batch = feed.next().await?;
        let mut out = BytesMut::new();
        for m in &batch {
            match json::message(m) {
                Some(msg) => {
                    out.put_slice(&msg);
                    out.put_u8(b'\n');
                }
                None => out.put_u8(b'\n'),
            }
        }
        Some((Ok::<Bytes, std::convert::Infallible>(out.freeze()), feed))
    });
    stream_response(Body::from_stream(body), "application/x-ndjson")
}
