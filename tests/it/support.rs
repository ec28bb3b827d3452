//! The black-box harness: the real `patchfeed` binary on a temp data dir,
//! a real scripted upstream on loopback, a real streaming SSE client.
//! Every wait is bounded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- upstream

/// How the upstream answers.
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

pub struct UpstreamState {
    pub doc: Value,
    pub version: u64,
    pub mode: Mode,
    pub requests: u64,
    pub not_modified: u64,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<UpstreamState>>,
}

async fn serve(State(s): State<Arc<Mutex<UpstreamState>>>, headers: HeaderMap) -> Response {
    let (mode, doc, etag) = {
        let mut u = s.lock().unwrap();
        u.requests += 1;
        let etag = format!("\"v{}\"", u.version);
        if u.mode == Mode::Ok
            && headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                == Some(etag.as_str())
        {
            u.not_modified += 1;
            return StatusCode::NOT_MODIFIED.into_response();
        }
        (u.mode.clone(), u.doc.clone(), etag)
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
        Mode::Status(code) => (StatusCode::from_u16(code).unwrap(), "failing").into_response(),
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

impl Upstream {
    pub async fn start(doc: Value) -> Upstream {
        let state = Arc::new(Mutex::new(UpstreamState {
            doc,
            version: 0,
            mode: Mode::Ok,
            requests: 0,
            not_modified: 0,
        }));
        let app = Router::new()
            .route("/doc", get(serve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/doc", self.addr)
    }

    /// Serves a new version (and heals any fault).
    pub fn set(&self, doc: Value) {
        let mut u = self.state.lock().unwrap();
        u.doc = doc;
        u.version += 1;
        u.mode = Mode::Ok;
    }

    pub fn mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn doc(&self) -> Value {
        self.state.lock().unwrap().doc.clone()
    }

    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
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

// ------------------------------------------------------------------ server

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    pub stderr: PathBuf,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts the binary with `config` (TOML) on a fresh data dir.
    pub fn start(config: &str) -> Server {
        Server::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("patchfeed.toml");
        std::fs::write(&path, config).unwrap();
        let stderr = dir.path().join("stderr.log");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut s = Server {
            child: None,
            base: String::new(),
            dir,
            config: path,
            stderr,
            env,
        };
        s.spawn();
        s
    }

    /// Starts the binary on this server's data dir (after `kill`).
    pub fn spawn(&mut self) {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap();
        let (child, base) = crate::binary::spawn_announced(
            Command::new(env!("CARGO_BIN_EXE_patchfeed"))
                .args(["serve", "--listen", "127.0.0.1:0", "--config"])
                .arg(&self.config)
                .arg("--data-dir")
                .arg(self.dir.path().join("data"))
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stderr(err),
        );
        self.base = base;
        self.child = Some(child);
    }

    /// SIGKILL, then start again on the same data dir (a new port).
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = client().get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = client()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> u16 {
        client()
            .delete(self.url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Every event id in the log of `id`, oldest first (history pages).
    pub async fn history_ids(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..1000 {
            let q = match &after {
                Some(a) => format!("/v1/resources/{id}/history?limit=1000&after={a}"),
                None => format!("/v1/resources/{id}/history?limit=1000"),
            };
            let (status, v) = self.get(&q).await;
            assert_eq!(status, 200, "{v}");
            for e in v["events"].as_array().unwrap() {
                out.push(e["id"].as_str().unwrap().to_owned());
            }
            match v["next_after"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => return out,
            }
        }
        panic!("history did not end");
    }

    /// Waits until the current document of `id` is `want`.
    pub async fn wait_document(&self, id: &str, want: &Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, v) = self.get(&format!("/v1/resources/{id}/document")).await;
            if status == 200 && &v == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the document of {id} never became the expected one"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Waits until `GET /v1/resources/{id}` satisfies `pred`.
    pub async fn wait_resource(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, v) = self.get(&format!("/v1/resources/{id}")).await;
            if status == 200 && pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// A config for a loopback upstream polled every 100 ms.
pub fn config(resources: &[(&str, &str)], extra: &str) -> String {
    let mut c = format!("allow_private_upstreams = true\n{extra}\n");
    for (id, url) in resources {
        c.push_str(&format!("[[resource]]\nid = \"{id}\"\nurl = \"{url}\"\ninterval = \"100ms\"\nsnapshot_every = 3\n"));
    }
    c
}

// --------------------------------------------------------------------- sse

#[derive(Clone, Debug, Default)]
pub struct Frame {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// A streaming SSE client that parses frames and keeps the document.
pub struct Sse {
    resp: reqwest::Response,
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
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("status {}", resp.status()));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(Sse {
            resp,
            buf: Vec::new(),
            retry: None,
            frames: Vec::new(),
            doc: None,
            last_id: None,
            ended: false,
            tolerate_breaks: false,
        })
    }

    /// Continues on a new connection (after a crash): resumes from the last
    /// id, keeping the frames and the document.
    pub async fn reconnect(&mut self, url: &str) -> Result<(), String> {
        let next = Sse::try_open(url, self.last_id.as_deref()).await?;
        self.resp = next.resp;
        self.buf.clear();
        self.ended = false;
        Ok(())
    }

    /// The next event (not comments), applied to `doc`; None if the stream
    /// ended or nothing came within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let bytes: Vec<u8> = self.buf.drain(..i + 2).collect();
                let raw = String::from_utf8(bytes).expect("a UTF-8 frame");
                let mut f = Frame::default();
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        f.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        f.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        f.data.push_str(v);
                    }
                }
                if f.event.is_empty() {
                    continue;
                }
                self.apply(&f);
                self.frames.push(f.clone());
                return Some(f);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) => self.ended = true,
                Ok(Err(e)) if self.tolerate_breaks => {
                    let _ = e;
                    self.ended = true;
                }
                Ok(Err(e)) => panic!("stream broke: {e}"),
                Err(_) => return None,
            }
        }
    }

    fn apply(&mut self, f: &Frame) {
        if let Some(id) = &f.id {
            if let Some(last) = &self.last_id {
                assert!(id > last, "ids must strictly increase: {id} after {last}");
            }
            self.last_id = Some(id.clone());
        }
        match f.event.as_str() {
            "snapshot" | "data" => self.doc = Some(serde_json::from_str(&f.data).unwrap()),
            "patch" => {
                let patch: json_patch::Patch = serde_json::from_str(&f.data).unwrap();
                let doc = self.doc.as_mut().expect("a patch before any snapshot");
                json_patch::patch(doc, &patch).unwrap();
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
