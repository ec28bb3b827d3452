//! Model-based tests of the log, after sled's `prop_tree_matches_btreemap`:
//! random operations run against the real store and a plain in-memory model,
//! across restarts, and every answer must agree. The model test drives the
//! log through the `Storage` trait (`open_backend`).

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

pub(crate) fn spec(id: &str, snapshot_every: u32, retain: Option<Duration>) -> ResourceSpec {
    ResourceSpec {
        id: ResourceId::new(id).unwrap(),
        url: "http://127.0.0.1:1/x".into(),
        interval: Duration::from_secs(1),
        headers: Default::default(),
        snapshot_every,
        retain,
        ad_hoc: false,
        push: false,
        pages: None,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Small JSON documents that exercise the awkward parts of JSON Pointer and
/// array diffs: keys with `/` and `~`, unicode, root arrays, type changes.
fn arb_doc() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5).prop_map(|n| json!(n)),
        prop::sample::select(vec!["", "x", "ü", "a/b", "~1"]).prop_map(|s| json!(s)),
    ];
    let inner = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "a/b", "c~d", "~", "é", ""]),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    });
    prop_oneof![
        4 => inner.clone().prop_map(|v| json!({"root": v})),
        1 => prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
        1 => inner,
    ]
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Append a document after advancing the clock by `dt` ms (may step back).
    Append {
        doc: Value,
        dt: i64,
    },
    ReadAfter {
        at: usize,
        limit: usize,
    },
    DocumentAt {
        at: usize,
        by_time: bool,
    },
    History {
        after: Option<usize>,
        before: Option<usize>,
        limit: usize,
    },
    Compact {
        dt: u64,
    },
    /// Reopen the store, then write values longer than `chunk_bytes`
    /// (0: the default) in chunks.
    Restart {
        chunk_bytes: usize,
    },
}

/// Chunk sizes for the model tests: tiny, so that small documents are
/// stored chunked; 0 keeps the default (everything small stays inline).
pub(crate) fn chunk_size(c: usize) -> usize {
    match c {
        0 => values::CHUNK_BYTES,
        c => c * 7,
    }
}

pub(crate) fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (arb_doc(), -3i64..20).prop_map(|(doc, dt)| Op::Append { doc, dt }),
        2 => (any::<usize>(), 1usize..6).prop_map(|(at, limit)| Op::ReadAfter { at, limit }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(at, by_time)| Op::DocumentAt { at, by_time }),
        1 => (any::<Option<usize>>(), any::<Option<usize>>(), 1usize..5)
            .prop_map(|(after, before, limit)| Op::History { after, before, limit }),
        1 => (0u64..60).prop_map(|dt| Op::Compact { dt }),
        1 => (0usize..6).prop_map(|c| Op::Restart { chunk_bytes: c }),
    ]
}

/// The model: every version ever appended, and the index of the horizon.
#[derive(Default)]
struct Model {
    versions: Vec<(EventId, Value)>,
    horizon: usize,
    compacted: bool,
}

fn apply_patch(doc: &mut Value, patch: &[u8]) {
    let p: json_patch::Patch = serde_json::from_slice(patch).unwrap();
    diff::apply(doc, &p.0).unwrap();
}

/// The backend under the model test, opened on `dir`: every operation of
/// `prop_log_matches_model` goes through the `Storage` trait object; the
/// concrete handle is for sled-only checks (its chunk keys). sled stores
/// values longer than `chunk` bytes in chunks. A second backend runs the
/// same model by opening itself here.
fn open_backend(dir: &std::path::Path, chunk: usize) -> (crate::store::Store, Arc<Store>) {
    let sled = Arc::new(Store::open(dir).unwrap());
    sled.set_chunk_bytes(chunk);
    (sled.clone(), sled)
}

