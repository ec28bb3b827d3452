//! `docs/openapi.json` in step with the router, on a real in-process
//! server: every documented operation is served and answers one of its
//! documented statuses; every route the source registers is documented;
//! the served `GET /v1/openapi.json` is the file, and OpenAPI 3.1.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use patchfeed::config::Config;
use patchfeed::model::{ResourceId, ResourceSpec};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::{client, Upstream, WAIT};

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn file_text() -> String {
    std::fs::read_to_string(manifest_dir().join("docs/openapi.json")).expect("docs/openapi.json")
}

fn file_json() -> Value {
    serde_json::from_str(&file_text()).expect("docs/openapi.json is JSON")
}

/// Every (path, method) the document describes.
fn documented(api: &Value) -> BTreeSet<(String, String)> {
    let paths = api["paths"].as_object().expect("`paths` is an object");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((path.clone(), m.to_owned()));
            }
        }
    }
    out
}

/// Every (path, method) that a `.route("…", …)` call under `src/api`
/// registers, with axum's `{*rest}` written as OpenAPI's `{rest}` and
/// `any(…)` counted as GET. A text scan: the calls' arguments are matched
/// by parentheses.
fn registered() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![manifest_dir().join("src/api")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/api is readable") {
            let p = entry.expect("a directory entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push(p);
            }
        }
    }
    let mut out = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a source file");
        for (path, methods) in route_calls(&text, &file) {
            for m in methods {
                out.insert((path.clone(), m));
            }
        }
    }
    out
}

fn route_calls(text: &str, file: &Path) -> Vec<(String, Vec<String>)> {
    const CALL: &str = ".route(";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(CALL) {
        let after = &rest[i + CALL.len()..];
        let mut depth = 1usize;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(j, _)| j)
            .unwrap_or_else(|| panic!("unbalanced .route( call in {}", file.display()));
        let args = &after[..end];
        let mut parts = args.splitn(3, '"');
        let (_, path, handlers) = (parts.next(), parts.next(), parts.next());
        let (Some(path), Some(handlers)) = (path, handlers) else {
            panic!(
                "a .route( call without a path literal in {}: {args}",
                file.display()
            );
        };
        let path = path.replace("{*", "{");
        let mut methods = Vec::new();
        for m in METHODS.iter().copied().chain(["any"]) {
            let call = format!("{m}(");
            let found = handlers.match_indices(&call).any(|(k, _)| {
                !handlers[..k]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if found {
                methods.push(if m == "any" { "get" } else { m }.to_owned());
            }
        }
        assert!(
            !methods.is_empty(),
            "no method found for {path} in {}",
            file.display()
        );
        out.push((path, methods));
        rest = &after[end..];
    }
    out
}

/// The server in-process on 127.0.0.1:0, polling `up` as resource `r`.
struct InProcess {
    base: String,
    shutdown: CancellationToken,
    running: patchfeed::app::Running,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(up: &Upstream) -> InProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            data_dir: dir.path().join("data"),
            allow_private_upstreams: true,
            resources: vec![ResourceSpec {
                id: ResourceId::new("r").expect("valid id"),
                url: up.url(),
                interval: Duration::from_millis(100),
                headers: Default::default(),
                snapshot_every: 3,
                retain: None,
                ad_hoc: false,
                push: false,
                pages: None,
            }],
            ..Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let shutdown = CancellationToken::new();
        let running = patchfeed::app::start(config, false, listener, shutdown.clone())
            .await
            .expect("the server starts");
        InProcess {
            base: format!("http://{}", running.addr),
            shutdown,
            running,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.running.wait())
            .await
            .expect("the server stops in time")
            .expect("the server stops cleanly");
    }
}

/// The body sent to an operation that takes one: its documented example,
/// pointed at the loopback upstream (an example URL would leave the host).
fn body_for(op: &Value, up: &Upstream) -> Option<Value> {
    let example = op["requestBody"]["content"]["application/json"]["example"].clone();
    if example.is_null() {
        return None;
    }
    let mut body = example;
    body["id"] = json!("created-from-the-example");
    body["url"] = json!(up.url());
    Some(body)
}

#[tokio::test]
async fn every_documented_operation_is_served_and_answers_a_documented_status() {
    let up = Upstream::start(json!({"n": 1})).await;
    let s = InProcess::start(&up).await;
    let c = client();
    // `r` has a version, so that reads of it answer 200, not 404 not_yet.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = c
            .get(format!("{}/v1/resources/r/document", s.base))
            .send()
            .await
            .expect("GET document");
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "r never got a first version");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let api = file_json();
    let mut ops: Vec<(String, String)> = documented(&api).into_iter().collect();
    assert!(!ops.is_empty(), "no operations in docs/openapi.json");
    // Deleting `r` last keeps it there for every other operation.
    ops.sort_by_key(|(_, m)| m == "delete");
    for (path, method) in ops {
        let op = &api["paths"][&path][&method];
        let target = path
            .replace("{id}", "r")
            .replace("{upstream}", &up.url())
            .replace("{name}", "console.js");
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
        let mut req = c.request(m, format!("{}{target}", s.base));
        if let Some(body) = body_for(op, &up) {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("a response");
        let status = resp.status().as_u16();
        // Streams stay open: the status line is all this test needs.
        drop(resp);
        assert!(
            status != 404 && status != 405,
            "{} {target} (documented as {path}) answered {status}: not served",
            method.to_uppercase()
        );
        let statuses = op["responses"]
            .as_object()
            .expect("`responses` is an object");
        assert!(
            statuses.contains_key(&status.to_string()),
            "{} {path} answered {status}, which it does not document ({:?})",
            method.to_uppercase(),
            statuses.keys().collect::<Vec<_>>()
        );
    }
    s.stop().await;
}

#[test]
fn every_route_the_source_registers_is_documented() {
    let registered = registered();
    // Sanity: the scan finds the routes every version of the API has.
    for known in [
        ("/healthz", "get"),
        ("/v1/resources", "post"),
        ("/v1/resources/{id}", "delete"),
        ("/v1/resources/{id}/events", "get"),
        ("/streamdata/{upstream}", "get"),
    ] {
        assert!(
            registered.contains(&(known.0.to_owned(), known.1.to_owned())),
            "the source scan missed {known:?}; found {registered:?}"
        );
    }
    let documented = documented(&file_json());
    let missing: Vec<_> = registered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes registered in src/api but missing from docs/openapi.json: {missing:?}"
    );
}

#[tokio::test]
async fn the_served_document_is_the_file_and_openapi_3_1() {
    let up = Upstream::start(json!({"n": 1})).await;
    let s = InProcess::start(&up).await;
    let resp = client()
        .get(format!("{}/v1/openapi.json", s.base))
        .send()
        .await
        .expect("GET /v1/openapi.json");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let served = resp.text().await.expect("a body");
    assert!(
        served == file_text(),
        "the served document differs from docs/openapi.json"
    );
    let v: Value = serde_json::from_str(&served).expect("the served document is JSON");
    let version = v["openapi"].as_str().expect("an `openapi` string");
    assert!(
        version.starts_with("3.1."),
        "openapi is {version:?}, not 3.1.x"
    );
    assert_eq!(v["info"]["version"], env!("CARGO_PKG_VERSION"));
    s.stop().await;
}
