//! Issue 18, part 3: paginated upstreams (`pages`), against the real
//! binary, real loopback upstreams serving pages (Link headers, next URLs,
//! cursors) and a real SSE client; `last_poll`, `polling` and the page
//! metrics.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// `pages` pages of `per` items each: `{"id": "<page>-<i>", "v": 0}`.
fn pages_of(pages: usize, per: usize) -> Vec<Vec<Value>> {
    (0..pages)
        .map(|p| {
            (0..per)
                .map(|i| json!({"id": format!("{p}-{i}"), "v": 0}))
                .collect()
        })
        .collect()
}

/// A `[[resource]]` table for a paginated resource.
fn paged(id: &str, url: &str, pages: &str, interval: &str) -> String {
    format!("[[resource]]\nid = \"{id}\"\nurl = \"{url}\"\ninterval = \"{interval}\"\npages = {pages}\n")
}

/// The resource's view once `last_poll` satisfies `pred`.
async fn last_poll(s: &Server, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    s.wait_resource(id, what, |v| pred(&v["last_poll"])).await
}

/// The resource's view once its `last_error` has `code`.
async fn failing(s: &Server, id: &str, code: &str) -> Value {
    s.wait_resource(id, &format!("{id} failing with {code}"), |v| {
        v["last_error"]["code"] == code
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_each_page_mode_makes_one_document_of_every_page() {
    let up = Upstream::start(doc(0)).await;
    up.set_pages(pages_of(3, 4));
    let link = up.url_for("/p/link?page=0");
    let url = up.url_for("/p/url?page=0");
    // The cursor goes back on the first page's URL; its other parameters
    // stay.
    let cursor = up.url_for("/p/cursor?x=keep");
    let config = format!(
        "allow_private_upstreams = true\n{}{}{}[[resource]]\nid = \"plain\"\nurl = \"{}\"\ninterval = \"100ms\"\n",
        paged("link", &link, r#"{ next = "link", max = 3 }"#, "100ms"),
        paged("url", &url, r#"{ next = "/next", items = "/results" }"#, "100ms"),
        paged(
            "cursor",
            &cursor,
            r#"{ next = "/meta/cursor", param = "cursor", items = "/data" }"#,
            "100ms"
        ),
        up.url(),
    );
    let s = Server::start(&config);
    let all = up.paged(|p| p.all());
    assert_eq!(all.as_array().map(Vec::len), Some(12));
    for id in ["link", "url", "cursor"] {
        s.wait_document(id, &all).await;
        let v = last_poll(&s, id, "a poll's figures", |p| p["pages"] == 3).await;
        let p = &v["last_poll"];
        assert_eq!(p["items"], 12, "{id}: {v}");
        // Bytes received: none when every page answered 304.
        assert_eq!(
            p["bytes"].as_u64().unwrap_or(0) > 0,
            p["not_modified"] != 3,
            "{id}: {v}"
        );
        assert!(p["duration_ms"].is_u64(), "{id}: {v}");
        assert!(
            ["changed", "unchanged", "not_modified"].contains(&p["outcome"].as_str().unwrap_or("")),
            "{id}: {v}"
        );
        assert!(v["last_error"].is_null(), "{id}: {v}");
    }
    // The view shows the settings, defaults filled in.
    let (_, v) = s.get("/v1/resources/link").await;
    assert_eq!(v["pages"], json!({"next": "link", "items": "", "max": 3}));
    let (_, v) = s.get("/v1/resources/cursor").await;
    assert_eq!(
        v["pages"],
        json!({"next": "/meta/cursor", "param": "cursor", "items": "/data", "max": 100})
    );
    assert!(
        up.paged(|p| p.last_query["cursor"].contains("x=keep")),
        "the cursor kept the first URL's parameters"
    );
    // An unpaginated resource's last poll is one page.
    s.wait_document("plain", &doc(0)).await;
    let v = last_poll(&s, "plain", "the plain resource's figures", |p| {
        p.is_object()
    })
    .await;
    assert_eq!(v["last_poll"]["pages"], 1, "{v}");
    assert!(v["pages"].is_null() && v["polling"].is_null(), "{v}");
    // Pages are counted.
    let (_, _) = s.get("/healthz").await;
    let text = send(client().get(s.url("/metrics"))).await;
    let text = String::from_utf8_lossy(&text.body).into_owned();
    assert!(
        metric(&text, "patchfeed_upstream_pages_total{outcome=\"fetched\"}") >= 10.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "patchfeed_upstream_pages_total{outcome=\"not_modified\"}"
        ) >= 1.0,
        "{text}"
    );
    // The same settings through the API.
    let (status, v) = s
        .post(
            "/v1/resources",
            json!({"id": "api", "url": url, "interval_ms": 100,
                   "pages": {"next": "/next", "items": "/results", "max": 5}}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["pages"],
        json!({"next": "/next", "items": "/results", "max": 5})
    );
    s.wait_document("api", &all).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_bad_pages_settings_are_refused_by_the_api_and_the_config_file() {
    let s = Server::start("allow_private_upstreams = true\n");
    for (pages, says) in [
        (json!({"next": "next"}), "pages.next"),
        (json!({"next": "link", "max": 0}), "pages.max"),
        (json!({"next": "link", "param": "c"}), "pages.param"),
        (json!({"next": "/n", "items": "data"}), "pages.items"),
        (json!({"next": "/n", "other": 1}), "unknown field `other`"),
    ] {
        let (status, v) = s
            .post(
                "/v1/resources",
                json!({"url": "http://127.0.0.1:9/x", "pages": pages}),
            )
            .await;
        assert_eq!(status, 422, "{pages}: {v}");
        assert_eq!(v["error"]["code"], "invalid_resource", "{pages}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(says), "{pages}: {msg}");
    }
    let (status, v) = s
        .post(
            "/v1/resources",
            json!({"push": true, "pages": {"next": "link"}}),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    s.stop().await;
    let e = patchfeed::config::Config::parse(
        "[[resource]]\nid = \"a\"\nurl = \"http://x/\"\npages = { next = \"link\", max = 0 }",
    )
    .expect_err("refused");
    assert!(e.to_string().starts_with("resource[0].pages.max: "), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_all_304_is_no_event_and_a_change_on_page_3_is_exactly_its_patch() {
    let up = Upstream::start(doc(0)).await;
    up.set_pages(pages_of(3, 50));
    let config = format!(
        "allow_private_upstreams = true\n{}",
        paged(
            "r",
            &up.url_for("/p/link?page=0"),
            r#"{ next = "link" }"#,
            "100ms"
        )
    );
    let s = Server::start(&config);
    let first = up.paged(|p| p.all());
    s.wait_document("r", &first).await;
    let mut sse = Sse::open(&s.url("/v1/resources/r/events"), None).await;
    sse.until_doc(&first).await;
    // Polls in which every page answers 304 make no event.
    let v = last_poll(&s, "r", "a poll of three 304s", |p| {
        p["outcome"] == "not_modified" && p["not_modified"] == 3
    })
    .await;
    assert_eq!(v["last_poll"]["bytes"], 0, "{v}");
    assert_eq!(v["last_poll"]["items"], 150, "{v}");
    assert_eq!(s.history_ids("r").await.len(), 1);

    let served = up.paged(|p| p.served.clone());
    up.change_page(2, |items| items[7]["v"] = json!(1));
    let f = sse.until_event("patch").await;
    let patch: Value = serde_json::from_str(&f.data).expect("patch JSON");
    assert_eq!(
        patch,
        json!([{"op": "replace", "path": "/107/v", "value": 1}]),
        "page 3's item 7 is item 107 of the collection"
    );
    let now = up.paged(|p| p.all());
    assert_eq!(sse.doc.as_ref(), Some(&now));
    s.wait_document("r", &now).await;
    assert_eq!(s.history_ids("r").await.len(), 2);
    // Pages 1 and 2 answered 304 in that poll: their kept items were used.
    let after = up.paged(|p| p.served.clone());
    assert_eq!(
        after.get(&0),
        served.get(&0),
        "page 1 was not fetched again"
    );
    assert_eq!(
        after.get(&1),
        served.get(&1),
        "page 2 was not fetched again"
    );
    assert_eq!(
        after.get(&2).copied().unwrap_or(0),
        served.get(&2).copied().unwrap_or(0) + 1,
        "page 3 was fetched once"
    );
    // Nothing more: the next polls are all 304 again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.history_ids("r").await.len(), 2);
    s.stop().await;
}

/// One failure: the upstream, what to do to it, the resource's `pages`
/// and the code it must show.
struct Failure {
    id: &'static str,
    up: Upstream,
    url: String,
    pages: &'static str,
    code: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_a_failing_page_fails_the_poll_and_stores_nothing() {
    let other = Upstream::start(doc(0)).await;
    other.set_pages(pages_of(3, 2));
    let mut cases = Vec::new();
    for (id, pages, code) in [
        ("middle", r#"{ next = "link" }"#, "upstream_status"),
        ("loop", r#"{ next = "link" }"#, "page_loop"),
        ("many", r#"{ next = "link", max = 3 }"#, "too_many_pages"),
        ("origin", r#"{ next = "link" }"#, "page_origin"),
        ("guard", r#"{ next = "link" }"#, "invalid_url"),
        (
            "items",
            r#"{ next = "/next", items = "/results" }"#,
            "page_items",
        ),
        (
            "nexttype",
            r#"{ next = "/next", items = "/results" }"#,
            "page_next",
        ),
    ] {
        let up = Upstream::start(doc(0)).await;
        up.set_pages(pages_of(3, 2));
        let url = if pages.contains("link") {
            up.url_for("/p/link?page=0")
        } else {
            up.url_for("/p/url?page=0")
        };
        cases.push(Failure {
            id,
            up,
            url,
            pages,
            code,
        });
    }
    let mut config = String::from("allow_private_upstreams = true\n");
    for c in &cases {
        config.push_str(&paged(c.id, &c.url, c.pages, "100ms"));
    }
    let s = Server::start(&config);
    for c in &cases {
        s.wait_document(c.id, &c.up.paged(|p| p.all())).await;
    }
    let mut sse = Sse::open(&s.url("/v1/resources/middle/events"), None).await;
    let good = cases[0].up.paged(|p| p.all());
    sse.until_doc(&good).await;
    // Each fault, with a change on the first page that must not be stored.
    for c in &cases {
        let other_url = other.url_for("/p/link?page=1");
        c.up.paged(|p| match c.id {
            "middle" => {
                p.status.insert(1, 500);
            }
            "loop" => {
                // A changed page has a new ETag.
                p.versions[2] += 1;
                p.next.insert(2, json!("/p/link?page=0"));
            }
            "many" => {
                // Page 3 now has a next link: a new ETag.
                p.versions[2] += 1;
                p.pages.push(vec![json!({"id": "page 4"})]);
                p.versions.push(0);
            }
            "origin" => {
                // A changed page has a new ETag.
                p.versions[1] += 1;
                p.next.insert(1, json!(other_url));
            }
            "guard" => {
                // A changed page has a new ETag.
                p.versions[1] += 1;
                p.next.insert(1, json!("file:///etc/passwd"));
            }
            "items" => {
                // A changed page has a new ETag.
                p.versions[2] += 1;
                p.items.insert(2, json!({"not": "an array"}));
            }
            _ => {
                // A changed page has a new ETag.
                p.versions[1] += 1;
                p.next.insert(1, json!({"url": "/p/url?page=2"}));
            }
        });
        // After the fault: no poll may store this change.
        c.up.change_page(0, |items| items.push(json!({"id": "new"})));
    }
    for c in &cases {
        let before = s.history_ids(c.id).await;
        let v = failing(&s, c.id, c.code).await;
        assert_eq!(v["last_poll"]["outcome"], "failed", "{}: {v}", c.id);
        let (status, d) = s.get(&format!("/v1/resources/{}/document", c.id)).await;
        assert_eq!(status, 200);
        let kept = {
            let mut all = c.up.paged(|p| p.all());
            // The stored version is the one before the change on page 1.
            all.as_array_mut()
                .expect("array")
                .retain(|i| i["id"] != "new" && i["id"] != "page 4");
            all
        };
        assert_eq!(d, kept, "{}: no partial or new version", c.id);
        assert_eq!(s.history_ids(c.id).await, before, "{}: no event", c.id);
        let msg = v["last_error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains("page"), "{}: {msg}", c.id);
    }
    // The failing middle page shows in-band, with its status, and names
    // page 2.
    let e = sse.until_event("error").await;
    let data: Value = serde_json::from_str(&e.data).expect("error JSON");
    assert_eq!(data["code"], "upstream_status", "{data}");
    assert_eq!(data["status"], 500, "{data}");
    assert!(
        data["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("page 2 "),
        "{data}"
    );
    // The other origin was never asked.
    assert_eq!(other.hits(), 0);
    // A failed poll's figures stop at the failing page.
    let (_, v) = s.get("/v1/resources/middle").await;
    assert_eq!(v["last_poll"]["pages"], 2, "{v}");
    let (_, v) = s.get("/v1/resources/many").await;
    assert!(
        v["last_error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("more than 3 pages"),
        "{v}"
    );
    let text = send(client().get(s.url("/metrics"))).await;
    let text = String::from_utf8_lossy(&text.body).into_owned();
    for c in &cases {
        assert!(
            metric(
                &text,
                &format!("patchfeed_poll_failures_total{{code=\"{}\"}}", c.code)
            ) >= 1.0,
            "{}: {text}",
            c.code
        );
    }
    // Healed, the next poll stores the whole new collection.
    cases[0].up.paged(|p| p.status.clear());
    let healed = cases[0].up.paged(|p| p.all());
    sse.until_doc(&healed).await;
    s.wait_resource("middle", "healed", |v| v["last_error"].is_null())
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_more_bytes_than_the_limit_in_all_fails_and_a_first_failure_stores_nothing() {
    let up = Upstream::start(doc(0)).await;
    // About 600 bytes a page: two fit in 1,500, three do not.
    up.set_pages(
        (0..3)
            .map(|p| vec![json!({"page": p, "pad": "x".repeat(560)})])
            .collect(),
    );
    let config = format!(
        "allow_private_upstreams = true\n[limits]\nupstream_max_body_bytes = 1500\n{}",
        paged(
            "r",
            &up.url_for("/p/link?page=0"),
            r#"{ next = "link" }"#,
            "100ms"
        )
    );
    let s = Server::start(&config);
    let v = failing(&s, "r", "too_large").await;
    let msg = v["last_error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("in all"), "{msg}");
    assert!(s.history_ids("r").await.is_empty(), "never a version");
    assert!(
        up.paged(|p| p.served.get(&2).copied().unwrap_or(0)) >= 1,
        "page 3 was asked for, within what was left of the limit"
    );
    // Two pages fit.
    up.paged(|p| {
        p.pages.pop();
        p.versions.pop();
    });
    let two = up.paged(|p| p.all());
    s.wait_document("r", &two).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_a_long_poll_shows_the_page_being_fetched() {
    let up = Upstream::start(doc(0)).await;
    up.set_pages(pages_of(3, 5));
    up.paged(|p| {
        p.delay.insert(1, Duration::from_secs(2));
    });
    let config = format!(
        "allow_private_upstreams = true\n{}",
        paged(
            "r",
            &up.url_for("/p/url?page=0"),
            r#"{ next = "/next", items = "/results" }"#,
            "1h"
        )
    );
    let s = Server::start(&config);
    let v = s
        .wait_resource("r", "page 2 being fetched", |v| v["polling"]["page"] == 2)
        .await;
    let p = &v["polling"];
    assert_eq!(p["items"], 5, "{v}");
    assert!(p["bytes"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(p["started"].is_string(), "{v}");
    assert!(
        p["url"].as_str().unwrap_or("").ends_with("/p/url?page=1"),
        "{v}"
    );
    s.wait_document("r", &up.paged(|p| p.all())).await;
    let v = s
        .wait_resource("r", "done", |v| v["polling"].is_null())
        .await;
    assert_eq!(v["last_poll"]["pages"], 3, "{v}");
    assert!(
        v["last_poll"]["duration_ms"].as_u64().unwrap_or(0) >= 2000,
        "the delay shows in the duration: {v}"
    );
    s.stop().await;
}