/// The model test's body, for any backend: `open(chunk)` opens (or
/// reopens) the backend under test, with values over `chunk` bytes stored
/// in chunks, and returns the sled handle when it is sled (for its chunk
/// key checks).
pub(crate) fn check_model(
    rt: &tokio::runtime::Runtime,
    ops: Vec<Op>,
    snapshot_every: u32,
    first_chunk: usize,
    open: &mut dyn FnMut(usize) -> (crate::store::Store, Option<Arc<Store>>),
) -> Result<(), TestCaseError> {
    let id = ResourceId::new("r").unwrap();
    const RETAIN_MS: u64 = 30;
    let (mut store, mut sled) = open(chunk_size(first_chunk));
    rt.block_on(store.create(
        spec("r", snapshot_every, Some(Duration::from_millis(RETAIN_MS))),
        0,
    ))
    .unwrap();
    let mut m = Model::default();
    let mut clock: i64 = 1_000_000;

    for op in ops {
        match op {
            Op::Append { doc, dt } => {
                clock += dt;
                let got = rt
                    .block_on(store.append(&id, doc.clone(), clock as u64))
                    .unwrap()
                    .map(|(e, _)| e);
                match m.versions.last() {
                    Some((_, last)) if *last == doc => prop_assert!(got.is_none()),
                    prev => {
                        let e = got.expect("a change appends an event");
                        if let Some((pid, pdoc)) = prev {
                            prop_assert!(e.id > *pid);
                            let mut d = pdoc.clone();
                            apply_patch(&mut d, &e.patch);
                            prop_assert_eq!(&d, &doc);
                        }
                        m.versions.push((e.id, doc));
                    }
                }
            }
            Op::ReadAfter { at, limit } => {
                if m.versions.is_empty() {
                    continue;
                }
                let i = at % m.versions.len();
                let p = m.versions[i].0;
                let got = rt
                    .block_on(store.read_after(&id, p.0, limit, usize::MAX))
                    .unwrap();
                if i < m.horizon {
                    prop_assert_eq!(
                        got,
                        ReadAfter::BeforeHorizon {
                            horizon: m.versions[m.horizon].0
                        }
                    );
                } else {
                    let ReadAfter::Events(evs) = got else {
                        panic!("expected events")
                    };
                    let want: Vec<EventId> = m.versions[i + 1..]
                        .iter()
                        .take(limit)
                        .map(|v| v.0)
                        .collect();
                    prop_assert_eq!(evs.iter().map(|e| e.id).collect::<Vec<_>>(), want);
                    let mut d = m.versions[i].1.clone();
                    for (k, e) in evs.iter().enumerate() {
                        apply_patch(&mut d, &e.patch);
                        prop_assert_eq!(&d, &m.versions[i + 1 + k].1);
                    }
                }
            }
            Op::DocumentAt { at, by_time } => {
                if m.versions.is_empty() {
                    prop_assert_eq!(
                        rt.block_on(store.document_at(&id, Point::Time(u64::MAX >> 16)))
                            .unwrap(),
                        At::NotYet
                    );
                    continue;
                }
                let i = at % m.versions.len();
                let (point, want_idx) = if by_time {
                    // As of an instant: the last version whose time ≤ it.
                    let t = m.versions[i].0.time_ms();
                    let j = m.versions.iter().rposition(|v| v.0.time_ms() <= t).unwrap();
                    (Point::Time(t), j)
                } else {
                    (Point::Id(m.versions[i].0 .0), i)
                };
                let got = rt.block_on(store.document_at(&id, point)).unwrap();
                if want_idx < m.horizon {
                    let h = m.versions[m.horizon].0;
                    prop_assert_eq!(
                        got,
                        if m.compacted {
                            At::Compacted { horizon: h }
                        } else {
                            At::NotYet
                        }
                    );
                } else {
                    let (wid, wdoc) = &m.versions[want_idx];
                    prop_assert_eq!(
                        got,
                        At::Found {
                            id: *wid,
                            doc: Arc::new(wdoc.clone())
                        }
                    );
                }
            }
            Op::History {
                after,
                before,
                limit,
            } => {
                let n = m.versions.len();
                let after = after.filter(|_| n > 0).map(|a| a % n);
                let before = before.filter(|_| n > 0).map(|b| b % n);
                let res = rt
                    .block_on(store.history(
                        &id,
                        after.map(|a| Point::Id(m.versions[a].0 .0)),
                        before.map(|b| Point::Id(m.versions[b].0 .0)),
                        limit,
                    ))
                    .unwrap();
                if m.compacted && after.is_some_and(|a| a < m.horizon) {
                    prop_assert_eq!(
                        res,
                        History::Compacted {
                            horizon: m.versions[m.horizon].0
                        }
                    );
                    continue;
                }
                let lo = after.map_or(m.horizon, |a| (a + 1).max(m.horizon));
                let hi = before.map_or(n, |b| b + 1);
                let want: Vec<EventId> = if lo < hi {
                    m.versions[lo..hi].iter().map(|v| v.0).collect()
                } else {
                    vec![]
                };
                // Follow the cursor to the end.
                let mut got = Vec::new();
                let mut res = res;
                loop {
                    let History::Events { events, next_after } = res else {
                        panic!("expected events")
                    };
                    prop_assert!(events.len() <= limit);
                    got.extend(events.iter().map(|e| e.id));
                    match next_after {
                        None => break,
                        Some(c) => {
                            prop_assert_eq!(Some(c), got.last().copied());
                            res = rt
                                .block_on(store.history(
                                    &id,
                                    Some(Point::Id(c.0)),
                                    before.map(|b| Point::Id(m.versions[b].0 .0)),
                                    limit,
                                ))
                                .unwrap();
                        }
                    }
                }
                prop_assert_eq!(got, want);
            }
            Op::Compact { dt } => {
                clock += dt as i64;
                let got = rt.block_on(store.compact(&id, clock as u64)).unwrap();
                let cutoff = (clock as u64).saturating_sub(RETAIN_MS);
                let cand = m.versions.iter().rposition(|v| v.0.time_ms() <= cutoff);
                match cand {
                    Some(j) if j > m.horizon => {
                        let Compaction::Done { horizon, .. } = got else {
                            panic!("expected compaction to {j}, got {got:?}")
                        };
                        prop_assert_eq!(horizon, m.versions[j].0);
                        m.horizon = j;
                        m.compacted = true;
                    }
                    _ => prop_assert_eq!(got, Compaction::Nothing),
                }
            }
            Op::Restart { chunk_bytes } => {
                drop(store);
                drop(sled);
                (store, sled) = open(chunk_size(chunk_bytes));
            }
        }
        // Invariants after every op.
        let st = store.status(&id).unwrap();
        prop_assert_eq!(st.last_event_id, m.versions.last().map(|v| v.0));
        prop_assert_eq!(st.horizon, m.versions.get(m.horizon).map(|v| v.0));
        prop_assert_eq!(st.compacted, m.compacted);
        prop_assert_eq!(
            st.events,
            (m.versions.len() - m.horizon.min(m.versions.len())) as u64
        );
        if let Some((_, last)) = m.versions.last() {
            prop_assert_eq!(&*store.head(&id).unwrap().unwrap().doc, last);
        }
    }
    // Compaction removed the chunks of what it removed: every chunk
    // left belongs to a retained event or snapshot.
    let Some(sled) = sled else { return Ok(()) };
    let rkey = sled.entry(&id).unwrap().rkey;
    for tag in [keys::EVENT, keys::SNAPSHOT] {
        for k in sled
            .inner
            .tree
            .scan_prefix(keys::entry_prefix(keys::chunk_tag(tag), rkey))
            .keys()
        {
            let k = k.unwrap();
            let owner = keys::entry(
                tag,
                rkey,
                keys::entry_id(&k[..keys::ENTRY_KEY_LEN]).unwrap().0,
            );
            prop_assert!(
                sled.inner.tree.contains_key(owner).unwrap(),
                "chunk {:?} without its entry",
                k
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prop_log_matches_model(
        ops in prop::collection::vec(arb_op(), 1..60),
        snapshot_every in 1u32..5,
        first_chunk in 0usize..6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        check_model(&rt, ops, snapshot_every, first_chunk, &mut |chunk| {
            let (store, sled) = open_backend(dir.path(), chunk);
            (store, Some(sled))
        })?;
    }

    /// For any sequence of documents: `document_at(id_i) == doc_i` for every
    /// i, and replaying `read_after(p)` onto `document_at(p)` gives the
    /// current document, for every point p.
    #[test]
    fn prop_time_travel_and_replay(docs in prop::collection::vec(arb_doc(), 1..25), snapshot_every in 1u32..6, chunk in 0usize..6) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let id = ResourceId::new("r").unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_chunk_bytes(chunk_size(chunk));
        rt.block_on(store.create(spec("r", snapshot_every, None), 0)).unwrap();
        let mut versions: Vec<(EventId, Value)> = Vec::new();
        for d in docs {
            if let Some(e) = rt.block_on(store.append(&id, d.clone())).unwrap() {
                versions.push((e.id, d));
            }
        }
        let current = versions.last().unwrap().1.clone();
        for (vid, vdoc) in &versions {
            let At::Found { id: got_id, doc } = store.document_at(&id, Point::Id(vid.0)).unwrap() else { panic!() };
            prop_assert_eq!(got_id, *vid);
            prop_assert_eq!(&*doc, vdoc);
            let mut d = (*doc).clone();
            let mut after = vid.0;
            loop {
                let ReadAfter::Events(evs) = store.read_after(&id, after, 2).unwrap() else { panic!() };
                if evs.is_empty() { break; }
                for e in &evs { apply_patch(&mut d, &e.patch); after = e.id.0; }
            }
            prop_assert_eq!(&d, &current);
        }
    }
}

#[tokio::test]
async fn snapshots_bound_the_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = ResourceId::new("r").unwrap();
    store.create(spec("r", 10, None), 0).await.unwrap();
    for i in 0..35 {
        store.append(&id, json!({ "n": i })).await.unwrap();
    }
    let snaps = store
        .inner
        .tree
        .scan_prefix(keys::entry_prefix(keys::SNAPSHOT, 1))
        .count();
    // The first version, then one every 10 events: after events 1, 11, 21, 31.
    assert_eq!(snaps, 4);
}

#[tokio::test]
async fn delete_removes_everything_and_a_new_resource_starts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Small enough that these documents are chunked, and their chunks purged.
    store.set_chunk_bytes(2);
    let id = ResourceId::new("r").unwrap();
    store.create(spec("r", 2, None), 0).await.unwrap();
    let mut old = Vec::new();
    for i in 0..10 {
        old.push(store.append(&id, json!([i])).await.unwrap().unwrap().id);
    }
    assert!(store.inner.tree.scan_prefix([keys::EVENT_CHUNK]).count() > 0);
    assert!(store.delete(&id).await.unwrap());
    assert!(!store.delete(&id).await.unwrap());
    assert!(matches!(
        store.append(&id, json!(1)).await,
        Err(StoreError::NoSuchResource(_))
    ));
    // Purge runs in the background and removes the tombstone last; wait
    // for it, bounded.
    for _ in 0..300 {
        if store.inner.tree.scan_prefix([keys::TOMBSTONE]).count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for tag in ENTRY_TAGS.into_iter().chain([keys::TOMBSTONE]) {
        assert_eq!(
            store.inner.tree.scan_prefix([tag]).count(),
            0,
            "{}",
            tag as char
        );
    }

    assert!(matches!(
        store.create(spec("r", 2, None), 0).await.unwrap(),
        Created::New(_)
    ));
    let e = store
        .append(&id, json!({"fresh": true}))
        .await
        .unwrap()
        .unwrap();
    // An id from the deleted incarnation is before the new horizon.
    assert_eq!(
        store.read_after(&id, old[5].0, 10).unwrap(),
        ReadAfter::BeforeHorizon { horizon: e.id }
    );
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.resources().len(), 1);
    assert_eq!(store.status(&id).unwrap().last_event_id, Some(e.id));
}

