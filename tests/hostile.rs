//! Hostile clients, upstreams and credentials, end to end: malformed and
//! oversized requests, path tricks, connection floods, SSE clients that
//! never read, upstreams the guard must refuse (SSRF), and access tokens.
//!
//! Every test talks to a real server over loopback — in-process through
//! `patchfeed::app::serve`, or the real binary where a process-level fact is
//! the point (RSS, log output, panics on stderr) — with real clients
//! (reqwest, raw `TcpStream` for what reqwest would refuse to send) and, where
//! polling matters, a real loopback upstream. Every request carries a client
//! timeout, so a hang fails the test instead of stalling it.
//! `docs/RELIABILITY.md` lists each case with the test that checks it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use axum::http::header;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// The harness (`tests/common/`): the in-process server is `Server` here,
// the real binary `Binary`.
use common::{
    client, eventually, metric, parse_reply, raw, read_one, read_to_close, send, shown,
    stream_client, Frame, InProcess as Server, RawSse, Reply, Server as Binary, Sse, Upstream,
    BIG_BLOB, CLIENT_TIMEOUT, UNKNOWN_PATHS, WRONG_METHODS,
};

/// The upstream of these tests: `/doc` serves one small document.
async fn upstream() -> Upstream {
    Upstream::start(json!({ "n": 1 })).await
}

