//! The one loopback upstream. `/doc` serves a scripted document with an
//! ETag per version (a matching `If-None-Match` gets 304) or a fault
//! (`Mode`), optionally from a queue of modes, one per request (`script`).
//! Fixed routes: `/big` serves `{"n", "blob"}` with a `BIG_BLOB`-byte blob
//! that changes on every request (n counts `/big` requests from 1),
//! `/redirect?to=URL` answers 302 to URL, `/loop` redirects to itself.
//! `hits` counts every request on any path (the guard tests check it stays
//! 0); `requests`, `times` and `last_headers` are about `/doc`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

/// How `/doc` answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Ok,
    Status(u16),
    InvalidJson,
    Html,
    Empty,
    /// A valid JSON body of about this many bytes.
    Oversize(usize),
    /// Never sends headers (bounded: 60 s).
    Hang,
    /// Headers, then one byte per second.
    SlowBody,
    /// `/doc` redirects to itself.
    RedirectLoop,
}

/// Request times kept at most (`times`), oldest first.
const MAX_TIMES: usize = 100_000;

pub struct UpstreamState {
    pub doc: Value,
    pub version: u64,
    pub mode: Mode,
    pub requests: u64,
    pub not_modified: u64,
    /// When each `/doc` request arrived (tokio's clock: exact when paused).
    pub times: Vec<tokio::time::Instant>,
    /// The headers of the last `/doc` request.
    pub last_headers: HeaderMap,
    /// Modes for the next requests, one each, before `mode` applies again.
    pub script: VecDeque<Mode>,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<UpstreamState>>,
    /// Requests on any path.
    pub hits: Arc<AtomicUsize>,
}

fn lock(s: &Mutex<UpstreamState>) -> std::sync::MutexGuard<'_, UpstreamState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(State(s): State<Arc<Mutex<UpstreamState>>>, headers: HeaderMap) -> Response {
    let (mode, doc, etag) = {
        let mut u = lock(&s);
        u.requests += 1;
        if u.times.len() < MAX_TIMES {
            u.times.push(tokio::time::Instant::now());
        }
        u.last_headers = headers.clone();
        let mode = match u.script.pop_front() {
            Some(m) => m,
            None => u.mode.clone(),
        };
        let etag = format!("\"v{}\"", u.version);
        if mode == Mode::Ok
            && headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                == Some(etag.as_str())
        {
            u.not_modified += 1;
            return StatusCode::NOT_MODIFIED.into_response();
        }
        (mode, u.doc.clone(), etag)
    };
    match mode {
        Mode::Ok => (
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::ETAG, etag),
            ],
            doc.to_string(),
        )
            .into_response(),
        Mode::Status(code) => (
            StatusCode::from_u16(code).expect("a valid status code"),
            "failing",
        )
            .into_response(),
        Mode::InvalidJson => (
            [(header::CONTENT_TYPE, "application/json")],
            "{\"a\": [1, 2",
        )
            .into_response(),
        Mode::Html => (
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>maintenance</body></html>",
        )
            .into_response(),
        Mode::Empty => ([(header::CONTENT_TYPE, "application/json")], "").into_response(),
        Mode::Oversize(n) => (
            [(header::CONTENT_TYPE, "application/json")],
            json!({ "pad": "x".repeat(n) }).to_string(),
        )
            .into_response(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
        Mode::SlowBody => {
            let body = doc.to_string().into_bytes();
            let stream = futures_util::stream::unfold((body, 0usize), |(body, i)| async move {
                if i >= body.len() || i > 60 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Some((Ok::<_, std::io::Error>(vec![body[i]]), (body, i + 1)))
            });
            (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Mode::RedirectLoop => (StatusCode::FOUND, [(header::LOCATION, "/doc")]).into_response(),
    }
}

/// Bytes of the blob `/big` serves.
pub const BIG_BLOB: usize = 128 * 1024;

/// `BIG_BLOB` bytes that differ completely from one `n` to the next.
pub fn blob(n: usize) -> String {
    let mut x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..BIG_BLOB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

impl Upstream {
    /// Serves `doc` as version 0 on a fresh loopback port.
    pub async fn start(doc: Value) -> Upstream {
        let state = Arc::new(Mutex::new(UpstreamState {
            doc,
            version: 0,
            mode: Mode::Ok,
            requests: 0,
            not_modified: 0,
            times: Vec::new(),
            last_headers: HeaderMap::new(),
            script: VecDeque::new(),
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let big_served = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/doc", get(serve))
            .with_state(state.clone())
            .route(
                "/big",
                get(move || {
                    let n = big_served.fetch_add(1, SeqCst) + 1;
                    async move { axum::Json(json!({ "n": n, "blob": blob(n) })) }
                }),
            )
            .route(
                "/loop",
                get(|| async {
                    (StatusCode::FOUND, [(header::LOCATION, "/loop")]).into_response()
                }),
            )
            .route(
                "/redirect",
                get(|Query(q): Query<HashMap<String, String>>| async move {
                    let to = q.get("to").cloned().unwrap_or_default();
                    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
                }),
            )
            .layer(axum::middleware::map_request({
                let hits = hits.clone();
                move |req: axum::extract::Request| {
                    hits.fetch_add(1, SeqCst);
                    async move { req }
                }
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, state, hits }
    }

    /// The scripted document's URL (`/doc`).
    pub fn url(&self) -> String {
        self.url_for("/doc")
    }

    /// The URL of `path` (with its query) on this upstream.
    pub fn url_for(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves a new version (and heals any fault).
    pub fn set(&self, doc: Value) {
        let mut u = lock(&self.state);
        u.doc = doc;
        u.version += 1;
        u.mode = Mode::Ok;
    }

    pub fn mode(&self, mode: Mode) {
        lock(&self.state).mode = mode;
    }

    /// The next requests get these modes, one each, in order; then `mode`
    /// applies again.
    pub fn script(&self, modes: impl IntoIterator<Item = Mode>) {
        lock(&self.state).script.extend(modes);
    }

    pub fn doc(&self) -> Value {
        lock(&self.state).doc.clone()
    }

    /// `/doc` requests so far.
    pub fn requests(&self) -> u64 {
        lock(&self.state).requests
    }

    /// When each `/doc` request arrived, oldest first.
    pub fn times(&self) -> Vec<tokio::time::Instant> {
        lock(&self.state).times.clone()
    }

    /// A header of the last `/doc` request.
    pub fn last_header(&self, name: &str) -> Option<String> {
        lock(&self.state)
            .last_headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Requests on any path so far.
    pub fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }
}

/// Version `i` of the test document: keys with `/` and `~`, unicode, a
/// 1,000-item array that gains an item at the front each version, nested
/// objects; every 7th version is a root array (a root type change).
pub fn doc(i: usize) -> Value {
    if i % 7 == 6 {
        return json!([i, "root array", {"a/b": "ü"}]);
    }
    let list: Vec<Value> = (0..1000 + i)
        .rev()
        .map(|k| json!({ "id": k, "v": format!("é{k}") }))
        .collect();
    json!({
        "version": i,
        "a/b": { "c~d": i, "~0~1": "tilde", "": "empty key" },
        "ünïcödé": "東京 😀 ✓",
        "list": list,
        "nested": { "deep": { "deeper": [i % 3, null, true] } },
    })
}