#[tokio::test]
async fn create_put_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(
        store.create(spec("b", 5, None), 7).await.unwrap(),
        Created::New(_)
    ));
    assert!(
        matches!(store.create(spec("b", 9, None), 8).await.unwrap(), Created::Exists(r) if r.spec.snapshot_every == 5)
    );
    let mut s = spec("b", 9, Some(Duration::from_secs(60)));
    s.headers.insert("Authorization".into(), "Bearer x".into());
    let r = store.put(s.clone(), 9).await.unwrap();
    assert_eq!(r.created_ms, 7);
    assert_eq!(r.spec, s);
    store.put(spec("a", 1, None), 10).await.unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let ids: Vec<_> = store
        .resources()
        .into_iter()
        .map(|r| r.spec.id.to_string())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(
        store.resource(&ResourceId::new("b").unwrap()).unwrap().spec,
        s
    );
}

#[test]
fn refuses_other_format_versions() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    {
        let db = open_db(dir.path()).unwrap();
        db.insert(keys::VERSION, &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path()).err().unwrap();
    assert!(
        matches!(
            err,
            StoreError::Version {
                found: 99,
                expected: 2
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("version 99"));

    let foreign = tempfile::tempdir().unwrap();
    {
        let db = sled::open(foreign.path()).unwrap();
        db.insert(b"hello", b"world").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        Store::open(foreign.path()),
        Err(StoreError::Foreign)
    ));
}

/// 500 appends from 20 resources at once: each resource's ids are in
/// order and read back exactly, and the appends share fsyncs (the flush
/// thread answers every waiter queued behind the one it took; about 25
/// flushes here, 500 if each append flushed alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_flushes_and_stay_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let names: Vec<String> = (0..20).map(|r| format!("r{r}")).collect();
    for name in &names {
        store.create(spec(name, 3, None), 0).await.unwrap();
    }
    let before = store.flushes();
    let mut tasks = Vec::new();
    for name in names {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = ResourceId::new(&name).unwrap();
            let mut ids = Vec::new();
            for i in 0..25 {
                ids.push(
                    store
                        .append(&id, json!({ "i": i }))
                        .await
                        .unwrap()
                        .unwrap()
                        .id,
                );
            }
            (id, ids)
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    let flushes = store.flushes() - before;
    assert!(
        flushes <= 250,
        "500 concurrent appends took {flushes} flushes: group commit is not grouping"
    );
    for (id, ids) in done {
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let ReadAfter::Events(evs) = store.read_after(&id, ids[0].0, 100).unwrap() else {
            panic!()
        };
        assert_eq!(evs.iter().map(|e| e.id).collect::<Vec<_>>(), ids[1..]);
    }
}

/// A crash between an append's snapshot write and its event write leaves a
/// snapshot of a version that never was; a crash inside a delete leaves a
/// tombstone beside the record. Neither may surface after a restart.
#[tokio::test]
async fn writes_cut_by_a_crash_are_ignored_or_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (id, gone) = (
        ResourceId::new("r").unwrap(),
        ResourceId::new("gone").unwrap(),
    );
    let (rkey, gone_rkey, last) = {
        let store = Store::open(dir.path()).unwrap();
        store.create(spec("r", 2, None), 0).await.unwrap();
        store.create(spec("gone", 2, None), 0).await.unwrap();
        let mut last = None;
        for i in 0..3 {
            last = Some(
                store
                    .append(&id, json!({ "i": i }))
                    .await
                    .unwrap()
                    .unwrap()
                    .id,
            );
        }
        store
            .append(&gone, json!({ "g": 1 }))
            .await
            .unwrap()
            .unwrap();
        let rkey = store.entry(&id).unwrap().rkey;
        let gone_rkey = store.entry(&gone).unwrap().rkey;
        (rkey, gone_rkey, last.unwrap())
    };
    // What the crashed process left behind.
    let orphan = Ulid::from_parts(last.0.timestamp_ms() + 5, 0);
    {
        let db = open_db(dir.path()).unwrap();
        db.insert(
            keys::entry(keys::SNAPSHOT, rkey, orphan),
            codec::encode_json(br#"{"never":"was"}"#),
        )
        .unwrap();
        db.insert(keys::per_rkey(keys::TOMBSTONE, gone_rkey), &[][..])
            .unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(
        store.resource(&gone).is_none(),
        "the cut delete is finished"
    );
    assert_eq!(store.resources().len(), 1);
    assert_eq!(*store.head(&id).unwrap().unwrap().doc, json!({ "i": 2 }));
    let At::Found { doc, .. } = store.document_at(&id, Point::Id(orphan)).unwrap() else {
        panic!()
    };
    assert_eq!(*doc, json!({ "i": 2 }));
    assert!(!store
        .inner
        .tree
        .contains_key(keys::entry(keys::SNAPSHOT, rkey, orphan))
        .unwrap());
    // The chain goes on as if nothing had been written: one more event needs
    // no snapshot (snapshot_every 2: the last was at event 3).
    let next = store.append(&id, json!({ "i": 3 })).await.unwrap().unwrap();
    let At::Found { doc, .. } = store.document_at(&id, Point::Id(next.id.0)).unwrap() else {
        panic!()
    };
    assert_eq!(*doc, json!({ "i": 3 }));
    // Even an orphan the open did not see (written while running) is
    // skipped by a rebuild.
    let later = Ulid::from_parts(next.id.0.timestamp_ms() + 5, 0);
    store
        .inner
        .tree
        .insert(
            keys::entry(keys::SNAPSHOT, rkey, later),
            codec::encode_json(br#"{"never":"was"}"#),
        )
        .unwrap();
    let (_, doc) = rebuild(&store.inner.tree, rkey, Ulid::max())
        .unwrap()
        .unwrap();
    assert_eq!(doc, json!({ "i": 3 }));
}

/// Found by `fuzz/ diff_roundtrip`: without serde_json's `float_roundtrip`,
/// a 17-digit double read back from the store differed from the one
/// appended, so a restart changed the head and the next poll of the same
/// upstream document appended a phantom event.
#[tokio::test]
async fn doubles_survive_the_store_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let id = ResourceId::new("r").unwrap();
    let doc: Value =
        serde_json::from_str(r#"{"price": 99634467.830471407, "n": [0.1, 1e-300, 5e-324]}"#)
            .unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.create(spec("r", 1, None), 0).await.unwrap();
        store.append(&id, doc.clone()).await.unwrap().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(*store.head(&id).unwrap().unwrap().doc, doc);
    assert!(store.append(&id, doc.clone()).await.unwrap().is_none());
}

/// `?since=T` reads after `Ulid(T, MAX)`, the last id of T's millisecond:
/// the next event is in a later millisecond, and must not be skipped
/// (`Ulid::increment` returns an error at the end of a millisecond).
#[tokio::test]
async fn read_after_the_last_id_of_a_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = ResourceId::new("r").unwrap();
    store.create(spec("r", 10, None), 0).await.unwrap();
    let a = store
        .append_at(&id, json!({"n": 1}), 1_000)
        .await
        .unwrap()
        .unwrap();
    let b = store
        .append_at(&id, json!({"n": 2}), 1_001)
        .await
        .unwrap()
        .unwrap();
    let end_of_ms = crate::model::Point::Time(a.id.time_ms()).upper_bound();
    match store.read_after(&id, end_of_ms, 10).unwrap() {
        ReadAfter::Events(events) => {
            assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![b.id])
        }
        other => panic!("expected events, got {other:?}"),
    }
    assert!(
        matches!(store.document_at(&id, crate::model::Point::Time(1_000)).unwrap(), At::Found { doc, .. } if *doc == json!({"n": 1}))
    );
}

/// A capped read stops once the patches read reach the cap, but always
/// returns at least one event, and the events are a prefix of the uncapped
/// read.
#[tokio::test]
async fn read_after_capped_bounds_bytes_not_only_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = ResourceId::new("r").unwrap();
    store.create(spec("r", 10, None), 0).await.unwrap();
    let mut first = None;
    for n in 0..10u64 {
        let e = store
            .append_at(
                &id,
                json!({ "blob": "x".repeat(1000 + n as usize) }),
                1_000 + n,
            )
            .await
            .unwrap()
            .unwrap();
        first.get_or_insert(e.id);
    }
    let after = first.unwrap().0;
    let ReadAfter::Events(all) = store.read_after(&id, after, 100).unwrap() else {
        panic!()
    };
    assert_eq!(all.len(), 9);
    for (cap, want) in [(1, 1), (1000, 1), (2500, 3), (1 << 20, 9)] {
        let ReadAfter::Events(got) = store.read_after_capped(&id, after, 100, cap).unwrap() else {
            panic!()
        };
        assert_eq!(got.len(), want, "cap {cap}");
        assert_eq!(
            got.iter().map(|e| e.id).collect::<Vec<_>>(),
            all.iter().take(want).map(|e| e.id).collect::<Vec<_>>()
        );
    }
}

