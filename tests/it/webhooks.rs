//! Issue 13: webhooks out, against the real binary and a real loopback
//! receiver (`common::receiver`), signatures checked by the reference
//! Standard Webhooks implementation (PyPI `standardwebhooks`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{client, eventually, send, shown, Answer, Receiver, Server, WAIT};

/// Push resources `a` and `b`, a short retry schedule, loopback allowed.
fn config(extra: &str) -> String {
    format!(
        "allow_private_upstreams = true\n{extra}\n[webhooks]\ntimeout = \"2s\"\nretry = [\"100ms\", \"100ms\", \"100ms\"]\n\
         [[resource]]\nid = \"a\"\npush = true\nsnapshot_every = 3\n[[resource]]\nid = \"b\"\npush = true\n"
    )
}

async fn put(s: &Server, id: &str, doc: &Value) -> String {
    let r = send(
        client()
            .put(s.url(&format!("/v1/resources/{id}/document")))
            .json(doc),
    )
    .await;
    assert_eq!(r.status, 200, "{}", shown(&r.body));
    r.json()["event_id"].as_str().unwrap().to_owned()
}

async fn create(s: &Server, body: Value) -> Value {
    let (status, v) = s.post("/v1/webhooks", body).await;
    assert_eq!(status, 201, "{v}");
    v
}

