//! One client's event stream: resume point → log catch-up → live, without a
//! gap or a duplicate.
//!
//! The session subscribes to the hub *before* it reads the log, keeps a
//! cursor (every event ≤ cursor is delivered or covered by a snapshot),
//! skips live events ≤ cursor, and goes back to the log when the hub reports
//! `Lagged` or an event whose `prev` is past the cursor. A resume point the
//! log cannot serve gets a snapshot. The stream ends by itself on shutdown
//! and when the resource is deleted. Frames are encoded here (not with
//! axum's `Sse`) so that one encoding of an event is shared by every
//! subscriber.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use ulid::Ulid;

use crate::hub::{Notice, UpstreamError};
use crate::log::{ReadAfter, Store};
use crate::metrics::Metrics;
use crate::model::{Event, EventId, Point, ResourceId};

/// Where a client starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// No resume point: a snapshot, then live.
    Fresh,
    /// `Last-Event-ID` (or its query forms): patches after it if it is a
    /// retained event id of this resource, else a snapshot.
    LastEventId(Ulid),
    /// `?since=T`: patches with id > T, or a snapshot if T is before the
    /// horizon.
    Since(Point),
}

/// Event names and encoding of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `/v1/.../events`: `snapshot`, `patch`, `error`.
    Native,
    /// `/streamdata/...`: `data`, `patch`, `error` with `cause`; ASCII-only
    /// JSON.
    Streamdata,
}

impl Flavor {
    fn slot(self) -> usize {
        match self {
            Flavor::Native => 0,
            Flavor::Streamdata => 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub keep_alive: Duration,
    /// Sent as `retry:` first.
    pub retry_ms: u64,
    /// Events per log read while catching up.
    pub page: usize,
    /// Bytes of patches per log read while catching up (at least one
    /// event): a client catching up holds about this much, whatever the
    /// size of the events.
    pub page_bytes: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            keep_alive: Duration::from_secs(15),
            retry_ms: 2000,
            page: 512,
            page_bytes: 256 * 1024,
        }
    }
}

/// Everything a session needs; cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub config: StreamConfig,
    pub shutdown: CancellationToken,
}

/// The body of an event stream. `rx` must come from `Hub::subscribe`
/// called before this function, so nothing published after the log is
/// read can be missed. `failing` is the upstream's current error, read
/// after subscribing: the client hears it at once (after the snapshot or
/// the first page of catch-up), not only at the next failed poll. Read
/// after the subscription, a failure can at worst arrive twice, never be
/// missed.
pub fn stream(
    ctx: Ctx,
    id: ResourceId,
    rx: broadcast::Receiver<Notice>,
    resume: Resume,
    flavor: Flavor,
    failing: Option<UpstreamError>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    ctx.metrics.sse_open.fetch_add(1, Relaxed);
    Metrics::inc(&ctx.metrics.sse_opened);
    let keep_alive = Box::pin(tokio::time::sleep(half(ctx.config.keep_alive)));
    let shutdown = Box::pin(ctx.shutdown.clone().cancelled_owned());
    let session = Session {
        ctx,
        id,
        rx,
        flavor,
        start: Some(resume),
        failing,
        cursor: None,
        catching_up: false,
        done: false,
        keep_alive,
        sent: true,
        shutdown,
    };
    futures_util::stream::unfold(session, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Metrics::inc(&s.ctx.metrics.sse_frames);
        s.sent = true;
        Some((Ok(chunk), s))
    })
}

/// The keep-alive timer's period: half the promised interval, so that a
/// tick that finds nothing sent since the one before it sends a comment
/// at most `keep_alive` after the last frame. Re-arming a timer per frame
/// instead (and reading the clock for it) cost ~2 % of the CPU of a
/// 10,000-subscriber fan-out.
fn half(keep_alive: Duration) -> Duration {
    (keep_alive / 2).max(Duration::from_millis(1))
}

struct Session {
    ctx: Ctx,
    id: ResourceId,
    rx: broadcast::Receiver<Notice>,
    flavor: Flavor,
    start: Option<Resume>,
    /// The upstream's error when the session began, sent with the first
    /// chunk.
    failing: Option<UpstreamError>,
    /// Every event with id ≤ cursor is delivered or covered by a snapshot.
    /// `None` until the first snapshot (a resource never fetched yet).
    cursor: Option<Ulid>,
    /// The next chunk comes from the log, not the hub.
    catching_up: bool,
    done: bool,
    keep_alive: Pin<Box<Sleep>>,
    /// A frame went out since the keep-alive timer last fired.
    sent: bool,
    /// Created once: a `cancelled()` future made per event (and dropped)
    /// takes the token's lock twice per frame for every subscriber.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ctx.metrics.sse_open.fetch_sub(1, Relaxed);
    }
}

