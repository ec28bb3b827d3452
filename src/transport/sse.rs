//! The SSE encoder of a [`Feed`]: `retry:` first, then one frame per
//! message, `: keep-alive` comments when idle. Two flavours: the native
//! route's `snapshot` / `patch` / `error`, and streamdata.io's `data` /
//! `patch` / `error` (with `cause`, ASCII-only JSON). Frames are encoded
//! here (not with axum's `Sse`) so that one encoding of a live event is
//! shared by every subscriber (`Published::frame`).

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;

use crate::feed::{Feed, Message};
use crate::hub::{Encoding, UpstreamError};
use crate::metrics::Metrics;
use crate::model::{Event, EventId};

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
    fn encoding(self) -> Encoding {
        match self {
            Flavor::Native => Encoding::SseNative,
            Flavor::Streamdata => Encoding::SseStreamdata,
        }
    }
}

/// The body of an event stream: `feed` encoded as SSE, `retry: retry_ms`
/// first. One chunk per batch of the feed.
pub fn stream(
    feed: Feed,
    flavor: Flavor,
    retry_ms: u64,
    metrics: std::sync::Arc<Metrics>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    metrics.sse_open.fetch_add(1, Relaxed);
    Metrics::inc(&metrics.sse_opened);
    let session = Session {
        feed,
        flavor,
        retry: Some(retry_ms),
        metrics,
    };
    futures_util::stream::unfold(session, |mut s| async move {
        let batch = s.feed.next().await?;
        let mut out = BytesMut::new();
        if let Some(ms) = s.retry.take() {
            out.put_slice(format!("retry: {ms}\n\n").as_bytes());
        }
        for m in &batch {
            encode(s.flavor, m, &mut out);
        }
        Metrics::inc(&s.metrics.sse_frames);
        Some((Ok(out.freeze()), s))
    })
}

struct Session {
    feed: Feed,
    flavor: Flavor,
    /// `retry:` goes before the first batch.
    retry: Option<u64>,
    metrics: std::sync::Arc<Metrics>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.metrics.sse_open.fetch_sub(1, Relaxed);
    }
}

/// Appends the frame of one message.
fn encode(flavor: Flavor, m: &Message, out: &mut BytesMut) {
    match m {
        Message::Snapshot { id, json } => {
            let name = match flavor {
                Flavor::Native => "snapshot",
                Flavor::Streamdata => "data",
            };
            out.put_slice(&encode_frame(flavor, name, Some(*id), json));
        }
        Message::Patch(e) => out.put_slice(&encode_patch(flavor, e)),
        Message::Live(p) => {
            out.put_slice(&p.frame(flavor.encoding(), |e| encode_patch(flavor, e)));
        }
        Message::Error(e) => out.put_slice(&encode_error(flavor, e)),
        Message::KeepAlive => out.put_slice(b": keep-alive\n\n"),
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
    use ulid::Ulid;

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
