//! The one SSE parser (`take_block`, `parse_block`) and its two clients:
//! `Sse` reads any body stream (a reqwest response, or a response of the
//! in-process router), keeps the document (snapshot/`data` then patches)
//! and checks that ids strictly increase; `RawSse` is a raw socket with a
//! small receive buffer that reads only when asked (a client that stalls).

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::http::{parse_head, stream_client, WAIT};

#[derive(Clone, Debug, Default)]
pub struct Frame {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Takes the next block (up to and including its blank line) off the front
/// of `buf`: an event, a `retry:`, or a comment such as `: keep-alive`.
pub fn take_block(buf: &mut Vec<u8>) -> Option<String> {
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    let bytes: Vec<u8> = buf.drain(..end + 2).collect();
    Some(String::from_utf8(bytes).expect("a UTF-8 frame"))
}

/// The frame of a block (empty `event` for a comment or a `retry:` alone)
/// and its `retry:` value, if any.
pub fn parse_block(raw: &str) -> (Frame, Option<u64>) {
    let mut f = Frame::default();
    let mut retry = None;
    for line in raw.lines() {
        if let Some(v) = line.strip_prefix("retry: ") {
            retry = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("event: ") {
            f.event = v.to_owned();
        } else if let Some(v) = line.strip_prefix("id: ") {
            f.id = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            f.data.push_str(v);
        }
    }
    (f, retry)
}

/// Takes the next frame with an `event:` off the front of `buf`, dropping
/// `retry:` and comment blocks before it.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Frame> {
    while let Some(raw) = take_block(buf) {
        let (f, _) = parse_block(&raw);
        if !f.event.is_empty() {
            return Some(f);
        }
    }
    None
}

type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// A streaming SSE client that parses frames and keeps the document.
pub struct Sse {
    body: Chunks,
    /// Bytes: a chunk may end inside a UTF-8 character.
    buf: Vec<u8>,
    pub retry: Option<u64>,
    pub frames: Vec<Frame>,
    pub doc: Option<Value>,
    pub last_id: Option<String>,
    pub ended: bool,
    /// A broken connection (the server was killed) ends the stream instead
    /// of failing the test.
    pub tolerate_breaks: bool,
}

impl Sse {
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Sse {
        Sse::try_open(url, last_event_id)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"))
    }

    /// Like `open`, but a refused connection or a non-200 is an error.
    pub async fn try_open(url: &str, last_event_id: Option<&str>) -> Result<Sse, String> {
        let mut req = stream_client().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        Sse::try_request(req).await
    }

    /// Sends `req` (headers, tokens, another client); panics unless it
    /// answers 200 with an event stream.
    pub async fn open_request(req: reqwest::RequestBuilder) -> Sse {
        Sse::try_request(req).await.expect("stream opens")
    }

