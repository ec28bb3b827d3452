//! `GET …/changes`: long-poll and NDJSON against the real binary and a real
//! loopback upstream. Messages are applied in order by an RFC 6902 library
//! (`json-patch`) and must reproduce the upstream's document exactly.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};

use crate::support::*;

/// One long-poll request; the answer's status and JSON body.
async fn poll(s: &Server, query: &str) -> (u16, Value) {
    let resp = client()
        .get(s.url(&format!("/v1/resources/r/changes?{query}")))
        .timeout(Duration::from_secs(70))
        .send()
        .await
        .expect("long-poll answered");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON body"))
}

/// Applies long-poll or NDJSON messages to `copy`, checking ids increase.
fn apply(copy: &mut Option<Value>, last: &mut Option<String>, messages: &[Value]) {
    for m in messages {
        match m["type"].as_str() {
            Some("snapshot") => *copy = Some(m["data"].clone()),
            Some("patch") => {
                let patch: json_patch::Patch = serde_json::from_value(m["data"].clone()).unwrap();
                json_patch::patch(copy.as_mut().expect("a patch after a snapshot"), &patch)
                    .expect("the patch applies");
            }
            Some("error") => continue,
            other => panic!("unexpected message type {other:?}: {m}"),
        }
        let id = m["id"]
            .as_str()
            .expect("snapshots and patches carry an id")
            .to_owned();
        if let Some(l) = last.as_ref() {
            assert!(id > *l, "ids strictly increase: {id} after {l}");
        }
        *last = Some(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_snapshot_then_waits_for_the_next_change_then_times_out_empty() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], ""));
    s.wait_document("r", &doc(0)).await;

    // No point: the snapshot, at once.
    let (st, a) = poll(&s, "feed=longpoll&timeout=5000").await;
    assert_eq!(st, 200, "{a}");
    let events = a["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{a}");
    assert_eq!(events[0]["type"], "snapshot");
    assert_eq!(events[0]["data"], doc(0));
    assert_eq!(a["last_event_id"], events[0]["id"]);
    let (mut copy, mut last) = (None, None);
    apply(&mut copy, &mut last, events);

    // Nothing follows it yet: the request waits, and the change answers it.
    let since = last.clone().unwrap();
    let waiting = {
        let s_url = s.url(&format!(
            "/v1/resources/r/changes?since={since}&timeout=30000"
        ));
        tokio::spawn(async move {
            let r = client()
                .get(s_url)
                .timeout(Duration::from_secs(70))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a long-poll with nothing after its point waits"
    );
    up.set(doc(1));
    let b = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("answered by the change")
        .unwrap();
    let events = b["events"].as_array().unwrap();
    assert!(
        !events.is_empty() && events.iter().all(|m| m["type"] == "patch"),
        "{b}"
    );
    apply(&mut copy, &mut last, events);
    assert_eq!(copy.as_ref(), Some(&doc(1)));
    assert_eq!(b["last_event_id"].as_str(), last.as_deref());

    // Nothing more: an empty answer after the timeout, with the point's id.
    let since = last.clone().unwrap();
    let (st, c) = poll(&s, &format!("since={since}&timeout=200")).await;
    assert_eq!(st, 200);
    assert_eq!(c, json!({"events": [], "last_event_id": since}));

    // A long history comes in pages of `limit`, each resumable.
    for i in 2..7 {
        up.set(doc(i));
        s.wait_document("r", &doc(i)).await;
    }
    let mut pages = 0;
    loop {
        let since = last.clone().unwrap();
        let (_, p) = poll(&s, &format!("since={since}&limit=2&timeout=100")).await;
        let events = p["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        assert!(events.len() <= 2, "{p}");
        apply(&mut copy, &mut last, events);
        pages += 1;
        assert!(pages < 20, "pages never end");
    }
    assert_eq!(copy.as_ref(), Some(&doc(6)));
    assert!(pages >= 3, "5 changes in pages of 2: {pages}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_resumes_across_a_restart_and_a_foreign_id_gets_a_snapshot() {
    let up = Upstream::start(doc(0)).await;
    let mut s = Server::start(&config(&[("r", &up.url())], ""));
    s.wait_document("r", &doc(0)).await;
    let (_, a) = poll(&s, "timeout=1000").await;
    let (mut copy, mut last) = (None, None);
    apply(&mut copy, &mut last, a["events"].as_array().unwrap());

    s.crash_and_restart();
    up.set(doc(1));
    s.wait_document("r", &doc(1)).await;
    // Header form of the resume point.
    let resp = client()
        .get(s.url("/v1/resources/r/changes?timeout=1000"))
        .header("Last-Event-ID", last.clone().unwrap())
        .send()
        .await
        .unwrap();
    let b: Value = resp.json().await.unwrap();
    let events = b["events"].as_array().unwrap();
    assert!(
        events.iter().all(|m| m["type"] == "patch"),
        "a known id gets patches: {b}"
    );
    apply(&mut copy, &mut last, events);
    assert_eq!(copy.as_ref(), Some(&doc(1)));

    // An id this resource never had: a snapshot, never a patch.
    let (_, c) = poll(&s, "last_event_id=01KAB3Y9D7M6Q1WZ3T5N0XJ8RC&timeout=1000").await;
    let events = c["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{c}");
    assert_eq!(events[0]["type"], "snapshot");
    assert_eq!(events[0]["data"], doc(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_parameters_are_checked_and_errors_are_in_band() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], ""));
    s.wait_document("r", &doc(0)).await;
    for (q, named) in [
        ("feed=sideways", "sideways"),
        ("timeout=60001", "60001"),
        ("timeout=-1", "-1"),
        ("limit=0", "\"0\""),
        ("limit=1001", "1001"),
        ("since=yesterday", "yesterday"),
        ("last_event_id=nope", "nope"),
    ] {
        let (st, body) = poll(&s, q).await;
        assert_eq!(st, 400, "{q}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{q}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(named), "{q}: {msg:?} should name {named:?}");
    }
    let (st, body) = poll(&s, "feed=longpoll").await.clone();
    assert_eq!(st, 200, "{body}");
    let r = client()
        .get(s.url("/v1/resources/nope/changes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // A failure while a long-poll waits answers it, in-band.
    let head = body["last_event_id"].as_str().unwrap().to_owned();
    let waiting = {
        let url = s.url(&format!(
            "/v1/resources/r/changes?since={head}&timeout=30000"
        ));
        tokio::spawn(async move {
            client()
                .get(url)
                .timeout(Duration::from_secs(70))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    up.mode(Mode::Status(503));
    let e = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["events"][0]["type"], "error", "{e}");
    assert_eq!(e["events"][0]["data"]["code"], "upstream_status");
    assert_eq!(e["events"][0]["data"]["status"], 503);
    assert_eq!(e["last_event_id"], head.as_str());
}

/// Reads NDJSON lines until `stop` says enough (bounded by `WAIT`).
struct Lines {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
    ended: bool,
}

impl Lines {
    async fn open(url: &str) -> Lines {
        let resp = client().get(url).send().await.expect("NDJSON stream");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/x-ndjson"
        );
        Lines {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next line (`""` for a heartbeat), or `None` at the end.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8(line[..line.len() - 1].to_vec()).unwrap());
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout(WAIT, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(None) | Ok(Some(Err(_))) => self.ended = true,
                Err(_) => panic!("no NDJSON line within {WAIT:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_snapshot_patches_heartbeats_errors_and_the_end_on_delete() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(
        &[("r", &up.url())],
        "[limits]\nkeep_alive = \"1s\"\n",
    ));
    s.wait_document("r", &doc(0)).await;
    let mut lines = Lines::open(&s.url("/v1/resources/r/changes?feed=continuous")).await;
    let (mut copy, mut last) = (None, None);
    let first: Value = serde_json::from_str(&lines.next().await.unwrap()).unwrap();
    apply(&mut copy, &mut last, &[first]);
    assert_eq!(copy.as_ref(), Some(&doc(0)));

    for i in 1..4 {
        up.set(doc(i));
        while copy.as_ref() != Some(&doc(i)) {
            let line = lines.next().await.expect("the stream stays open");
            if line.is_empty() {
                continue;
            }
            apply(
                &mut copy,
                &mut last,
                &[serde_json::from_str(&line).unwrap()],
            );
        }
    }
    // Idle: an empty line at least every keep_alive.
    let t = std::time::Instant::now();
    assert_eq!(lines.next().await.as_deref(), Some(""));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "heartbeat took {:?}",
        t.elapsed()
    );

    // An upstream failure is a message, and the stream goes on.
    up.mode(Mode::Status(503));
    let err = loop {
        let line = lines.next().await.expect("open");
        if !line.is_empty() {
            break serde_json::from_str::<Value>(&line).unwrap();
        }
    };
    assert_eq!(err["type"], "error");
    assert_eq!(err["data"]["status"], 503);

    // Resume by since on a second stream: only the missed patches.
    let mut again = Lines::open(&s.url(&format!(
        "/v1/resources/r/changes?feed=continuous&since={}",
        last.clone().unwrap()
    )))
    .await;
    up.mode(Mode::Ok);
    up.set(doc(4));
    let line = loop {
        let l = again.next().await.expect("open");
        if !l.is_empty() && !l.contains("\"error\"") {
            break l;
        }
    };
    let m: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(m["type"], "patch", "{m}");

    assert_eq!(s.delete("/v1/resources/r").await, 204);
    let mut n = 0;
    while lines.next().await.is_some() {
        n += 1;
        assert!(n < 1000, "the stream does not end on delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_may_wait_longer_than_the_request_timeout() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(
        &[("r", &up.url())],
        "[limits]\nrequest_timeout = \"1s\"\n",
    ));
    s.wait_document("r", &doc(0)).await;
    let head = s.history_ids("r").await.pop().unwrap();
    // Waits 2.5 s, past the 1 s request timeout: answered empty, not 408.
    let started = std::time::Instant::now();
    let a = poll(&s, &format!("since={head}&timeout=2500")).await;
    assert_eq!(a, (200, json!({"events": [], "last_event_id": head})));
    assert!(started.elapsed() >= Duration::from_millis(2400));
    // And a change after the request timeout still answers the wait.
    let waiting = {
        let url = s.url(&format!(
            "/v1/resources/r/changes?since={head}&timeout=20000"
        ));
        tokio::spawn(async move {
            let r = client()
                .get(url)
                .timeout(Duration::from_secs(40))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    up.set(doc(1));
    let (st, b) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["events"][0]["type"], "patch", "{b}");
}