/// Issue 17: `depth` arrays around one of `n` elements, all of which flip
/// between versions 0 and 1.
fn hostile(depth: usize, n: usize, version: usize) -> Value {
    let mut doc = Value::Array((0..n).map(|i| json!((i + version) % 2)).collect());
    for _ in 0..depth {
        doc = Value::Array(vec![doc]);
    }
    doc
}

/// Issue 17: a diff past its budget is stored as one root `replace`, is
/// counted, and loses nothing: the head, `document_at`, the rebuild at open
/// and a later small change all see exactly the new version.
#[tokio::test]
async fn issue_17_a_diff_over_budget_is_one_root_replace_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let id = ResourceId::new("r").unwrap();
    let (a, b) = (hostile(120, 20_000, 0), hostile(120, 20_000, 1));
    let replaced = {
        let store = Store::open(dir.path()).unwrap();
        store.create(spec("r", 100, None), 0).await.unwrap();
        store.append_at(&id, a.clone(), 1).await.unwrap().unwrap();
        assert_eq!(store.diff_budget_exceeded(), 0);
        let e = store.append_at(&id, b.clone(), 2).await.unwrap().unwrap();
        assert_eq!(store.diff_budget_exceeded(), 1);
        let patch: Value = serde_json::from_slice(&e.patch).unwrap();
        assert_eq!(patch, json!([{"op": "replace", "path": "", "value": b}]));
        assert_eq!(*store.head(&id).unwrap().unwrap().doc, b);
        // A small document next: an ordinary diff again.
        let small = json!({"n": 1});
        let e = store.append_at(&id, small, 3).await.unwrap().unwrap();
        let patch: Value = serde_json::from_slice(&e.patch).unwrap();
        assert_eq!(
            patch,
            json!([{"op": "replace", "path": "", "value": {"n": 1}}])
        );
        assert_eq!(store.diff_budget_exceeded(), 1);
        e.id
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(*store.head(&id).unwrap().unwrap().doc, json!({"n": 1}));
    let before = Ulid(replaced.0 .0 - 1);
    match store.document_at(&id, Point::Id(before)).unwrap() {
        At::Found { doc, .. } => assert_eq!(*doc, b),
        other => panic!("{other:?}"),
    }
}

