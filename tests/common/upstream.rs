//! The one loopback upstream. `/doc` serves a scripted document with an
//! ETag per version (a matching `If-None-Match` gets 304) or a fault
//! (`Mode`), optionally from a queue of modes, one per request (`script`).
//! Fixed routes: `/big` serves `{"n", "blob"}` with a `BIG_BLOB`-byte blob
//! that changes on every request (n counts `/big` requests from 1),
//! `/redirect?to=URL` answers 302 to URL, `/loop` redirects to itself.
//! `hits` counts every request on any path (the guard tests check it stays
//! 0); `requests`, `times` and `last_headers` are about `/doc`.
//!
//! Paginated routes serve the pages of `paged` (`Paged`), each with an
//! ETag per page version (a matching `If-None-Match` gets 304), in three
//! styles: `/p/link?page=N` (the page is the array; RFC 8288 `Link:
//! rel="next"`), `/p/url?page=N` (`{"results", "next"}`: page 0 names the
//! next page by an absolute URL, later pages by a relative one) and
//! `/p/cursor?cursor=cN` (`{"data", "meta": {"cursor"}}`; no cursor is
//! page 0). Per page: a failing status, a next value put in place of the
//! real one, a delay.

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
    /// The paginated routes' pages.
    pub paged: Arc<Mutex<Paged>>,
}

/// The pages the paginated routes serve, and what they saw.
#[derive(Default)]
pub struct Paged {
    /// The items of each page.
    pub pages: Vec<Vec<Value>>,
    /// Each page's version (its ETag is `"p<page>v<version>"`).
    pub versions: Vec<u64>,
    /// Pages answering this status instead.
    pub status: HashMap<usize, u16>,
    /// Pages whose next value (a URL, or a cursor) is this instead.
    pub next: HashMap<usize, Value>,
    /// Pages whose `items` are this instead of the array.
    pub items: HashMap<usize, Value>,
    /// Pages answering after this delay (at most 30 s).
    pub delay: HashMap<usize, Duration>,
    /// 200s per page.
    pub served: HashMap<usize, usize>,
    /// 304s per page.
    pub not_modified: HashMap<usize, usize>,
    /// The query string of the last request, by style.
    pub last_query: HashMap<&'static str, String>,
}

impl Paged {
    /// The whole collection: every page's items in order.
    pub fn all(&self) -> Value {
        Value::Array(self.pages.iter().flatten().cloned().collect())
    }
}

fn lock_paged(p: &Mutex<Paged>) -> std::sync::MutexGuard<'_, Paged> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves page `n` of `paged` in `style` (`link`, `url`, `cursor`).
async fn serve_page(
    paged: Arc<Mutex<Paged>>,
    addr: SocketAddr,
    style: &'static str,
    q: HashMap<String, String>,
    raw_query: Option<String>,
    headers: HeaderMap,
) -> Response {
    let n: Option<usize> = match style {
        "cursor" => match q.get("cursor") {
            None => Some(0),
            Some(c) => c.strip_prefix('c').and_then(|n| n.parse().ok()),
        },
        _ => q.get("page").and_then(|n| n.parse().ok()),
    };
    let delay = {
        let p = lock_paged(&paged);
        n.and_then(|n| p.delay.get(&n).copied())
    };
    if let Some(d) = delay {
        tokio::time::sleep(d.min(Duration::from_secs(30))).await;
    }
    let mut p = lock_paged(&paged);
    p.last_query.insert(style, raw_query.unwrap_or_default());
    let Some(n) = n.filter(|n| *n < p.pages.len()) else {
        return (StatusCode::NOT_FOUND, "no such page").into_response();
    };
    if let Some(code) = p.status.get(&n) {
        return (StatusCode::from_u16(*code).expect("a status"), "failing").into_response();
    }
    let etag = format!("\"p{n}v{}\"", p.versions.get(n).copied().unwrap_or(0));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        *p.not_modified.entry(n).or_default() += 1;
        return StatusCode::NOT_MODIFIED.into_response();
    }
    *p.served.entry(n).or_default() += 1;
    let last = n + 1 == p.pages.len();
    let items = p
        .items
        .get(&n)
        .cloned()
        .unwrap_or_else(|| Value::Array(p.pages[n].clone()));
    let real_next = match (style, last) {
        (_, true) => Value::Null,
        ("link", false) => json!(format!("/p/link?page={}", n + 1)),
        ("url", false) if n == 0 => json!(format!("http://{addr}/p/url?page=1")),
        ("url", false) => json!(format!("?page={}", n + 1)),
        (_, false) => json!(format!("c{}", n + 1)),
    };
    let next = p.next.get(&n).cloned().unwrap_or(real_next);
    let mut headers = vec![
        (header::CONTENT_TYPE, "application/json".to_owned()),
        (header::ETAG, etag),
    ];
    let body = match style {
        "link" => {
            let mut link = String::from("</p/link?page=0>; rel=\"first\"");
            if let Value::String(u) = &next {
                // Several relation types and a comma inside a quoted value.
                link = format!("<{u}>; rel=\"next nofollow\"; title=\"a, b\", {link}");
            }
            headers.push((header::LINK, link));
            items
        }
        "url" => json!({ "results": items, "next": next }),
        _ => json!({ "data": items, "meta": { "cursor": next } }),
    };
    let mut r = body.to_string().into_response();
    for (k, v) in headers {
        r.headers_mut()
            .insert(k, v.parse().expect("a header value"));
    }
    r
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
        let paged = Arc::new(Mutex::new(Paged::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("local addr");
        let page_route = |style: &'static str| {
            let paged = paged.clone();
            get(
                move |Query(q): Query<HashMap<String, String>>,
                      uri: axum::http::Uri,
                      headers: HeaderMap| {
                    serve_page(
                        paged,
                        addr,
                        style,
                        q,
                        uri.query().map(str::to_owned),
                        headers,
                    )
                },
            )
        };
        let app = Router::new()
            .route("/p/link", page_route("link"))
            .route("/p/url", page_route("url"))
            .route("/p/cursor", page_route("cursor"))
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
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream {
            addr,
            state,
            hits,
            paged,
        }
    }

    /// Serves these pages (each a list of items) on the paginated routes,
    /// every page at version 0.
    pub fn set_pages(&self, pages: Vec<Vec<Value>>) {
        let mut p = lock_paged(&self.paged);
        p.versions = vec![0; pages.len()];
        p.pages = pages;
    }

    /// Changes page `n` with `f` (its version, and so its ETag, moves on).
    pub fn change_page(&self, n: usize, f: impl FnOnce(&mut Vec<Value>)) {
        let mut p = lock_paged(&self.paged);
        f(&mut p.pages[n]);
        p.versions[n] += 1;
    }

    /// Runs `f` on the paginated routes' state.
    pub fn paged<T>(&self, f: impl FnOnce(&mut Paged) -> T) -> T {
        f(&mut lock_paged(&self.paged))
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
