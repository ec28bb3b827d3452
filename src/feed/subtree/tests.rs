//! The subtree projection, pure and through a real feed: for random
//! documents, random changes (the log's own diff, and hand-made RFC 6902
//! operations including `move`, `copy` and `test`) and random pointers —
//! ones that appear, disappear, change type, or sit inside arrays that
//! shift — applying the subtree stream (snapshot, then patches, with the
//! `json-patch` crate) gives exactly the value at the pointer (or `null`)
//! after every event, and events that do not change it are not sent.

use std::sync::Arc;
use std::time::Duration;

use json_patch::{Patch, PatchOperation};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use super::*;
use crate::feed::{Ctx, Feed, FeedConfig, Message, Resume};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::model::{Event, EventId, ResourceId, ResourceSpec};

/// Keys and tokens from one small alphabet, so pointers often hit; `a/b`
/// and `t~` exercise escaping.
const KEYS: &[&str] = &["a", "b", "c", "a/b", "t~"];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0..4i64).prop_map(|n| json!(n)),
        // Long enough for the diff to emit `move`s.
        (0..3usize).prop_map(|n| json!(format!("a string long enough to move {n}"))),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..4).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn pointer() -> impl Strategy<Value = Pointer> {
    let token = prop_oneof![
        prop::sample::select(KEYS).prop_map(str::to_owned),
        (0..4usize).prop_map(|i| i.to_string()),
    ];
    prop::collection::vec(token, 1..4).prop_map(|tokens| {
        let text: String = tokens
            .iter()
            .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
            .collect();
        Pointer::parse(&text).unwrap().unwrap()
    })
}

/// A location in `doc` chosen by `pick`: the path of an existing node.
fn locate(doc: &Value, pick: &[u8]) -> Vec<String> {
    let mut path = Vec::new();
    let mut v = doc;
    for &b in pick {
        let next = match v {
            Value::Object(m) if !m.is_empty() => {
                let (k, child) = m.iter().nth(usize::from(b) % m.len()).unwrap();
                Some((k.clone(), child))
            }
            Value::Array(a) if !a.is_empty() => {
                let i = usize::from(b) % a.len();
                Some((i.to_string(), &a[i]))
            }
            _ => None,
        };
        let Some((t, child)) = next else { break };
        path.push(t);
        v = child;
    }
    path
}

