//! Issue 18, parts 1 and 2: poll now (`POST …/poll`) and push resources
//! (`PUT`/`PATCH …/document`, `If-Match`), against the real binary, a real
//! loopback upstream and a real SSE client.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const JSON_PATCH: &str = "application/json-patch+json";
const MERGE_PATCH: &str = "application/merge-patch+json";

/// A config with one polled resource `r` on `url`, polled every `interval`.
fn polled(url: &str, interval: &str, extra: &str) -> String {
    format!(
        "allow_private_upstreams = true\n{extra}\n[[resource]]\nid = \"r\"\nurl = \"{url}\"\ninterval = \"{interval}\"\n"
    )
}

/// A config with one push resource `p`.
fn pushed(extra: &str) -> String {
    format!("{extra}\n[[resource]]\nid = \"p\"\npush = true\n")
}

fn doc_path(id: &str) -> String {
    format!("/v1/resources/{id}/document")
}

async fn put(s: &Server, id: &str, body: &Value, if_match: Option<&str>) -> Reply {
    let mut req = client().put(s.url(&doc_path(id))).json(body);
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    send(req).await
}

async fn patch(s: &Server, id: &str, kind: &str, body: &Value, if_match: Option<&str>) -> Reply {
    let mut req = client()
        .patch(s.url(&doc_path(id)))
        .header("content-type", kind)
        .body(body.to_string());
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    send(req).await
}

async fn poll_now(s: &Server, id: &str) -> Reply {
    send(client().post(s.url(&format!("/v1/resources/{id}/poll")))).await
}

/// `event_id` and `changed` of a 200 push reply.
fn pushed_id(r: &Reply) -> (String, bool) {
    assert_eq!(r.status, 200, "{}", shown(&r.body));
    let v = r.json();
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(2),
        "exactly event_id and changed: {v}"
    );
    (
        v["event_id"].as_str().expect("event_id").to_owned(),
        v["changed"].as_bool().expect("changed"),
    )
}

