//! Small shared helpers: HTTP clients, whole responses (`Reply`) with the
//! contract's error shape, raw-socket requests for what reqwest would
//! refuse to send, `eventually`, metrics parsing, a config builder.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The longest any single wait of a test may take (a document to appear,
/// a stream to reach a state).
pub const WAIT: Duration = Duration::from_secs(20);

/// Deadline of a client request in the hostile tests: a hang fails the
/// test instead of stalling it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for whole requests: each has a deadline; no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .no_proxy()
        .build()
        .expect("client")
}

/// For event streams, which outlive any whole-request timeout: connecting
/// and each read have the deadline instead.
pub fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(CLIENT_TIMEOUT)
        .read_timeout(WAIT)
        .no_proxy()
        .build()
        .expect("client")
}

/// A config for loopback upstreams polled every 100 ms.
pub fn config(resources: &[(&str, &str)], extra: &str) -> String {
    let mut c = format!("allow_private_upstreams = true\n{extra}\n");
    for (id, url) in resources {
        c.push_str(&format!("[[resource]]\nid = \"{id}\"\nurl = \"{url}\"\ninterval = \"100ms\"\nsnapshot_every = 3\n"));
    }
    c
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One metric's value from a `/metrics` text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} in:\n{text}"))
}

/// A body for an assertion message: lossy text, cut at 300 characters.
pub fn shown(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(300).collect()
}

/// A response, read whole.
pub struct Reply {
    pub status: u16,
    /// Lower-cased header names.
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                shown(&self.body)
            )
        })
    }

    /// Asserts the contract's error shape and the status; returns the code
    /// and message.
    pub fn error(&self, status: u16) -> (String, String) {
        assert_eq!(self.status, status, "body {:?}", shown(&self.body));
        assert!(
            self.headers
                .get("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "status {status}: content-type {:?}",
            self.headers.get("content-type")
        );
        let v = self.json();
        let err = v
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("error"))
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("not the error shape: {v}"));
        assert_eq!(err.len(), 2, "error has exactly code and message: {v}");
        let code = err["code"].as_str().expect("code is a string").to_owned();
        let message = err["message"]
            .as_str()
            .expect("message is a string")
            .to_owned();
        assert!(
            !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "code {code:?} is snake_case"
        );
        assert!(!message.is_empty());
        (code, message)
    }

    /// Asserts the error shape, the status and the code; returns the message.
    pub fn error_code(&self, status: u16, code: &str) -> String {
        let (c, m) = self.error(status);
        assert_eq!(c, code, "message {m:?}");
        m
    }

    fn headers_of(h: &axum::http::HeaderMap) -> HashMap<String, String> {
        h.iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    }

    /// A response from the in-process router, read whole (bounded).
    pub async fn from_response(resp: axum::response::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = Reply::headers_of(resp.headers());
        let body = tokio::time::timeout(WAIT, axum::body::to_bytes(resp.into_body(), 64 << 20))
            .await
            .expect("body in time")
            .expect("body");
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// Sends a request and reads the whole response.
pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("request completes");
    let status = resp.status().as_u16();
    let headers = Reply::headers_of(resp.headers());
    let body = resp.bytes().await.expect("body");
    Reply {
        status,
        headers,
        body,
    }
}

/// Sends raw bytes, reads until the server closes, parses the response.
/// `None` if the server closed without answering.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Option<Reply> {
    let bytes = tokio::time::timeout(CLIENT_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // The server may answer and close before reading all of it.
        let _ = s.write_all(request).await;
        read_to_close(&mut s).await
    })
    .await
    .expect("raw request answered or closed in time");
    parse_reply(&bytes)
}

/// Everything until EOF or a reset (whatever arrived before it counts).
pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Status and lower-cased headers of a response head; `None` until the
/// head is complete. Also returns where the body starts.
pub fn parse_head(bytes: &[u8]) -> Option<(u16, HashMap<String, String>, usize)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()?
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((status, headers, end + 4))
}

pub fn parse_reply(bytes: &[u8]) -> Option<Reply> {
    let (status, headers, start) = parse_head(bytes)?;
    let rest = &bytes[start..];
    let body = match headers.get("content-length") {
        Some(n) => {
            let n: usize = n.parse().expect("content-length");
            assert!(rest.len() >= n, "body cut short");
            Bytes::copy_from_slice(&rest[..n])
        }
        None => Bytes::copy_from_slice(rest),
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// One complete response on a kept-alive connection (Content-Length
/// framing, which every non-streaming response of ours has).
pub async fn read_one(s: &mut TcpStream) -> Reply {
    tokio::time::timeout(CLIENT_TIMEOUT, async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some((_, headers, start)) = parse_head(&got) {
                let len: usize = headers
                    .get("content-length")
                    .and_then(|n| n.parse().ok())
                    .expect("content-length");
                if got.len() >= start + len {
                    return parse_reply(&got[..start + len]).expect("reply");
                }
            }
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed mid-response");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("response in time")
}

/// Paths no route serves: each must be a JSON 404 `not_found` (shared by
/// the socket and in-process API tests).
pub const UNKNOWN_PATHS: [&str; 12] = [
    "/",
    "/nope",
    "/v1",
    "/v1/",
    "/v1/nope",
    "/v2/resources",
    "/v1/resources/r/nope",
    "/v1/resources/r/events/extra",
    "/healthz/",
    "/v1/resources/",
    "/ui/nope",
    "/ui/assets/nope.js",
];

/// Routes with a method they do not take: each must be a JSON 405
/// `method_not_allowed` with `Allow`.
pub const WRONG_METHODS: [(&str, &str); 12] = [
    ("POST", "/healthz"),
    ("DELETE", "/metrics"),
    ("PUT", "/v1/resources"),
    ("DELETE", "/v1/resources"),
    ("PATCH", "/v1/resources/r"),
    ("PUT", "/v1/resources/r"),
    ("POST", "/v1/resources/r"),
    ("POST", "/v1/resources/r/events"),
    ("DELETE", "/v1/resources/r/document"),
    ("PUT", "/v1/resources/r/history"),
    ("POST", "/ui"),
    ("DELETE", "/ui/resources/r"),
];
