//! Issue 18: random JSON Patch and merge-patch pushes, through the edit
//! `Service::push` hands the log (`edit_for`) and the `Storage` trait,
//! either apply exactly as the `json-patch` crate's reference says or are
//! refused with nothing stored; an `If-Match` on anything but the head
//! stores nothing.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{edit_for, Change};
use crate::model::{EventId, ResourceId, ResourceSpec};
use crate::store::{Edited, Store};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn push_spec() -> ResourceSpec {
    ResourceSpec {
        id: ResourceId::new("p").expect("valid id"),
        url: String::new(),
        interval: Duration::from_secs(1),
        headers: Default::default(),
        snapshot_every: 3,
        retain: None,
        ad_hoc: false,
        push: true,
        pages: None,
    }
}

/// Small documents over few keys, so that random paths often exist.
fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(|n| json!(n)),
        prop::sample::select(vec!["", "x", "a/b"]).prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(vec!["a", "b", "0"]), inner, 0..3)
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
        ]
    })
}

fn arb_path() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "", "/a", "/b", "/0", "/-", "/a/0", "/a/-", "/a/b", "/0/a", "/b/1", "/a~1b",
    ])
    .prop_map(str::to_owned)
}

/// One well-formed RFC 6902 operation (whether it applies is the point).
fn arb_op() -> impl Strategy<Value = Value> {
    prop_oneof![
        (arb_path(), arb_value()).prop_map(|(p, v)| json!({"op": "add", "path": p, "value": v})),
        arb_path().prop_map(|p| json!({"op": "remove", "path": p})),
        (arb_path(), arb_value())
            .prop_map(|(p, v)| json!({"op": "replace", "path": p, "value": v})),
        (arb_path(), arb_path()).prop_map(|(f, p)| json!({"op": "move", "from": f, "path": p})),
        (arb_path(), arb_path()).prop_map(|(f, p)| json!({"op": "copy", "from": f, "path": p})),
        (arb_path(), arb_value()).prop_map(|(p, v)| json!({"op": "test", "path": p, "value": v})),
    ]
}

#[derive(Debug, Clone)]
enum Push {
    Put(Value),
    Json(Vec<Value>),
    Merge(Value),
}

fn arb_push() -> impl Strategy<Value = Push> {
    prop_oneof![
        1 => arb_value().prop_map(Push::Put),
        4 => prop::collection::vec(arb_op(), 1..4).prop_map(Push::Json),
        2 => arb_value().prop_map(Push::Merge),
    ]
}

/// What the `json-patch` crate makes of `push` on `doc`: the new document,
/// or `None` if it refuses.
fn reference(doc: &Value, push: &Push) -> Option<Value> {
    let mut out = doc.clone();
    match push {
        Push::Put(v) => return Some(v.clone()),
        Push::Json(ops) => {
            let patch: json_patch::Patch =
                serde_json::from_value(Value::Array(ops.clone())).expect("well-formed ops");
            // On a copy that is discarded on failure, so the crate's undo
            // log is not needed: json-patch 5.0.0's `patch` panics when its
            // undo fails (`copy` to a key, then `move` of it below itself;
            // the recorded seed).
            json_patch::patch_unsafe(&mut out, &patch).ok()?;
        }
        Push::Merge(m) => json_patch::merge(&mut out, m),
    }
    Some(out)
}

fn change(push: &Push) -> Change {
    match push {
        Push::Put(v) => Change::Document(v.clone()),
        Push::Json(ops) => Change::JsonPatch(
            serde_json::from_value(Value::Array(ops.clone())).expect("well-formed ops"),
        ),
        Push::Merge(m) => Change::MergePatch(m.clone()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn issue_18_pushes_apply_as_the_reference_says_or_store_nothing(
        pushes in prop::collection::vec((arb_push(), 0u8..4), 1..12),
    ) {
        let rt = rt();
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Store = crate::store::open_sled(dir.path()).expect("open");
        let id = ResourceId::new("p").expect("valid id");
        rt.block_on(store.create(push_spec(), 0)).expect("create");
        // The model: the document and the events so far.
        let mut doc: Option<Value> = None;
        let mut events: Vec<EventId> = Vec::new();
        for (push, precondition) in pushes {
            let head = events.last().copied();
            // 0: no If-Match; 1: a stale or unknown id; else the head.
            let expected = match precondition {
                0 => None,
                1 => Some(events.first().copied().filter(|_| events.len() > 1)
                    .unwrap_or(EventId(ulid::Ulid::from_parts(1, 1)))),
                _ => head.or(Some(EventId(ulid::Ulid::from_parts(1, 2)))),
            };
            let now = events.len() as u64 + 1;
            let got = rt
                .block_on(store.append_edit(&id, expected, false, edit_for(change(&push)), now))
                .expect("no storage error");
            let current = doc.clone().unwrap_or(Value::Null);
            if expected.is_some() && expected != head {
                prop_assert!(matches!(&got, Edited::HeadMoved(h) if *h == head), "{got:?}");
            } else {
                match reference(&current, &push) {
                    None => prop_assert!(matches!(got, Edited::Refused(_)), "{got:?}"),
                    Some(want) if doc.as_ref() == Some(&want) => {
                        prop_assert!(matches!(&got, Edited::Unchanged(h) if *h == head), "{got:?}");
                    }
                    Some(want) => {
                        let Edited::Appended(event, prev) = got else {
                            return Err(TestCaseError::fail(format!("not appended: {got:?}")));
                        };
                        prop_assert_eq!(prev, head);
                        events.push(event.id);
                        doc = Some(want);
                    }
                }
            }
            // The log holds exactly the model: head document and events.
            let stored = store.head(&id).expect("head").map(|h| (h.id, (*h.doc).clone()));
            prop_assert_eq!(stored, events.last().copied().zip(doc.clone()));
            let logged = match rt.block_on(store.history(&id, None, None, 1000)).expect("history") {
                crate::store::History::Events { events, .. } => {
                    events.into_iter().map(|e| e.id).collect::<Vec<_>>()
                }
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            };
            prop_assert_eq!(&logged, &events);
        }
    }
}
