//! The API in-process, without sockets: `App` (the router on a temp
//! store) called with `oneshot`. Request/response behaviour only: unknown
//! paths and methods, malformed points and ids, bad bodies.

use serde_json::json;

use crate::support::*;

/// An app with resource `r` on a loopback upstream, and its upstream.
async fn app_with_resource() -> (App, Upstream) {
    let up = Upstream::start(json!({"v": 1})).await;
    let app = App::start(|c| c.allow_private_upstreams = true).await;
    let body = json!({"id": "r", "url": up.url(), "interval_ms": 1000}).to_string();
    let r = app.request("POST", "/v1/resources", Some(&body)).await;
    assert_eq!(r.status, 201, "{}", shown(&r.body));
    (app, up)
}

#[tokio::test]
async fn in_process_unknown_paths_are_404_and_wrong_methods_405_json() {
    let (app, _up) = app_with_resource().await;
    for path in UNKNOWN_PATHS {
        let reply = app.get(path).await;
        assert_eq!(reply.status, 404, "GET {path}");
        reply.error_code(404, "not_found");
    }
    for (method, path) in WRONG_METHODS.into_iter().chain([("BREW", "/v1/resources")]) {
        let reply = app.request(method, path, Some("{}")).await;
        reply.error_code(405, "method_not_allowed");
        assert!(
            reply.headers.contains_key("allow"),
            "{method} {path}: Allow"
        );
    }
    // Nothing above changed anything.
    let list = app.get("/v1/resources").await.json();
    assert_eq!(
        list["resources"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    app.stop().await;
}

#[tokio::test]
async fn in_process_malformed_points_ids_and_limits_are_400_naming_the_value() {
    let (app, _up) = app_with_resource().await;
    for (path, named) in [
        ("/v1/resources/r/events?last_event_id=garbage", "garbage"),
        ("/v1/resources/r/events?since=yesterday", "yesterday"),
        ("/v1/resources/r/document?at=2026-13-45", "2026-13-45"),
        ("/v1/resources/r/document?at=", "invalid at: \"\""),
        ("/v1/resources/r/history?after=garbage", "garbage"),
        ("/v1/resources/r/history?limit=0", "\"0\""),
        ("/v1/resources/r/history?limit=100000", "100000"),
        ("/v1/resources/r%20x", "r x"),
    ] {
        let msg = app.get(path).await.error_code(400, "bad_request");
        assert!(msg.contains(named), "{path}: {msg:?} should name {named:?}");
    }
    // The header form of a resume point, too.
    let req = axum::http::Request::get("/v1/resources/r/events")
        .header("Last-Event-ID", "01ARZ3NDEKTSV4RRFFQ69G5FA")
        .body(axum::body::Body::empty())
        .expect("a request");
    let msg = Reply::from_response(app.call(req).await)
        .await
        .error_code(400, "bad_request");
    assert!(msg.contains("01ARZ3NDEKTSV4RRFFQ69G5FA"), "{msg:?}");
    // An unknown resource is 404, a bad body 400 or 422; nothing created.
    app.get("/v1/resources/nope/document")
        .await
        .error_code(404, "resource_not_found");
    app.request("POST", "/v1/resources", Some("{"))
        .await
        .error_code(400, "bad_request");
    app.request(
        "POST",
        "/v1/resources",
        Some(&json!({"url": 5}).to_string()),
    )
    .await
    .error_code(422, "invalid_resource");
    let list = app.get("/v1/resources").await.json();
    assert_eq!(
        list["resources"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    app.stop().await;
}