    async fn try_request(req: reqwest::RequestBuilder) -> Result<Sse, String> {
        let resp = req.send().await.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("status {}", resp.status()));
        }
        Ok(Sse::from_response(resp))
    }

    /// A stream already answered (200, `text/event-stream`: checked).
    pub fn from_response(resp: reqwest::Response) -> Sse {
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse::from_chunks(Box::pin(
            resp.bytes_stream().map(|r| r.map_err(|e| e.to_string())),
        ))
    }

    /// A stream of the in-process router (200, `text/event-stream`:
    /// checked).
    pub fn from_body(resp: axum::response::Response) -> Sse {
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse::from_chunks(Box::pin(
            resp.into_body()
                .into_data_stream()
                .map(|r| r.map_err(|e| e.to_string())),
        ))
    }

    fn from_chunks(body: Chunks) -> Sse {
        Sse {
            body,
            buf: Vec::new(),
            retry: None,
            frames: Vec::new(),
            doc: None,
            last_id: None,
            ended: false,
            tolerate_breaks: false,
        }
    }

    /// Continues on a new connection (after a crash): resumes from the last
    /// id, keeping the frames and the document.
    pub async fn reconnect(&mut self, url: &str) -> Result<(), String> {
        let next = Sse::try_open(url, self.last_id.as_deref()).await?;
        self.body = next.body;
        self.buf.clear();
        self.ended = false;
        Ok(())
    }

    /// The next block as sent (an event, `retry:`, or a comment such as
    /// `: keep-alive`), not applied to `doc`; None if the stream ended or
    /// nothing came within `within`.
    pub async fn next_block(&mut self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(raw) = take_block(&mut self.buf) {
                return Some(raw);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(None) => self.ended = true,
                Ok(Some(Err(_))) if self.tolerate_breaks => self.ended = true,
                Ok(Some(Err(e))) => panic!("stream broke: {e}"),
                Err(_) => return None,
            }
        }
    }

    /// The next event (not comments), applied to `doc`; None if the stream
    /// ended or nothing came within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let raw = self.next_block(left).await?;
            let (f, retry) = parse_block(&raw);
            if retry.is_some() {
                self.retry = retry;
            }
            if f.event.is_empty() {
                continue;
            }
            self.apply(&f);
            self.frames.push(f.clone());
            return Some(f);
        }
    }

    /// The next event, which must come within `within`.
    pub async fn frame(&mut self, within: Duration) -> Frame {
        self.next(within).await.expect("an SSE frame in time")
    }

    fn apply(&mut self, f: &Frame) {
        if let Some(id) = &f.id {
            if let Some(last) = &self.last_id {
                assert!(id > last, "ids must strictly increase: {id} after {last}");
            }
            self.last_id = Some(id.clone());
        }
        match f.event.as_str() {
            "snapshot" | "data" => {
                self.doc = Some(serde_json::from_str(&f.data).expect("snapshot JSON"))
            }
            "patch" => {
                let patch: json_patch::Patch = serde_json::from_str(&f.data).expect("patch JSON");
                let doc = self.doc.as_mut().expect("a patch before any snapshot");
                json_patch::patch(doc, &patch).expect("the patch applies");
            }
            _ => {}
        }
    }

    /// Reads until the document equals `want`.
    pub async fn until_doc(&mut self, want: &Value) {
        let deadline = Instant::now() + WAIT;
        while self.doc.as_ref() != Some(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                self.next(left).await.is_some(),
                "stream never reached the document; frames: {:?}",
                self.names()
            );
        }
    }

    /// Reads until an event named `name`; returns it.
    pub async fn until_event(&mut self, name: &str) -> Frame {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no `{name}` event; frames: {:?}", self.names()));
            if f.event == name {
                return f;
            }
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.frames
            .iter()
            .map(|f| format!("{}:{}", f.event, f.id.as_deref().unwrap_or("-")))
            .collect()
    }

    pub fn ids(&self, event: &str) -> Vec<String> {
        self.frames
            .iter()
            .filter(|f| f.event == event)
            .filter_map(|f| f.id.clone())
            .collect()
    }
}

/// An SSE client on a raw socket, which reads only when asked to: HTTP/1.1
/// chunked framing decoded by hand.
pub struct RawSse {
    conn: TcpStream,
    /// Bytes off the wire not yet decoded.
    wire: Vec<u8>,
    head_done: bool,
    /// Decoded body bytes not yet parsed into frames.
    body: Vec<u8>,
}

impl RawSse {
    /// Connects with a 16 KiB receive buffer and asks for `path`; reads
    /// nothing yet.
    pub async fn request(addr: SocketAddr, path: &str) -> RawSse {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        let mut conn = socket.connect(addr).await.expect("connect");
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .expect("write");
        RawSse {
            conn,
            wire: Vec::new(),
            head_done: false,
            body: Vec::new(),
        }
    }

    /// The next frame with an `event:`, which must come within `within`.
    pub async fn next(&mut self, within: Duration) -> Frame {
        tokio::time::timeout(within, async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if let Some(f) = take_frame(&mut self.body) {
                    return f;
                }
                if !self.head_done {
                    if let Some((status, headers, start)) = parse_head(&self.wire) {
                        assert_eq!(status, 200);
                        assert_eq!(headers["transfer-encoding"], "chunked");
                        self.wire.drain(..start);
                        self.head_done = true;
                        continue;
                    }
                } else if let Some(used) = take_chunk(&self.wire, &mut self.body) {
                    self.wire.drain(..used);
                    continue;
                }
                let n = self.conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "stream ended");
                self.wire.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("an SSE frame in time")
    }
}

/// Decodes one HTTP/1.1 chunk from the front of `wire` into `out`; the
/// number of wire bytes it took, or `None` if it is incomplete.
fn take_chunk(wire: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let line = wire.windows(2).position(|w| w == b"\r\n")?;
    let size = std::str::from_utf8(&wire[..line]).expect("chunk size line");
    let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        .expect("hex chunk size");
    assert!(size > 0, "stream ended");
    let end = line + 2 + size + 2;
    if wire.len() < end {
        return None;
    }
    out.extend_from_slice(&wire[line + 2..line + 2 + size]);
    Some(end)
}
