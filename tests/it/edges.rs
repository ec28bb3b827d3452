//! Issue 17, findings 2, 6, 7 and 9, against the real binary: credentials
//! in URLs (never forwarded, stored, shown or logged), overflowing ULIDs
//! (400, never wrapped) and the stored ad-hoc flag (a registered resource
//! is never reaped).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use crate::support::*;

const FULL: &str = "full-tok-3f9a1c";
const READ: &str = "read-tok-b27e44";

/// A loopback upstream that records the path, query and `Authorization`
/// header of every request: `/loop` redirects to itself, anything else
/// answers `{"n": 1}`.
#[derive(Clone)]
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn record(State(seen): State<Arc<Mutex<Vec<String>>>>, req: Request) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let target = req.uri().to_string();
    seen.lock().unwrap().push(format!("{target} auth={auth}"));
    if req.uri().path() == "/loop" {
        return (StatusCode::FOUND, [(header::LOCATION, target)]).into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"n": 1}).to_string(),
    )
        .into_response()
}

impl Recorder {
    async fn start() -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(record).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn get_as(s: &Server, token: &str, path: &str) -> (u16, Value) {
    let r = client()
        .get(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_as(s: &Server, token: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(s.url("/v1/resources"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits (bounded) until `pred` holds of `GET path` with the full token.
async fn wait_for(s: &Server, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, v) = get_as(s, FULL, path).await;
        if status == 200 && pred(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stderr(s: &Server) -> String {
    std::fs::read_to_string(&s.stderr).unwrap()
}

// ------------------------------------------------------------ finding 2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_credential_parameters_never_reach_the_upstream_the_store_or_the_log() {
    let up = Recorder::start().await;
    let p = up.port;
    let s = Server::start_with_env(
        &format!(
            "allow_private_upstreams = true\ntoken = \"{FULL}\"\nread_token = \"{READ}\"\n\
             [proxy]\nenabled = true\ninterval = \"100ms\"\n"
        ),
        &[("RUST_LOG", "trace")],
    );
    let up_url = format!("http://127.0.0.1:{p}/doc");
    // Every spelling of the credential, on both forms of the route; the
    // last one also carries a (non-credential) copy inside a URL encoded
    // whole in the path.
    let paths = [
        format!("/streamdata/{up_url}?cur=EUR&access_token={READ}"),
        format!("/streamdata/{up_url}?ACCESS_TOKEN={READ}&cur=EUR"),
        format!("/streamdata/{up_url}?access%5Ftoken={READ}&cur=EUR"),
        format!("/streamdata/{up_url}?cur=EUR&X-Sd-Token={READ}"),
        format!("/streamdata/{up_url}?cur=EUR&x%2Dsd%2Dtoken={READ}"),
        format!("/{up_url}?cur=EUR&access_token={FULL}"),
        format!(
            "/streamdata/http%3A%2F%2F127.0.0.1%3A{p}%2Fdoc%3Fcur%3DEUR%26access_token%3Dpath-secret-91d?X-Sd-Token={READ}"
        ),
    ];
    for path in &paths {
        let mut sse = Sse::try_open(&s.url(path), None)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let f = sse.until_event("data").await;
        assert_eq!(f.data, r#"{"n":1}"#, "{path}");
    }

    // One ad-hoc resource for all of them, its url without the credential.
    for token in [FULL, READ] {
        let (status, list) = get_as(&s, token, "/v1/resources").await;
        assert_eq!(status, 200);
        let list = list["resources"].as_array().unwrap().clone();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["url"], json!(format!("{up_url}?cur=EUR")));
        assert_eq!(list[0]["ad_hoc"], json!(true));
        let text = serde_json::to_string(&list).unwrap();
        for secret in [FULL, READ, "path-secret-91d"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
    }
    // The upstream never saw one.
    let seen = up.seen();
    assert!(!seen.is_empty());
    for line in &seen {
        assert_eq!(line, "/doc?cur=EUR auth=-", "the upstream saw {line}");
    }
    // Nor did the log (at trace level), where request spans show the
    // upstream URL of a streamdata path redacted.
    let log = stderr(&s);
    assert!(log.contains("TRACE"), "trace logging is on");
    for secret in [FULL, READ, "path-secret-91d"] {
        if let Some(line) = log.lines().find(|l| l.contains(secret)) {
            panic!("{secret} in the log: {line}");
        }
    }
}

// ------------------------------------------------------------ finding 9

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_credentials_in_urls_are_redacted_in_every_view_and_log_line() {
    let up = Recorder::start().await;
    let p = up.port;
    let s = Server::start_with_env(
        &format!("allow_private_upstreams = true\ntoken = \"{FULL}\"\nread_token = \"{READ}\"\n"),
        &[("RUST_LOG", "trace")],
    );
    let secrets = ["pw-5e1b77", "key-0c4d21", "pw-a8f310", "tok-77e0b9"];
    let (status, created) = post_as(
        &s,
        FULL,
        json!({"id": "creds", "interval_ms": 100,
               "url": format!("http://alice:pw-5e1b77@127.0.0.1:{p}/doc?api_key=key-0c4d21&cur=EUR")}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let shown = format!("http://alice:***@127.0.0.1:{p}/doc?api_key=***&cur=EUR");
    assert_eq!(created["url"], json!(shown));
    // A redirect loop: its error names the URL it gave up on.
    let (status, v) = post_as(
        &s,
        FULL,
        json!({"id": "loop", "interval_ms": 100,
               "url": format!("http://bob:pw-a8f310@127.0.0.1:{p}/loop?token=tok-77e0b9")}),
    )
    .await;
    assert_eq!(status, 201, "{v}");

    wait_for(&s, "/v1/resources/creds", "a first version", |v| {
        v["last_event_id"].is_string()
    })
    .await;
    let failing = wait_for(&s, "/v1/resources/loop", "the redirect error", |v| {
        v["last_error"]["code"] == json!("redirect")
    })
    .await;
    let message = failing["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("http://bob:***@127.0.0.1:{p}/loop?token=***")),
        "{message}"
    );
    // The stream's error event, as a read-token holder sees it.
    let mut sse = Sse::open(
        &s.url(&format!("/v1/resources/loop/events?access_token={READ}")),
        None,
    )
    .await;
    let err = sse.until_event("error").await;
    assert!(err.data.contains("bob:***@"), "{}", err.data);

    // The streamdata route serves the registered resource by its URL; the
    // request path, credentials and all, reaches the request span.
    let mut sse = Sse::open(
        &s.url(&format!(
            "/streamdata/http://alice:pw-5e1b77@127.0.0.1:{p}/doc?api_key=key-0c4d21&cur=EUR&X-Sd-Token={READ}"
        )),
        None,
    )
    .await;
    assert_eq!(sse.until_event("data").await.data, r#"{"n":1}"#);
    let mut sse = Sse::open(
        &s.url(&format!(
            "/http%3A%2F%2Falice%3Apw-5e1b77%40127.0.0.1%3A{p}%2Fdoc%3Fapi_key%3Dkey-0c4d21%26cur%3DEUR?X-Sd-Token={READ}"
        )),
        None,
    )
    .await;
    assert_eq!(sse.until_event("data").await.data, r#"{"n":1}"#);

    let mut views = vec![err.data.clone()];
    for path in ["/v1/resources", "/v1/resources/creds", "/v1/resources/loop"] {
        let (status, v) = get_as(&s, READ, path).await;
        assert_eq!(status, 200, "{path}: {v}");
        views.push(v.to_string());
    }
    assert!(views[2].contains(&shown), "{}", views[2]);
    for text in views.iter().chain([&created.to_string(), &stderr(&s)]) {
        for secret in secrets {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("{secret} shown: {line}");
            }
        }
    }
    assert!(stderr(&s).contains("poll failed"), "the failure was logged");
    // Polling used the real URL, credentials and all.
    let seen = up.seen();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("/doc?api_key=key-0c4d21&cur=EUR auth=Basic ")),
        "{seen:?}"
    );
}

// ------------------------------------------------------------ finding 6

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_overflowing_ulids_are_400_naming_the_value() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], "[proxy]\nenabled = false"));
    s.wait_document("r", &doc(0)).await;
    let c = client();
    let over = "80000000000000000000000000";
    let over_z = "8ZZZZZZZZZZZZZZZZZZZZZZZZZ";
    let bad_request = |status: u16, v: &Value, value: &str, what: &str| {
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["error"]["code"], json!("bad_request"), "{what}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(value), "{what}: {m}");
    };
    for (q, value) in [
        (format!("document?at={over}"), over),
        (format!("document?at={over_z}"), over_z),
        (format!("history?after={over_z}"), over_z),
        (format!("history?before={over}"), over),
        (format!("events?since={over_z}"), over_z),
        (format!("events?last_event_id={over_z}"), over_z),
        (format!("events?lastEventId={over}"), over),
    ] {
        let (status, v) = s.get(&format!("/v1/resources/r/{q}")).await;
        bad_request(status, &v, value, &q);
    }
    let url = up.url();
    for path in [
        "/v1/resources/r/events".to_owned(),
        format!("/streamdata/{url}"),
    ] {
        let r = c
            .get(s.url(&path))
            .header("Last-Event-ID", over_z)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        bad_request(status, &v, over_z, &path);
    }
    // The largest ULID is well-formed: a point after every event, "now".
    let (status, v) = s
        .get("/v1/resources/r/document?at=7ZZZZZZZZZZZZZZZZZZZZZZZZZ")
        .await;
    assert_eq!((status, v), (200, doc(0)));
}

// ------------------------------------------------------------ finding 7

/// The id the proxy derives for `url`: `sd-` and the FNV-1a hash of the
/// parsed URL (docs/STREAMDATA.md), computed here independently.
fn derived_id(url: &str) -> String {
    let normal = url::Url::parse(url).unwrap().to_string();
    let h = normal.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("sd-{h:016x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_a_resource_registered_under_the_proxys_id_is_never_reaped() {
    let up = Upstream::start(doc(0)).await;
    let from_config = derived_id(&up.url());
    let api_url = format!("{}?via=api", up.url());
    let from_api = derived_id(&api_url);
    // The proxy is off, idles out after 300 ms and reaps every 100 ms.
    let mut s = Server::start(&format!(
        "allow_private_upstreams = true\n\
         [proxy]\nenabled = false\nidle = \"300ms\"\n\
         [[resource]]\nid = \"{from_config}\"\nurl = \"{}\"\ninterval = \"100ms\"\nretain = \"forever\"\n",
        up.url()
    ));
    let (status, v) = s
        .post(
            "/v1/resources",
            json!({"id": from_api, "url": api_url, "interval_ms": 100, "retain": "forever"}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    for round in 0..2 {
        for id in [&from_config, &from_api] {
            let v = s
                .wait_resource(id, "a first version", |v| v["last_event_id"].is_string())
                .await;
            assert_eq!(v["ad_hoc"], json!(false), "round {round}: {v}");
        }
        let (_, metrics) = s.get("/metrics").await;
        let metrics = metrics.as_str().unwrap().to_owned();
        assert!(
            metrics.lines().any(|l| l == "patchfeed_proxy_resources 0"),
            "round {round}: {metrics}"
        );
        // Five times proxy.idle: a reaper that took them would have.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for id in [&from_config, &from_api] {
            let (status, v) = s.get(&format!("/v1/resources/{id}")).await;
            assert_eq!(status, 200, "round {round}: {id} was removed: {v}");
        }
        // Across a restart, which is when stored resources are adopted.
        s.crash_and_restart();
    }
}

// ------------------------------------- found on the way: a panicking path

/// The streamdata route sliced the path as text at fixed byte offsets (8,
/// to look for an encoded URL; 5 and 6, to repair `http:/`): raw UTF-8 in
/// the path with a character across one of them panicked the request's
/// task, and the client got no answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_non_ascii_streamdata_paths_get_an_answer_not_a_panic() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start("");
    let addr = s.base.trim_start_matches("http://").to_owned();
    for (path, answer) in [
        // Not a URL: 400.
        ("/streamdata/a\u{e9}\u{e9}\u{e9}\u{e9}x", "HTTP/1.1 400"),
        // `http://aéééx`, a URL (an IDN host) that no resource polls: 404.
        ("/http:a\u{e9}\u{e9}\u{e9}x", "HTTP/1.1 404"),
    ] {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, c.read_to_end(&mut out))
            .await
            .expect("an answer in time")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(answer),
            "{path}: {text:?}; log: {}",
            stderr(&s)
        );
        assert!(text.contains("{\"error\":{\"code\":"), "{path}: {text}");
    }
    let log = stderr(&s);
    assert!(!log.contains("panicked"), "{log}");
}
