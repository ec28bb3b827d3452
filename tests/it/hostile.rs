//! Bad client input, the connection cap, clients that never read, the
//! upstream guard (SSRF) and auth. Every answer must have the contract's
//! JSON error shape; the server must never panic, hang or lose anything.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Sends raw bytes (no client-side URL normalisation) and returns the
/// status and the JSON body.
async fn raw(s: &Server, request: &[u8]) -> (u16, Value) {
    let addr = s.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("the server must answer")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())),
    )
}

fn get_req(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
}

fn assert_error_shape(v: &Value, what: &str) {
    assert!(
        v["error"]["code"].is_string() && v["error"]["message"].is_string(),
        "{what}: not the JSON error shape: {v}"
    );
}

fn no_panics(s: &Server) {
    let log = std::fs::read_to_string(&s.stderr).unwrap();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_points_ids_and_query_values_are_400s_naming_them() {
    let up = Upstream::start(json!({"a": 1})).await;
    let s = Server::start(&config(&[("r", &up.url())], ""));
    s.wait_document("r", &json!({"a": 1})).await;
    for (path, bad) in [
        (
            "/v1/resources/r/document?at=2026-13-45T00:00:00Z",
            "2026-13-45",
        ),
        ("/v1/resources/r/document?at=yesterday", "yesterday"),
        ("/v1/resources/r/document?at=-5", "-5"),
        ("/v1/resources/r/events?since=notatime", "notatime"),
        ("/v1/resources/r/events?last_event_id=garbage", "garbage"),
        (
            "/v1/resources/r/events?lastEventId=01ARZ3NDEKTSV4RRFFQ69G5FA",
            "01ARZ3NDEKTSV4RRFFQ69G5FA",
        ),
        ("/v1/resources/r/history?after=tomorrow", "tomorrow"),
        ("/v1/resources/r/history?limit=abc", "abc"),
    ] {
        let (status, v) = raw(&s, &get_req(path)).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_error_shape(&v, path);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(bad),
            "{path}: message must name {bad:?}: {v}"
        );
    }
    let req = b"GET /v1/resources/r/events HTTP/1.1\r\nHost: t\r\nLast-Event-ID: not-an-id\r\nConnection: close\r\n\r\n";
    let (status, v) = raw(&s, req).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not-an-id"),
        "{v}"
    );
    no_panics(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_unknown_paths_wrong_methods_and_bad_bodies() {
    let s = Server::start(&config(&[], "[limits]\nmax_request_body_bytes = 65536\n"));
    for path in [
        "/v1/resources/..",
        "/v1/resources/%2e%2e",
        "/v1/resources/a%2Fb",
        "/v1/resources/a%00b",
        "/v1/resources/a%0Ab/events",
        "/v1/resources/%C3%A9t%C3%A9",
        &format!("/v1/resources/{}", "x".repeat(129)),
    ] {
        let (status, v) = raw(&s, &get_req(path)).await;
        assert!(status == 400 || status == 404, "{path}: {status} {v}");
        assert_error_shape(&v, path);
    }
    for (req, want) in [
        (get_req("/nope"), 404),
        (get_req("/v1/resources/x/y/z"), 404),
        (b"PUT /v1/resources HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(), 405),
        (b"DELETE /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 405),
    ] {
        let (status, v) = raw(&s, &req).await;
        assert_eq!(status, want, "{}: {v}", String::from_utf8_lossy(&req));
        assert_error_shape(&v, "routing");
    }
    let c = client();
    for (body, want) in [
        ("{not json", 400),
        ("[]", 422),
        (r#"{"url": 5}"#, 422),
        (r#"{"url": "http://x.example/", "interval_ms": 10}"#, 422),
        (r#"{"id": "../etc", "url": "http://x.example/"}"#, 422),
        (r#"{"url": "http://x.example/", "surprise": true}"#, 422),
    ] {
        let r = c
            .post(s.url("/v1/resources"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, want, "{body}: {v}");
        assert_error_shape(&v, body);
    }
    // An oversized body: 413 with the JSON shape.
    let big = format!(
        r#"{{"url": "http://x.example/", "headers": {{"X": "{}"}}}}"#,
        "a".repeat(100_000)
    );
    let r = c
        .post(s.url("/v1/resources"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_error_shape(&r.json().await.unwrap(), "413");
    // Nothing was created by any of it.
    let (_, list) = s.get("/v1/resources").await;
    assert_eq!(list["resources"], json!([]));
    // An oversized request head is refused with a JSON 431 and the server
    // keeps serving.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(400_000)
    );
    let (status, v) = raw(&s, huge.as_bytes()).await;
    assert_eq!(status, 431, "{v}");
    assert_eq!(v["error"]["code"], "headers_too_large");
    assert_eq!(s.get("/healthz").await.0, 200);
    no_panics(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_a_json_503_and_the_rest_are_served() {
    let up = Upstream::start(json!({"a": 1})).await;
    let s = Server::start(&config(
        &[("r", &up.url())],
        "[limits]\nmax_connections = 40\n",
    ));
    s.wait_document("r", &json!({"a": 1})).await;
    // Fill the cap with open streams.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(Sse::open(&s.url("/v1/resources/r/events"), None).await);
    }
    // 400 more connections: each gets the JSON 503.
    let mut refused = 0;
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let addr = s.base.trim_start_matches("http://").to_owned();
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(&addr).await.ok()?;
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                    .await
                    .ok()?;
                let mut out = Vec::new();
                tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
                    .await
                    .ok()?
                    .ok()?;
                Some(String::from_utf8_lossy(&out).into_owned())
            })
        })
        .collect();
    for t in tasks {
        if let Some(text) = t.await.unwrap() {
            if text.starts_with("HTTP/1.1 503") && text.contains("too_many_connections") {
                refused += 1;
            }
        }
    }
    assert!(refused >= 390, "only {refused} of 400 got the JSON 503");
    // The held streams still work.
    up.set(json!({"a": 2}));
    for sse in held.iter_mut().take(5) {
        sse.until_doc(&json!({"a": 2})).await;
    }
    drop(held);
    // And the server recovers once they go.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = client().get(s.url("/healthz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, m) = raw(&s, &get_req("/metrics")).await;
    let text = m.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("patchfeed_http_connections_refused_total"),
        "{text}"
    );
    no_panics(&s);
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_do_not_hold_back_anyone_or_grow_memory() {
    // ~200 KB documents changing every poll, 20 clients that never read.
    let big = |i: usize| json!({ "i": i, "blob": (0..2000).map(|k| format!("{k}-{i}-{}", "x".repeat(80))).collect::<Vec<_>>() });
    let up = Upstream::start(big(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], "[limits]\nlive_buffer = 8\n"));
    s.wait_document("r", &big(0)).await;
    let stuck: Vec<reqwest::Response> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(
                client()
                    .get(s.url("/v1/resources/r/events"))
                    .send()
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let mut reader = Sse::open(&s.url("/v1/resources/r/events"), None).await;
    reader.until_doc(&big(0)).await;
    let pid = s.pid();
    let rss_start = rss_kb(pid);
    let mut rss_max = rss_start;
    for i in 1..=40 {
        up.set(big(i));
        // The reading client keeps up with every change.
        reader.until_doc(&big(i)).await;
        rss_max = rss_max.max(rss_kb(pid));
    }
    // 20 stuck clients × 40 changes × ~200 KB would be ~160 MB if buffered
    // per client; socket buffers and the shared live buffer bound it.
    assert!(
        rss_max < rss_start + 120_000,
        "RSS grew from {rss_start} kB to {rss_max} kB"
    );
    // Nothing lost: the log has every version, in a chain.
    assert_eq!(s.history_ids("r").await.len(), 41);
    drop(stuck);
    no_panics(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_private_upstreams_without_connecting() {
    let up = Upstream::start(json!({"secret": true})).await;
    let port = up.addr.port();
    let s = Server::start(""); // allow_private_upstreams = false
    for url in [
        format!("http://127.0.0.1:{port}/doc"),
        format!("http://[::1]:{port}/doc"),
        "http://10.1.2.3/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://0.0.0.0/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{port}/doc"),
        "http://[fd00::1]/".to_owned(),
        "ftp://example.com/x".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let (status, v) = s.post("/v1/resources", json!({"url": url})).await;
        assert_eq!(status, 422, "{url}: {v}");
        assert_error_shape(&v, &url);
    }
    // A name that resolves to loopback passes creation, then every poll is
    // refused after DNS resolution, with code `blocked`.
    let (status, v) = s
        .post(
            "/v1/resources",
            json!({"id": "lh", "url": format!("http://localhost:{port}/doc"), "interval_ms": 100}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let mut sse = Sse::open(&s.url("/v1/resources/lh/events"), None).await;
    let e = sse.until_event("error").await;
    let data: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(data["code"], "blocked", "{data}");
    s.wait_resource("lh", "last_error", |v| v["last_error"]["code"] == "blocked")
        .await;
    assert_eq!(up.requests(), 0, "the guard must refuse before connecting");

    // allow_private_upstreams = true lifts it.
    let open = Server::start(&config(&[("ok", &up.url())], ""));
    open.wait_document("ok", &json!({"secret": true})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redirect_hop_passes_the_guard() {
    use patchfeed::poll::fetch::{FetchConfig, FetchError, Fetcher, Validators};
    let up = Upstream::start(json!({"a": 1})).await;
    // A first hop that is allowed, redirecting to a host that is not.
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raddr = redirector.local_addr().unwrap();
    let target = format!("http://localhost:{}/doc", up.addr.port());
    let app = axum::Router::new().route(
        "/go",
        axum::routing::get(move || {
            let target = target.clone();
            async move {
                (
                    axum::http::StatusCode::FOUND,
                    [(axum::http::header::LOCATION, target)],
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(redirector, app).await });
    let fetcher = Fetcher::new(FetchConfig {
        allow_private: true,
        allowed_hosts: Some(vec!["127.0.0.1".into()]),
        timeout: Duration::from_secs(5),
        ..FetchConfig::default()
    })
    .unwrap();
    let err = fetcher
        .fetch(
            &format!("http://{raddr}/go"),
            &Default::default(),
            &Validators::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Redirect(_)), "{err:?}");
    assert!(err.to_string().contains("allowed_hosts"), "{err}");
    assert_eq!(up.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_gate_v1_read_tokens_only_read_and_tokens_are_never_logged() {
    const FULL: &str = "full-7f3a9c";
    const READ: &str = "read-51b2e8";
    let up = Upstream::start(json!({"a": 1})).await;
    let s = Server::start_with_env(
        &config(
            &[("r", &up.url())],
            &format!("token = \"{FULL}\"\nread_token = \"{READ}\"\n"),
        ),
        &[("RUST_LOG", "trace")],
    );
    let c = client();
    let url = s.url("/v1/resources/r");
    // No token, a wrong one: 401 with the JSON shape.
    for req in [
        c.get(&url),
        c.get(&url).bearer_auth("nope"),
        c.get(format!("{url}?access_token=nope")),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_error_shape(&r.json().await.unwrap(), "401");
    }
    // /healthz stays open.
    assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status(), 200);
    // Full token: header or query.
    assert_eq!(
        c.get(&url).bearer_auth(FULL).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(format!("{url}?access_token={FULL}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Read token: reads and subscribes, never writes.
    assert_eq!(
        c.get(format!("{url}/document"))
            .bearer_auth(READ)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{url}/history?access_token={READ}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut sse = Sse::open(&format!("{url}/events?access_token={READ}"), None).await;
    sse.until_doc(&json!({"a": 1})).await;
    let r = c
        .post(s.url("/v1/resources"))
        .bearer_auth(READ)
        .json(&json!({"url": "http://x.example/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_error_shape(&r.json().await.unwrap(), "403");
    assert_eq!(
        c.delete(&url)
            .bearer_auth(READ)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        c.delete(&url)
            .bearer_auth(FULL)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    // Nothing in the logs (at trace level) carries a token.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(&s.stderr).unwrap();
    assert!(
        log.len() > 1000,
        "expected trace logs, got {} bytes",
        log.len()
    );
    assert!(
        !log.contains(FULL) && !log.contains(READ),
        "a token leaked into the logs"
    );
}
