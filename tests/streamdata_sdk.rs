//! The real streamdata.io JavaScript SDK (`streamdataio-js-sdk`, its Node
//! bundle with its own EventSource) against the real `patchfeed` binary and
//! a real upstream on loopback. Node 20 runs `tests/sdk/client.js`; the npm
//! packages are installed from `tests/sdk/package-lock.json` on first use.
//!
//! Checked: one `onData`, one `onPatch` per upstream change, no `onError`
//! on a healthy upstream, and the document after applying the patches (with
//! fast-json-patch) equals the upstream's — through the one-host-change
//! root alias with an ad-hoc proxy resource and `X-Sd-Header`, and through
//! `/streamdata/` with a registered resource; an upstream failure reaches
//! `onError` with streamdata's fields; a wrong token never yields data.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{client, Mode, Server, Sse, Upstream};

const TOKEN: &str = "sdk-test-token";
const WAIT: Duration = Duration::from_secs(20);

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

/// Installs the SDK once (npm ci from the lock file), whichever test asks first.
fn ensure_sdk() {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if *done
        || sdk_dir()
            .join("node_modules/streamdataio-js-sdk/dist/bundles/streamdataio-node.js")
            .exists()
    {
        *done = true;
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(sdk_dir())
        .status()
        .expect("npm is needed for the streamdata SDK test (Node 20)");
    assert!(status.success(), "npm ci in tests/sdk failed: {status}");
    *done = true;
}

/// The documents the upstream serves, in order: unicode, keys with `/` and
/// `~`, an array that grows at the front, nested objects.
fn doc(i: usize) -> Value {
    json!({
        "title": "Zoë — 東京 😀",
        "a/b": { "c~d": i, "nested": { "deep": [i, "ü"] } },
        "items": (0..i).rev().map(|k| json!({ "id": k, "label": format!("é{k}") })).collect::<Vec<_>>(),
        "n": i,
    })
}

/// The upstream: `/doc` serves `doc(v)` for version v.
async fn start_upstream() -> (SocketAddr, Upstream) {
    let up = Upstream::start(doc(0)).await;
    (up.addr, up)
}

/// A running `client.js`: its callback lines, in order.
struct SdkApp {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl SdkApp {
    fn start(mode: &str, base: &str, url: &str, token: &str, headers: &[&str]) -> SdkApp {
        ensure_sdk();
        let mut child = Command::new("node")
            .arg(sdk_dir().join("client.js"))
            .args([mode, base, url, token])
            .args(headers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node is needed for the streamdata SDK test");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        SdkApp {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next callback other than `open`, or None after `within`.
    fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let v = self.lines.recv_timeout(left).ok()?;
            self.seen.push(v.clone());
            if v["cb"] != "open" {
                return Some(v);
            }
        }
    }

    fn expect(&mut self, cb: &str) -> Value {
        let v = self
            .next(WAIT)
            .unwrap_or_else(|| panic!("no `{cb}` callback within {WAIT:?}; seen {:?}", self.seen));
        assert_eq!(
            v["cb"], cb,
            "expected `{cb}`, got {v}; seen before: {:?}",
            self.seen
        );
        v
    }

    /// Ends the app; returns its last line (`closed`).
    fn close(&mut self) -> Value {
        drop(self.stdin.take());
        let v = self.next(WAIT).expect("the app reports closing");
        let _ = self.child.wait();
        v
    }

    fn count(&self, cb: &str) -> usize {
        self.seen.iter().filter(|v| v["cb"] == cb).count()
    }
}

impl Drop for SdkApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_version(up: &Upstream, v: usize) {
    up.set(doc(v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_through_the_root_alias_with_an_ad_hoc_proxy_resource() {
    let (addr, up) = start_upstream().await;
    let server = Server::start(&format!(
        "allow_private_upstreams = true\ntoken = \"{TOKEN}\"\n[proxy]\nenabled = true\ninterval = \"100ms\"\nidle = \"1m\"\n"
    ));
    let url = format!("http://{addr}/doc?cur=EUR");
    let mut app = SdkApp::start("root", &server.base, &url, TOKEN, &["X-Api-Key: k-123"]);

    let data = app.expect("data");
    assert_eq!(data["doc"], doc(0));
    for v in 1..=6 {
        set_version(&up, v);
        let p = app.expect("patch");
        assert_eq!(p["doc"], doc(v), "after upstream change {v}");
    }
    let closed = app.close();
    assert_eq!(closed["cb"], "closed");
    assert_eq!(
        (app.count("data"), app.count("patch"), app.count("error")),
        (1, 6, 0),
        "{:?}",
        app.seen
    );
    // The X-Sd-Header reached the upstream; the query did not carry ours.
    assert_eq!(up.last_header("x-api-key").as_deref(), Some("k-123"));

    // The ad-hoc resource is listed, without header values, and counted.
    let client = client();
    let list: Value = client
        .get(format!("{}/v1/resources", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = &list["resources"][0];
    assert_eq!(r["ad_hoc"], true);
    assert_eq!(r["url"], url);
    assert!(
        !list.to_string().contains("k-123"),
        "header values must not be shown: {list}"
    );
    let metrics = client
        .get(format!("{}/metrics?access_token={TOKEN}", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("patchfeed_proxy_resources 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_through_the_prefix_route_sees_upstream_errors_then_recovers() {
    let (addr, up) = start_upstream().await;
    let url = format!("http://{addr}/doc");
    let server = Server::start(&format!(
        "allow_private_upstreams = true\ntoken = \"{TOKEN}\"\n[[resource]]\nid = \"ticker\"\nurl = \"{url}\"\ninterval = \"100ms\"\n"
    ));
    let mut app = SdkApp::start("prefix", &server.base, &url, TOKEN, &[]);
    assert_eq!(app.expect("data")["doc"], doc(0));
    set_version(&up, 1);
    assert_eq!(app.expect("patch")["doc"], doc(1));

    up.mode(Mode::Status(503));
    let e = app.expect("error");
    assert_eq!(e["type"], "upstream_status", "{e}");
    assert_eq!(e["status"], 503, "{e}");
    assert_eq!(e["source"], "server", "{e}");
    // Errors repeat while it fails; then it heals with a change.
    set_version(&up, 2);
    let p = loop {
        let v = app
            .next(WAIT)
            .unwrap_or_else(|| panic!("no patch after healing; seen {:?}", app.seen));
        if v["cb"] != "error" {
            break v;
        }
    };
    assert_eq!(p["cb"], "patch", "{p}");
    assert_eq!(p["doc"], doc(2));
    app.close();
    assert_eq!(
        (app.count("data"), app.count("patch")),
        (1, 2),
        "{:?}",
        app.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_an_unknown_url_never_yields_data() {
    let (addr, _up) = start_upstream().await;
    let url = format!("http://{addr}/doc");
    let server = Server::start(&format!(
        "allow_private_upstreams = true\ntoken = \"{TOKEN}\"\n[[resource]]\nid = \"ticker\"\nurl = \"{url}\"\ninterval = \"100ms\"\n"
    ));
    // The SDK's EventSource gets a 401 without data, which the SDK only
    // logs (it calls onError only for errors with a body it can parse).
    let mut app = SdkApp::start("root", &server.base, &url, "wrong-token", &[]);
    assert!(app.next(Duration::from_secs(2)).is_none(), "{:?}", app.seen);
    let closed = app.close();
    assert_eq!(closed["connected"], false);
    assert_eq!(app.count("data") + app.count("patch"), 0);

    // What the SDK saw, seen by a plain client: JSON 401 with CORS.
    let client = client();
    let r = client
        .get(format!("{}/streamdata/{url}?X-Sd-Token=wrong", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    // Without proxy mode an unknown URL is 404 resource_not_found, and
    // nothing polls it.
    let r = client
        .get(format!(
            "{}/streamdata/http://{addr}/other?X-Sd-Token={TOKEN}",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "resource_not_found");
    let list: Value = client
        .get(format!("{}/v1/resources", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["resources"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_ad_hoc_resource_is_removed_and_a_private_url_is_refused() {
    let (addr, _up) = start_upstream().await;
    let server = Server::start(
        "allow_private_upstreams = true\n[proxy]\nenabled = true\ninterval = \"100ms\"\nidle = \"400ms\"\n",
    );
    let client = client();
    let url = format!("http://{addr}/doc");
    let mut sse = Sse::open(&format!("{}/streamdata/{url}", server.base), None).await;
    // Read until the whole `data` event arrived (ASCII-only on this route).
    let mut text = String::new();
    while !text.contains("event: data") {
        let block = sse
            .next_block(WAIT)
            .await
            .unwrap_or_else(|| panic!("no data event: {text:?}"));
        text.push_str(&block);
    }
    assert!(
        text.is_ascii(),
        "non-ASCII on the streamdata route: {text:?}"
    );
    assert!(text.contains("\\u00eb"), "ë must be escaped: {text:?}");
    drop(sse);

    let resources = || async {
        let v: Value = client
            .get(format!("{}/v1/resources", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["resources"].as_array().unwrap().len()
    };
    assert_eq!(resources().await, 1);
    let deadline = Instant::now() + WAIT;
    while resources().await != 0 {
        assert!(
            Instant::now() < deadline,
            "the idle ad-hoc resource was never removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("patchfeed_proxy_resources_removed_total 1"),
        "{metrics}"
    );

    // With the guard on (the default), a loopback URL is refused, not polled.
    let guarded = Server::start("[proxy]\nenabled = true\n");
    let r = client
        .get(format!("{}/streamdata/{url}", guarded.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_refused", "{body}");
}