impl Session {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(resume) = self.start.take() {
            return Some(self.begin(resume));
        }
        loop {
            if self.catching_up {
                // Catch-up returns without waiting: check here, so a long
                // catch-up still ends on shutdown. (Live waits see the
                // shutdown future below.)
                if self.ctx.shutdown.is_cancelled() {
                    return None;
                }
                if let Some(chunk) = self.catch_up() {
                    return Some(chunk);
                }
                if self.done {
                    return None;
                }
            }
            tokio::select! {
                biased;
                _ = self.shutdown.as_mut() => return None,
                r = self.rx.recv() => match r {
                    Ok(Notice::Event(p)) => {
                        let Some(cursor) = self.cursor else {
                            if let Some(chunk) = self.snapshot() {
                                return Some(chunk);
                            }
                            continue;
                        };
                        if p.event.id.0 <= cursor {
                            continue;
                        }
                        if p.prev.is_none_or(|prev| prev.0 <= cursor) {
                            self.cursor = Some(p.event.id.0);
                            let flavor = self.flavor;
                            return Some(p.frame(flavor.slot(), |e| encode_patch(flavor, e)));
                        }
                        // Something between the cursor and this event did
                        // not reach us: the log has it.
                        self.catching_up = true;
                    }
                    Ok(Notice::Error(e)) => return Some(encode_error(self.flavor, &e)),
                    Ok(Notice::Deleted) | Err(RecvError::Closed) => return None,
                    Err(RecvError::Lagged(_)) => {
                        Metrics::inc(&self.ctx.metrics.sse_lagged);
                        if self.cursor.is_none() {
                            if let Some(chunk) = self.snapshot() {
                                return Some(chunk);
                            }
                        } else {
                            self.catching_up = true;
                        }
                    }
                },
                _ = self.keep_alive.as_mut() => {
                    let period = half(self.ctx.config.keep_alive);
                    self.keep_alive.as_mut().reset(Instant::now() + period);
                    if std::mem::take(&mut self.sent) {
                        continue;
                    }
                    return Some(Bytes::from_static(b": keep-alive\n\n"));
                }
            }
        }
    }

    /// `retry:`, then the snapshot or the first page of catch-up.
    fn begin(&mut self, resume: Resume) -> Bytes {
        let mut out = BytesMut::new();
        out.put_slice(format!("retry: {}\n\n", self.ctx.config.retry_ms).as_bytes());
        let first = match resume {
            Resume::Fresh => self.snapshot(),
            Resume::LastEventId(id) => match self.ctx.store.contains(&self.id, EventId(id)) {
                Ok(true) => {
                    self.cursor = Some(id);
                    self.catching_up = true;
                    self.catch_up()
                }
                Ok(false) => self.snapshot(),
                Err(e) => self.fail(e),
            },
            // A point after the newest event means "now": the client holds
            // the head, and events detected later (even within T's
            // millisecond) are new to it. With no version yet, it waits
            // for the first snapshot like a fresh client.
            Resume::Since(point) => match self.ctx.store.head(&self.id) {
                Ok(Some(head)) => {
                    self.cursor = Some(point.upper_bound().min(head.id.0));
                    self.catching_up = true;
                    self.catch_up()
                }
                Ok(None) => None,
                Err(e) => self.fail(e),
            },
        };
        if let Some(chunk) = first {
            out.put_slice(&chunk);
        }
        if let Some(e) = self.failing.take() {
            out.put_slice(&encode_error(self.flavor, &e));
        }
        out.freeze()
    }

    /// The current document as a snapshot; moves the cursor to its id.
    /// `None` if the resource has no version yet.
    fn snapshot(&mut self) -> Option<Bytes> {
        match self.ctx.store.head(&self.id) {
            Ok(Some(head)) => {
                self.cursor = Some(head.id.0);
                self.catching_up = false;
                Metrics::inc(&self.ctx.metrics.sse_snapshots);
                let name = match self.flavor {
                    Flavor::Native => "snapshot",
                    Flavor::Streamdata => "data",
                };
                Some(encode_frame(self.flavor, name, Some(head.id), &head.json))
            }
            Ok(None) => None,
            Err(e) => self.fail(e),
        }
    }

    /// One page of events after the cursor, as one chunk. Clears
    /// `catching_up` at the head. `None` when there is nothing to send.
    fn catch_up(&mut self) -> Option<Bytes> {
        let cursor = self.cursor?;
        let page = self.ctx.config.page.max(1);
        let page_bytes = self.ctx.config.page_bytes;
        match self
            .ctx
            .store
            .read_after_capped(&self.id, cursor, page, page_bytes)
        {
            Ok(ReadAfter::Events(events)) => {
                let bytes: usize = events.iter().map(|e| e.patch.len()).sum();
                if events.len() < page && bytes < page_bytes {
                    self.catching_up = false;
                }
                let last = events.last()?.id;
                let mut out = BytesMut::new();
                for e in &events {
                    out.put_slice(&encode_patch(self.flavor, e));
                }
                self.ctx
                    .metrics
                    .sse_catchup_events
                    .fetch_add(events.len() as u64, Relaxed);
                self.cursor = Some(last.0);
                Some(out.freeze())
            }
            Ok(ReadAfter::BeforeHorizon { .. }) => self.snapshot(),
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: crate::log::StoreError) -> Option<Bytes> {
        if !matches!(e, crate::log::StoreError::NoSuchResource(_)) {
            tracing::error!(resource = %self.id, error = %e, "event stream ends on a storage error");
        }
        self.done = true;
        None
    }
}

