//! `?path=<JSON Pointer>` against the real binary and a real loopback
//! upstream, on every transport (SSE, long-poll, NDJSON, WebSocket) and on
//! `document` and `history`: the snapshot is the value at the pointer,
//! patches are relative to it and applied by an RFC 6902 library
//! (`json-patch`) reproduce it, events that do not touch it are not sent,
//! an ancestor replaced arrives as `replace` at `""`, and any id — also
//! one whose event did not touch the subtree — resumes across a restart.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// The upstream's versions. Relative to `/user`: 1 does not touch it, 2
/// changes a field below it, 3 replaces it with a string (for
/// `/user/name`, an ancestor replaced: the value disappears), 4 makes it
/// an object again, 5 touches only `other`.
fn versions() -> Vec<Value> {
    vec![
        json!({"user": {"name": "Ada", "tags": ["x"]}, "other": 0, "a/b": {"~": 1}}),
        json!({"user": {"name": "Ada", "tags": ["x"]}, "other": 1, "a/b": {"~": 1}}),
        json!({"user": {"name": "Bo", "tags": ["x"]}, "other": 1, "a/b": {"~": 2}}),
        json!({"user": "gone", "other": 2, "a/b": {"~": 2}}),
        json!({"user": {"name": "Cy"}, "other": 2, "a/b": {"~": 2}}),
        json!({"user": {"name": "Cy"}, "other": 3, "a/b": {"~": 2}}),
    ]
}

/// Serves version 0, then each of `upto` in turn (one event each); the
/// event ids, oldest first.
async fn advance(s: &Server, up: &Upstream, range: std::ops::Range<usize>) -> Vec<String> {
    for v in &versions()[range] {
        up.set(v.clone());
        s.wait_document("r", v).await;
    }
    s.history_ids("r").await
}

async fn start() -> (Upstream, Server, Vec<String>) {
    let up = Upstream::start(versions()[0].clone()).await;
    let s = Server::start(&config(&[("r", &up.url())], ""));
    s.wait_document("r", &versions()[0]).await;
    let ids = s.history_ids("r").await;
    assert_eq!(ids.len(), 1);
    (up, s, ids)
}

/// The value at `path` in version `i` (`null` where absent).
fn at(i: usize, path: &str) -> Value {
    versions()[i].pointer(path).cloned().unwrap_or(Value::Null)
}

/// A copy of the subtree, kept by applying messages (JSON shape).
#[derive(Default)]
struct Copy {
    value: Option<Value>,
    last: Option<String>,
    /// (type, id, data) of every message applied.
    seen: Vec<(String, String, Value)>,
}