/// Creates a resource through the API; panics unless 201.
async fn create(c: &reqwest::Client, base: &str, body: Value, token: Option<&str>) -> Value {
    let mut req = c.post(format!("{base}/v1/resources")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = send(req).await;
    assert_eq!(r.status, 201, "creating {body}: {:?}", shown(&r.body));
    r.json()
}

async fn resource_ids(c: &reqwest::Client, base: &str) -> Vec<String> {
    let r = send(c.get(format!("{base}/v1/resources"))).await;
    assert_eq!(r.status, 200);
    r.json()["resources"]
        .as_array()
        .expect("resources array")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// 3. Bad client input.
// ---------------------------------------------------------------------------

/// A server with one resource `r` on a loopback upstream.
async fn server_with_resource() -> (Server, Upstream, reqwest::Client) {
    let up = upstream().await;
    let s = Server::start(|c| c.allow_private_upstreams = true).await;
    let c = client();
    create(
        &c,
        &s.url(""),
        json!({"id": "r", "url": up.url_for("/doc"), "interval_ms": 1000}),
        None,
    )
    .await;
    (s, up, c)
}

#[tokio::test]
async fn malformed_points_ids_and_limits_are_400_naming_the_value() {
    let (s, _up, c) = server_with_resource().await;
    let r = |p: &str| s.url(&format!("/v1/resources/r{p}"));
    // (path and query, Last-Event-ID header, the value the message names)
    let cases = [
        ("/events", Some("garbage"), "garbage"),
        (
            "/events",
            Some("01ARZ3NDEKTSV4RRFFQ69G5FA"),
            "01ARZ3NDEKTSV4RRFFQ69G5FA",
        ),
        ("/events?last_event_id=garbage", None, "garbage"),
        ("/events?lastEventId=nope-nope", None, "nope-nope"),
        ("/events?since=", None, "invalid since: \"\""),
        ("/events?since=2026-13-45", None, "2026-13-45"),
        ("/events?since=yesterday", None, "yesterday"),
        ("/document?at=2026-13-45", None, "2026-13-45"),
        ("/document?at=", None, "invalid at: \"\""),
        (
            "/document?at=2026-01-01T00:00:00",
            None,
            "2026-01-01T00:00:00",
        ),
        ("/history?after=garbage", None, "garbage"),
        ("/history?before=2026-02-30", None, "2026-02-30"),
        ("/history?limit=abc", None, "abc"),
        ("/history?limit=0", None, "\"0\""),
        ("/history?limit=100000", None, "100000"),
        ("/history?limit=-1", None, "-1"),
        ("/history?limit=1.5", None, "1.5"),
        ("/history?limit=", None, "invalid limit \"\""),
    ];
    for (path, last_event_id, named) in cases {
        let mut req = c.get(r(path));
        if let Some(v) = last_event_id {
            req = req.header("Last-Event-ID", v);
        }
        let reply = send(req).await;
        assert_eq!(reply.status, 400, "{path} {last_event_id:?}");
        let msg = reply.error_code(400, "bad_request");
        assert!(
            msg.contains(named),
            "{path} {last_event_id:?}: message {msg:?} should name {named:?}"
        );
    }

    // Not malformed: more digits than a u64 is a time far in the future,
    // which means "now".
    let reply = send(c.get(r("/document?at=99999999999999999999999"))).await;
    assert!(matches!(reply.status, 200 | 404), "{}", reply.status);
    if reply.status == 404 {
        reply.error_code(404, "not_yet");
    }

    // A long bad value is named, but cut short in the message.
    let long = "x".repeat(10_000);
    let reply = send(c.get(r("/events")).header("Last-Event-ID", &long)).await;
    let msg = reply.error_code(400, "bad_request");
    assert!(
        msg.contains("xxxx") && msg.len() < 500,
        "{} bytes",
        msg.len()
    );
    let reply = send(c.get(r(&format!("/document?at={long}")))).await;
    let msg = reply.error_code(400, "bad_request");
    assert!(
        msg.contains("xxxx") && msg.len() < 500,
        "{} bytes",
        msg.len()
    );

    // A Last-Event-ID that is not even text (obs-text bytes).
    let reply = raw(
        s.addr,
        b"GET /v1/resources/r/events HTTP/1.1\r\nHost: t\r\nLast-Event-ID: \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("an answer");
    let msg = reply.error_code(400, "bad_request");
    assert!(msg.contains("Last-Event-ID"), "{msg:?}");
    s.stop().await;
}

#[tokio::test]
async fn oversized_request_heads_are_431_json() {
    let s = Server::start(|_| {}).await;
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let long_uri = format!(
        "GET /v1/resources/{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    // Far more than hyper reads before it gives up: the server must keep
    // reading (and discarding) for the client to see the answer at all.
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    for (what, req) in [
        ("a 70 KiB header", big_header),
        ("a 1 MiB header", huge_header),
        ("200 headers", many_headers),
        ("a 70 KiB URI", long_uri),
    ] {
        let reply = raw(s.addr, req.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(reply.status, 431, "{what}");
        reply.error_code(431, "headers_too_large");
    }
    // A head just under the limit is served.
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    let reply = raw(s.addr, fits.as_bytes()).await.expect("an answer");
    assert_eq!(reply.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_a_json_400() {
    let s = Server::start(|_| {}).await;
    for req in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n",
        b"GET /he\x01althz HTTP/1.1\r\nHost: t\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        b"POST /v1/resources HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}",
        b"POST /v1/resources HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ] {
        let what = String::from_utf8_lossy(req).into_owned();
        let reply = raw(s.addr, req)
            .await
            .unwrap_or_else(|| panic!("{what:?}: closed without an answer"));
        assert_eq!(reply.status, 400, "{what:?}");
        reply.error(400);
    }
    // Still serving.
    let reply = send(client().get(s.url("/healthz"))).await;
    assert_eq!(reply.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_413_json_and_create_nothing() {
    let s = Server::start(|c| c.limits.max_request_body_bytes = 1024).await;
    let c = client();
    let body = json!({"id": "big", "url": "https://example.com/x", "headers": {"X-Pad": "p".repeat(4096)}});
    // Declared length over the limit.
    let reply = send(c.post(s.url("/v1/resources")).json(&body)).await;
    reply.error_code(413, "payload_too_large");
    // Chunked, no declared length: cut off while reading.
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .to_string()
        .into_bytes()
        .chunks(256)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let reply = send(
        c.post(s.url("/v1/resources"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            ))),
    )
    .await;
    reply.error_code(413, "payload_too_large");
    // A body within the limit still works.
    create(
        &c,
        &s.url(""),
        json!({"id": "small", "url": "https://example.com/x"}),
        None,
    )
    .await;
    assert_eq!(resource_ids(&c, &s.url("")).await, ["small"]);
    s.stop().await;
}

#[tokio::test]
async fn slow_request_bodies_time_out_with_a_json_408() {
    let s = Server::start(|c| c.limits.request_timeout = Duration::from_millis(500)).await;
    let reply = tokio::time::timeout(CLIENT_TIMEOUT, async {
        let mut conn = TcpStream::connect(s.addr).await.expect("connect");
        conn.write_all(
            b"POST /v1/resources HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"url\":",
        )
        .await
        .expect("write");
        // ...and the other 92 bytes never come.
        read_one(&mut conn).await
    })
    .await
    .expect("answered in time");
    reply.error_code(408, "request_timeout");
    assert!(resource_ids(&client(), &s.url("")).await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_json() {
    let (s, _up, c) = server_with_resource().await;
    for path in UNKNOWN_PATHS {
        let reply = send(c.get(s.url(path))).await;
        assert_eq!(reply.status, 404, "GET {path}");
        reply.error_code(404, "not_found");
    }
    for (method, path) in WRONG_METHODS {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let reply = send(c.request(m, s.url(path)).body("{}")).await;
        assert_eq!(reply.status, 405, "{method} {path}");
        reply.error_code(405, "method_not_allowed");
        assert!(
            reply.headers.contains_key("allow"),
            "{method} {path}: Allow"
        );
    }
    // A method name no route knows.
    let reply = raw(
        s.addr,
        b"BREW /v1/resources HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("an answer");
    reply.error_code(405, "method_not_allowed");
    // Nothing above changed anything.
    assert_eq!(resource_ids(&c, &s.url("")).await, ["r"]);
    s.stop().await;
}

#[tokio::test]
async fn resource_ids_with_path_tricks_are_rejected_and_nothing_is_created() {
    let (s, _up, c) = server_with_resource().await;
    let long = "a".repeat(129);
    let tricks = [
        "..",
        ".",
        "%2e%2e",
        "%2E%2E",
        "a%2Fb",
        "..%2F..%2Fetc%2Fpasswd",
        "%2F",
        "a%00b",
        "a%0Ab",
        "a%0D%0AX-Injected:%201",
        "%7F",
        "a%20b",
        "a%5Cb",
        "%C3%A9t%C3%A9",
        "%F0%9F%98%80",
        "%FF%FE",
        long.as_str(),
        "r%3F",
        "r%23x",
    ];
    for trick in tricks {
        for (method, suffix) in [
            ("GET", ""),
            ("DELETE", ""),
            ("GET", "/document"),
            ("GET", "/document?at=0"),
            ("GET", "/history"),
            ("GET", "/events"),
        ] {
            let req = format!(
                "{method} /v1/resources/{trick}{suffix} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            );
            let reply = raw(s.addr, req.as_bytes())
                .await
                .unwrap_or_else(|| panic!("{method} {trick}{suffix}: no answer"));
            let (code, _) = reply.error(reply.status);
            assert!(
                matches!(
                    (reply.status, code.as_str()),
                    (400, "bad_request") | (404, "not_found") | (404, "resource_not_found")
                ),
                "{method} {trick}{suffix}: {} {code}",
                reply.status
            );
        }
    }
    // Raw dot segments and an unencoded control character in the path.
    for path in [
        "/v1/resources/../resources",
        "/v1/resources/r/../../../etc/passwd",
        "/v1/resources/./r",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let reply = raw(s.addr, req.as_bytes()).await.expect("an answer");
        let (code, _) = reply.error(reply.status);
        assert!(
            matches!(reply.status, 400 | 404),
            "{path}: {} {code}",
            reply.status
        );
    }

    // The same ids in a creation body: 422, nothing created.
    let decoded = [
        "..",
        ".",
        "a/b",
        "../../etc/passwd",
        "/",
        "a\u{0}b",
        "a\nb",
        "a\r\nX-Injected: 1",
        "\u{7f}",
        "a b",
        "a\\b",
        "été",
        "😀",
        "",
        long.as_str(),
    ];
    for id in decoded {
        let reply = send(
            c.post(s.url("/v1/resources"))
                .json(&json!({"id": id, "url": "https://example.com/x"})),
        )
        .await;
        let msg = reply.error_code(422, "invalid_resource");
        assert!(msg.contains("id"), "{id:?}: {msg:?}");
    }
    // 128 characters is the most an id may have.
    create(
        &c,
        &s.url(""),
        json!({"id": "a".repeat(128), "url": "https://example.com/x"}),
        None,
    )
    .await;
    let mut ids = resource_ids(&c, &s.url("")).await;
    ids.sort();
    assert_eq!(ids, ["a".repeat(128), "r".to_owned()]);
    // No file outside the data dir.
    let entries: Vec<_> = std::fs::read_dir(s.dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, ["data"]);
    s.stop().await;
}

#[tokio::test]
async fn malformed_resource_bodies_are_400_or_422_json_and_create_nothing() {
    let s = Server::start(|_| {}).await;
    let c = client();
    let url = "https://example.com/x";
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // (body, expected status)
    let cases: Vec<(String, u16)> = vec![
        (String::new(), 400),
        ("{".into(), 400),
        ("not json".into(), 400),
        ("{\"url\": \"https://example.com/x\",}".into(), 400),
        ("\u{feff}{}".into(), 400),
        ("{} trailing".into(), 400),
        (deep, 400),
        ("[]".into(), 422),
        ("null".into(), 422),
        ("42".into(), 422),
        ("\"https://example.com/x\"".into(), 422),
        ("{}".into(), 422),
        (json!({"url": 5}).to_string(), 422),
        (json!({"url": null}).to_string(), 422),
        (json!({"url": url, "interval_ms": "fast"}).to_string(), 422),
        (json!({"url": url, "interval_ms": -1}).to_string(), 422),
        (json!({"url": url, "interval_ms": 1.5}).to_string(), 422),
        (json!({"url": url, "interval_ms": 99}).to_string(), 422),
        (json!({"url": url, "interval_ms": 0}).to_string(), 422),
        (
            format!("{{\"url\": \"{url}\", \"interval_ms\": 1e400}}"),
            400,
        ),
        (
            json!({"url": url, "interval_ms": u64::MAX}).to_string(),
            201,
        ),
        (json!({"url": url, "snapshot_every": 0}).to_string(), 422),
        (
            json!({"url": url, "snapshot_every": 100_001}).to_string(),
            422,
        ),
        (json!({"url": url, "snapshot_every": "10"}).to_string(), 422),
        (json!({"url": url, "retain": "a while"}).to_string(), 422),
        (json!({"url": url, "retain": -5}).to_string(), 422),
        (json!({"url": url, "retain": true}).to_string(), 422),
        (json!({"url": url, "headers": ["X: y"]}).to_string(), 422),
        (
            json!({"url": url, "headers": {"bad name": "x"}}).to_string(),
            422,
        ),
        (
            json!({"url": url, "headers": {"X-A": "a\nb"}}).to_string(),
            422,
        ),
        (json!({"url": url, "headers": {"X-A": 1}}).to_string(), 422),
        (json!({"url": url, "id": 7}).to_string(), 422),
        (json!({"url": url, "unknown": 1}).to_string(), 422),
        (json!({"url": "not a url"}).to_string(), 422),
        (json!({"url": ""}).to_string(), 422),
        (json!({"url": "http://"}).to_string(), 422),
        (json!({"url": "//example.com/x"}).to_string(), 422),
        (
            json!({"url": format!("https://example.com/{}", "a".repeat(2 << 20))}).to_string(),
            413,
        ),
    ];
    let mut created = 0;
    for (body, status) in cases {
        let brief: String = body.chars().take(60).collect();
        let reply = send(
            c.post(s.url("/v1/resources"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await;
        assert_eq!(reply.status, status, "{brief:?}: {:?}", shown(&reply.body));
        match status {
            201 => created += 1,
            400 => {
                reply.error_code(400, "bad_request");
            }
            413 => {
                reply.error_code(413, "payload_too_large");
            }
            _ => {
                reply.error_code(422, "invalid_resource");
            }
        }
    }
    assert_eq!(resource_ids(&c, &s.url("")).await.len(), created);
    s.stop().await;
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_a_json_503_and_the_server_recovers() {
    const LIMIT: usize = 50;
    const FLOOD: usize = 2000;
    let s = Server::start(|c| c.limits.max_connections = LIMIT).await;

    // Take every slot with a kept-alive connection that has been served.
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let mut conn = TcpStream::connect(s.addr).await.expect("connect");
        conn.write_all(HEALTHZ).await.expect("write");
        assert_eq!(read_one(&mut conn).await.status, 200);
        held.push(conn);
    }

    // 500 more, at most 100 in flight: each is answered with the JSON 503,
    // while the held connections keep being served.
    let addr = s.addr;
    let flood = tokio::spawn(async move {
        futures_util::stream::iter(0..FLOOD)
            .map(|_| async move {
                raw(
                    addr,
                    b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                )
                .await
            })
            .buffer_unordered(100)
            .collect::<Vec<_>>()
            .await
    });
    let mut served_meanwhile = 0;
    while !flood.is_finished() {
        for conn in held.iter_mut().take(5) {
            conn.write_all(HEALTHZ).await.expect("write");
            assert_eq!(read_one(conn).await.status, 200);
            served_meanwhile += 1;
        }
    }
    let replies = flood.await.expect("flood task");
    assert!(served_meanwhile > 0);
    for reply in replies {
        let reply = reply.expect("refused with an answer, not a silent close");
        reply.error_code(503, "too_many_connections");
        assert_eq!(
            reply.headers.get("retry-after").map(String::as_str),
            Some("1")
        );
    }
    for conn in &mut held {
        conn.write_all(HEALTHZ).await.expect("write");
        assert_eq!(read_one(conn).await.status, 200);
    }

    // 300 more that connect and say nothing: more than the server keeps
    // around to answer (256). Each is closed — answered or not — within
    // the refusal's 2 s budget, never left hanging.
    let silent: Vec<_> = (0..300)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.expect("connect");
                tokio::time::timeout(CLIENT_TIMEOUT, read_to_close(&mut conn))
                    .await
                    .expect("closed in time")
            })
        })
        .collect();
    for task in silent {
        let got = task.await.expect("silent client");
        if !got.is_empty() {
            parse_reply(&got)
                .expect("a response")
                .error_code(503, "too_many_connections");
        }
    }
    for conn in &mut held {
        conn.write_all(HEALTHZ).await.expect("write");
        assert_eq!(read_one(conn).await.status, 200);
    }

    // Free the slots: the server admits new connections again, all of them.
    drop(held);
    let c = client();
    eventually(Duration::from_secs(5), "a free slot", || async {
        let r = send(c.get(s.url("/healthz"))).await;
        (r.status == 200).then_some(())
    })
    .await;
    drop(c);
    let mut again = Vec::new();
    let mut attempts = 0;
    while again.len() < LIMIT {
        attempts += 1;
        assert!(attempts < 10 * LIMIT, "{} of {LIMIT} admitted", again.len());
        let mut conn = TcpStream::connect(s.addr).await.expect("connect");
        conn.write_all(HEALTHZ).await.expect("write");
        match read_one(&mut conn).await.status {
            200 => again.push(conn),
            // The probing client's slot, not yet released.
            503 => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("status {other}"),
        }
    }
    let mut conn = again.pop().expect("a connection");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let text = String::from_utf8(read_one(&mut conn).await.body.to_vec()).expect("text");
    assert!(metric(&text, "patchfeed_http_connections_refused_total") >= FLOOD as f64);
    drop(again);
    drop(conn);
    s.stop().await;
}

/// Applies snapshot and patches in order; checks that `n` counts up by one
/// from patch to patch (every upstream version arrived, none twice).
/// Returns the ids of the patches and the final document.
fn replay(frames: &[Frame]) -> (Vec<String>, Value) {
    let first = frames.first().expect("a snapshot");
    assert_eq!(first.event, "snapshot");
    let mut doc: Value = serde_json::from_str(&first.data).expect("snapshot JSON");
    let mut ids = Vec::new();
    let mut last_id = first.id.clone().expect("snapshot id");
    for f in &frames[1..] {
        assert_eq!(f.event, "patch", "unexpected {f:?}");
        let id = f.id.clone().expect("patch id");
        assert!(id > last_id, "ids increase: {id} after {last_id}");
        let before = doc["n"].as_u64().expect("n");
        let patch: json_patch::Patch = serde_json::from_str(&f.data).expect("patch JSON");
        json_patch::patch(&mut doc, &patch).expect("patch applies");
        assert_eq!(doc["n"].as_u64(), Some(before + 1), "patch {id} follows on");
        ids.push(id.clone());
        last_id = id;
    }
    (ids, doc)
}

/// Reads frames until `stop`, on its own task.
fn read_until(mut sse: Sse, stop: CancellationToken) -> JoinHandle<Vec<Frame>> {
    tokio::spawn(async move {
        let mut frames = Vec::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return frames,
                f = sse.frame(CLIENT_TIMEOUT) => frames.push(f),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_clients_that_never_read_cost_bounded_memory_and_slow_no_one() {
    const STALLED: usize = 20;
    let up = upstream().await;
    let server = Binary::start_with_env(
        &format!(
            r#"
            allow_private_upstreams = true
            [limits]
            live_buffer = 8
            [[resource]]
            id = "fast"
            url = "{}"
            interval = "100ms"
            snapshot_every = 10
            retain = "forever"
            "#,
            up.url_for("/big")
        ),
        &[],
    );
    let c = client();
    let streams = stream_client();
    let events = server.url("/v1/resources/fast/events");
    let reader = Sse::open_request(streams.get(&events)).await;
    let stop = CancellationToken::new();
    let reading = read_until(reader, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_kib();
    let upstream_before = up.hits();

    // Clients that ask for the stream and then stop reading, with a small
    // receive window so that the server, not the kernel, would have to
    // hold what they do not take.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(RawSse::request(server.addr, "/v1/resources/fast/events").await);
    }

    // Meanwhile everyone else is served: small requests, a document of
    // BIG_BLOB bytes, and a newcomer's snapshot, each within the client
    // timeout.
    // (Latencies are reported, not asserted: the client timeout is the bound.)
    let mut newcomer = None;
    let mut slowest = Duration::ZERO;
    for round in 0..16 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let t = tokio::time::Instant::now();
        assert_eq!(send(c.get(server.url("/healthz"))).await.status, 200);
        let r = send(c.get(server.url("/v1/resources/fast/document"))).await;
        assert_eq!(r.status, 200);
        assert!(r.body.len() > BIG_BLOB);
        if round == 8 {
            let mut sse = Sse::open_request(streams.get(&events)).await;
            let snapshot = sse.frame(CLIENT_TIMEOUT).await;
            assert_eq!(snapshot.event, "snapshot");
            newcomer = Some(read_until_with(sse, snapshot, stop.clone()));
        }
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("slowest round of requests while {STALLED} streams were stalled: {slowest:?}");
    let rss_stalled = server.rss_kib();
    let versions = up.hits() - upstream_before;
    assert!(versions >= 20, "the upstream changed {versions} times");

    // The stalled clients read again, all at once: each is served what it
    // missed from the log, in order, and catches up with the live stream.
    let target = send(c.get(server.url("/v1/resources/fast"))).await.json()["last_event_id"]
        .as_str()
        .expect("an event")
        .to_owned();
    let resumed: Vec<JoinHandle<Vec<Frame>>> = stalled
        .into_iter()
        .map(|mut raw| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut frames = Vec::new();
                loop {
                    let f = raw.next(CLIENT_TIMEOUT).await;
                    let done = f.id.as_ref().is_some_and(|id| *id >= target);
                    frames.push(f);
                    if done {
                        return frames;
                    }
                }
            })
        })
        .collect();
    let mut stalled_frames = Vec::new();
    for task in resumed {
        stalled_frames.push(task.await.expect("resumed reader"));
    }
    stop.cancel();
    let frames = reading.await.expect("reader");
    let newcomer = newcomer.expect("newcomer").await.expect("newcomer reader");

    // Memory at the worst moment (VmHWM), stalled or catching up. Each
    // session may hold a catch-up page (`page_bytes`, 256 KiB, plus one
    // event) and hyper's 64 KiB write buffer: 20 × ~0.5 MiB, plus the log's
    // growth in sled's cache. A copy per client of what they did not take
    // would be `owed`; catch-up pages bounded only by their event count (512)
    // came to ~90 MiB here.
    let owed_kib = (STALLED * versions * BIG_BLOB / 1024) as u64;
    let peak_kib = server.rss_peak_kib();
    let grown_kib = peak_kib.saturating_sub(rss_before);
    eprintln!(
        "RSS {rss_before} KiB before, {rss_stalled} KiB with {STALLED} stalled streams owed \
         {owed_kib} KiB ({versions} versions of {} KiB), peak {peak_kib} KiB (+{grown_kib} KiB)",
        BIG_BLOB / 1024
    );
    assert!(
        grown_kib < 64 * 1024,
        "RSS grew by up to {grown_kib} KiB; the stalled clients were owed {owed_kib} KiB"
    );

    // Nothing lost: every reader saw every version in order, and the log
    // holds every version, with the ids the readers saw.
    let log = history_ids(&c, &server.url("/v1/resources/fast/history")).await;
    let (ids, _) = replay(&frames);
    assert!(ids.len() >= 20);
    assert_slice_of(&log, &ids);
    let (ids, _) = replay(&newcomer);
    assert!(ids.len() >= 5);
    assert_slice_of(&log, &ids);
    for frames in &stalled_frames {
        let (ids, _) = replay(frames);
        assert_slice_of(&log, &ids);
        assert_eq!(ids.last(), Some(&target));
    }

    // Every stream closed: no session left behind.
    eventually(Duration::from_secs(5), "sessions to end", || async {
        let r = send(c.get(server.url("/v1/resources/fast"))).await;
        (r.json()["subscribers"] == 0).then_some(())
    })
    .await;
    server.stop().await;
}

/// Every event id in a resource's history, oldest first, after checking
/// that the patches rebuild `n` = 1, 2, 3, … (no version missing or twice).
async fn history_ids(c: &reqwest::Client, url: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut doc = Value::Null;
    let mut after: Option<String> = None;
    loop {
        let mut page_url = format!("{url}?limit=50");
        if let Some(a) = &after {
            page_url.push_str(&format!("&after={a}"));
        }
        let page = send(c.get(page_url)).await;
        assert_eq!(page.status, 200);
        let page = page.json();
        for e in page["events"].as_array().expect("events") {
            let patch: json_patch::Patch =
                serde_json::from_value(e["patch"].clone()).expect("patch");
            json_patch::patch(&mut doc, &patch).expect("history applies");
            ids.push(e["id"].as_str().expect("id").to_owned());
            assert_eq!(
                doc["n"].as_u64(),
                Some(ids.len() as u64),
                "event {}",
                ids[ids.len() - 1]
            );
        }
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => return ids,
        }
    }
}

/// `ids` is a contiguous run of `log`.
fn assert_slice_of(log: &[String], ids: &[String]) {
    let Some(first) = ids.first() else { return };
    let start = log
        .iter()
        .position(|id| id == first)
        .unwrap_or_else(|| panic!("{first} is not in the log"));
    assert_eq!(&log[start..(start + ids.len()).min(log.len())], ids);
}

/// `read_until` for a stream whose first frame was already taken.
fn read_until_with(sse: Sse, first: Frame, stop: CancellationToken) -> JoinHandle<Vec<Frame>> {
    let rest = read_until(sse, stop);
    tokio::spawn(async move {
        let mut frames = vec![first];
        frames.extend(rest.await.expect("reader"));
        frames
    })
}

#[tokio::test]
async fn extreme_but_valid_settings_do_not_break_the_server() {
    let up = upstream().await;
    let server = Binary::start_with_env("allow_private_upstreams = true\n", &[]);
    let c = client();
    // The largest values the body allows: accepted (they are not invalid),
    // and must not overflow anything when used.
    let created = create(
        &c,
        &server.url(""),
        json!({
            "id": "huge",
            "url": up.url_for("/doc"),
            "interval_ms": u64::MAX,
            "retain": u64::MAX,
            "snapshot_every": 100_000,
        }),
        None,
    )
    .await;
    assert_eq!(created["interval_ms"], u64::MAX);
    let url = server.url("/v1/resources/huge");
    eventually(CLIENT_TIMEOUT, "the first poll", || async {
        let v = send(c.get(&url)).await.json();
        v["last_event_id"].as_str().map(str::to_owned)
    })
    .await;
    // The poller is now waiting for its next turn (in ~585 million years);
    // the server still answers, streams, and shuts down cleanly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sse =
        Sse::open_request(stream_client().get(server.url("/v1/resources/huge/events"))).await;
    assert_eq!(sse.frame(CLIENT_TIMEOUT).await.event, "snapshot");
    let r = send(c.get(&url)).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["last_error"].is_null());
    assert_eq!(send(c.delete(&url)).await.status, 204);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Upstream guard (SSRF).
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_guard_refuses_private_addresses_and_other_schemes_at_creation() {
    let up = upstream().await;
    let s = Server::start(|_| {}).await;
    let c = client();
    let port = up.addr.port();
    let addresses = [
        format!("http://127.0.0.1:{port}/doc"),
        format!("http://127.1:{port}/doc"),
        format!("http://2130706433:{port}/doc"),
        format!("http://0x7f000001:{port}/doc"),
        format!("http://0177.0.0.1:{port}/doc"),
        format!("http://[::1]:{port}/doc"),
        format!("http://[::ffff:127.0.0.1]:{port}/doc"),
        format!("http://[::ffff:7f00:1]:{port}/doc"),
        format!("http://[::127.0.0.1]:{port}/doc"),
        format!("http://[64:ff9b::7f00:1]:{port}/doc"),
        format!("http://0.0.0.0:{port}/doc"),
        format!("http://0:{port}/doc"),
        format!("http://[::]:{port}/doc"),
        format!("https://user:pw@127.0.0.1:{port}/doc"),
        "http://10.0.0.1/".into(),
        "http://10.255.255.254:8080/x".into(),
        "http://172.16.0.1/".into(),
        "http://192.168.1.1/".into(),
        "http://100.64.0.1/".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[::ffff:169.254.169.254]/latest/meta-data/".into(),
        "http://[fd00:ec2::254]/latest/meta-data/".into(),
        "http://[fe80::1]/".into(),
        "http://224.0.0.1/".into(),
        "http://255.255.255.255/".into(),
    ];
    for url in &addresses {
        let reply = send(
            c.post(s.url("/v1/resources"))
                .json(&json!({"url": url, "interval_ms": 100})),
        )
        .await;
        let msg = reply.error_code(422, "invalid_resource");
        assert!(
            msg.contains("allow_private_upstreams"),
            "{url}: {msg:?} says how to allow it"
        );
    }
    let schemes = [
        format!("ftp://127.0.0.1:{port}/doc"),
        "file:///etc/passwd".into(),
        "file://localhost/etc/passwd".into(),
        format!("gopher://127.0.0.1:{port}/_GET"),
        format!("ws://127.0.0.1:{port}/doc"),
        "data:application/json,{}".into(),
        "javascript:alert(1)".into(),
        "unix:///var/run/docker.sock".into(),
    ];
    for url in &schemes {
        let reply = send(c.post(s.url("/v1/resources")).json(&json!({ "url": url }))).await;
        let msg = reply.error_code(422, "invalid_resource");
        assert!(msg.contains("scheme"), "{url}: {msg:?}");
    }
    assert!(resource_ids(&c, &s.url("")).await.is_empty());
    // Give any poller that might exist time to run: none may connect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.hits(), 0, "the upstream was contacted");
    s.stop().await;
}

#[tokio::test]
async fn names_resolving_to_loopback_are_blocked_without_connecting() {
    let up = upstream().await;
    let s = Server::start(|_| {}).await;
    let c = client();
    let port = up.addr.port();
    for (id, host) in [("plain", "localhost"), ("upper", "LocalHost")] {
        create(
            &c,
            &s.url(""),
            json!({"id": id, "url": format!("http://{host}:{port}/doc"), "interval_ms": 100}),
            None,
        )
        .await;
        // The stream reports the refusal as an upstream error, before any
        // snapshot (there is none).
        let mut sse =
            Sse::open_request(stream_client().get(s.url(&format!("/v1/resources/{id}/events"))))
                .await;
        let f = sse.frame(CLIENT_TIMEOUT).await;
        assert_eq!(f.event, "error", "{f:?}");
        assert!(f.id.is_none());
        let data: Value = serde_json::from_str(&f.data).expect("error JSON");
        assert_eq!(data["code"], "blocked", "{data}");
        assert!(data.get("status").is_none());
        let message = data["message"].as_str().expect("message");
        assert!(message.contains("allow_private_upstreams"), "{message}");

        let r = send(c.get(s.url(&format!("/v1/resources/{id}")))).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["last_error"]["code"], "blocked", "{v}");
        assert!(v["last_event_id"].is_null());
        send(c.get(s.url(&format!("/v1/resources/{id}/document"))))
            .await
            .error_code(404, "not_yet");
    }
    // Several polls later, still not one request reached the upstream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.hits(), 0, "the upstream was contacted");
    s.stop().await;
}

/// Waits until the resource's `last_error` is set; returns its code.
async fn last_error_code(c: &reqwest::Client, url: &str) -> String {
    eventually(CLIENT_TIMEOUT, "last_error", || async {
        let v = send(c.get(url)).await.json();
        v["last_error"]["code"].as_str().map(str::to_owned)
    })
    .await
}

#[tokio::test]
async fn the_guard_has_no_back_doors_through_config_or_the_demo() {
    let up = upstream().await;
    let port = up.addr.port();
    let s = Server::launch(
        |c| {
            c.resources.push(patchfeed::model::ResourceSpec {
                id: "cfg".parse().expect("id"),
                url: format!("http://127.0.0.1:{port}/doc"),
                interval: Duration::from_millis(100),
                headers: Default::default(),
                snapshot_every: 10,
                retain: None,
                ad_hoc: false,
                push: false,
                pages: None,
            })
        },
        true,
    )
    .await;
    let c = client();
    // A loopback upstream from the config file is polled through the
    // guard too.
    assert_eq!(
        last_error_code(&c, &s.url("/v1/resources/cfg")).await,
        "blocked"
    );
    // The demo is exempt (the operator asked for it with --demo)...
    let mut sse = Sse::open_request(stream_client().get(s.url("/v1/resources/demo/events"))).await;
    assert_eq!(sse.frame(CLIENT_TIMEOUT).await.event, "snapshot");
    drop(sse);
    // ...but a client that deletes it and takes its id does not inherit
    // the exemption.
    let r = send(c.delete(s.url("/v1/resources/demo"))).await;
    assert_eq!(r.status, 204);
    create(
        &c,
        &s.url(""),
        json!({"id": "demo", "url": format!("http://localhost:{port}/doc"), "interval_ms": 100}),
        None,
    )
    .await;
    assert_eq!(
        last_error_code(&c, &s.url("/v1/resources/demo")).await,
        "blocked"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.hits(), 0, "the upstream was contacted");
    s.stop().await;
}

#[tokio::test]
async fn allow_private_upstreams_lifts_the_guard_but_not_the_scheme_check() {
    let up = upstream().await;
    let s = Server::start(|c| c.allow_private_upstreams = true).await;
    let c = client();
    let port = up.addr.port();
    for (id, url) in [
        ("literal", format!("http://127.0.0.1:{port}/doc")),
        ("name", format!("http://localhost:{port}/doc")),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/doc")),
    ] {
        create(
            &c,
            &s.url(""),
            json!({"id": id, "url": url, "interval_ms": 100}),
            None,
        )
        .await;
        let mut sse =
            Sse::open_request(stream_client().get(s.url(&format!("/v1/resources/{id}/events"))))
                .await;
        let f = sse.frame(CLIENT_TIMEOUT).await;
        assert_eq!(f.event, "snapshot", "{id}: {f:?}");
    }
    assert!(up.hits() >= 3);
    for url in [
        format!("ftp://127.0.0.1:{port}/doc"),
        "file:///etc/passwd".into(),
    ] {
        let reply = send(c.post(s.url("/v1/resources")).json(&json!({ "url": url }))).await;
        reply.error_code(422, "invalid_resource");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_redirect_to_a_refused_host_is_not_followed() {
    use patchfeed::fetch::{FetchConfig, FetchError, Fetched, Fetcher, Validators};
    let up = upstream().await;
    let port = up.addr.port();
    let fetcher = |allowed: &str| {
        Fetcher::new(FetchConfig {
            allow_private: true,
            allowed_hosts: Some(vec![allowed.to_owned()]),
            timeout: Duration::from_secs(5),
            ..FetchConfig::default()
        })
        .expect("fetcher")
    };
    let fetch = |f: Fetcher, url: String| async move {
        f.fetch(&url, &Default::default(), &Validators::default())
            .await
    };
    let redirect = |from: &str, to: &str| {
        format!(
            "http://{from}:{port}/redirect?to={}",
            form_urlencoded::byte_serialize(to.as_bytes()).collect::<String>()
        )
    };

    // Allowed hop: followed (the control).
    let got = fetch(
        fetcher("127.0.0.1"),
        redirect("127.0.0.1", &format!("http://127.0.0.1:{port}/doc")),
    )
    .await;
    assert!(matches!(got, Ok(Fetched::Document { .. })), "{got:?}");
    assert_eq!(up.hits(), 2);

    // Hops to hosts outside allowed_hosts, or to other schemes: refused
    // before connecting, so only the redirecting request reaches the
    // upstream.
    for (allowed, from, to) in [
        (
            "127.0.0.1",
            "127.0.0.1",
            format!("http://localhost:{port}/doc"),
        ),
        (
            "localhost",
            "localhost",
            format!("http://127.0.0.1:{port}/doc"),
        ),
        ("127.0.0.1", "127.0.0.1", format!("http://[::1]:{port}/doc")),
        (
            "127.0.0.1",
            "127.0.0.1",
            "http://169.254.169.254/latest/meta-data/".into(),
        ),
        ("127.0.0.1", "127.0.0.1", "file:///etc/passwd".into()),
        (
            "127.0.0.1",
            "127.0.0.1",
            format!("ftp://127.0.0.1:{port}/doc"),
        ),
    ] {
        let before = up.hits();
        let got = fetch(fetcher(allowed), redirect(from, &to)).await;
        match &got {
            Err(e @ FetchError::Redirect(_)) => {
                assert_eq!(e.code(), "redirect");
                assert!(e.to_string().contains(&to), "{e} names the refused hop");
            }
            other => panic!("{to}: {other:?}"),
        }
        assert_eq!(
            up.hits(),
            before + 1,
            "{to}: only the first hop was fetched"
        );
    }

    // A redirect loop ends after max_redirects hops.
    let before = up.hits();
    let got = fetch(
        fetcher("127.0.0.1"),
        format!("http://127.0.0.1:{port}/loop"),
    )
    .await;
    assert!(matches!(got, Err(FetchError::Redirect(_))), "{got:?}");
    assert_eq!(up.hits(), before + 1 + FetchConfig::default().max_redirects);
}

// ---------------------------------------------------------------------------
// 5. Auth.
// ---------------------------------------------------------------------------

const TOKEN: &str = "s3cret-Tok3n-XYZ";
const READ_TOKEN: &str = "r3ad-0nly-ABC";

/// Status of a request; an event stream's body is not read (it never
/// ends), any other body is, and an error body must have the JSON shape.
async fn probe(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("request completes");
    let status = resp.status().as_u16();
    let headers: HashMap<String, String> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let streaming = headers
        .get("content-type")
        .is_some_and(|c| c == "text/event-stream");
    let body = if streaming {
        Bytes::new()
    } else {
        resp.bytes().await.expect("body")
    };
    let reply = Reply {
        status,
        headers,
        body,
    };
    if status >= 400 {
        reply.error(status);
    }
    reply
}

/// A server with `token` and `read_token`, and a resource `r` that has a
/// first version.
async fn server_with_tokens() -> (Server, Upstream) {
    let up = upstream().await;
    let s = Server::start(|c| {
        c.allow_private_upstreams = true;
        c.token = Some(TOKEN.into());
        c.read_token = Some(READ_TOKEN.into());
    })
    .await;
    let c = client();
    create(
        &c,
        &s.url(""),
        json!({"id": "r", "url": up.url_for("/doc"), "interval_ms": 1000}),
        Some(TOKEN),
    )
    .await;
    eventually(CLIENT_TIMEOUT, "a first version", || async {
        let r = send(c.get(s.url("/v1/resources/r/document")).bearer_auth(TOKEN)).await;
        (r.status == 200).then_some(())
    })
    .await;
    (s, up)
}

/// Every /v1 request, as (method, path): routes, their wrong methods and
/// paths that match nothing.
fn v1_requests() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GET", "/v1/resources"),
        ("POST", "/v1/resources"),
        ("GET", "/v1/resources/r"),
        ("DELETE", "/v1/resources/nonexistent"),
        ("GET", "/v1/resources/r/document"),
        ("GET", "/v1/resources/r/document?at=0"),
        ("GET", "/v1/resources/r/history"),
        ("GET", "/v1/resources/r/events"),
        ("GET", "/v1/resources/r/changes?timeout=0"),
        ("GET", "/v1/resources/r/ws"),
        ("POST", "/v1/resources/r/poll"),
        ("PUT", "/v1/resources/r/document"),
        ("PATCH", "/v1/resources/r/document"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/resources/nonexistent"),
        ("GET", "/v1/resources/..%2F"),
        ("PUT", "/v1/resources"),
        ("PATCH", "/v1/resources/r"),
        ("GET", "/v1/nope"),
        ("GET", "/v1"),
    ]
}

fn request(
    c: &reqwest::Client,
    s: &Server,
    method: &str,
    path: &str,
    up: &Upstream,
) -> reqwest::RequestBuilder {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let req = c.request(m.clone(), s.url(path));
    if m == reqwest::Method::POST {
        req.json(&json!({"url": up.url_for("/doc")}))
    } else {
        req
    }
}

/// Appends `key=value` to a path's query.
fn with_query(path: &str, key: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{key}={value}")
}

#[tokio::test]
async fn with_a_token_every_v1_request_needs_it() {
    let (s, up) = server_with_tokens().await;
    let c = stream_client();
    for (method, path) in v1_requests() {
        // Missing or wrong credentials: 401 with the JSON shape and a
        // Bearer challenge, whatever the path or method.
        let wrong: Vec<(String, Option<String>)> = vec![
            (path.to_owned(), None),
            (path.to_owned(), Some("Bearer wrong".into())),
            (
                path.to_owned(),
                Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
            ),
            (path.to_owned(), Some(format!("Bearer {TOKEN}Z"))),
            (
                path.to_owned(),
                Some(format!("Bearer {}", TOKEN.to_lowercase())),
            ),
            (path.to_owned(), Some(format!("Basic {TOKEN}"))),
            (path.to_owned(), Some(TOKEN.into())),
            (path.to_owned(), Some("Bearer ".into())),
            (with_query(path, "access_token", "wrong"), None),
            (with_query(path, "access_token", ""), None),
            (with_query(path, "X-Sd-Token", "wrong"), None),
            (with_query(path, "token", TOKEN), None),
            // A header, when present, is the credential: a right token in
            // the query does not rescue a wrong header.
            (
                with_query(path, "access_token", TOKEN),
                Some("Bearer wrong".into()),
            ),
        ];
        for (target, authorization) in wrong {
            let mut req = request(&c, &s, method, &target, &up);
            if let Some(a) = &authorization {
                req = req.header(header::AUTHORIZATION, a);
            }
            let reply = probe(req).await;
            assert_eq!(
                reply.status, 401,
                "{method} {target} with {authorization:?}"
            );
            reply.error_code(401, "unauthorized");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
        // The token in a header the server does not read is no credential.
        let reply = probe(request(&c, &s, method, path, &up).header("X-Sd-Token", TOKEN)).await;
        assert_eq!(
            reply.status, 401,
            "{method} {path} with an X-Sd-Token header"
        );

        // The right token, in each accepted place: anything but 401/403.
        let right: Vec<(String, Option<String>)> = vec![
            (path.to_owned(), Some(format!("Bearer {TOKEN}"))),
            (path.to_owned(), Some(format!("bearer {TOKEN}"))),
            (with_query(path, "access_token", TOKEN), None),
            (with_query(path, "X-Sd-Token", TOKEN), None),
            (with_query(path, "x-sd-token", TOKEN), None),
        ];
        for (target, authorization) in right {
            let mut req = request(&c, &s, method, &target, &up);
            if let Some(a) = &authorization {
                req = req.header(header::AUTHORIZATION, a);
            }
            let reply = probe(req).await;
            assert!(
                reply.status != 401 && reply.status != 403,
                "{method} {target} with {authorization:?}: {}",
                reply.status
            );
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_read_token_reads_and_subscribes_but_cannot_write() {
    let (s, up) = server_with_tokens().await;
    let c = stream_client();
    // (query key carrying the read token, or None for a Bearer header)
    for key in [None, Some("access_token"), Some("X-Sd-Token")] {
        let at = |path: &str| match key {
            Some(k) => s.url(&with_query(path, k, READ_TOKEN)),
            None => s.url(path),
        };
        let auth = |req: reqwest::RequestBuilder| match key {
            Some(_) => req,
            None => req.bearer_auth(READ_TOKEN),
        };
        for (path, status) in [
            ("/v1/resources", 200),
            ("/v1/resources/r", 200),
            ("/v1/resources/r/document", 200),
            ("/v1/resources/r/document?at=0", 404),
            ("/v1/resources/r/history", 200),
        ] {
            let reply = probe(auth(c.get(at(path)))).await;
            assert_eq!(reply.status, status, "GET {path} via {key:?}");
        }
        let mut sse = Sse::open_request(auth(c.get(at("/v1/resources/r/events")))).await;
        assert_eq!(sse.frame(CLIENT_TIMEOUT).await.event, "snapshot");

        let reply = probe(
            auth(c.post(at("/v1/resources")))
                .json(&json!({"id": "new", "url": up.url_for("/doc")})),
        )
        .await;
        reply.error_code(403, "forbidden");
        let reply = probe(auth(c.delete(at("/v1/resources/r")))).await;
        reply.error_code(403, "forbidden");
        // Nor trigger a poll or push a document (issue 18).
        for (method, path) in [
            (reqwest::Method::POST, "/v1/resources/r/poll"),
            (reqwest::Method::PUT, "/v1/resources/r/document"),
            (reqwest::Method::PATCH, "/v1/resources/r/document"),
        ] {
            let reply = probe(auth(c.request(method.clone(), at(path))).json(&json!({}))).await;
            reply.error_code(403, "forbidden");
        }
    }
    // Nothing was created or deleted; the full token can do both.
    let ids = send(client().get(s.url("/v1/resources")).bearer_auth(TOKEN))
        .await
        .json()["resources"]
        .as_array()
        .expect("resources")
        .len();
    assert_eq!(ids, 1);
    create(
        &client(),
        &s.url(""),
        json!({"id": "new", "url": up.url_for("/doc")}),
        Some(TOKEN),
    )
    .await;
    let reply = send(
        client()
            .delete(s.url("/v1/resources/new"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(reply.status, 204);
    s.stop().await;
}

#[tokio::test]
async fn healthz_and_metrics_stay_open_and_metrics_name_no_resource() {
    let (s, _up) = server_with_tokens().await;
    let c = client();
    for path in ["/healthz", "/healthz?access_token=wrong"] {
        let r = send(c.get(s.url(path))).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json(), json!({"status": "ok"}));
    }
    let r = send(c.get(s.url("/metrics"))).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].starts_with("text/plain"));
    let text = String::from_utf8(r.body.to_vec()).expect("text");
    assert!(text.contains("patchfeed_events_appended_total"));
    // Open, so it must not say what is being watched.
    for secret in [TOKEN, READ_TOKEN, "127.0.0.1", "/doc", "\"r\""] {
        assert!(!text.contains(secret), "/metrics shows {secret:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_log_even_at_trace_level() {
    // Distinctive strings, so that a hit in the log cannot be a coincidence.
    const FULL: &str = "full-TOKEN-q8Zr3Lw0";
    const READ: &str = "read-TOKEN-Kp4xV2nJ";
    const WRONG: &str = "wrong-TOKEN-Ua7cB1sE";
    const UPSTREAM_SECRET: &str = "upstream-SECRET-Hd9fT6yM";
    let up = upstream().await;
    let server = Binary::start_with_env(
        &format!(
            r#"
            allow_private_upstreams = true
            token = "{FULL}"
            read_token = "{READ}"
            [[resource]]
            id = "r"
            url = "{}"
            interval = "200ms"
            headers = {{ Authorization = "Bearer {UPSTREAM_SECRET}" }}
            "#,
            up.url_for("/doc")
        ),
        &[("RUST_LOG", "trace")],
    );
    let c = stream_client();
    let u = |path: &str| server.url(path);
    // Every way of presenting each token, on streams, documents, writes,
    // errors and unknown paths.
    for token in [FULL, READ, WRONG] {
        for path in [
            "/v1/resources",
            "/v1/resources/r",
            "/v1/resources/r/document",
            "/v1/resources/r/history?limit=5",
            "/v1/resources/nope",
            "/v1/nope",
            "/v1/resources/r/document?at=garbage",
        ] {
            probe(c.get(u(path)).bearer_auth(token)).await;
            probe(c.get(u(&with_query(path, "access_token", token)))).await;
            probe(c.get(u(&with_query(path, "X-Sd-Token", token)))).await;
        }
        probe(
            c.post(u("/v1/resources"))
                .bearer_auth(token)
                .json(&json!({"url": up.url_for("/doc")})),
        )
        .await;
        probe(c.delete(u(&format!("/v1/resources/gone?access_token={token}")))).await;
        for events in [
            format!("/v1/resources/r/events?access_token={token}"),
            format!("/v1/resources/r/events?X-Sd-Token={token}"),
        ] {
            let resp = c.get(u(&events)).send().await.expect("stream request");
            if resp.status() == 200 {
                let mut sse = Sse::from_response(resp);
                sse.frame(CLIENT_TIMEOUT).await;
            }
        }
    }
    // Raw, with the token in a malformed request and a too-large head.
    raw(
        server.addr,
        format!("GET /v1/resources?access_token={FULL} HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
            .as_bytes(),
    )
    .await;
    raw(
        server.addr,
        format!(
            "GET /v1/resources?access_token={FULL} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {FULL}\r\nX: {}\r\n\r\n",
            "a".repeat(70 * 1024)
        )
        .as_bytes(),
    )
    .await;
    assert!(
        up.hits() > 0,
        "the upstream was polled (with its secret header)"
    );
    let log = server.stop().await;
    // The log is really at trace level and shows the requests.
    assert!(log.contains("TRACE"), "no trace output");
    assert!(log.contains("/v1/resources/r/events"), "paths are logged");
    for secret in [FULL, READ, WRONG, UPSTREAM_SECRET] {
        let at = log.find(secret);
        assert!(
            at.is_none(),
            "{secret} in the log: …{}…",
            at.map(|i| &log[i.saturating_sub(200)..(i + 100).min(log.len())])
                .unwrap_or_default()
        );
    }
}
