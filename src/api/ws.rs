//! `GET /v1/resources/{id}/ws`: the feed over a WebSocket (RFC 6455). One
//! text frame per JSON message (`transport::json`), under the SSE stream's
//! resume rules; a ping whenever the feed is idle (at least every
//! `keep_alive`); client data frames are ignored. Closes with 1000 when the
//! resource is deleted and 1001 on shutdown. A client that stops reading is
//! served from the log like a slow SSE client; one that leaves a ping
//! unanswered for two `keep_alive`s, or cannot take a batch of frames for
//! three, is dropped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::{resume, PathQuery, ResumeQuery};
use super::{ApiError, AppState, Known, Q};
use crate::feed::Feed;
use crate::transport::json;

/// Largest frame a client may send (its frames are ignored anyway).
const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// Bytes read from a client socket at a time.
const READ_CHUNK: usize = 4 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/resources/{id}/ws", get(get_ws))
}

async fn get_ws(
    State(state): State<AppState>,
    Known(id): Known,
    Q(q): Q<ResumeQuery>,
    Q(p): Q<PathQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let from = resume(&headers, &q)?;
    let path = p.pointer()?;
    let slot = state
        .service
        .ws_slot()
        .ok_or(ApiError::TooManyConnections)?;
    let feed = state.service.subscribe_subtree(&id, from, path)?;
    let keep_alive = state.service.keep_alive();
    Ok(upgrade
        // tungstenite reads in chunks of 128 KiB by default, allocated per
        // session: 129 KB of RSS per idle socket (benches/fanout). Client
        // frames are ignored; larger ones still arrive over several reads.
        .read_buffer_size(READ_CHUNK)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            serve(socket, feed, keep_alive).await;
            drop(slot);
        }))
}

/// Why the server ends a connection, and the close frame it sends.
fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

async fn serve(socket: WebSocket, mut feed: Feed, keep_alive: Duration) {
    let (mut tx, mut rx) = socket.split();
    // The reader only watches for pongs and the client going away.
    let gone = CancellationToken::new();
    let pongs = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let (gone, pongs) = (gone.clone(), pongs.clone());
        async move {
            loop {
                match rx.next().await {
                    Some(Ok(Message::Pong(_))) => {
                        pongs.fetch_add(1, Relaxed);
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            }
            gone.cancel();
        }
    });
    let send_deadline = keep_alive * 3;
    let mut last_ping = Instant::now();
    // An unanswered ping: when it went out, and the pong count then.
    let mut pending: Option<(Instant, u64)> = None;
    let ending = 'session: loop {
        let batch = tokio::select! {
            b = feed.next() => b,
            _ = gone.cancelled() => break None,
        };
        let Some(batch) = batch else {
            break Some(if feed.shutting_down() {
                close(close_code::AWAY, "server shutting down")
            } else {
                close(close_code::NORMAL, "resource deleted")
            });
        };
        let mut frames: Vec<Message> = batch
            .iter()
            .filter_map(json::message)
            // JSON text is UTF-8, so this drops nothing.
            .filter_map(|text| Utf8Bytes::try_from(text).ok().map(Message::Text))
            .collect();
        // A ping at least every `keep_alive`, busy or idle (an idle feed
        // yields a heartbeat that often).
        if last_ping.elapsed() >= keep_alive {
            if let Some((at, seen)) = pending {
                if pongs.load(Relaxed) != seen {
                    pending = None;
                } else if at.elapsed() > keep_alive * 2 {
                    break 'session Some(close(close_code::POLICY, "no pong"));
                }
            }
            pending.get_or_insert((Instant::now(), pongs.load(Relaxed)));
            last_ping = Instant::now();
            frames.push(Message::Ping(Bytes::new()));
        }
        // The batch's frames are queued, then written with one flush (one
        // write syscall for a batch that fits the socket), not one each.
        let write = async {
            for frame in frames {
                tx.feed(frame).await?;
            }
            tx.flush().await
        };
        match tokio::time::timeout(send_deadline, write).await {
            Ok(Ok(())) => {}
            // Gone, or not reading at all: drop it.
            _ => break 'session None,
        }
    };
    if let Some(frame) = ending {
        let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(frame)).await;
    }
    reader.abort();
}
