//! Graceful shutdown of the real binary: on SIGTERM (and SIGINT) every open
//! event stream ends by itself (axum/hyper would otherwise wait for them
//! forever, tokio-rs/axum#2673), the process exits 0 within the grace
//! period, and a restart on the same data dir has every event.

use serde_json::Value;

mod common;

use common::{client, config, doc, Server, Sse, Upstream, WAIT};

async fn shutdown_ends_streams(sig: &str) {
    // `still` never changes: a long-poll on it is answered only by the
    // shutdown.
    let up = Upstream::start(doc(0)).await;
    let mut s = Server::start_with(&config(&[("still", &up.url())], ""), &[], &["--demo"]);
    s.wait_document("still", &doc(0)).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(Sse::open(&s.url("/v1/resources/demo/events"), None).await);
    }
    // Let every stream get the snapshot and at least one patch.
    for sse in &mut streams {
        sse.until_event("patch").await;
    }

    // An NDJSON stream, and a long-poll waiting for a change that will not
    // come (asked from a point after the head, for 60 s).
    let mut ndjson = client()
        .get(s.url("/v1/resources/demo/changes?feed=continuous"))
        .send()
        .await
        .unwrap();
    assert!(
        ndjson.chunk().await.unwrap().is_some(),
        "the NDJSON snapshot"
    );
    let waiting = tokio::spawn(
        client()
            .get(s.url("/v1/resources/demo/changes?since=7ZZZZZZZZZZZZZZZZZZZZZZZZZ&timeout=60000"))
            .send(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    s.signal(sig);
    // Every stream ends cleanly (the body completes, no error: a broken
    // stream fails `next`).
    for sse in &mut streams {
        while sse.next(WAIT).await.is_some() {}
        assert!(sse.ended, "stream still open {WAIT:?} after {sig}");
    }
    let ended = tokio::time::timeout(WAIT, async {
        while ndjson.chunk().await.expect("a clean end").is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "NDJSON stream still open {WAIT:?} after {sig}"
    );
    let answered = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting long-poll is answered at shutdown")
        .unwrap()
        .expect("an answer, not a reset");
    assert_eq!(answered.status().as_u16(), 200);
    let answer: Value = answered.json().await.unwrap();
    assert_eq!(answer["events"], serde_json::json!([]), "{answer}");
    let status = s.wait_exit(WAIT).await;
    assert!(status.success(), "exit status {status}");

    // Everything any client saw is in the log after a restart.
    s.restart();
    let history: Value = client()
        .get(s.url("/v1/resources/demo/history?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: Vec<String> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    for sse in &streams {
        for id in sse.frames.iter().filter_map(|f| f.id.clone()) {
            assert!(
                stored.contains(&id),
                "event {id} was sent but is not in the log after restart"
            );
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_cleanly() {
    shutdown_ends_streams("-TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_streams_and_exits_cleanly() {
    shutdown_ends_streams("-INT").await;
}