/// `event: patch` with the event's id and patch.
pub fn encode_patch(flavor: Flavor, e: &Event) -> Bytes {
    encode_frame(flavor, "patch", Some(e.id), &e.patch)
}

/// `event: error` (no id, so a client's Last-Event-ID is kept).
pub fn encode_error(flavor: Flavor, e: &UpstreamError) -> Bytes {
    let data = match flavor {
        Flavor::Native => serde_json::to_vec(e),
        Flavor::Streamdata => serde_json::to_vec(&serde_json::json!({
            "cause": e.code,
            "code": e.code,
            "message": e.message,
            "status": e.status,
        })),
    };
    // Serializing strings and integers cannot fail.
    let data = data.expect("error notice serializes");
    encode_frame(flavor, "error", None, &data)
}

/// One SSE frame. `json` is compact JSON text, which never holds a raw
/// newline, so it fits one `data:` line.
pub fn encode_frame(flavor: Flavor, event: &str, id: Option<EventId>, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 64);
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    if let Some(id) = id {
        out.put_slice(b"\nid: ");
        out.put_slice(id.to_string().as_bytes());
    }
    out.put_slice(b"\ndata: ");
    match flavor {
        Flavor::Native => out.put_slice(json),
        Flavor::Streamdata => escape_non_ascii(json, &mut out),
    }
    out.put_slice(b"\n\n");
    out.freeze()
}

/// Copies JSON text, writing every non-ASCII character as `\uXXXX`
/// (surrogate pairs beyond the BMP). Valid because in JSON text non-ASCII
/// can only occur inside strings.
pub fn escape_non_ascii(json: &[u8], out: &mut BytesMut) {
    let Ok(text) = std::str::from_utf8(json) else {
        out.put_slice(json);
        return;
    };
    if text.is_ascii() {
        out.put_slice(json);
        return;
    }
    let mut buf = [0u16; 2];
    for c in text.chars() {
        if c.is_ascii() {
            out.put_u8(c as u8);
        } else {
            for unit in c.encode_utf16(&mut buf) {
                out.put_slice(format!("\\u{unit:04x}").as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod frame_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames() {
        let id = EventId(Ulid::from_parts(1, 2));
        let f = encode_frame(
            Flavor::Native,
            "patch",
            Some(id),
            br#"[{"op":"add","path":"/a","value":"\u00e9\n"}]"#,
        );
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            format!("event: patch\nid: {id}\ndata: [{{\"op\":\"add\",\"path\":\"/a\",\"value\":\"\\u00e9\\n\"}}]\n\n")
        );
    }

    #[test]
    fn ascii_escaping_round_trips() {
        let v = json!({"k€y": "é 😀 ascii \" \\ \n", "n": [1, "ü"]});
        let text = serde_json::to_vec(&v).unwrap();
        let mut out = BytesMut::new();
        escape_non_ascii(&text, &mut out);
        assert!(out.is_ascii());
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, v);
    }
}