fn ptr(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// One edit of a document, as the upstream might make it.
#[derive(Clone, Debug)]
enum Edit {
    /// A new version: the log's diff makes the patch.
    Whole(Value),
    /// Set, insert into an array, or remove at a chosen node; diffed.
    At(Vec<u8>, u8, Value),
    /// Hand-made RFC 6902 operations (kept only if they apply).
    Ops(Vec<(u8, Vec<u8>, Vec<u8>, Value)>),
}

fn edit() -> impl Strategy<Value = Edit> {
    let pick = || prop::collection::vec(any::<u8>(), 0..4);
    prop_oneof![
        1 => value().prop_map(Edit::Whole),
        4 => (pick(), 0..4u8, value()).prop_map(|(p, k, v)| Edit::At(p, k, v)),
        3 => prop::collection::vec((0..6u8, pick(), pick(), value()), 1..4).prop_map(Edit::Ops),
    ]
}

/// The operations `edit` makes of `doc`, and the document after them.
fn change(doc: &Value, edit: &Edit) -> (Vec<PatchOperation>, Value) {
    let next = match edit {
        Edit::Whole(v) => v.clone(),
        Edit::At(pick, kind, v) => {
            let at = locate(doc, pick);
            let mut next = doc.clone();
            let (parent, last) = match at.split_last() {
                Some((last, parent)) => (parent.to_vec(), Some(last.clone())),
                None => (Vec::new(), None),
            };
            let slot = next.pointer_mut(&ptr(&parent)).unwrap();
            match (kind, last, slot) {
                (0, _, _) | (_, None, _) => {
                    *next.pointer_mut(&ptr(&at)).unwrap() = v.clone();
                }
                (1, Some(l), Value::Array(a)) => a.insert(l.parse::<usize>().unwrap(), v.clone()),
                (2, Some(l), Value::Array(a)) => {
                    a.remove(l.parse::<usize>().unwrap());
                }
                (_, Some(l), Value::Object(m)) => {
                    m.remove(&l);
                }
                (_, Some(_), _) => {
                    *next.pointer_mut(&ptr(&at)).unwrap() = v.clone();
                }
            }
            next
        }
        Edit::Ops(ops) => {
            let mut doc = doc.clone();
            let mut out = Vec::new();
            for (kind, a, b, v) in ops {
                let pa = ptr(&locate(&doc, a));
                let pb = ptr(&locate(&doc, b));
                let op = json!(match kind {
                    0 => json!({"op": "add", "path": format!("{pa}/-"), "value": v}),
                    1 => json!({"op": "remove", "path": pa}),
                    2 => json!({"op": "replace", "path": pa, "value": v}),
                    3 => json!({"op": "move", "from": pa, "path": pb}),
                    4 => json!({"op": "copy", "from": pa, "path": pb}),
                    _ => json!({"op": "test", "path": pa, "value": doc.pointer(&pa).cloned()}),
                });
                let op: PatchOperation = serde_json::from_value(op).unwrap();
                let mut tried = doc.clone();
                if json_patch::patch(&mut tried, std::slice::from_ref(&op)).is_ok() {
                    doc = tried;
                    out.push(op);
                }
            }
            return (out, doc);
        }
    };
    (crate::diff::diff(doc, &next).0, next)
}

/// Whether an op writes exactly at, or above, the pointer (so the contract
/// wants the whole value).
fn covers(op: &PatchOperation, p: &Pointer) -> bool {
    let path = match op {
        PatchOperation::Replace(o) => &o.path,
        PatchOperation::Remove(o) => &o.path,
        _ => return false,
    };
    let tokens: Vec<String> = path.tokens().map(|t| t.decoded().into_owned()).collect();
    tokens.len() <= p.tokens.len() && p.tokens[..tokens.len()] == tokens[..]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn subtree_stream_reproduces_the_value_at_the_pointer(
        first in value(),
        edits in prop::collection::vec(edit(), 1..8),
        p in pointer(),
    ) {
        let mut doc = first;
        let mut copy = p.get(&doc).cloned().unwrap_or(Value::Null);
        for e in &edits {
            let (ops, next) = change(&doc, e);
            let before = p.get(&doc);
            let after = p.get(&next);
            let projected = project(&p, before, &ops, after);
            if before.unwrap_or(&Value::Null) == after.unwrap_or(&Value::Null) {
                prop_assert!(projected.is_none(), "untouched subtree got {projected:?}");
            } else {
                let patch = projected.expect("a change to the subtree must be sent");
                json_patch::patch(&mut copy, &patch.0).unwrap();
                prop_assert_eq!(&copy, after.unwrap_or(&Value::Null));
                if ops.iter().any(|o| covers(o, &p)) {
                    prop_assert_eq!(&patch, &replace_all(after));
                }
                // The JSON text form says the same.
                let text = serde_json::to_vec(&Patch(ops.clone())).unwrap();
                let j = project_json(&p, before, &text, after).unwrap();
                prop_assert_eq!(serde_json::from_slice::<Patch>(&j).unwrap(), patch);
            }
            doc = next;
        }
    }
}

#[test]
fn pointers_parse_as_rfc_6901_says() {
    assert_eq!(Pointer::parse("").unwrap(), None);
    let p = Pointer::parse("/a~1b/t~0/0").unwrap().unwrap();
    assert_eq!(p.tokens, ["a/b", "t~", "0"]);
    assert_eq!(p.as_str(), "/a~1b/t~0/0");
    let doc = json!({"a/b": {"t~": [7]}});
    assert_eq!(p.get(&doc), Some(&json!(7)));
    assert_eq!(
        Pointer::parse("/").unwrap().unwrap().get(&json!({"": 1})),
        Some(&json!(1))
    );
    assert_eq!(Pointer::parse("a"), Err(PointerError::NoSlash));
    assert_eq!(Pointer::parse("/a~2"), Err(PointerError::BadEscape));
    assert_eq!(Pointer::parse("/a~"), Err(PointerError::BadEscape));
    assert_eq!(
        Pointer::parse(&"/a".repeat(600)),
        Err(PointerError::TooLong)
    );
    assert_eq!(
        Pointer::parse(&"/a".repeat(200)),
        Err(PointerError::TooDeep)
    );
    // Array indices: no leading zeros, no '-', no sign.
    let a = json!({"x": [1, 2]});
    for bad in ["/x/01", "/x/-", "/x/+1", "/x/2"] {
        assert_eq!(Pointer::parse(bad).unwrap().unwrap().get(&a), None, "{bad}");
    }
}

#[test]
fn the_contracts_cases() {
    let p = Pointer::parse("/user/name").unwrap().unwrap();
    let run = |before: Value, ops: Value| {
        let ops: Patch = serde_json::from_value(ops).unwrap();
        let mut after = before.clone();
        json_patch::patch(&mut after, &ops.0).unwrap();
        project(&p, p.get(&before), &ops.0, p.get(&after)).map(|p| serde_json::to_value(p).unwrap())
    };
    let doc = json!({"user": {"name": {"first": "Ada"}, "age": 36}, "n": 1});
    // Below the pointer: relative paths.
    assert_eq!(
        run(
            doc.clone(),
            json!([{"op": "replace", "path": "/user/name/first", "value": "Bo"}])
        ),
        Some(json!([{"op": "replace", "path": "/first", "value": "Bo"}]))
    );
    // Elsewhere: not sent.
    assert_eq!(
        run(
            doc.clone(),
            json!([{"op": "replace", "path": "/n", "value": 2}])
        ),
        None
    );
    assert_eq!(
        run(doc.clone(), json!([{"op": "remove", "path": "/user/age"}])),
        None
    );
    // An ancestor replaced or removed: the whole value, or null.
    assert_eq!(
        run(
            doc.clone(),
            json!([{"op": "replace", "path": "/user", "value": {"name": "Cy"}}])
        ),
        Some(json!([{"op": "replace", "path": "", "value": "Cy"}]))
    );
    assert_eq!(
        run(doc.clone(), json!([{"op": "remove", "path": "/user"}])),
        Some(json!([{"op": "replace", "path": "", "value": null}]))
    );
    // An ancestor replaced by an equal subtree: nothing changed.
    assert_eq!(
        run(
            doc.clone(),
            json!([{"op": "replace", "path": "/user", "value": {"name": {"first": "Ada"}}}])
        ),
        None
    );
    // Appearing.
    assert_eq!(
        run(
            json!({}),
            json!([{"op": "add", "path": "/user", "value": {"name": 1}}])
        ),
        Some(json!([{"op": "replace", "path": "", "value": 1}]))
    );
    // Inside an array that shifts.
    let q = Pointer::parse("/l/1").unwrap().unwrap();
    let before = json!({"l": ["x", "y", "z"]});
    let ops: Patch = serde_json::from_value(json!([{"op": "remove", "path": "/l/0"}])).unwrap();
    let after = json!({"l": ["y", "z"]});
    assert_eq!(
        serde_json::to_value(project(&q, q.get(&before), &ops.0, q.get(&after)).unwrap()).unwrap(),
        json!([{"op": "replace", "path": "", "value": "z"}])
    );
    let ops: Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/l/2", "value": "w"}])).unwrap();
    let after = json!({"l": ["x", "y", "w", "z"]});
    assert!(project(&q, q.get(&before), &ops.0, q.get(&after)).is_none());
}

// ---- through a real feed: store, hub, catch-up, lag, live ----

async fn store_with_resource(dir: &std::path::Path) -> (crate::log::Store, ResourceId) {
    let store = crate::log::Store::open(dir).unwrap();
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
                push: false,
                pages: None,
            },
            0,
        )
        .await
        .unwrap();
    (store, id)
}

