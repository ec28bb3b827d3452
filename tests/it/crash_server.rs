//! Crash safety of the whole server: the real binary against a changing
//! upstream, SSE clients recording every id, SIGKILL at random moments,
//! restart on the same data dir, clients resuming with Last-Event-ID.
//! Checked: every id any client received is in the log; the log's ids
//! strictly increase across restarts; each client saw one contiguous run of
//! the log (no gap, no duplicate); every client ends with the upstream's
//! document; resources created over the API survive, deleted ones stay
//! deleted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

const KILLS: usize = 6;
const CLIENTS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_sent_to_any_client() {
    let up = Upstream::start(doc(0)).await;
    let mut s = Server::start(&config(&[("r", &up.url())], ""));
    // Made over the API: one kept, one deleted before the crashes.
    assert_eq!(
        s.post(
            "/v1/resources",
            json!({"id": "kept", "url": up.url(), "interval_ms": 100})
        )
        .await
        .0,
        201
    );
    assert_eq!(
        s.post(
            "/v1/resources",
            json!({"id": "gone", "url": up.url(), "interval_ms": 100})
        )
        .await
        .0,
        201
    );
    assert_eq!(s.delete("/v1/resources/gone").await, 204);

    let base = Arc::new(Mutex::new(s.base.clone()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let version = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // The upstream changes every 60 ms until told to stop.
    let driver = {
        let (up, stop, version) = (up.clone(), stop.clone(), version.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 10_000 {
                i += 1;
                up.set(doc(i % 6)); // no root array: a new version each step
                up.state.lock().unwrap().doc["step"] = json!(i);
                version.store(i, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };

    // Clients: read, and on a broken stream reconnect with Last-Event-ID.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let (base, stop, up) = (base.clone(), stop.clone(), up.clone());
            tokio::spawn(async move {
                let url = || format!("{}/v1/resources/r/events", base.lock().unwrap());
                let mut sse = loop {
                    if let Ok(s) = Sse::try_open(&url(), None).await {
                        break s;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                sse.tolerate_breaks = true;
                let deadline = Instant::now() + Duration::from_secs(90);
                loop {
                    assert!(
                        Instant::now() < deadline,
                        "client {k} never converged: {:?}",
                        sse.names().len()
                    );
                    if stop.load(std::sync::atomic::Ordering::SeqCst)
                        && sse.doc.as_ref() == Some(&up.doc())
                    {
                        return sse;
                    }
                    if sse.ended {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let _ = sse.reconnect(&url()).await;
                        continue;
                    }
                    sse.next(Duration::from_millis(200)).await;
                }
            })
        })
        .collect();

    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rand::random_range(300..1500))).await;
        s.crash_and_restart();
        *base.lock().unwrap() = s.base.clone();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    driver.await.unwrap();
    let last = up.doc();
    s.wait_document("r", &last).await;

    let log = s.history_ids("r").await;
    assert!(
        log.windows(2).all(|w| w[0] < w[1]),
        "ids must strictly increase across restarts"
    );
    for (k, c) in clients.into_iter().enumerate() {
        let sse = c.await.unwrap();
        assert_eq!(sse.doc.as_ref(), Some(&last), "client {k} document");
        let ids: Vec<String> = sse.frames.iter().filter_map(|f| f.id.clone()).collect();
        assert_eq!(
            sse.ids("snapshot").len(),
            1,
            "client {k}: one snapshot, then only patches: {:?}",
            sse.names()
        );
        let start = log
            .iter()
            .position(|x| *x == ids[0])
            .unwrap_or_else(|| panic!("client {k}: {} not in the log", ids[0]));
        assert_eq!(
            &log[start..start + ids.len()],
            &ids[..],
            "client {k}: a gap or a duplicate"
        );
    }
    assert!(version.load(std::sync::atomic::Ordering::SeqCst) > 20);
    // Resources made over the API survive; the deleted one stays deleted.
    assert_eq!(s.get("/v1/resources/kept").await.0, 200);
    assert_eq!(s.get("/v1/resources/gone").await.0, 404);
    let (_, list) = s.get("/v1/resources").await;
    let mut ids: Vec<&str> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["kept", "r"]);
}