/// Bytes of the files under `dir`, and how many of them are under a
/// `blobs` directory (where sled 0.34 keeps values it does not inline).
fn disk_usage(dir: &std::path::Path) -> (u64, usize) {
    let (mut bytes, mut blobs) = (0, 0);
    let mut dirs = vec![dir.to_path_buf()];
    // Bounded: sled's data dir is two levels deep.
    for _ in 0..64 {
        let Some(d) = dirs.pop() else { break };
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                dirs.push(e.path());
            } else {
                bytes += md.len();
                blobs += usize::from(d.ends_with("blobs"));
            }
        }
    }
    (bytes, blobs)
}

/// JSON bytes of every event and snapshot the store holds for `rkey`.
fn live_bytes(store: &Store, rkey: u64) -> u64 {
    let tree = &store.inner.tree;
    [keys::EVENT, keys::SNAPSHOT]
        .into_iter()
        .flat_map(|tag| tree.scan_prefix(keys::entry_prefix(tag, rkey)))
        .map(|kv| {
            let (k, v) = kv.unwrap();
            values::get(tree, &k, &v).unwrap().len() as u64
        })
        .sum()
}

/// Issue 17, finding 4: with ~160 KB documents alternating (every event
/// and snapshot over sled's ~128 KiB blob threshold) and a short `retain`,
/// disk use grew by ~0.7 MB per event however much compaction removed
/// (sled kept each value in a blob file it never deleted, not even after a
/// restart) and went past the bound below within 30 rounds. Stored in
/// chunks, it follows what is retained, across a restart, and the space of
/// a deleted resource is reused.
#[tokio::test]
async fn issue_17_retain_bounds_the_disk_for_large_documents() {
    const DOC: usize = 160_000;
    const ROUNDS: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let big = |n: u64| {
        let fill = if n.is_multiple_of(2) { "a" } else { "b" };
        json!({ "n": n, "blob": fill.repeat(DOC) })
    };
    // 100 ms apart, 500 ms retained: about 6 events and 2 snapshots live.
    let retain = Some(Duration::from_millis(500));
    let mut clock = 1_000_000u64;
    let mut worst = (0u64, 0u64);
    for name in ["first", "second"] {
        let id = ResourceId::new(name).unwrap();
        store.create(spec(name, 4, retain), 0).await.unwrap();
        for n in 0..ROUNDS {
            clock += 100;
            store.append_at(&id, big(n), clock).await.unwrap().unwrap();
            store.compact(&id, clock).await.unwrap();
            if n == ROUNDS / 2 {
                drop(store);
                store = Store::open(dir.path()).unwrap();
            }
            if n < 10 {
                continue;
            }
            let rkey = store.entry(&id).unwrap().rkey;
            let live = live_bytes(&store, rkey);
            let (disk, blobs) = disk_usage(dir.path());
            worst = worst.max((disk, live));
            // sled's own floor (a few 512 KiB segments, its snapshot and
            // config) plus room for segments not yet cleaned: generous,
            // and still far below the growth without chunks.
            let bound = 4 * live + (8 << 20);
            assert!(
                disk <= bound,
                "{name} round {n}: {disk} bytes on disk for {live} bytes retained \
                 ({blobs} blob files), bound {bound}"
            );
            assert_eq!(
                blobs, 0,
                "{name} round {n}: sled wrote values to blob files"
            );
        }
        // The second resource reuses the first one's space.
        assert!(store.delete(&id).await.unwrap());
    }
    eprintln!("most on disk: {} bytes, with {} retained", worst.0, worst.1);
}