async fn view(s: &Server, id: &str) -> Value {
    let (status, v) = s.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Waits until the webhook's view satisfies `pred`.
async fn wait_view(s: &Server, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(WAIT, what, || async {
        let v = view(s, id).await;
        pred(&v).then_some(v)
    })
    .await
}

/// Applies delivered messages of `resource` in order, checking that each
/// patch's `prev` is the id of the message before it.
fn replay(messages: &[Value], resource: &str) -> (Value, Vec<String>) {
    let mut doc = Value::Null;
    let mut last: Option<String> = None;
    let mut ids = Vec::new();
    for m in messages.iter().filter(|m| m["resource"] == resource) {
        let id = m["id"].as_str().unwrap().to_owned();
        match m["type"].as_str().unwrap() {
            "snapshot" => doc = m["data"].clone(),
            "patch" => {
                assert_eq!(m["prev"].as_str(), last.as_deref(), "prev continuity: {m}");
                let p: json_patch::Patch = serde_json::from_value(m["data"].clone()).unwrap();
                json_patch::patch(&mut doc, &p).unwrap();
            }
            t => panic!("unexpected type {t}"),
        }
        assert!(m["time"].as_str().unwrap().ends_with('Z'), "{m}");
        last = Some(id.clone());
        ids.push(id);
    }
    (doc, ids)
}

#[tokio::test]
async fn issue_13_snapshot_then_patches_in_order_signed_and_acked() {
    let rx = Receiver::start().await;
    let s = Server::start(&config(""));
    put(&s, "a", &json!({"n": 0})).await;
    let created = create(
        &s,
        json!({"id": "h1", "url": rx.url(), "resources": ["a", "b"], "headers": {"X-Tenant": "t1"}}),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created["state"], "active");
    rx.wait_for("the snapshot", |d| !d.is_empty()).await;
    let mut last = String::new();
    for n in 1..=6 {
        last = put(
            &s,
            "a",
            &json!({"n": n, "list": (0..n).collect::<Vec<_>>()}),
        )
        .await;
    }
    put(&s, "b", &json!({"b": true})).await;
    let d = rx
        .wait_for("every patch of a", |d| {
            d.iter().any(|m| m["id"] == json!(last)) && d.iter().any(|m| m["resource"] == "b")
        })
        .await;
    assert_eq!(d[0]["type"], "snapshot", "{d:?}");
    assert_eq!(d[0]["prev"], Value::Null);
    let (doc, ids) = replay(&d, "a");
    assert_eq!(doc, json!({"n": 6, "list": [0, 1, 2, 3, 4, 5]}));
    assert_eq!(ids.len(), 7, "a snapshot and 6 patches, each once: {ids:?}");
    let history = s.history_ids("a").await;
    assert_eq!(ids, history, "every event, in log order");
    // `b` had no version at creation: its first version comes as a snapshot.
    let b: Vec<&Value> = d.iter().filter(|m| m["resource"] == "b").collect();
    assert_eq!((b.len(), &b[0]["type"]), (1, &json!("snapshot")));
    // Headers: the extra one, and the signature's.
    let r = rx.received();
    assert_eq!(r[0].headers["x-tenant"], "t1");
    assert_eq!(r[0].headers["content-type"], "application/json");
    assert!(r
        .iter()
        .all(|r| r.msg_id().starts_with("msg_") && !r.msg_id().contains('.')));
    assert_eq!(rx.verify(&secret), r.len());
    // Acked is the head; nothing pending; the secret is never shown again.
    let v = wait_view(&s, "h1", "acked = head", |v| {
        v["cursors"]["a"]["acked"] == json!(last) && v["cursors"]["b"]["pending"] == 0
    })
    .await;
    assert_eq!(
        v["cursors"]["a"],
        json!({"acked": last, "head": last, "pending": 0})
    );
    assert_eq!(v["headers"], json!(["X-Tenant"]));
    assert!(!v.to_string().contains(&secret[6..]));
    let (_, list) = s.get("/v1/webhooks").await;
    assert_eq!(list["webhooks"][0]["id"], "h1");
    assert!(!list.to_string().contains(&secret[6..]));
    let (_, m) = s.get("/metrics").await;
    let m = m.as_str().unwrap().to_owned();
    assert!(
        m.contains("patchfeed_webhook_deliveries_total{outcome=\"delivered\"} 8"),
        "{m}"
    );
    assert!(!m.contains(&secret[6..]));
    let log = s.stop().await;
    assert!(!log.contains(&secret[6..]), "the secret is in the log");
}

#[tokio::test]
async fn issue_13_500_twice_then_200_is_retried_in_order_with_the_same_message() {
    let rx = Receiver::start().await;
    let s = Server::start(&config(""));
    put(&s, "a", &json!({"n": 0})).await;
    rx.script(&[Answer::Status(500), Answer::RetryAfter(503, 1)]);
    let secret = create(&s, json!({"id": "h", "url": rx.url(), "resources": ["a"]})).await
        ["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut last = String::new();
    for n in 1..=3 {
        last = put(&s, "a", &json!({"n": n})).await;
    }
    let d = rx
        .wait_for("the last patch", |d| {
            d.iter().any(|m| m["id"] == json!(last))
        })
        .await;
    let r = rx.received();
    // The snapshot three times (500, 503, 200), same id and body, then each
    // patch once; nothing later before the earlier's 2xx.
    assert_eq!(r[0].msg_id(), r[1].msg_id());
    assert_eq!(r[1].msg_id(), r[2].msg_id());
    assert_eq!(r[0].body, r[2].body);
    assert!(r[2].ok() && !r[0].ok() && !r[1].ok());
    // Retry-After: 1 was honoured over the 100ms step.
    let waited = r[2].at - r[1].at;
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    let mut seen = std::collections::HashSet::new();
    let mut open: Option<String> = None;
    for x in &r {
        if let Some(o) = &open {
            assert_eq!(&x.msg_id(), o, "a new message before the 2xx of {o}");
        }
        assert!(
            seen.insert(x.msg_id()) || open.is_some(),
            "re-sent after its 2xx"
        );
        open = (!x.ok()).then(|| x.msg_id());
    }
    let (doc, _) = replay(&d, "a");
    assert_eq!(doc, json!({"n": 3}));
    rx.verify(&secret);
    let (_, a) = s.get("/v1/webhooks/h/attempts?limit=10").await;
    let a = a["attempts"].as_array().unwrap().clone();
    assert_eq!(a.len(), 6, "{a:?}");
    // Newest first; the first message's attempts are the oldest three.
    let first: Vec<(u64, u64)> = a[3..]
        .iter()
        .map(|x| {
            (
                x["attempt"].as_u64().unwrap(),
                x["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(first, vec![(3, 200), (2, 503), (1, 500)]);
    assert_eq!(a[0]["webhook_id"], "h");
    assert!(a[0]["duration_ms"].is_u64() && a[0]["time"].is_string());
    s.stop().await;
}

#[tokio::test]
async fn issue_13_410_disables_at_once_and_enable_resumes_with_nothing_lost() {
    let rx = Receiver::start().await;
    let s = Server::start(&config(""));
    let first = put(&s, "a", &json!({"n": 0})).await;
    create(&s, json!({"id": "h", "url": rx.url(), "resources": ["a"]})).await;
    rx.wait_for("the snapshot", |d| d.len() == 1).await;
    rx.script(&[Answer::Status(410)]);
    put(&s, "a", &json!({"n": 1})).await;
    let v = wait_view(&s, "h", "disabled", |v| v["state"] == "disabled").await;
    assert!(
        v["disabled_reason"].as_str().unwrap().contains("410"),
        "{v}"
    );
    assert_eq!(v["cursors"]["a"]["acked"], json!(first), "cursor kept");
    let last = put(&s, "a", &json!({"n": 2})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 2, "nothing is sent while disabled");
    let v = view(&s, "h").await;
    assert_eq!(v["cursors"]["a"]["pending"], 2, "{v}");
    let r = send(client().post(s.url("/v1/webhooks/h/enable"))).await;
    assert_eq!(r.status, 200, "{}", shown(&r.body));
    let d = rx
        .wait_for("the rest", |d| d.iter().any(|m| m["id"] == json!(last)))
        .await;
    let (doc, ids) = replay(&d, "a");
    assert_eq!(doc, json!({"n": 2}));
    assert_eq!(ids, s.history_ids("a").await);
    wait_view(&s, "h", "active again", |v| {
        v["state"] == "active" && v["disabled_reason"].is_null()
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn issue_13_an_exhausted_schedule_disables_and_survives_a_restart_then_enable_resumes() {
    let rx = Receiver::start().await;
    let mut s = Server::start(&config(""));
    put(&s, "a", &json!({"n": 0})).await;
    create(&s, json!({"id": "h", "url": rx.url(), "resources": ["a"]})).await;
    rx.wait_for("the snapshot", |d| d.len() == 1).await;
    rx.set_default(Answer::Status(500));
    put(&s, "a", &json!({"n": 1})).await;
    let v = wait_view(&s, "h", "disabled", |v| v["state"] == "disabled").await;
    assert!(
        v["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("retries exhausted"),
        "{v}"
    );
    // One attempt, then one per step of the schedule (3).
    assert_eq!(rx.received().len(), 1 + 4);
    let (_, m) = s.get("/metrics").await;
    assert!(
        m.as_str()
            .unwrap()
            .contains("patchfeed_webhooks_disabled 1"),
        "{m}"
    );
    // Disabled is durable; the cursor too.
    let last = put(&s, "a", &json!({"n": 2})).await;
    s.signal("-TERM");
    s.wait_exit(Duration::from_secs(15)).await;
    s.restart();
    let v = view(&s, "h").await;
    assert_eq!(v["state"], "disabled", "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 5);
    rx.set_default(Answer::Status(204));
    let r = send(client().post(s.url("/v1/webhooks/h/enable"))).await;
    assert_eq!(r.status, 200);
    let d = rx
        .wait_for("the rest", |d| d.iter().any(|m| m["id"] == json!(last)))
        .await;
    let (doc, ids) = replay(&d, "a");
    assert_eq!(doc, json!({"n": 2}));
    assert_eq!(ids, s.history_ids("a").await, "nothing lost");
    s.stop().await;
}

#[tokio::test]
async fn issue_13_replay_moves_every_cursor_back() {
    let rx = Receiver::start().await;
    let s = Server::start(&config(""));
    let e0 = put(&s, "a", &json!({"n": 0})).await;
    create(
        &s,
        json!({"id": "h", "url": rx.url(), "resources": ["*"], "from": e0}),
    )
    .await;
    let mut last = String::new();
    for n in 1..=3 {
        last = put(&s, "a", &json!({"n": n})).await;
    }
    let d = rx.wait_for("3 patches", |d| d.len() == 3).await;
    assert!(
        d.iter().all(|m| m["type"] == "patch"),
        "from: T gives patches only"
    );
    assert_eq!(d[0]["prev"], json!(e0), "{d:?}");
    // Back to the first patch: the two after it again.
    let first_patch = d[0]["id"].as_str().unwrap().to_owned();
    let (status, v) = s
        .post("/v1/webhooks/h/replay", json!({"from": first_patch}))
        .await;
    assert_eq!(status, 200, "{v}");
    let d = rx.wait_for("2 again", |d| d.len() == 5).await;
    assert_eq!(d[3]["prev"], json!(first_patch));
    assert_eq!(d[4]["id"], json!(last));
    assert_eq!(
        rx.received()[1].msg_id(),
        rx.received()[3].msg_id(),
        "the same message, the same id"
    );
    // From before the horizon: a snapshot of the current document.
    let (status, _) = s.post("/v1/webhooks/h/replay", json!({"from": 0})).await;
    assert_eq!(status, 200);
    let d = rx.wait_for("a snapshot", |d| d.len() == 6).await;
    assert_eq!(
        (&d[5]["type"], &d[5]["data"], &d[5]["id"]),
        (&json!("snapshot"), &json!({"n": 3}), &json!(last))
    );
    // A bad point is 400; an unknown webhook 404.
    let (status, v) = s
        .post("/v1/webhooks/h/replay", json!({"from": "yesterday"}))
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = s.post("/v1/webhooks/nope/replay", json!({"from": 0})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("webhook_not_found"))
    );
    s.stop().await;
}

#[tokio::test]
async fn issue_13_coalesce_sends_one_patch_that_reproduces_the_document() {
    let rx = Receiver::start().await;
    let s = Server::start(&config(""));
    let e0 = put(&s, "a", &json!({"n": 0, "keep": [1, 2, 3]})).await;
    let mut last = String::new();
    for n in 1..=20 {
        last = put(&s, "a", &json!({"n": n, "keep": [1, 2, 3], "sq": n * n})).await;
    }
    // Twenty events pending behind `from`: one message.
    create(
        &s,
        json!({"id": "h", "url": rx.url(), "resources": ["a"], "coalesce": true, "from": e0}),
    )
    .await;
    let d = rx
        .wait_for("the last event", |d| {
            d.iter().any(|m| m["id"] == json!(last))
        })
        .await;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (&d[0]["type"], &d[0]["prev"]),
        (&json!("patch"), &json!(e0))
    );
    let mut doc = json!({"n": 0, "keep": [1, 2, 3]});
    let p: json_patch::Patch = serde_json::from_value(d[0]["data"].clone()).unwrap();
    json_patch::patch(&mut doc, &p).unwrap();
    assert_eq!(doc, json!({"n": 20, "keep": [1, 2, 3], "sq": 400}));
    // Live changes after it apply on top.
    let e = put(&s, "a", &json!({"n": 21})).await;
    let d = rx
        .wait_for("one more", |d| d.iter().any(|m| m["id"] == json!(e)))
        .await;
    assert_eq!(d[1]["prev"], json!(last));
    let p: json_patch::Patch = serde_json::from_value(d[1]["data"].clone()).unwrap();
    json_patch::patch(&mut doc, &p).unwrap();
    assert_eq!(doc, json!({"n": 21}));
    s.stop().await;
}

#[tokio::test]
async fn issue_13_a_path_delivers_the_subtree_plain_and_coalesced() {
    let rx = Receiver::start().await;
    let s = Server::start(&config(""));
    put(&s, "a", &json!({"n": 0, "sub": {"x": 1}})).await;
    create(
        &s,
        json!({"id": "plain", "url": rx.url(), "resources": ["a"], "path": "/sub"}),
    )
    .await;
    let d = rx.wait_for("the snapshot", |d| !d.is_empty()).await;
    assert_eq!(
        (&d[0]["type"], &d[0]["data"]),
        (&json!("snapshot"), &json!({"x": 1}))
    );
    // Outside the subtree: not sent. Inside: a patch relative to it, whose
    // prev is the previous message sent (the snapshot), not the event
    // before it in the log.
    put(&s, "a", &json!({"n": 1, "sub": {"x": 1}})).await;
    let e2 = put(&s, "a", &json!({"n": 1, "sub": {"x": 2}})).await;
    let d = rx
        .wait_for("the subtree patch", |d| {
            d.iter().any(|m| m["id"] == json!(e2))
        })
        .await;
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[1]["prev"], d[0]["id"]);
    assert_eq!(
        d[1]["data"],
        json!([{"op": "replace", "path": "/x", "value": 2}])
    );
    // Coalesced: pending events of the subtree become one patch that,
    // applied to the subtree at `from`, gives the subtree now.
    let mut last = String::new();
    for n in 3..=12 {
        last = put(&s, "a", &json!({"n": n, "sub": {"x": n, "y": [n]}})).await;
    }
    let rx2 = Receiver::start().await;
    create(
        &s,
        json!({"id": "co", "url": rx2.url(), "resources": ["a"], "path": "/sub",
               "coalesce": true, "from": e2}),
    )
    .await;
    let d = rx2
        .wait_for("the last event", |d| {
            d.iter().any(|m| m["id"] == json!(last))
        })
        .await;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["prev"], json!(e2));
    let mut sub = json!({"x": 2});
    let p: json_patch::Patch = serde_json::from_value(d[0]["data"].clone()).unwrap();
    json_patch::patch(&mut sub, &p).unwrap();
    assert_eq!(sub, json!({"x": 12, "y": [12]}));
    s.stop().await;
}

#[tokio::test]
async fn issue_13_delete_stops_delivery() {
    let rx = Receiver::start().await;
    let s = Server::start(&config(""));
    put(&s, "a", &json!({"n": 0})).await;
    create(&s, json!({"id": "h", "url": rx.url(), "resources": ["a"]})).await;
    rx.wait_for("the snapshot", |d| d.len() == 1).await;
    assert_eq!(s.delete("/v1/webhooks/h").await, 204);
    assert_eq!(s.delete("/v1/webhooks/h").await, 404);
    put(&s, "a", &json!({"n": 1})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 1);
    let (status, v) = s.get("/v1/webhooks/h").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("webhook_not_found"))
    );
    // The id is free again, and starts afresh (a snapshot).
    create(&s, json!({"id": "h", "url": rx.url(), "resources": ["a"]})).await;
    let d = rx.wait_for("a new snapshot", |d| d.len() == 2).await;
    assert_eq!(
        (&d[1]["type"], &d[1]["data"]),
        (&json!("snapshot"), &json!({"n": 1}))
    );
    s.stop().await;
}

#[tokio::test]
async fn issue_13_bad_bodies_get_clear_errors_and_the_read_token_may_only_read() {
    let rx = Receiver::start().await;
    let s = Server::start(&config("token = \"full\"\nread_token = \"ro\""));
    let post = |tok: &'static str, body: Value| {
        let s = &s;
        async move {
            send(
                client()
                    .post(s.url("/v1/webhooks"))
                    .bearer_auth(tok)
                    .json(&body),
            )
            .await
        }
    };
    let ok = json!({"id": "h", "url": rx.url(), "resources": ["a"], "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"});
    assert_eq!(post("ro", ok.clone()).await.status, 403);
    let r = post("full", ok.clone()).await;
    assert_eq!(r.status, 201, "{}", shown(&r.body));
    assert_eq!(r.json()["secret"], "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    post("full", ok).await.error_code(409, "webhook_exists");
    for (body, field) in [
        (json!({"url": rx.url()}), "resources"),
        (json!({"resources": ["a"]}), "url"),
        (json!({"url": rx.url(), "resources": ["nope"]}), "resources"),
        (
            json!({"url": rx.url(), "resources": ["a"], "path": "no-slash"}),
            "path",
        ),
        (
            json!({"url": rx.url(), "resources": ["a"], "headers": {"Connection": "x"}}),
            "headers",
        ),
        (
            json!({"url": rx.url(), "resources": ["a"], "secret": "whsec_c2hvcnQ="}),
            "secret",
        ),
        (
            json!({"url": rx.url(), "resources": ["a"], "from": "soon"}),
            "from",
        ),
        (
            json!({"url": "file:///etc/passwd", "resources": ["a"]}),
            "url",
        ),
        (
            json!({"url": rx.url(), "resources": ["a"], "extra": 1}),
            "extra",
        ),
    ] {
        let msg = post("full", body.clone())
            .await
            .error_code(422, "invalid_webhook");
        assert!(msg.contains(field), "{body}: {msg}");
    }
    let r = send(
        client()
            .post(s.url("/v1/webhooks"))
            .bearer_auth("full")
            .header("content-type", "application/json")
            .body("{"),
    )
    .await;
    r.error_code(400, "bad_request");
    // Reads with the read token; no writes.
    let get = send(client().get(s.url("/v1/webhooks/h")).bearer_auth("ro")).await;
    assert_eq!(get.status, 200);
    assert!(!shown(&get.body).contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    let att = send(
        client()
            .get(s.url("/v1/webhooks/h/attempts"))
            .bearer_auth("ro"),
    )
    .await;
    assert_eq!(att.status, 200);
    for (m, p) in [
        ("DELETE", "/v1/webhooks/h"),
        ("POST", "/v1/webhooks/h/enable"),
        ("POST", "/v1/webhooks/h/replay"),
    ] {
        let r = send(
            client()
                .request(m.parse().unwrap(), s.url(p))
                .bearer_auth("ro"),
        )
        .await;
        r.error_code(403, "forbidden");
    }
    let r = send(
        client()
            .get(s.url("/v1/webhooks/h/attempts?limit=0"))
            .bearer_auth("ro"),
    )
    .await;
    r.error_code(400, "bad_request");
    let r = send(
        client()
            .get(s.url("/v1/webhooks/h/nope"))
            .bearer_auth("full"),
    )
    .await;
    r.error_code(404, "not_found");
    let r = send(client().put(s.url("/v1/webhooks")).bearer_auth("full")).await;
    r.error_code(405, "method_not_allowed");
    let r = send(
        client()
            .get(s.url("/v1/webhooks/a%2Fb"))
            .bearer_auth("full"),
    )
    .await;
    r.error_code(400, "bad_request");
    let r = send(client().get(s.url("/v1/webhooks"))).await;
    r.error_code(401, "unauthorized");
    s.stop().await;
}

#[tokio::test]
async fn issue_13_the_url_passes_the_upstream_guard() {
    let s = Server::start("[[resource]]\nid = \"a\"\npush = true\n");
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
    ] {
        let (status, v) = s
            .post("/v1/webhooks", json!({"url": url, "resources": ["a"]}))
            .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (422, Some("invalid_webhook")),
            "{url}: {v}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn issue_13_config_webhooks_are_created_at_start_up_and_keep_their_cursors() {
    let rx = Receiver::start().await;
    let table = format!(
        "[[webhook]]\nid = \"cfg\"\nurl = \"{}\"\nresources = [\"a\"]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        rx.url()
    );
    let mut s = Server::start(&format!("{}{table}", config("")));
    let v = view(&s, "cfg").await;
    assert_eq!(v["state"], "active");
    put(&s, "a", &json!({"n": 0})).await;
    let e1 = put(&s, "a", &json!({"n": 1})).await;
    rx.wait_for("two", |d| d.iter().any(|m| m["id"] == json!(e1)))
        .await;
    wait_view(&s, "cfg", "acked", |v| {
        v["cursors"]["a"]["acked"] == json!(e1)
    })
    .await;
    s.signal("-TERM");
    s.wait_exit(Duration::from_secs(15)).await;
    s.restart();
    let e2 = put(&s, "a", &json!({"n": 2})).await;
    let d = rx
        .wait_for("the third", |d| d.iter().any(|m| m["id"] == json!(e2)))
        .await;
    let (doc, ids) = replay(&d, "a");
    assert_eq!(doc, json!({"n": 2}));
    assert_eq!(
        ids,
        s.history_ids("a").await,
        "resumed at the cursor: nothing twice"
    );
    assert_eq!(
        rx.verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ids.len()
    );
    s.stop().await;
}

#[tokio::test]
async fn issue_13_a_hanging_endpoint_does_not_delay_another_webhook() {
    let fast = Receiver::start().await;
    let dead = Receiver::start().await;
    dead.set_default(Answer::Hang);
    let s = Server::start(&config(""));
    put(&s, "a", &json!({"n": 0})).await;
    create(
        &s,
        json!({"id": "dead", "url": dead.url(), "resources": ["*"]}),
    )
    .await;
    create(
        &s,
        json!({"id": "fast", "url": fast.url(), "resources": ["*"]}),
    )
    .await;
    let mut last = String::new();
    for n in 1..=10 {
        last = put(&s, "a", &json!({"n": n})).await;
    }
    let d = fast
        .wait_for("every change", |d| d.iter().any(|m| m["id"] == json!(last)))
        .await;
    assert_eq!(replay(&d, "a").0, json!({"n": 10}));
    let v = wait_view(&s, "dead", "retrying", |v| v["state"] == "retrying").await;
    assert_eq!(v["cursors"]["a"]["acked"], Value::Null);
    let (_, a) = s.get("/v1/webhooks/dead/attempts").await;
    assert!(
        a["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("timeout"),
        "{a}"
    );
    s.stop().await;
}