fn quoted(id: &str) -> String {
    format!("\"{id}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_poll_now_fetches_at_once_and_coalesces_triggers() {
    let up = Upstream::start(doc(0)).await;
    // An hour between polls: only a trigger can fetch again in this test.
    let s = Server::start(&polled(
        &up.url(),
        "1h",
        "[limits]\nupstream_timeout = \"2s\"",
    ));
    s.wait_document("r", &doc(0)).await;
    let mut sse = Sse::open(&s.url("/v1/resources/r/events"), None).await;
    sse.until_doc(&doc(0)).await;
    let before = up.requests();

    up.set(doc(1));
    let r = poll_now(&s, "r").await;
    assert_eq!(r.status, 202, "{}", shown(&r.body));
    assert_eq!(r.json(), json!({"id": "r", "poll": "queued"}));
    sse.until_doc(&doc(1)).await;

    // Triggers while a poll is in flight (an upstream that hangs until the
    // 2 s timeout) coalesce into one queued poll, however many arrive.
    let after_one = up.requests();
    assert_eq!(after_one, before + 1, "one trigger, one poll");
    up.script([Mode::Hang]);
    up.set(doc(2));
    assert_eq!(poll_now(&s, "r").await.status, 202);
    eventually(WAIT, "the hanging poll to start", || async {
        (up.requests() == after_one + 1).then_some(())
    })
    .await;
    let burst: Vec<_> = (0..20).map(|_| poll_now(&s, "r")).collect();
    for r in futures_util::future::join_all(burst).await {
        assert_eq!(r.status, 202);
    }
    sse.until_doc(&doc(2)).await;
    // Time for any further poll (spaced 100 ms apart) to show.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        up.requests(),
        after_one + 2,
        "the hanging poll and one queued, for 21 triggers"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_poll_now_resets_the_back_off() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&polled(&up.url(), "100ms", ""));
    s.wait_document("r", &doc(0)).await;
    up.mode(Mode::Status(500));
    // Failures double the wait: 100 ms, 200, 400, … up to 3.2 s and more
    // (jittered into its upper half). Wait for a gap of over 1.5 s.
    eventually(Duration::from_secs(20), "the back-off to grow", || async {
        let t = up.times();
        let n = t.len();
        (n >= 2 && t[n - 1] - t[n - 2] > Duration::from_millis(1500)).then_some(())
    })
    .await;
    // Right after a failed poll: the next one is seconds away.
    let n = up.requests();
    let r = poll_now(&s, "r").await;
    assert_eq!(r.status, 202);
    // The triggered poll (fails too), then, with the back-off reset, the
    // first step (50–100 ms) — not the grown one.
    eventually(
        Duration::from_secs(1),
        "two polls after a trigger",
        || async { (up.requests() >= n + 2).then_some(()) },
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_push_resource_create_put_patch_and_stream() {
    let s = Server::start("");
    // Creation: push and no url; either both or neither is 422.
    let (status, v) = s
        .post("/v1/resources", json!({"id": "p", "push": true}))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!((&v["push"], &v["url"]), (&json!(true), &Value::Null), "{v}");
    for (body, field) in [
        (
            json!({"id": "q", "push": true, "url": "http://127.0.0.1:9/"}),
            "push:",
        ),
        (json!({"id": "q"}), "url:"),
        (json!({"id": "q", "push": false}), "url:"),
    ] {
        let r = send(client().post(s.url("/v1/resources")).json(&body)).await;
        let m = r.error_code(422, "invalid_resource");
        assert!(m.starts_with(field), "{body}: {m}");
    }
    // Nothing yet; a subscriber waits for the first version.
    let mut sse = Sse::open(&s.url("/v1/resources/p/events"), None).await;

    let v1 = json!({"a": 1, "list": [1, 2, 3], "o": {"k": "v"}});
    let (id1, changed) = pushed_id(&put(&s, "p", &v1, None).await);
    assert!(changed);
    sse.until_doc(&v1).await;
    assert_eq!(s.get(&doc_path("p")).await, (200, v1.clone()));
    // The same document again: no event, the current id.
    let r = put(&s, "p", &v1, None).await;
    assert_eq!(r.headers["etag"], quoted(&id1));
    assert_eq!(pushed_id(&r), (id1.clone(), false));

    // RFC 6902, applied to the current document.
    let ops = json!([
        {"op": "test", "path": "/a", "value": 1},
        {"op": "replace", "path": "/a", "value": 2},
        {"op": "add", "path": "/list/-", "value": 4},
        {"op": "remove", "path": "/o/k"}
    ]);
    let (id2, changed) = pushed_id(&patch(&s, "p", JSON_PATCH, &ops, None).await);
    assert!(changed && id2 > id1);
    let v2 = json!({"a": 2, "list": [1, 2, 3, 4], "o": {}});
    sse.until_doc(&v2).await;
    // RFC 7396: null removes, objects merge, arrays replace.
    let merge = json!({"a": null, "list": [9], "o": {"n": true}});
    let (id3, _) = pushed_id(&patch(&s, "p", MERGE_PATCH, &merge, None).await);
    let v3 = json!({"list": [9], "o": {"n": true}});
    sse.until_doc(&v3).await;
    assert_eq!(s.get(&doc_path("p")).await, (200, v3.clone()));
    assert_eq!(s.history_ids("p").await, vec![id1, id2, id3]);
    // A push resource has nothing to poll.
    poll_now(&s, "p").await.error_code(409, "push_resource");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_push_failures_store_nothing() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&format!(
        "{}\n[[resource]]\nid = \"p\"\npush = true\n",
        polled(
            &up.url(),
            "1h",
            "[limits]\nmax_request_body_bytes = 1024\nupstream_max_body_bytes = 65536"
        )
    ));
    let v1 = json!({"a": [1, 2], "b": "x"});
    let (id1, _) = pushed_id(&put(&s, "p", &v1, None).await);
    let unchanged = || async {
        assert_eq!(s.get(&doc_path("p")).await, (200, v1.clone()));
        assert_eq!(s.history_ids("p").await, vec![id1.clone()]);
    };

    // A JSON Patch that does not apply, even after ops that did: 422, atomic.
    for ops in [
        json!([{"op": "replace", "path": "/b", "value": "y"}, {"op": "test", "path": "/a/0", "value": 7}]),
        json!([{"op": "remove", "path": "/nope"}]),
        json!([{"op": "add", "path": "/a/9", "value": 1}]),
        json!([{"op": "move", "from": "/a", "path": "/a/0"}]),
    ] {
        let m = patch(&s, "p", JSON_PATCH, &ops, None)
            .await
            .error_code(422, "patch_failed");
        assert!(m.contains("nothing was stored"), "{m}");
    }
    unchanged().await;
    // Not a patch, not JSON, the wrong media types.
    patch(&s, "p", JSON_PATCH, &json!({"op": "add"}), None)
        .await
        .error_code(400, "bad_request");
    let r = send(
        client()
            .patch(s.url(&doc_path("p")))
            .header("content-type", JSON_PATCH)
            .body("[{"),
    )
    .await;
    r.error_code(400, "bad_request");
    let r = patch(&s, "p", "application/json", &json!([]), None).await;
    r.error_code(415, "unsupported_media_type");
    assert!(r.headers["accept-patch"].contains(MERGE_PATCH));
    let r = send(
        client()
            .put(s.url(&doc_path("p")))
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await;
    r.error_code(415, "unsupported_media_type");
    // Too deep to store and re-read: 422 too_deep.
    let deep = format!("{}1{}", "[".repeat(126), "]".repeat(126));
    let r = send(
        client()
            .put(s.url(&doc_path("p")))
            .header("content-type", "application/json")
            .body(deep),
    )
    .await;
    r.error_code(422, "too_deep");
    // Over upstream_max_body_bytes: 413. Over max_request_body_bytes but
    // within the upstream limit: taken.
    let big = json!({"s": "x".repeat(70_000)});
    put(&s, "p", &big, None)
        .await
        .error_code(413, "payload_too_large");
    unchanged().await;
    let mid = json!({"s": "x".repeat(10_000)});
    let (id2, _) = pushed_id(&put(&s, "p", &mid, None).await);
    // Other routes keep the general limit.
    let r = send(
        client()
            .post(s.url("/v1/resources"))
            .json(&json!({"id": "z", "push": true, "pad": "x".repeat(2000)})),
    )
    .await;
    r.error_code(413, "payload_too_large");
    // A polled resource takes no pushes.
    put(&s, "r", &v1, None)
        .await
        .error_code(409, "polled_resource");
    patch(&s, "r", MERGE_PATCH, &json!({}), None)
        .await
        .error_code(409, "polled_resource");
    // Unknown resource.
    put(&s, "nope", &v1, None)
        .await
        .error_code(404, "resource_not_found");
    poll_now(&s, "nope")
        .await
        .error_code(404, "resource_not_found");
    assert_eq!(s.history_ids("p").await, vec![id1, id2]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_if_match_is_optimistic_concurrency() {
    let s = Server::start(&pushed(""));
    // No version yet: any If-Match fails.
    let zero = "\"00000000000000000000000000\"";
    put(&s, "p", &json!(1), Some(zero))
        .await
        .error_code(412, "precondition_failed");
    let (id1, _) = pushed_id(&put(&s, "p", &json!({"n": 1}), None).await);
    let (id2, _) = pushed_id(&put(&s, "p", &json!({"n": 2}), Some(&quoted(&id1))).await);
    // Stale, unknown or not an id at all: 412, nothing stored.
    for tag in [quoted(&id1), zero.to_owned(), "\"not-an-id\"".to_owned()] {
        put(&s, "p", &json!({"n": 9}), Some(&tag))
            .await
            .error_code(412, "precondition_failed");
        patch(&s, "p", MERGE_PATCH, &json!({"n": 9}), Some(&tag))
            .await
            .error_code(412, "precondition_failed");
    }
    // Not one quoted tag: 400.
    for tag in [id2.as_str(), "*", "W/\"x\""] {
        put(&s, "p", &json!({"n": 9}), Some(tag))
            .await
            .error_code(400, "bad_request");
    }
    assert_eq!(s.get(&doc_path("p")).await, (200, json!({"n": 2})));
    // The ETag of the document is what If-Match names.
    let r = send(client().get(s.url(&doc_path("p")))).await;
    let (id3, _) = pushed_id(
        &patch(
            &s,
            "p",
            JSON_PATCH,
            &json!([{"op": "replace", "path": "/n", "value": 3}]),
            Some(&r.headers["etag"]),
        )
        .await,
    );
    assert_eq!(s.history_ids("p").await, vec![id1, id2, id3]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_if_match_race_two_writers_exactly_one_wins() {
    let s = Server::start(&pushed(""));
    let (mut head, _) = pushed_id(&put(&s, "p", &json!({"round": 0}), None).await);
    for round in 1..=25 {
        let tag = quoted(&head);
        let (body_a, body_b) = (
            json!({"round": round, "by": "a"}),
            json!({"round": round, "by": "b"}),
        );
        let (a, b) = tokio::join!(
            patch(&s, "p", MERGE_PATCH, &body_a, Some(&tag)),
            patch(&s, "p", MERGE_PATCH, &body_b, Some(&tag)),
        );
        let (won, lost, by) = match (a.status, b.status) {
            (200, 412) => (a, b, "a"),
            (412, 200) => (b, a, "b"),
            other => panic!("round {round}: statuses {other:?}, not one 200 and one 412"),
        };
        lost.error_code(412, "precondition_failed");
        head = pushed_id(&won).0;
        assert_eq!(
            s.get(&doc_path("p")).await.1,
            json!({"round": round, "by": by})
        );
    }
    assert_eq!(s.history_ids("p").await.len(), 26);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_a_pushed_version_is_durable_once_acknowledged() {
    let mut s = Server::start(&pushed(""));
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(pushed_id(&put(&s, "p", &json!({"i": i}), None).await).0);
    }
    // SIGKILL right after the last 200: every acknowledged version is there.
    s.crash_and_restart();
    assert_eq!(s.get(&doc_path("p")).await, (200, json!({"i": 4})));
    assert_eq!(s.history_ids("p").await, ids);
    let (status, v) = s.get("/v1/resources/p").await;
    assert_eq!((status, &v["push"]), (200, &json!(true)), "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_the_read_token_may_not_push_or_trigger() {
    let s = Server::start(&pushed("token = \"full\"\nread_token = \"read\"\n"));
    let full = send(
        client()
            .put(s.url(&doc_path("p")))
            .bearer_auth("full")
            .json(&json!({"v": 1})),
    )
    .await;
    assert_eq!(full.status, 200);
    for req in [
        client().put(s.url(&doc_path("p"))).json(&json!({"v": 2})),
        client()
            .patch(s.url(&doc_path("p")))
            .header("content-type", MERGE_PATCH)
            .body("{\"v\":2}"),
        client().post(s.url("/v1/resources/p/poll")),
    ] {
        send(req.bearer_auth("read"))
            .await
            .error_code(403, "forbidden");
    }
    let r = send(client().get(s.url(&doc_path("p"))).bearer_auth("read")).await;
    assert_eq!(r.json(), json!({"v": 1}));
    s.stop().await;
}