/// A crash inside a chunked write leaves chunks without the key that makes
/// their value exist: those above the last event are removed at open (a
/// later event may be given that id), those below it are never read, and
/// a stale chunk beyond a value's count is never read either.
#[tokio::test]
async fn chunked_writes_cut_by_a_crash_are_ignored_or_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = ResourceId::new("r").unwrap();
    let doc = |i: u64| json!({ "i": i, "text": "chunked ".repeat(20) });
    let (rkey, last) = {
        let store = Store::open(dir.path()).unwrap();
        store.set_chunk_bytes(16);
        store.create(spec("r", 2, None), 0).await.unwrap();
        let mut last = None;
        for i in 0..3 {
            last = Some(store.append(&id, doc(i)).await.unwrap().unwrap().id);
        }
        (store.entry(&id).unwrap().rkey, last.unwrap())
    };
    // What the crashed process left behind: the chunks of a snapshot and
    // of an event after the last one, the snapshot's key but not the
    // event's; and a stray chunk beyond the last event's count.
    let cut = Ulid::from_parts(last.0.timestamp_ms() + 5, 0);
    let stray = {
        let db = open_db(dir.path()).unwrap();
        for i in 0..3 {
            db.insert(
                keys::chunk(keys::SNAPSHOT, rkey, cut, i),
                &b"{\"never\""[..],
            )
            .unwrap();
            db.insert(keys::chunk(keys::EVENT, rkey, cut, i), &b"[{\"op\""[..])
                .unwrap();
        }
        db.insert(
            keys::entry(keys::SNAPSHOT, rkey, cut),
            &codec::encode_chunked(24, 3)[..],
        )
        .unwrap();
        let stray = keys::chunk(keys::EVENT, rkey, last.0, 999);
        db.insert(stray, &b"garbage"[..]).unwrap();
        db.flush().unwrap();
        stray
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(*store.head(&id).unwrap().unwrap().doc, doc(2));
    for tag in [keys::SNAPSHOT, keys::EVENT] {
        let left = store
            .inner
            .tree
            .scan_prefix(keys::entry(keys::chunk_tag(tag), rkey, cut))
            .count();
        assert_eq!(left, 0, "{} chunks after the last event", tag as char);
    }
    assert!(!store
        .inner
        .tree
        .contains_key(keys::entry(keys::SNAPSHOT, rkey, cut))
        .unwrap());
    assert!(store.inner.tree.contains_key(stray).unwrap());
    // The last event reads back whole, without the stray chunk.
    let ReadAfter::Events(evs) = store.read_after(&id, Ulid(last.0 .0 - 1), 10).unwrap() else {
        panic!()
    };
    assert_eq!(evs.iter().map(|e| e.id).collect::<Vec<_>>(), [last]);
    serde_json::from_slice::<json_patch::Patch>(&evs[0].patch).unwrap();
    // The chain goes on, chunked, at the id the crash had used.
    store.set_chunk_bytes(16);
    let next = store
        .append_at(&id, doc(3), cut.timestamp_ms())
        .await
        .unwrap()
        .unwrap();
    let At::Found { doc: got, .. } = store.document_at(&id, Point::Id(next.id.0)).unwrap() else {
        panic!()
    };
    assert_eq!(*got, doc(3));
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(*store.head(&id).unwrap().unwrap().doc, doc(3));
}

