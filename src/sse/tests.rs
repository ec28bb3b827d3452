//! The merge of log catch-up and live delivery, against the real store and
//! hub: with publications dropped (gaps), a tiny live buffer (lag), any
//! resume point and a slow reader, the stream is strictly increasing,
//! complete, and replays to the final document.

use std::time::Duration;

use futures_util::StreamExt;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::hub::Hub;
use crate::model::{now_ms, ResourceSpec, MAX_ULID_MS};

#[derive(Debug, Default)]
struct Frame {
    event: String,
    id: Option<String>,
    data: String,
}

fn parse(buf: &str) -> Vec<Frame> {
    buf.split("\n\n")
        .filter(|f| !f.is_empty())
        .filter_map(|f| {
            let mut fr = Frame::default();
            for line in f.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    fr.event = v.into();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    fr.id = Some(v.into());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    fr.data = v.into();
                }
            }
            (!fr.event.is_empty()).then_some(fr)
        })
        .collect()
}

fn doc(i: usize) -> Value {
    // Front inserts, a key with '/' and '~', and a root type change.
    if i % 7 == 6 {
        return json!([i, "root array"]);
    }
    json!({ "n": i, "a/b~c": (0..(i % 5)).rev().collect::<Vec<_>>(), "é": "ü".repeat(i % 3) })
}

#[derive(Debug, Clone)]
enum Start {
    Fresh,
    /// Index into the events appended before the stream opens.
    Id(usize),
    UnknownId,
    SinceTime(usize),
    SinceZero,
}

fn run_case(
    before: usize,
    after: usize,
    drop_mask: u64,
    capacity: usize,
    start: Start,
    slow: bool,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = ResourceId::new("r").unwrap();
        store
            .create(
                ResourceSpec {
                    id: id.clone(),
                    url: "http://127.0.0.1:1/".into(),
                    interval: Duration::from_secs(1),
                    headers: Default::default(),
                    snapshot_every: 3,
                    retain: None,
                    ad_hoc: false,
                },
                0,
            )
            .await
            .unwrap();
        let hub = Arc::new(Hub::new(capacity));
        let mut versions: Vec<(EventId, Value)> = Vec::new();
        for i in 0..before {
            let e = store.append(&id, doc(i)).await.unwrap().unwrap();
            versions.push((e.id, doc(i)));
        }
        let resume = match &start {
            Start::Fresh => Resume::Fresh,
            Start::Id(k) if !versions.is_empty() => {
                Resume::LastEventId(versions[k % versions.len()].0 .0)
            }
            Start::Id(_) | Start::UnknownId => {
                Resume::LastEventId(Ulid::from_parts(MAX_ULID_MS / 2, 7))
            }
            Start::SinceTime(k) if !versions.is_empty() => {
                Resume::Since(Point::Time(versions[k % versions.len()].0.time_ms()))
            }
            Start::SinceTime(_) | Start::SinceZero => Resume::Since(Point::Time(0)),
        };
        let ctx = Ctx {
            store: store.clone(),
            metrics: Arc::new(Metrics::default()),
            config: StreamConfig {
                keep_alive: Duration::from_millis(50),
                retry_ms: 1000,
                page: 2,
                page_bytes: 64,
            },
            shutdown: CancellationToken::new(),
        };
        let rx = hub.subscribe(&id);
        let mut body = Box::pin(stream(ctx, id.clone(), rx, resume, Flavor::Native));

        let producer = {
            let (store, hub, id) = (store.clone(), hub.clone(), id.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for j in 0..after {
                    let i = before + j;
                    let (e, prev) = store
                        .append_chained(&id, doc(i), now_ms())
                        .await
                        .unwrap()
                        .unwrap();
                    out.push((e.id, doc(i)));
                    // Drop some publications (never the last) to make gaps.
                    if j + 1 == after || drop_mask & (1 << (j % 64)) == 0 {
                        hub.publish(&id, e, prev);
                    }
                    if j % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                out
            })
        };

        // Read while the producer runs, so catch-up, lag and live interleave.
        let mut text = String::new();
        let mut producer = Some(producer);
        let mut want_last: Option<EventId> = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if producer.as_ref().is_some_and(|p| p.is_finished()) {
                let produced = producer.take().unwrap().await.unwrap();
                versions.extend(produced);
                want_last = versions.last().map(|v| v.0);
            }
            if let Some(w) = want_last {
                if text.contains(&format!("id: {w}\n")) {
                    break;
                }
            }
            let chunk = tokio::time::timeout_at(deadline, body.next()).await;
            let Ok(Some(Ok(chunk))) = chunk else {
                return Err(TestCaseError::fail(format!(
                    "stream stalled; got so far:\n{text}"
                )));
            };
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            if slow {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        let frames = parse(&text);
        prop_assert!(text.starts_with("retry: 1000\n\n"));
        // Reconstruct: a snapshot replaces the copy, patches apply in order.
        let mut copy: Option<Value> = match start {
            Start::Id(k) if before > 0 => Some(versions[k % before].1.clone()),
            // The client holds the document as of T: the last version at or
            // before T's millisecond.
            Start::SinceTime(k) if before > 0 => {
                let t = versions[k % before].0.time_ms();
                versions[..before]
                    .iter()
                    .rev()
                    .find(|v| v.0.time_ms() <= t)
                    .map(|v| v.1.clone())
            }
            _ => None,
        };
        let mut last: Option<EventId> = match (&start, &resume) {
            (Start::Id(_), Resume::LastEventId(u)) if before > 0 => Some(EventId(*u)),
            _ => None,
        };
        for f in frames.iter().filter(|f| f.event != "error") {
            let fid = EventId(Ulid::from_string(f.id.as_deref().unwrap()).unwrap());
            if let Some(l) = last {
                prop_assert!(fid > l, "ids must strictly increase: {fid} after {l}");
            }
            match f.event.as_str() {
                "snapshot" => copy = Some(serde_json::from_str(&f.data).unwrap()),
                "patch" => {
                    let patch: json_patch::Patch = serde_json::from_str(&f.data).unwrap();
                    let c = copy.as_mut().expect("a patch before any snapshot");
                    json_patch::patch(c, &patch).unwrap();
                    // Complete: every patch is the very next version.
                    let k = versions.iter().position(|v| v.0 == fid).unwrap();
                    prop_assert_eq!(&*c, &versions[k].1);
                    if let Some(l) = last {
                        prop_assert_eq!(versions[k - 1].0, l, "gap before {}", fid);
                    }
                }
                other => prop_assert!(false, "unexpected event {other}"),
            }
            last = Some(fid);
        }
        prop_assert_eq!(copy.as_ref(), Some(&versions.last().unwrap().1));
        // A known resume id gets patches only, never a snapshot.
        if matches!(start, Start::Id(_)) && before > 0 {
            prop_assert!(frames.iter().all(|f| f.event != "snapshot"));
        }
        Ok(())
    });
    drop(rt);
    r
}

fn arb_start() -> impl Strategy<Value = Start> {
    prop_oneof![
        Just(Start::Fresh),
        any::<usize>().prop_map(Start::Id),
        Just(Start::UnknownId),
        any::<usize>().prop_map(Start::SinceTime),
        Just(Start::SinceZero),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn catch_up_and_live_merge_without_gaps_or_duplicates(
        before in 0usize..8,
        after in 1usize..30,
        drop_mask in any::<u64>(),
        capacity in 1usize..4,
        start in arb_start(),
        slow in any::<bool>(),
    ) {
        let r = run_case(before, after, drop_mask, capacity, start, slow);
        r?;
    }
}
