//! Graceful shutdown of the real binary: on SIGTERM (and SIGINT) every open
//! event stream ends by itself (axum/hyper would otherwise wait for them
//! forever, tokio-rs/axum#2673), the process exits 0 within the grace
//! period, and a restart on the same data dir has every event.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/binary.rs"]
mod binary;

const WAIT: Duration = Duration::from_secs(20);

fn start(dir: &std::path::Path) -> (Child, String) {
    binary::spawn_announced(
        Command::new(env!("CARGO_BIN_EXE_patchfeed"))
            .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .stderr(Stdio::null()),
    )
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit within {WAIT:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ids of `patch`/`snapshot` events in an SSE text.
fn ids(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(str::to_owned)
        .collect()
}

async fn shutdown_ends_streams(sig: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start(dir.path());
    let client = reqwest::Client::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let r = client
            .get(format!("{base}/v1/resources/demo/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    // Let every stream get the snapshot and at least one patch.
    let mut texts = vec![String::new(); streams.len()];
    let deadline = Instant::now() + WAIT;
    for (r, text) in streams.iter_mut().zip(texts.iter_mut()) {
        while !text.contains("event: patch") {
            assert!(
                Instant::now() < deadline,
                "no patch from the demo: {text:?}"
            );
            let chunk = tokio::time::timeout(WAIT, r.chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    signal(&child, sig);
    // Every stream ends cleanly (the body completes, no error).
    for (r, text) in streams.iter_mut().zip(texts.iter_mut()) {
        loop {
            match tokio::time::timeout(WAIT, r.chunk()).await {
                Ok(Ok(Some(chunk))) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => panic!("stream broke instead of ending: {e}"),
                Err(_) => panic!("stream still open {WAIT:?} after {sig}"),
            }
        }
    }
    let status = wait_exit(&mut child);
    assert!(status.success(), "exit status {status}");

    // Everything any client saw is in the log after a restart.
    let (mut child, base) = start(dir.path());
    let history: Value = client
        .get(format!("{base}/v1/resources/demo/history?limit=1000"))
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
    for text in &texts {
        for id in ids(text) {
            assert!(
                stored.contains(&id),
                "event {id} was sent but is not in the log after restart"
            );
        }
    }
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_cleanly() {
    shutdown_ends_streams("-TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_streams_and_exits_cleanly() {
    shutdown_ends_streams("-INT").await;
}