/// Format version 1 stored every value inline, whatever its size: such a
/// data dir opens unchanged, is marked version 2 (so an older patchfeed
/// refuses it rather than misread a chunk), and later values are chunked.
#[tokio::test]
async fn a_version_1_data_dir_is_read_unchanged_and_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let id = ResourceId::new("r").unwrap();
    let doc = |i: u64| json!({ "i": i, "text": "x".repeat(10_000) });
    let first = {
        let store = Store::open(dir.path()).unwrap();
        // Version 1 had no chunks: every value inline.
        store.set_chunk_bytes(usize::MAX);
        store.create(spec("r", 1, None), 0).await.unwrap();
        let first = store.append(&id, doc(0)).await.unwrap().unwrap();
        store.append(&id, doc(1)).await.unwrap().unwrap();
        assert_eq!(store.inner.tree.scan_prefix([keys::EVENT_CHUNK]).count(), 0);
        store
            .inner
            .tree
            .insert(keys::VERSION, &1u32.to_be_bytes())
            .unwrap();
        first
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store
            .inner
            .tree
            .get(keys::VERSION)
            .unwrap()
            .unwrap()
            .as_ref(),
        codec::FORMAT_VERSION.to_be_bytes()
    );
    assert_eq!(*store.head(&id).unwrap().unwrap().doc, doc(1));
    let At::Found { doc: got, .. } = store.document_at(&id, Point::Id(first.id.0)).unwrap() else {
        panic!()
    };
    assert_eq!(*got, doc(0));
    store.append(&id, doc(2)).await.unwrap().unwrap();
    assert!(store.inner.tree.scan_prefix([keys::SNAPSHOT_CHUNK]).count() > 0);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(*store.head(&id).unwrap().unwrap().doc, doc(2));
}

