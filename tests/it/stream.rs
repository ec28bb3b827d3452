//! The event stream end to end: snapshot then patches reproduce the
//! upstream exactly; every resume form replays exactly the missed events;
//! resume past the horizon or from a foreign id gets a snapshot; restart
//! keeps resources, logs and ids; DELETE ends streams and stops polling;
//! many clients agree.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn events_url(s: &Server, id: &str) -> String {
    s.url(&format!("/v1/resources/{id}/events"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_patches_reproduce_the_upstream_exactly() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], ""));
    let mut sse = Sse::open(&events_url(&s, "r"), None).await;
    let first = sse.until_event("snapshot").await;
    assert_eq!(sse.retry, Some(2000), "retry: comes first");
    assert_eq!(sse.doc.as_ref(), Some(&doc(0)));
    assert!(first.id.is_some());
    // Front inserts into a 1,000-item list, a root array and back.
    for i in 1..=8 {
        up.set(doc(i));
        sse.until_doc(&doc(i)).await;
    }
    let patches = sse.ids("patch");
    assert!(
        patches.len() >= 8,
        "one patch per change: {:?}",
        sse.names()
    );
    // The stream's ids are exactly the log's.
    let log = s.history_ids("r").await;
    assert_eq!(&log[log.len() - patches.len()..], &patches[..]);
    assert_eq!(log.last(), sse.last_id.as_ref());
    // An unchanged body (304) makes no event: the log does not grow.
    let n = log.len();
    let before = up.requests();
    while up.requests() < before + 5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.history_ids("r").await.len(), n);
    assert!(
        up.state.lock().unwrap().not_modified >= 4,
        "conditional requests must get 304s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resume_form_replays_exactly_the_missed_events() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], ""));
    let mut sse = Sse::open(&events_url(&s, "r"), None).await;
    sse.until_event("snapshot").await;
    for i in 1..=3 {
        up.set(doc(i));
        sse.until_doc(&doc(i)).await;
    }
    let seen = sse.last_id.clone().unwrap();
    let held = sse.doc.clone().unwrap();
    drop(sse);
    // Missed while away.
    for i in 4..=9 {
        up.set(doc(i));
        s.wait_document("r", &doc(i)).await;
    }
    let log = s.history_ids("r").await;
    let k = log.iter().position(|x| *x == seen).unwrap();
    let missed = log[k + 1..].to_vec();
    assert!(missed.len() >= 6);
    let t_of = |id: &str| {
        let ms = ulid::Ulid::from_string(id).unwrap().timestamp_ms();
        (ms, patchfeed::model::format_rfc3339_ms(ms))
    };

    let forms = [
        ("header", events_url(&s, "r"), Some(seen.as_str())),
        (
            "last_event_id",
            format!("{}?last_event_id={seen}", events_url(&s, "r")),
            None,
        ),
        (
            "lastEventId",
            format!("{}?lastEventId={seen}", events_url(&s, "r")),
            None,
        ),
        (
            "since=ulid",
            format!("{}?since={seen}", events_url(&s, "r")),
            None,
        ),
    ];
    for (name, url, header) in forms {
        let mut sse = Sse::open(&url, header).await;
        sse.doc = Some(held.clone());
        sse.until_doc(&up.doc()).await;
        assert_eq!(
            sse.ids("snapshot").len(),
            0,
            "{name}: a resume gets no snapshot"
        );
        assert_eq!(
            sse.ids("patch"),
            missed,
            "{name}: exactly the missed events, in order"
        );
    }
    // since=<RFC 3339> and since=<unix ms> of the last seen event's time:
    // every event after that millisecond (events of the same millisecond
    // as `seen` are at or before the point).
    let (ms, rfc) = t_of(&seen);
    let after_ms: Vec<String> = log
        .iter()
        .filter(|x| ulid::Ulid::from_string(x).unwrap().timestamp_ms() > ms)
        .cloned()
        .collect();
    for (name, point) in [("rfc3339", rfc), ("unix ms", ms.to_string())] {
        let mut sse = Sse::open(
            &format!(
                "{}?since={}",
                events_url(&s, "r"),
                point.replace('+', "%2B")
            ),
            None,
        )
        .await;
        // The client holds the document as of the point.
        sse.doc = Some(s.get(&format!("/v1/resources/r/document?at={ms}")).await.1);
        let want: Vec<String> = after_ms.clone();
        let deadline = std::time::Instant::now() + WAIT;
        while sse.ids("patch").len() < want.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: {:?}",
                sse.names()
            );
            sse.next(Duration::from_secs(1)).await;
        }
        assert_eq!(sse.ids("patch"), want, "{name}");
        assert_eq!(sse.ids("snapshot").len(), 0, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_id_or_a_point_before_the_horizon_gets_a_snapshot() {
    let up = Upstream::start(doc(0)).await;
    let cfg = format!(
        "allow_private_upstreams = true\n[limits]\ncompact_every = \"200ms\"\n[[resource]]\nid = \"r\"\nurl = \"{}\"\ninterval = \"100ms\"\nsnapshot_every = 2\nretain = \"1s\"\n",
        up.url()
    );
    let s = Server::start(&cfg);
    let mut sse = Sse::open(&events_url(&s, "r"), None).await;
    sse.until_event("snapshot").await;
    for i in 1..=3 {
        up.set(doc(i));
        sse.until_doc(&doc(i)).await;
    }
    let old = sse.ids("patch")[0].clone();
    // Age the early events past `retain`, then one more change.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    up.set(doc(4));
    sse.until_doc(&doc(4)).await;
    s.wait_resource("r", "compaction", |v| {
        v["compacted"] == true && v["horizon"].as_str() > Some(old.as_str())
    })
    .await;

    // Before the horizon: a snapshot of the current document, then live.
    let mut late = Sse::open(&events_url(&s, "r"), Some(&old)).await;
    let f = late.until_event("snapshot").await;
    assert_eq!(late.doc.as_ref(), Some(&doc(4)));
    assert_eq!(f.id.as_deref(), sse.last_id.as_deref());
    up.set(doc(5));
    late.until_doc(&doc(5)).await;
    // 410 for time travel before the horizon.
    let (status, v) = s.get(&format!("/v1/resources/r/document?at={old}")).await;
    assert_eq!(status, 410, "{v}");
    assert_eq!(v["error"]["code"], "compacted");

    // A well-formed id this log never had (another data dir): a snapshot.
    let foreign = ulid::Ulid::generate().to_string();
    let mut other = Sse::open(&events_url(&s, "r"), Some(&foreign)).await;
    other.until_event("snapshot").await;
    assert_eq!(other.doc.as_ref(), Some(&doc(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_resources_logs_and_ids_and_clients_resume_across_it() {
    let up = Upstream::start(doc(0)).await;
    let mut s = Server::start(&config(&[], ""));
    let (status, created) = s
        .post(
            "/v1/resources",
            json!({"id": "api-made", "url": up.url(), "interval_ms": 100}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let mut sse = Sse::open(&events_url(&s, "api-made"), None).await;
    sse.until_event("snapshot").await;
    for i in 1..=3 {
        up.set(doc(i));
        sse.until_doc(&doc(i)).await;
    }
    let before = s.history_ids("api-made").await;
    let held = sse.doc.clone();
    let seen = sse.last_id.clone().unwrap();
    drop(sse);

    s.crash_and_restart();
    let after = s.history_ids("api-made").await;
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the log survives the restart"
    );
    up.set(doc(4));
    let mut sse = Sse::open(&events_url(&s, "api-made"), Some(&seen)).await;
    sse.doc = held;
    sse.until_doc(&doc(4)).await;
    let ids = s.history_ids("api-made").await;
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increase across the restart"
    );
    assert_eq!(
        sse.ids("patch"),
        ids[before.len()..].to_vec(),
        "resumed with no gap or duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_open_streams_and_stops_polling() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], ""));
    let mut a = Sse::open(&events_url(&s, "r"), None).await;
    let mut b = Sse::open(&events_url(&s, "r"), None).await;
    a.until_event("snapshot").await;
    b.until_event("snapshot").await;
    assert_eq!(s.delete("/v1/resources/r").await, 204);
    for sse in [&mut a, &mut b] {
        while sse.next(WAIT).await.is_some() {}
        assert!(sse.ended, "the stream must end after DELETE");
    }
    let n = up.requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        up.requests() <= n + 1,
        "polling must stop: {} → {}",
        n,
        up.requests()
    );
    let (status, v) = s.get("/v1/resources/r").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("resource_not_found"))
    );
    assert_eq!(s.delete("/v1/resources/r").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_end_with_the_upstreams_document() {
    let up = Upstream::start(doc(0)).await;
    let s = Server::start(&config(&[("r", &up.url())], "[limits]\nlive_buffer = 4\n"));
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Sse::open(&events_url(&s, "r"), None).await);
    }
    let driver = {
        let up = up.clone();
        tokio::spawn(async move {
            for i in 1..=12 {
                up.set(doc(i));
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, mut sse)| {
            tokio::spawn(async move {
                // Some clients read slowly, so the small live buffer lags.
                let want = doc(12);
                let deadline = std::time::Instant::now() + WAIT;
                while sse.doc.as_ref() != Some(&want) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "client {k} stuck: {:?}",
                        sse.names()
                    );
                    sse.next(Duration::from_secs(1)).await;
                    if k % 5 == 0 {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                }
                sse.ids("patch")
            })
        })
        .collect();
    driver.await.unwrap();
    let log = s.history_ids("r").await;
    for t in tasks {
        let patches = t.await.unwrap();
        // Gap-free: the patches are a contiguous run of the log.
        let k = log.iter().position(|x| Some(x) == patches.first()).unwrap();
        assert_eq!(&log[k..k + patches.len()], &patches[..]);
    }
}