/// Versions appended before the feed opens (`before` of them), the feed
/// opened at `start` (an index into them, or fresh), then `after` more
/// appended while it reads, some publications dropped, some published
/// without their document, through a tiny live buffer.
fn feed_case(
    docs: Vec<Value>,
    before: usize,
    start: Option<usize>,
    p: Pointer,
    drop_mask: u64,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_resource(dir.path()).await;
        let hub = Arc::new(Hub::new(2));
        // (id, document) of every version, in order.
        let mut versions: Vec<(Ulid, Value)> = Vec::new();
        let t0 = 1_700_000_000_000u64;
        for (i, d) in docs[..before].iter().enumerate() {
            if let Some((e, _)) = store
                .append_chained(&id, d.clone(), t0 + i as u64)
                .await
                .unwrap()
            {
                versions.push((e.id.0, d.clone()));
            }
        }
        let start = start
            .filter(|_| !versions.is_empty())
            .map(|k| k % versions.len());
        let resume = match start {
            Some(k) => Resume::LastEventId(versions[k].0),
            None => Resume::Fresh,
        };
        let store: crate::store::Store = Arc::new(store);
        let ctx = Ctx {
            store: store.clone(),
            metrics: Arc::new(Metrics::default()),
            config: FeedConfig {
                keep_alive: Duration::from_millis(20),
                page: 2,
                page_bytes: 256,
            },
            shutdown: CancellationToken::new(),
        };
        let rx = hub.subscribe(&id);
        let mut feed = Feed::new(ctx, id.clone(), rx, resume, None)
            .with_subtree(p.clone(), &hub.versions(&id));
        let producer = {
            let (store, hub, id, docs) = (store.clone(), hub.clone(), id.clone(), docs.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                // The newest event, if its publication was dropped: it is
                // published at the end, or nothing would wake the feed.
                let mut unsent = None;
                for (j, d) in docs[before..].iter().enumerate() {
                    let appended = store
                        .append(&id, d.clone(), t0 + 1000 + j as u64)
                        .await
                        .unwrap();
                    let Some((e, prev)) = appended else { continue };
                    out.push((e.id.0, d.clone()));
                    unsent = None;
                    match (drop_mask >> (2 * (j % 32))) & 3 {
                        0 => unsent = Some((e, prev)),  // dropped: a gap
                        1 => hub.publish(&id, e, prev), // no document: from the log
                        _ => {
                            let doc = store.head(&id).unwrap().map(|h| h.doc);
                            hub.publish_version(&id, e, prev, doc);
                        }
                    }
                    tokio::task::yield_now().await;
                }
                if let Some((e, prev)) = unsent {
                    hub.publish(&id, e, prev);
                }
                out
            })
        };
        let mut got: Vec<Message> = Vec::new();
        let mut producer = Some(producer);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if producer.as_ref().is_some_and(|t| t.is_finished()) {
                versions.extend(producer.take().unwrap().await.unwrap());
            }
            let last = versions.last().map(|v| v.0);
            if producer.is_none() && (last.is_none() || feed.cursor().map(|c| c.0) >= last) {
                break;
            }
            let batch = tokio::time::timeout_at(deadline, feed.next()).await;
            let Ok(Some(batch)) = batch else {
                return Err(TestCaseError::fail(format!(
                    "the feed stalled or ended ({}) at cursor {:?}; versions {:?}; got {got:?}",
                    if batch.is_ok() { "ended" } else { "stalled" },
                    feed.cursor(),
                    versions.iter().map(|v| v.0).collect::<Vec<_>>(),
                )));
            };
            got.extend(batch);
        }
        let value_at = |i: Ulid| {
            let k = versions.iter().rposition(|v| v.0 <= i).unwrap();
            p.get(&versions[k].1).cloned().unwrap_or(Value::Null)
        };
        let mut copy = start.map(|k| value_at(versions[k].0));
        let mut last = start.map(|k| versions[k].0);
        for m in got {
            let (id, patch) = match m {
                Message::Snapshot { id, json } => {
                    copy = Some(serde_json::from_slice(&json).unwrap());
                    prop_assert!(last.is_none_or(|l| id.0 > l));
                    last = Some(id.0);
                    prop_assert_eq!(copy.clone().unwrap(), value_at(id.0));
                    continue;
                }
                Message::Patch(e) => (e.id, e.patch),
                Message::Live(p) => (p.event.id, p.event.patch.clone()),
                Message::Error(_) | Message::KeepAlive => continue,
            };
            let l = last.expect("a patch before any snapshot");
            prop_assert!(id.0 > l, "ids strictly increase");
            // Sent only if the subtree changed between the two messages,
            // and every change in between is in it.
            prop_assert_ne!(value_at(l), value_at(id.0), "an untouching event was sent");
            let k = versions.iter().position(|v| v.0 == id.0).unwrap();
            prop_assert_eq!(
                value_at(versions[k - 1].0),
                value_at(l),
                "a change was skipped"
            );
            let patch: Patch = serde_json::from_slice(&patch).unwrap();
            let c = copy.as_mut().unwrap();
            json_patch::patch(c, &patch.0).unwrap();
            prop_assert_eq!(&*c, &value_at(id.0));
            last = Some(id.0);
        }
        if let Some((_, d)) = versions.last() {
            prop_assert_eq!(
                copy.unwrap_or(Value::Null),
                p.get(d).cloned().unwrap_or(Value::Null)
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn subtree_feed_is_gap_free_and_reproduces_the_value(
        first in value(),
        edits in prop::collection::vec(edit(), 1..14),
        before in 0..8usize,
        start in prop::option::of(0..8usize),
        p in pointer(),
        drop_mask in any::<u64>(),
    ) {
        let mut docs = vec![first];
        for e in &edits {
            let next = change(docs.last().unwrap(), e).1;
            docs.push(next);
        }
        let before = before.min(docs.len());
        feed_case(docs, before, start, p, drop_mask)?;
    }
}

#[test]
fn a_live_event_is_rewritten_once_per_pointer_and_shared() {
    let e = Event {
        id: EventId(Ulid::from_parts(1, 1)),
        patch: bytes::Bytes::from_static(br#"[{"op":"replace","path":"/a/x","value":2}]"#),
    };
    let p = crate::hub::Published::new(e, Some(EventId(Ulid::from_parts(1, 0))));
    let (before, after) = (
        json!({"a": {"x": 1}, "b": 0}),
        json!({"a": {"x": 2}, "b": 0}),
    );
    let a = Pointer::parse("/a").unwrap().unwrap();
    let b = Pointer::parse("/b").unwrap().unwrap();
    let first = rewrite(&p, &a, Some(&before), &after).unwrap();
    let second = rewrite(&p, &a, Some(&before), &after).unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "one rewrite per (event, pointer)"
    );
    assert_eq!(
        &first.event.patch[..],
        br#"[{"op":"replace","path":"/x","value":2}]"#
    );
    assert_eq!(first.event.id, p.event.id);
    assert!(rewrite(&p, &b, Some(&before), &after).is_none());
    // Past the bound, still correct, just not kept.
    for i in 0..MAX_CACHED_POINTERS + 3 {
        let q = Pointer::parse(&format!("/a/{i}")).unwrap().unwrap();
        assert!(rewrite(&p, &q, Some(&before), &after).is_none());
    }
    assert!(p.subtrees.slots.lock().unwrap().len() <= MAX_CACHED_POINTERS);
}

#[test]
fn versions_are_kept_only_while_watched_and_bounded() {
    let v = Arc::new(Versions::default());
    let doc = Arc::new(json!({"n": 1}));
    let id = |n: u64| EventId(Ulid::from_parts(n, 0));
    v.record(id(1), &doc);
    assert!(v.get(id(1)).is_none(), "nobody watches: nothing kept");
    let guard = v.watch();
    for n in 1..=(RECENT_VERSIONS as u64 + 4) {
        v.record(id(n), &Arc::new(json!({ "n": n })));
    }
    assert!(v.get(id(1)).is_none(), "the oldest fall out");
    let newest = RECENT_VERSIONS as u64 + 4;
    assert_eq!(v.get(id(newest)).as_deref(), Some(&json!({ "n": newest })));
    assert_eq!(v.recent.lock().unwrap().len(), RECENT_VERSIONS);
    drop(guard);
    assert!(
        v.get(id(newest)).is_none(),
        "released with the last watcher"
    );
}