impl Copy {
    fn apply(&mut self, m: &Value) {
        let kind = m["type"].as_str().expect("a type").to_owned();
        if kind == "error" {
            return;
        }
        match kind.as_str() {
            "snapshot" => self.value = Some(m["data"].clone()),
            "patch" => {
                let p: json_patch::Patch = serde_json::from_value(m["data"].clone()).unwrap();
                json_patch::patch(self.value.as_mut().expect("a snapshot first"), &p)
                    .expect("the relative patch applies to the subtree");
            }
            other => panic!("unexpected message type {other}"),
        }
        let id = m["id"].as_str().expect("an id").to_owned();
        if let Some(l) = &self.last {
            assert!(id > *l, "ids strictly increase");
        }
        self.last = Some(id.clone());
        self.seen.push((kind, id, m["data"].clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_subtree_sends_only_its_changes_relative_and_resumes_by_any_id_across_a_restart() {
    let (up, mut s, _) = start().await;
    let url = s.url("/v1/resources/r/events?path=/user");
    let mut sse = Sse::open(&url, None).await;
    let snap = sse.frame(WAIT).await;
    assert_eq!(snap.event, "snapshot");
    assert_eq!(
        serde_json::from_str::<Value>(&snap.data).unwrap(),
        at(0, "/user")
    );
    let ids = advance(&s, &up, 1..3).await;
    // Version 1 did not touch /user: the next frame is version 2's, with
    // the resource's own id and a path relative to /user.
    let f = sse.frame(WAIT).await;
    assert_eq!(f.event, "patch");
    assert_eq!(f.id.as_deref(), Some(ids[2].as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&f.data).unwrap(),
        json!([{"op": "replace", "path": "/name", "value": "Bo"}])
    );
    assert_eq!(sse.doc.as_ref(), Some(&at(2, "/user")));
    drop(sse);

    // Resume from version 1's id — an event this subtree never saw — after
    // a crash: version 2's change, then the ancestor replaced.
    s.crash_and_restart();
    let ids = advance(&s, &up, 3..4).await;
    let mut sse = Sse::open(
        &s.url("/v1/resources/r/events?path=/user/name"),
        Some(&ids[1]),
    )
    .await;
    // The client holds the value as of its id.
    sse.doc = Some(at(1, "/user/name"));
    let f = sse.frame(WAIT).await;
    assert_eq!(f.id.as_deref(), Some(ids[2].as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&f.data).unwrap(),
        json!([{"op": "replace", "path": "", "value": "Bo"}])
    );
    let f = sse.frame(WAIT).await;
    assert_eq!(f.id.as_deref(), Some(ids[3].as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&f.data).unwrap(),
        json!([{"op": "replace", "path": "", "value": null}]),
        "an ancestor replaced: the value at the pointer is gone"
    );
    // It appears again; then a change elsewhere sends nothing.
    let ids = advance(&s, &up, 4..6).await;
    let f = sse.frame(WAIT).await;
    assert_eq!(f.id.as_deref(), Some(ids[4].as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&f.data).unwrap(),
        json!([{"op": "replace", "path": "", "value": "Cy"}])
    );
    assert!(
        sse.next(Duration::from_millis(600)).await.is_none(),
        "version 5 does not touch /user/name: {:?}",
        sse.names()
    );
    // An escaped pointer, by `since`: only the event that changed it.
    let mut sse = Sse::open(
        &s.url(&format!(
            "/v1/resources/r/events?path=/a~1b/~0&since={}",
            ids[0]
        )),
        None,
    )
    .await;
    sse.doc = Some(at(0, "/a~1b/~0"));
    let f = sse.frame(WAIT).await;
    assert_eq!(f.id.as_deref(), Some(ids[2].as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&f.data).unwrap(),
        json!([{"op": "replace", "path": "", "value": 2}])
    );
    assert_eq!(sse.doc, Some(json!(2)));
    assert!(sse.next(Duration::from_millis(300)).await.is_none());
}

/// One long-poll answer.
async fn long_poll(s: &Server, query: &str) -> Value {
    let resp = client()
        .get(s.url(&format!("/v1/resources/r/changes?{query}")))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("long-poll answered");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_and_ndjson_subtrees_skip_untouching_events_and_resume_across_a_restart() {
    let (up, mut s, ids0) = start().await;
    let mut copy = Copy::default();
    let a = long_poll(&s, "path=/user&timeout=100").await;
    for m in a["events"].as_array().unwrap() {
        copy.apply(m);
    }
    assert_eq!(copy.value, Some(at(0, "/user")));
    assert_eq!(a["last_event_id"].as_str(), Some(ids0[0].as_str()));

    // Version 1 does not touch /user: a waiting poll is not answered by it,
    // and its empty answer moves past it.
    let since = copy.last.clone().unwrap();
    let ids = advance(&s, &up, 1..2).await;
    let b = long_poll(&s, &format!("path=/user&since={since}&timeout=300")).await;
    assert_eq!(b, json!({"events": [], "last_event_id": ids[1]}));

    s.crash_and_restart();
    let ids = advance(&s, &up, 2..4).await;
    let c = long_poll(&s, &format!("path=/user&since={}&timeout=1000", ids[1])).await;
    for m in c["events"].as_array().unwrap() {
        copy.apply(m);
    }
    let kinds: Vec<&str> = copy.seen.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(kinds, [&ids[0], &ids[2], &ids[3]]);
    assert_eq!(
        copy.seen[2].2,
        json!([{"op": "replace", "path": "", "value": "gone"}])
    );
    assert_eq!(copy.value, Some(at(3, "/user")));
    assert_eq!(c["last_event_id"].as_str(), Some(ids[3].as_str()));

    // NDJSON from the first id (Last-Event-ID header), across the same
    // history: the same messages.
    let resp = client()
        .get(s.url("/v1/resources/r/changes?feed=continuous&path=/user"))
        .header("Last-Event-ID", &ids[0])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut nd = Copy {
        value: Some(at(0, "/user")),
        last: Some(ids[0].clone()),
        seen: Vec::new(),
    };
    let ids = advance(&s, &up, 4..6).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while nd.last.as_deref() != Some(ids[4].as_str()) {
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if line.len() > 1 {
                nd.apply(&serde_json::from_slice(&line).unwrap());
            }
        }
        if nd.last.as_deref() == Some(ids[4].as_str()) {
            break;
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("NDJSON within WAIT")
            .expect("the stream stays open")
            .unwrap();
        buf.extend_from_slice(&chunk);
    }
    let got: Vec<&str> = nd.seen.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(
        got,
        [&ids[2], &ids[3], &ids[4]],
        "versions 1 and 5 do not touch /user"
    );
    assert_eq!(nd.value, Some(at(5, "/user")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_subtree_snapshot_then_relative_patches_only() {
    let (up, s, _) = start().await;
    let url = s
        .url("/v1/resources/r/ws?path=/user/tags")
        .replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut copy = Copy::default();
    let mut next = async || loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within WAIT");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str::<Value>(&t).unwrap(),
            Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    };
    copy.apply(&next().await);
    assert_eq!(copy.value, Some(json!(["x"])));
    let ids = advance(&s, &up, 1..5).await;
    // 1 and 2 leave /user/tags alone; 3 removes it (an ancestor replaced);
    // 4 leaves it absent.
    let m = next().await;
    copy.apply(&m);
    assert_eq!(m["id"].as_str(), Some(ids[3].as_str()));
    assert_eq!(
        m["data"],
        json!([{"op": "replace", "path": "", "value": null}])
    );
    assert_eq!(copy.value, Some(Value::Null));
    let up2 = json!({"user": {"name": "Cy", "tags": ["y", "x"]}, "other": 9});
    up.set(up2.clone());
    s.wait_document("r", &up2).await;
    let m = next().await;
    copy.apply(&m);
    assert_eq!(copy.value, Some(json!(["y", "x"])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_and_history_with_a_path_and_bad_pointers() {
    let (up, s, _) = start().await;
    let ids = advance(&s, &up, 1..4).await;

    let (st, v) = s.get("/v1/resources/r/document?path=/user").await;
    assert_eq!((st, v), (200, json!("gone")));
    let (st, v) = s
        .get(&format!(
            "/v1/resources/r/document?path=/user/name&at={}",
            ids[2]
        ))
        .await;
    assert_eq!((st, v), (200, json!("Bo")));
    let (st, v) = s.get("/v1/resources/r/document?path=/a~1b/~0").await;
    assert_eq!((st, v), (200, json!(2)));
    // `path=` (empty) is the root: the whole document.
    let (st, v) = s.get("/v1/resources/r/document?path=").await;
    assert_eq!((st, v), (200, versions()[3].clone()));
    let r = send(client().get(s.url("/v1/resources/r/document?path=/user/name"))).await;
    r.error_code(404, "path_not_found");
    let r = send(client().get(s.url("/v1/resources/r/document?path=/nope/0"))).await;
    r.error_code(404, "path_not_found");

    for bad in ["user", "/a~2", "/a~"] {
        for route in ["document", "history", "events", "changes", "ws"] {
            // A WebSocket handshake for `ws`, so the upgrade itself is valid.
            let r = send(
                client()
                    .get(s.url(&format!("/v1/resources/r/{route}?path={bad}")))
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-version", "13")
                    .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            )
            .await;
            r.error_code(400, "invalid_path");
        }
    }

    // History of /user: versions 2 and 3 only, relative to it.
    let (st, h) = s.get("/v1/resources/r/history?path=/user").await;
    assert_eq!(st, 200, "{h}");
    let events = h["events"].as_array().unwrap();
    let got: Vec<(&str, &Value)> = events
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), &e["patch"]))
        .collect();
    assert_eq!(
        got,
        [
            (
                ids[0].as_str(),
                &json!([{"op": "replace", "path": "", "value": at(0, "/user")}])
            ),
            (
                ids[2].as_str(),
                &json!([{"op": "replace", "path": "/name", "value": "Bo"}])
            ),
            (
                ids[3].as_str(),
                &json!([{"op": "replace", "path": "", "value": "gone"}])
            ),
        ]
    );
    // Paged from a point: the same events after it.
    let (_, h) = s
        .get(&format!(
            "/v1/resources/r/history?path=/user&after={}&limit=1",
            ids[0]
        ))
        .await;
    assert_eq!(h["events"], json!([]), "version 1 does not touch /user");
    assert_eq!(h["next_after"].as_str(), Some(ids[1].as_str()));
    let (_, h) = s
        .get(&format!(
            "/v1/resources/r/history?path=/user&after={}",
            ids[1]
        ))
        .await;
    assert_eq!(h["events"].as_array().unwrap().len(), 2);
    assert_eq!(h["events"][0]["id"].as_str(), Some(ids[2].as_str()));
}
