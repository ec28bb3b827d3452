//! Upstream faults, one test each: every fault gives an `event: error` with
//! its stable `code` (and the upstream's `status` when there is one), sets
//! `last_error`, stores no patch, and polling recovers when the upstream
//! heals (`last_error` back to null, the next change arrives).

use serde_json::{json, Value};

use crate::support::*;

fn small(i: usize) -> Value {
    json!({ "v": i, "k/~": "é", "list": (0..i).rev().collect::<Vec<_>>() })
}

const LIMITS: &str = "[limits]\nupstream_timeout = \"500ms\"\nupstream_max_body_bytes = 4096\n";

async fn fault(mode: Mode, code: &str, status: Option<u16>) {
    let up = Upstream::start(small(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], LIMITS));
    let mut sse = Sse::open(&s.url("/v1/resources/r/events"), None).await;
    sse.until_event("snapshot").await;
    let logged = s.history_ids("r").await;

    up.mode(mode.clone());
    let e = sse.until_event("error").await;
    assert_eq!(e.id, None, "errors carry no id");
    let data: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(data["code"], code, "{mode:?}: {data}");
    assert!(data["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(
        data["status"].as_u64(),
        status.map(u64::from),
        "{mode:?}: {data}"
    );
    let r = s
        .wait_resource("r", "last_error", |v| v["last_error"]["code"] == code)
        .await;
    assert_eq!(r["last_error"]["status"].as_u64(), status.map(u64::from));
    assert_eq!(
        s.history_ids("r").await,
        logged,
        "{mode:?}: a failed poll stores nothing"
    );
    assert_eq!(sse.doc.as_ref(), Some(&small(0)));

    // Heal with a change: it arrives, and last_error clears.
    up.set(small(1));
    sse.until_doc(&small(1)).await;
    s.wait_resource("r", "last_error to clear", |v| v["last_error"].is_null())
        .await;
    assert_eq!(s.history_ids("r").await.len(), logged.len() + 1);
    assert!(!std::fs::read_to_string(&s.stderr)
        .unwrap()
        .contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_5xx() {
    fault(Mode::Status(503), "upstream_status", Some(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_4xx() {
    fault(Mode::Status(404), "upstream_status", Some(404)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_before_headers() {
    fault(Mode::Hang, "timeout", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_one_byte_per_second() {
    fault(Mode::SlowBody, "timeout", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json() {
    fault(Mode::InvalidJson, "not_json", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_page() {
    fault(Mode::Html, "not_json", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_body() {
    fault(Mode::Empty, "not_json", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_size_cap() {
    fault(Mode::Oversize(20_000), "too_large", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_loop() {
    fault(Mode::RedirectLoop, "redirect", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_then_the_upstream_comes_up() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Server::start(&config(
        &[("r", &format!("http://127.0.0.1:{port}/doc"))],
        LIMITS,
    ));
    let mut sse = Sse::open(&s.url("/v1/resources/r/events"), None).await;
    // Errors come even before the first snapshot.
    let e = sse.until_event("error").await;
    let data: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(data["code"], "connect", "{data}");
    s.wait_resource("r", "last_error", |v| v["last_error"]["code"] == "connect")
        .await;
    assert!(s.history_ids("r").await.is_empty());
    // Now an upstream appears on that port: the snapshot follows.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = axum::Router::new().route(
        "/doc",
        axum::routing::get(|| async { axum::Json(small(3)) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    sse.until_event("snapshot").await;
    assert_eq!(sse.doc.as_ref(), Some(&small(3)));
    s.wait_resource("r", "last_error to clear", |v| v["last_error"].is_null())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_failure() {
    let s = Server::start(&config(&[("r", "http://no-such-host.invalid/doc")], LIMITS));
    let mut sse = Sse::open(&s.url("/v1/resources/r/events"), None).await;
    let e = sse.until_event("error").await;
    let data: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(data["code"], "dns", "{data}");
    let r = s
        .wait_resource("r", "last_error", |v| v["last_error"]["code"] == "dns")
        .await;
    assert!(r["last_error"]["message"]
        .as_str()
        .unwrap()
        .contains("no-such-host.invalid"));
    assert!(s.history_ids("r").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_type_change_is_a_change_not_an_error() {
    let up = Upstream::start(small(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], LIMITS));
    let mut sse = Sse::open(&s.url("/v1/resources/r/events"), None).await;
    sse.until_event("snapshot").await;
    for next in [
        json!([1, "two", {"3": null}]),
        json!("a string"),
        json!(42),
        small(5),
    ] {
        up.set(next.clone());
        sse.until_doc(&next).await;
    }
    assert!(
        sse.frames.iter().all(|f| f.event != "error"),
        "{:?}",
        sse.names()
    );
    let root_replaces = sse
        .frames
        .iter()
        .filter(|f| f.event == "patch" && f.data.contains("\"path\":\"\""))
        .count();
    assert!(root_replaces >= 3, "{:?}", sse.names());
}

/// Issue 11, point 6: a client that connects while the upstream has been
/// failing hears the current error at once (after the snapshot, if there
/// is one), not at the next failed poll — a minute away here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_joining_a_failing_resource_hears_the_error_at_once() {
    let up = Upstream::start(small(0)).await;
    let mut s = Server::start(&config(&[("r", &up.url())], ""));
    s.wait_document("r", &small(0)).await;
    up.mode(Mode::Status(503));
    s.wait_resource("r", "last_error", |v| !v["last_error"].is_null())
        .await;
    // Restart with a one-minute interval: the first poll fails at once,
    // the next is a minute (plus back-off) away. "never" has no version.
    let slow = format!(
        "allow_private_upstreams = true\n\
         [[resource]]\nid = \"r\"\nurl = \"{}\"\ninterval = \"60s\"\n\
         [[resource]]\nid = \"never\"\nurl = \"http://127.0.0.1:9/\"\ninterval = \"60s\"\n",
        up.url()
    );
    std::fs::write(s.dir.path().join("patchfeed.toml"), slow).unwrap();
    s.crash_and_restart();
    s.wait_resource("r", "last_error", |v| v["last_error"]["status"] == 503)
        .await;
    s.wait_resource("never", "last_error", |v| !v["last_error"].is_null())
        .await;
    let within = std::time::Duration::from_secs(5);

    let mut sse = Sse::open(&s.url("/v1/resources/r/events"), None).await;
    let first = sse.next(within).await.expect("a snapshot");
    assert_eq!(first.event, "snapshot");
    let e = sse
        .next(within)
        .await
        .expect("the current error at once, not at the next poll");
    assert_eq!(e.event, "error");
    let data: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        (data["code"].as_str(), data["status"].as_u64()),
        (Some("upstream_status"), Some(503))
    );

    let mut sse = Sse::open(&s.url("/v1/resources/never/events"), None).await;
    let e = sse
        .next(within)
        .await
        .expect("the current error at once, before any snapshot");
    assert_eq!(e.event, "error");
    let data: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(data["code"], "connect");
}
