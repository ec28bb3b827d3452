//! Store integrity (issue 17): what the log accepts it can read back, and
//! one unreadable resource never takes the data dir down.
//!
//! Tests only, against a real store in a temporary directory.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn spec(id: &str) -> ResourceSpec {
    ResourceSpec {
        id: ResourceId::new(id).unwrap(),
        url: "http://127.0.0.1:1/x".into(),
        interval: Duration::from_secs(1),
        headers: Default::default(),
        snapshot_every: 2,
        retain: None,
        ad_hoc: false,
        push: false,
        pages: None,
    }
}

fn rid(s: &str) -> ResourceId {
    ResourceId::new(s).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A document `depth` containers deep; `shape` picks array or object per
/// level (bit i), and `leaf` what sits at the bottom.
fn nested(depth: usize, shape: u128, leaf: Value) -> Value {
    let mut v = leaf;
    for i in 0..depth {
        v = if shape >> (i % 128) & 1 == 1 {
            json!({ "k": v })
        } else {
            json!([v])
        };
    }
    v
}

/// The bound rests on serde_json's recursion limit: pin it.
#[test]
fn issue_17_serde_json_reads_exactly_read_depth_levels() {
    let text = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
    assert!(serde_json::from_str::<Value>(&text(depth::READ_DEPTH)).is_ok());
    assert!(serde_json::from_str::<Value>(&text(depth::READ_DEPTH + 1)).is_err());
    assert_eq!(MAX_DOC_DEPTH, 125);
}

#[test]
fn issue_17_check_depth_counts_containers() {
    assert!(check_depth(&json!(1)).is_ok());
    assert!(check_depth(&nested(MAX_DOC_DEPTH, 0, json!(1))).is_ok());
    assert!(check_depth(&nested(MAX_DOC_DEPTH, u128::MAX, json!({}))).is_err());
    assert_eq!(
        check_depth(&nested(MAX_DOC_DEPTH + 1, 0, json!(null))),
        Err(TooDeep {
            limit: MAX_DOC_DEPTH
        })
    );
    // Deeper in memory than serde_json would build: a clear error.
    assert!(check_depth(&nested(1_000, 0, json!(0))).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Documents at depth bound-2 ..= bound+2, alternating with `{}` and a
    /// shallow variant as in the review's repro: each is stored iff within
    /// the bound; after a reopen every stored version reads back, by id,
    /// through `document_at` (snapshot + patches) and `history`.
    #[test]
    fn issue_17_deep_documents_at_the_bound_store_and_reopen(
        depths in prop::collection::vec(MAX_DOC_DEPTH - 2..=MAX_DOC_DEPTH + 2, 1..6),
        shape in any::<u128>(),
        leaf in prop_oneof![Just(json!(1)), Just(json!([])), Just(json!({})), Just(json!("x"))],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let id = rid("deep");
        let mut stored: Vec<(EventId, Value)> = Vec::new();
        rt().block_on(async {
            let store = Store::open(dir.path()).unwrap();
            store.create(spec("deep"), 1).await.unwrap();
            let mut now = 1_000;
            for d in depths {
                let leaf_depth = usize::from(leaf.is_array() || leaf.is_object());
                let deep = nested(d - leaf_depth, shape, leaf.clone());
                for doc in [json!({}), deep, json!({"k": [1]})] {
                    now += 10;
                    let fits = check_depth(&doc).is_ok();
                    match store.append_at(&id, doc.clone(), now).await {
                        Ok(Some(e)) => {
                            prop_assert!(fits, "a document over the bound was stored");
                            stored.push((e.id, doc));
                        }
                        Ok(None) => prop_assert!(fits),
                        Err(StoreError::TooDeep(t)) => {
                            prop_assert!(!fits);
                            prop_assert_eq!(t.limit, MAX_DOC_DEPTH);
                        }
                        Err(e) => prop_assert!(false, "append failed: {}", e),
                    }
                }
            }
            Ok(())
        })?;
        let store = Store::open(dir.path()).unwrap();
        prop_assert!(store.quarantine(&id).is_none());
        for (eid, doc) in &stored {
            match store.document_at(&id, Point::Id(eid.0)).unwrap() {
                At::Found { id: got, doc: d } => {
                    prop_assert_eq!(got, *eid);
                    prop_assert_eq!(&*d, doc);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
        match store.history(&id, None, None, 1000).unwrap() {
            History::Events { events, .. } => {
                prop_assert_eq!(events.len(), stored.len());
                for e in events {
                    serde_json::from_slice::<json_patch::Patch>(&e.patch).unwrap();
                }
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

/// Writes garbage under `key` with sled directly, as a torn or foreign
/// write would leave it.
fn clobber(dir: &std::path::Path, pick: impl Fn(&sled::Db) -> Vec<u8>, value: &[u8]) -> Vec<u8> {
    let db = sled::open(dir).unwrap();
    let key = pick(&db);
    db.insert(&key[..], value).unwrap();
    db.flush().unwrap();
    key
}

/// The newest event, which `open` reads to rebuild the head.
fn last_event_key(db: &sled::Db, rkey: u64) -> Vec<u8> {
    db.scan_prefix(keys::entry_prefix(keys::EVENT, rkey))
        .keys()
        .next_back()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn rkey_of(db: &sled::Db, id: &str) -> u64 {
    let v = db.get(keys::resource(&rid(id))).unwrap().unwrap();
    codec::decode_resource(&v).unwrap().0
}

/// One resource's unreadable event, another's unreadable record, and a
/// record under a key that names no resource: the store opens, each bad
/// resource is quarantined with its key and reason and refuses reads and
/// writes, nothing of theirs is changed on disk, and the others serve.
#[tokio::test]
async fn issue_17_one_unreadable_record_quarantines_only_that_resource() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for (n, r) in ["bad-event", "bad-record", "good"].iter().enumerate() {
            store.create(spec(r), 1).await.unwrap();
            for i in 0..4u64 {
                let t = 1_000 + 100 * i + n as u64;
                store
                    .append_at(&rid(r), json!({ "i": i }), t)
                    .await
                    .unwrap();
            }
        }
    }
    let ekey = clobber(
        dir.path(),
        |db| last_event_key(db, rkey_of(db, "bad-event")),
        b"\x01[{\"op\":",
    );
    clobber(
        dir.path(),
        |_| keys::resource(&rid("bad-record")),
        b"\x07garbage",
    );
    clobber(dir.path(), |_| b"R\xff\xfe".to_vec(), b"\x01{}");
    let before: Vec<(sled::IVec, sled::IVec)> = {
        let db = open_db(dir.path()).unwrap();
        db.iter().map(|kv| kv.unwrap()).collect()
    };

    let store = Store::open(dir.path()).expect("one bad resource must not fail the dir");
    let (named, unattributed) = store.quarantined();
    let ids: Vec<&str> = named.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["bad-event", "bad-record"]);
    assert_eq!(named[0].1.key, keys::display(&ekey));
    assert!(named[0].1.reason.contains("corrupt"), "{:?}", named[0].1);
    assert!(named[1].1.reason.contains("record"), "{:?}", named[1].1);
    assert_eq!(unattributed.len(), 1);
    assert_eq!(unattributed[0].key, "R\\xff\\xfe");

    for bad in ["bad-event", "bad-record"] {
        let id = rid(bad);
        assert!(store.resource(&id).is_some(), "{bad} is still listed");
        assert!(matches!(
            store.append(&id, json!({"new": 1})).await,
            Err(StoreError::Quarantined { .. })
        ));
        assert!(matches!(
            store.document_at(&id, Point::Time(u64::MAX / 2)),
            Err(StoreError::Quarantined { .. })
        ));
        assert!(matches!(
            store.history(&id, None, None, 10),
            Err(StoreError::Quarantined { .. })
        ));
        assert!(matches!(
            store.read_after(&id, Ulid::nil(), 10),
            Err(StoreError::Quarantined { .. })
        ));
        assert!(matches!(
            store.head(&id),
            Err(StoreError::Quarantined { .. })
        ));
        assert!(matches!(
            store.delete(&id).await,
            Err(StoreError::Quarantined { .. })
        ));
        assert!(matches!(
            store.put(spec(bad), 2).await,
            Err(StoreError::Quarantined { .. })
        ));
        assert!(matches!(
            store.compact(&id, u64::MAX / 2).await,
            Err(StoreError::Quarantined { .. })
        ));
    }

    let good = rid("good");
    let head = store.head(&good).unwrap().unwrap();
    assert_eq!(*head.doc, json!({"i": 3}));
    let e = store.append(&good, json!({"i": 4})).await.unwrap().unwrap();
    assert!(matches!(
        store.document_at(&good, Point::Id(e.id.0)).unwrap(),
        At::Found { .. }
    ));
    drop(store);

    // Nothing of the quarantined resources was changed or removed. (Opened
    // with the store's bounded wait: sled's background threads may hold
    // the directory lock a moment after the store is dropped.)
    let db = open_db(dir.path()).unwrap();
    let after: std::collections::HashMap<sled::IVec, sled::IVec> =
        db.iter().map(|kv| kv.unwrap()).collect();
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "key {} changed", keys::display(k));
    }
}