/// Issue 17 (finding 4, follow-up): sled 0.34.7 can deadlock when its log
/// runs 7 or more buffers ahead of its disk writes while it shrinks its
/// file (`commit::UNFLUSHED_BUDGET`). A chunked value is one insert per
/// 4 KiB and nothing waited for a flush until the whole append was written,
/// so a 2 MB document put 4 MB (event and snapshot) into sled's log with
/// one flush at the end. Now a writer waits for a flush whenever more than
/// the budget was written since the last one began.
#[tokio::test]
async fn issue_17_deadlock_a_large_append_waits_for_a_flush_every_budget() {
    const DOC: usize = 2_000_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = ResourceId::new("big").unwrap();
    store.create(spec("big", 100, None), 0).await.unwrap();
    let before = store.inner.commit.flushes();
    // The first append stores the document twice: as its snapshot and as
    // the event's root replace.
    store
        .append_at(&id, json!({ "blob": "a".repeat(DOC) }), 1_000)
        .await
        .unwrap()
        .unwrap();
    let flushes = store.inner.commit.flushes() - before;
    let written = 2 * DOC as u64;
    let least = written / super::commit::UNFLUSHED_BUDGET;
    assert!(
        flushes >= least,
        "{flushes} flushes for {written} bytes of values, budget {} between flushes: \
         at least {least} expected",
        super::commit::UNFLUSHED_BUDGET
    );
    let At::Found { doc, .. } = store.document_at(&id, Point::Time(u64::MAX >> 16)).unwrap() else {
        panic!("the appended document is found");
    };
    assert_eq!(doc["blob"].as_str().map(str::len), Some(DOC));
}
