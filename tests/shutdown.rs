//! Graceful shutdown of the real binary: on SIGTERM (and SIGINT) every open
//! event stream ends by itself (axum/hyper would otherwise wait for them
//! forever, tokio-rs/axum#2673), the process exits 0 within the grace
//! period, and a restart on the same data dir has every event.

use serde_json::Value;

mod common;

use common::{client, Server, Sse, WAIT};

async fn shutdown_ends_streams(sig: &str) {
    let mut s = Server::start_with("", &[], &["--demo"]);
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(Sse::open(&s.url("/v1/resources/demo/events"), None).await);
    }
    // Let every stream get the snapshot and at least one patch.
    for sse in &mut streams {
        sse.until_event("patch").await;
    }

    s.signal(sig);
    // Every stream ends cleanly (the body completes, no error: a broken
    // stream fails `next`).
    for sse in &mut streams {
        while sse.next(WAIT).await.is_some() {}
        assert!(sse.ended, "stream still open {WAIT:?} after {sig}");
    }
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
