//! The change log on a NATS JetStream cluster: a second backend of
//! [`crate::store::Storage`], selected by `[cluster]`, keeping the same
//! contract as the sled one (the model proptest and the crash test run
//! against both). The only module that names NATS.
//!
//! Layout (`layout`): one stream of every resource's events, snapshots and
//! large-payload chunks, a subject per resource and kind; resource records
//! in a KV bucket. Message formats (`codec`): metadata in versioned
//! headers, JSON as the payload. Durable means acknowledged by JetStream,
//! that is stored on a quorum of the stream's replicas.
//!
//! Fencing: every event is published with
//! `Nats-Expected-Last-Subject-Sequence` set to the subject sequence it
//! follows, so a writer whose view is stale (another appended meanwhile)
//! is refused by the stream itself: [`StoreError::Fenced`], nothing lost.
//!
//! Finding an event by id, and the nearest snapshot before a point, never
//! scans a subject: ids increase with the sequence along a subject, so a
//! binary search over sequences with "first message of this subject at or
//! after sequence n" reads O(log n) messages (`find_last_le`).
//!
//! The trait's synchronous reads (`resources`, `head`, `status`, …) are
//! answered from an in-memory cache of each resource's head and bounds,
//! which this backend keeps as the only writer of its prefix (the next
//! stage, with several nodes, follows the stream to keep it current).

mod codec;
mod layout;
#[cfg(test)]
mod tests;

#[doc(hidden)]
pub mod testing;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream, Context};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use std::collections::BTreeMap;

use crate::log::webhooks;
use crate::model::{Cursor, WebhookRecord};
use serde_json::Value;
use ulid::Ulid;

use crate::config::ClusterConfig;
use crate::diff;
use crate::log::{check_depth, decode_resource, encode_resource, next_id, Encoded, TooDeep};
use crate::model::{Event, EventId, Point, ResourceId, ResourceRecord, ResourceSpec};
use crate::store::{
    Appended, At, Compaction, Created, Edit, Edited, Head, Health, History, LogStatus, Quarantine,
    ReadAfter, Storage, Store, StoreError, Unattributed,
};

use codec::{Body, Meta};
use layout::{Kind, Layout};

/// Deadline of one request to NATS (a read, a publish's ack, a purge).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one request before it fails: NATS answers "no responders"
/// or times out while a stream elects a new leader (a node died). With
/// the back-off that is about 17 s of waiting, which covers the election
/// after the stream leader (and the meta leader) is killed on loopback.
const ATTEMPTS: u32 = 12;
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Deadline of connecting and setting up streams at open (the cluster may
/// still be forming).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Most probes of one binary search (sequences are u64).
const SEARCH_STEPS: usize = 70;
/// Snapshots tried by one rebuild before the log is called corrupt: each
/// failed one is a snapshot whose event never landed.
const SNAPSHOT_TRIES: usize = 4;
/// Largest resource record in the KV bucket.
const MAX_RECORD: i32 = 64 * 1024;
/// Attempts of `history` when compactions keep removing what it reads.
const HISTORY_ATTEMPTS: u32 = 4;

fn cluster_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Cluster(format!("{what}: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

fn backoff(attempt: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(attempt)).min(MAX_BACKOFF)
}

/// Runs `f` up to [`ATTEMPTS`] times, each bounded by [`REQUEST_TIMEOUT`]:
/// `Ok(r)` is final, `Err(why)` is worth another attempt.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, StoreError>, String>>,
{
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, f()).await {
            Ok(Ok(r)) => return r,
            Ok(Err(why)) => last = why,
            Err(_) => last = format!("no answer within {REQUEST_TIMEOUT:?}"),
        }
    }
    Err(StoreError::Cluster(format!(
        "{what}: failed {ATTEMPTS} times, last: {last}"
    )))
}

/// Opens the JetStream log of `cfg`: connects, creates the stream and the
/// bucket if missing, and loads every resource's head.
pub async fn open(cfg: &ClusterConfig) -> Result<Store, StoreError> {
    Ok(Arc::new(ClusterStore::open(cfg).await?))
}

/// The JetStream backend. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct ClusterStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: Context,
    log: stream::Stream,
    kv: kv::Store,
    layout: Layout,
    resources: RwLock<HashMap<ResourceId, Arc<Entry>>>,
    /// Serialises create/update/delete of resource records.
    admin: tokio::sync::Mutex<()>,
    /// While writes fail: the error and since when (Unix ms).
    failing: Mutex<Option<(String, u64)>>,
    errors: AtomicU64,
    /// JetStream acknowledgements received (durable writes).
    acks: AtomicU64,
    diff_fallbacks: AtomicU64,
    unattributed: Vec<Unattributed>,
    /// Webhook records and cursors, loaded at open and kept by this node's
    /// writes (the only writer in this stage, like the resources).
    webhooks: RwLock<BTreeMap<ResourceId, WebhookRecord>>,
    cursors: RwLock<BTreeMap<ResourceId, BTreeMap<ResourceId, Cursor>>>,
    /// Values longer than this are stored in chunks of this size. Reads
    /// do not depend on it; tests shrink it so small documents take the
    /// chunk path.
    value_max: std::sync::atomic::AtomicUsize,
}

struct Entry {
    rkey: u64,
    record: RwLock<ResourceRecord>,
    /// One append at a time per resource: ids and diffs chain.
    append: Arc<tokio::sync::Mutex<()>>,
    /// One compaction at a time per resource.
    compact: tokio::sync::Mutex<()>,
    state: RwLock<State>,
    deleted: AtomicBool,
    quarantine: Option<Quarantine>,
}

#[derive(Clone, Default)]
struct State {
    /// Newest acknowledged version; readers never look past it.
    head: Option<Head>,
    /// Stream sequence of the head event (0: none): the next append
    /// expects it as the event subject's last sequence.
    head_seq: u64,
    /// Highest id ever allocated, acknowledged or not.
    allocated: Option<EventId>,
    /// Events since the newest snapshot.
    since_snapshot: u32,
    horizon: Option<EventId>,
    /// Stream sequence of the horizon event.
    horizon_seq: u64,
    compacted: bool,
    /// Events retained, from the horizon to the head: counted from the
    /// stream's per-subject totals at open, then kept by appends and
    /// compaction.
    events: u64,
    /// Stream sequence of the last message on the snapshot subject (0:
    /// none): the next snapshot expects it (compaction never purges it).
    snap_seq: u64,
}

impl Entry {
    fn new(rkey: u64, record: ResourceRecord, state: State) -> Entry {
        Entry {
            rkey,
            record: RwLock::new(record),
            append: Arc::new(tokio::sync::Mutex::new(())),
            compact: tokio::sync::Mutex::new(()),
            state: RwLock::new(state),
            deleted: AtomicBool::new(false),
            quarantine: None,
        }
    }

    fn id(&self) -> ResourceId {
        read(&self.record).spec.id.clone()
    }

    fn refused(&self) -> StoreError {
        StoreError::Quarantined {
            id: self.id(),
            quarantine: self.quarantine.clone().unwrap_or_else(|| Quarantine {
                key: String::new(),
                reason: "quarantined".into(),
            }),
        }
    }
}

/// A message read back, with its decoded metadata.
struct Found {
    seq: u64,
    meta: Meta,
    msg: jetstream::message::StreamMessage,
}

/// Whether a failure to load one resource is that resource's alone.
fn is_resource_local(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Corrupt { .. } | StoreError::BadPatch { .. } | StoreError::TooDeep(_)
    )
}

fn corrupt(subject: &str, seq: u64, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: format!("{subject} seq {seq}: {why}"),
    }
}

impl ClusterStore {
    /// See [`open`].
    pub async fn open(cfg: &ClusterConfig) -> Result<ClusterStore, StoreError> {
        // Connecting and setting up are bounded as a whole; loading then
        // takes a time that grows with the resources, every request of it
        // bounded by its own deadline and retries.
        let mut store = tokio::time::timeout(OPEN_TIMEOUT, Self::connect(cfg))
            .await
            .map_err(|_| {
                StoreError::Cluster(format!(
                    "could not connect to NATS at {:?} and set up JetStream within {OPEN_TIMEOUT:?}",
                    cfg.nats
                ))
            })??;
        store.load().await?;
        Ok(store)
    }

    async fn connect(cfg: &ClusterConfig) -> Result<ClusterStore, StoreError> {
        let layout = Layout::new(&cfg.prefix);
        let client = async_nats::ConnectOptions::new()
            .name(format!("patchfeed {}", cfg.node))
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .retry_on_initial_connect()
            .connect(cfg.nats.as_slice())
            .await
            .map_err(|e| cluster_err("connecting to NATS", e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        // Stream and bucket: created if missing (a cluster that is still
        // electing its meta leader answers "temporarily unavailable").
        let log = loop {
            let config = stream::Config {
                name: layout.log_stream(),
                subjects: vec![layout.log_subjects()],
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                max_message_size: 1 << 20,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            };
            match js.get_or_create_stream(config).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(error = %e, "JetStream not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let kv = loop {
            let config = kv::Config {
                bucket: layout.bucket(),
                history: 1,
                num_replicas: cfg.replicas,
                storage: stream::StorageType::File,
                max_value_size: MAX_RECORD,
                ..Default::default()
            };
            match js.create_or_update_key_value(config).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(error = %e, "JetStream KV not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        Ok(ClusterStore {
            inner: Arc::new(Inner {
                client,
                js,
                log,
                kv,
                layout,
                resources: RwLock::new(HashMap::new()),
                admin: tokio::sync::Mutex::new(()),
                failing: Mutex::new(None),
                errors: AtomicU64::new(0),
                acks: AtomicU64::new(0),
                diff_fallbacks: AtomicU64::new(0),
                unattributed: Vec::new(),
                value_max: std::sync::atomic::AtomicUsize::new(codec::INLINE_MAX),
                webhooks: RwLock::new(BTreeMap::new()),
                cursors: RwLock::new(BTreeMap::new()),
            }),
        })
    }

    /// Reads every resource record and each resource's bounds and head;
    /// finishes deletes a crash interrupted.
    async fn load(&mut self) -> Result<(), StoreError> {
        let tombstones: Vec<u64> = self
            .kv_scan("t.>")
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("t.").and_then(|r| r.parse().ok()))
            .collect();
        let mut resources = HashMap::new();
        let mut unattributed = Vec::new();
        for (key, value) in self.kv_scan("r.>").await? {
            let Some((rkey, record)) = decode_resource(&value) else {
                let q = Quarantine {
                    key: format!("KV {key}"),
                    reason: "the resource record cannot be decoded".into(),
                };
                tracing::error!(key = %q.key, "quarantined a resource: its stored record is unreadable (kept untouched)");
                match Layout::id_of_key(&key) {
                    Some(id) => {
                        let record = crate::log::placeholder_record(id.clone());
                        let mut e = Entry::new(0, record, State::default());
                        e.quarantine = Some(q);
                        resources.insert(id, Arc::new(e));
                    }
                    None => unattributed.push(Unattributed {
                        key: q.key,
                        reason: q.reason,
                    }),
                }
                continue;
            };
            if tombstones.contains(&rkey) {
                // A delete wrote its tombstone, then stopped before removing
                // the record: finish it.
                self.kv_delete(&key).await?;
                continue;
            }
            let id = record.spec.id.clone();
            let entry = match self.load_state(rkey, true).await {
                Ok(state) => Entry::new(rkey, record, state),
                Err(e) if is_resource_local(&e) => {
                    let q = Quarantine {
                        key: match &e {
                            StoreError::Corrupt { key } => key.clone(),
                            _ => String::new(),
                        },
                        reason: e.to_string(),
                    };
                    tracing::error!(resource = %id, reason = %q.reason, "quarantined a resource: its stored log is unreadable (kept untouched)");
                    let mut entry = Entry::new(0, record, State::default());
                    entry.quarantine = Some(q);
                    entry
                }
                Err(e) => return Err(e),
            };
            resources.insert(id, Arc::new(entry));
        }
        let mut webhooks = BTreeMap::new();
        for (key, value) in self.kv_scan("w.>").await? {
            let r = webhooks::decode_webhook(&value).ok_or_else(|| StoreError::Corrupt {
                key: format!("KV {key}"),
            })?;
            webhooks.insert(r.spec.id.clone(), r);
        }
        let mut cursors: BTreeMap<ResourceId, BTreeMap<ResourceId, Cursor>> = BTreeMap::new();
        for (key, value) in self.kv_scan("c.>").await? {
            let corrupt = || StoreError::Corrupt {
                key: format!("KV {key}"),
            };
            let (w, r) = Layout::ids_of_cursor_key(&key).ok_or_else(corrupt)?;
            let c = webhooks::decode_cursor(&value).ok_or_else(corrupt)?;
            cursors.entry(w).or_default().insert(r, c);
        }
        let inner = Arc::get_mut(&mut self.inner).expect("not shared during load");
        inner.unattributed = unattributed;
        *write(&inner.webhooks) = webhooks;
        *write(&inner.cursors) = cursors;
        *write(&inner.resources) = resources;
        for rkey in tombstones {
            self.purge(rkey).await?;
        }
        Ok(())
    }

    /// Every live (key, value) of the bucket under `filter` (`r.>`), read
    /// from the bucket stream's leader in key order of writing. Bounded by
    /// the bucket's last sequence.
    async fn kv_scan(&self, filter: &str) -> Result<Vec<(String, Bytes)>, StoreError> {
        let stream = &self.inner.kv.stream;
        let subject = self.inner.layout.kv_subject(filter);
        let prefix = self.inner.layout.kv_subject("");
        let mut out = Vec::new();
        let mut seq = 1;
        loop {
            let Some(m) = first_raw(stream, &subject, seq).await? else {
                return Ok(out);
            };
            seq = m.sequence + 1;
            let op = m.headers.get("KV-Operation").map(|v| v.as_str().to_owned());
            if matches!(op.as_deref(), Some("DEL") | Some("PURGE")) {
                continue;
            }
            let key = m
                .subject
                .as_str()
                .strip_prefix(&prefix)
                .unwrap_or("")
                .to_owned();
            out.push((key, m.payload));
        }
    }

    async fn kv_delete(&self, key: &str) -> Result<(), StoreError> {
        let kv = &self.inner.kv;
        retry("deleting a KV key", || async {
            kv.delete(key).await.map(Ok).map_err(|e| e.to_string())
        })
        .await
    }

    async fn kv_put(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        let kv = &self.inner.kv;
        let r = retry("writing a KV key", || {
            let value = value.clone();
            async move { kv.put(key, value).await.map(Ok).map_err(|e| e.to_string()) }
        })
        .await;
        self.wrote(r)
    }

    /// Counts a write's outcome into the health.
    fn wrote<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match &r {
            Ok(_) => {
                self.inner.acks.fetch_add(1, Ordering::Relaxed);
                *lock(&self.inner.failing) = None;
            }
            Err(StoreError::Fenced { .. }) => {}
            Err(e) => {
                self.inner.errors.fetch_add(1, Ordering::Relaxed);
                let mut f = lock(&self.inner.failing);
                let since = f.as_ref().map_or_else(crate::model::now_ms, |(_, s)| *s);
                *f = Some((e.to_string(), since));
            }
        }
        r
    }

    // ---- reads of the log stream ----

    /// The first message of `subject` at or after `seq`.
    async fn first(&self, subject: &str, seq: u64) -> Result<Option<Found>, StoreError> {
        match first_raw(&self.inner.log, subject, seq).await? {
            None => Ok(None),
            Some(m) => {
                let meta =
                    codec::decode(&m.headers).map_err(|w| corrupt(subject, m.sequence, w))?;
                Ok(Some(Found {
                    seq: m.sequence,
                    meta,
                    msg: m,
                }))
            }
        }
    }

    /// The last message of `subject`.
    /// Messages stored on one subject (the stream's per-subject total).
    async fn count(&self, subject: &str) -> Result<u64, StoreError> {
        let log = &self.inner.log;
        retry("counting the messages of a subject", || async {
            let mut info = log
                .info_with_subjects(subject)
                .await
                .map_err(|e| e.to_string())?;
            let mut n = 0u64;
            while let Some(item) = info.next().await {
                let (name, count) = item.map_err(|e| e.to_string())?;
                if name == subject {
                    n += count as u64;
                }
            }
            Ok(Ok(n))
        })
        .await
    }

    async fn last(&self, subject: &str) -> Result<Option<Found>, StoreError> {
        let log = &self.inner.log;
        let m = retry("reading the last message of a subject", || async {
            match log.get_last_raw_message_by_subject(subject).await {
                Ok(m) => Ok(Ok(Some(m))),
                Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
                    Ok(Ok(None))
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;
        match m {
            None => Ok(None),
            Some(m) => {
                let meta =
                    codec::decode(&m.headers).map_err(|w| corrupt(subject, m.sequence, w))?;
                Ok(Some(Found {
                    seq: m.sequence,
                    meta,
                    msg: m,
                }))
            }
        }
    }

    /// The message of `subject` with the greatest id ≤ `bound` among
    /// sequences `lo..=hi`, by binary search: ids increase with the
    /// sequence along a subject, so O(log(hi - lo)) reads, no scan.
    async fn find_last_le(
        &self,
        subject: &str,
        lo: u64,
        hi: u64,
        bound: Ulid,
    ) -> Result<Option<Found>, StoreError> {
        let Some(first) = self.first(subject, lo.max(1)).await? else {
            return Ok(None);
        };
        if first.seq > hi || first.meta.id.0 > bound {
            return Ok(None);
        }
        let (mut lo, mut hi) = (first.seq, hi);
        let mut best = first;
        for _ in 0..SEARCH_STEPS {
            if lo >= hi {
                break;
            }
            let mid = lo + (hi - lo).div_ceil(2);
            match self.first(subject, mid).await? {
                Some(m) if m.seq <= hi && m.meta.id.0 <= bound => {
                    lo = m.seq;
                    best = m;
                }
                // Nothing in mid..=hi, or only ids past the bound.
                _ => hi = mid - 1,
            }
        }
        Ok(Some(best))
    }

    /// The JSON of a message: its payload, or its chunks reassembled.
    async fn body(&self, f: &Found, tag: char) -> Result<Bytes, StoreError> {
        match &f.meta.body {
            Body::Inline => Ok(f.msg.payload.clone()),
            Body::Chunks { seqs, len } => {
                let mut out = Vec::with_capacity(*len);
                for (i, seq) in seqs.iter().enumerate() {
                    let of = codec::chunk_of(tag, f.meta.id, f.meta.nonce, i);
                    let log = &self.inner.log;
                    let m = retry("reading a chunk", || async {
                        log.get_raw_message(*seq)
                            .await
                            .map(Ok)
                            .map_err(|e| e.to_string())
                    })
                    .await?;
                    codec::check_chunk(&m.headers, &of)
                        .map_err(|w| corrupt(m.subject.as_str(), *seq, w))?;
                    out.extend_from_slice(&m.payload);
                    if out.len() > *len {
                        break;
                    }
                }
                if out.len() != *len {
                    return Err(corrupt(
                        "chunks",
                        f.seq,
                        format!("{} bytes, expected {len}", out.len()),
                    ));
                }
                Ok(Bytes::from(out))
            }
        }
    }

    /// Events of `rkey` after sequence `after_seq`, id ≤ `upto`, at most
    /// `limit`, stopping once `max_bytes` of patches are read, never past
    /// `upto_seq` (the head).
    async fn read_events(
        &self,
        rkey: u64,
        after_seq: u64,
        upto: Ulid,
        upto_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Event, u64)>, StoreError> {
        let subject = self.inner.layout.subject(rkey, Kind::Event);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut seq = after_seq + 1;
        while out.len() < limit && bytes < max_bytes && seq <= upto_seq {
            let Some(f) = self.first(&subject, seq).await? else {
                break;
            };
            if f.seq > upto_seq || f.meta.id.0 > upto {
                break;
            }
            let patch = self.body(&f, 'e').await?;
            bytes = bytes.saturating_add(patch.len());
            seq = f.seq + 1;
            out.push((
                Event {
                    id: f.meta.id,
                    patch,
                },
                f.seq,
            ));
        }
        Ok(out)
    }

    /// The event a snapshot belongs to, if it landed: the first event
    /// message after the snapshot's `before`, with its id and nonce.
    async fn snapshot_event(&self, rkey: u64, snap: &Meta) -> Result<Option<u64>, StoreError> {
        let subject = self.inner.layout.subject(rkey, Kind::Event);
        Ok(self
            .first(&subject, snap.before + 1)
            .await?
            .filter(|e| e.meta.id == snap.id && e.meta.nonce == snap.nonce)
            .map(|e| e.seq))
    }

    /// The document after the last event ≤ `bound`, from the nearest
    /// snapshot (an append's or compaction's) whose event landed, and the
    /// number of events applied after that snapshot.
    async fn rebuild(
        &self,
        rkey: u64,
        s: &State,
        bound: Ulid,
    ) -> Result<Option<(EventId, Value, u32)>, StoreError> {
        let l = &self.inner.layout;
        let (ssub, hsub) = (
            l.subject(rkey, Kind::Snapshot),
            l.subject(rkey, Kind::Horizon),
        );
        // The newest compaction snapshot ≤ bound (there are one or two).
        let horizon_snap = match self.last(&hsub).await? {
            Some(h) if h.meta.id.0 <= bound => Some(h),
            Some(h) => self.find_last_le(&hsub, 1, h.seq, bound).await?,
            None => None,
        };
        let mut hi = s.snap_seq;
        let mut bound_s = bound;
        let mut chosen = None;
        for _ in 0..SNAPSHOT_TRIES {
            let cand = if hi == 0 {
                None
            } else {
                self.find_last_le(&ssub, 1, hi, bound_s).await?
            };
            let (snap, tag) = match (cand, &horizon_snap) {
                (Some(c), Some(h)) if h.meta.id >= c.meta.id => (None, 'h'),
                (Some(c), _) => (Some(c), 's'),
                (None, _) => (None, 'h'),
            };
            let snap = match snap {
                Some(c) => c,
                None => break,
            };
            match self.snapshot_event(rkey, &snap.meta).await? {
                Some(event_seq) => {
                    chosen = Some((snap, tag, event_seq));
                    break;
                }
                // A snapshot whose event never landed: try the one before.
                None => {
                    hi = snap.seq.saturating_sub(1);
                    match snap.meta.id.0 .0.checked_sub(1) {
                        Some(b) => bound_s = Ulid(b),
                        None => break,
                    }
                }
            }
        }
        if chosen.is_none() {
            if let Some(h) = horizon_snap {
                if let Some(event_seq) = self.snapshot_event(rkey, &h.meta).await? {
                    chosen = Some((h, 'h', event_seq));
                }
            }
        }
        let Some((snap, tag, event_seq)) = chosen else {
            return Ok(None);
        };
        let json = self.body(&snap, tag).await?;
        let mut doc: Value = serde_json::from_slice(&json)
            .map_err(|e| corrupt(&format!("{tag} snapshot"), snap.seq, e))?;
        let mut id = snap.meta.id;
        let mut applied = 0u32;
        let mut after = event_seq;
        loop {
            let page = self
                .read_events(rkey, after, bound, s.head_seq, 512, usize::MAX)
                .await?;
            let Some(&(_, last_seq)) = page.last() else {
                break;
            };
            for (e, seq) in &page {
                let patch: json_patch::Patch =
                    serde_json::from_slice(&e.patch).map_err(|err| corrupt("event", *seq, err))?;
                diff::apply_or_discard(&mut doc, &patch.0)
                    .map_err(|source| StoreError::BadPatch { at: e.id, source })?;
                id = e.id;
                applied = applied.saturating_add(1);
            }
            after = last_seq;
        }
        check_depth(&doc)?;
        Ok(Some((id, doc, applied)))
    }

    /// A resource's state at open: head, bounds, snapshot position. A
    /// snapshot whose event never landed (a crash between the two
    /// publishes) is removed first, so ids stay increasing along the
    /// snapshot subject.
    ///
    /// `cleanup`: at open only. A refresh after a refused append must not
    /// remove the last snapshot: it may be another writer's whose event is
    /// on its way.
    async fn load_state(&self, rkey: u64, cleanup: bool) -> Result<State, StoreError> {
        let l = &self.inner.layout;
        let (esub, ssub) = (
            l.subject(rkey, Kind::Event),
            l.subject(rkey, Kind::Snapshot),
        );
        if let Some(snap) = self.last(&ssub).await?.filter(|_| cleanup) {
            if self.snapshot_event(rkey, &snap.meta).await?.is_none() {
                let log = &self.inner.log;
                retry("removing an orphan snapshot", || async {
                    log.delete_message(snap.seq)
                        .await
                        .map(|_| Ok(()))
                        .map_err(|e| e.to_string())
                })
                .await?;
            }
        }
        let snap_seq = self.last(&ssub).await?.map_or(0, |f| f.seq);
        let Some(last) = self.last(&esub).await? else {
            return Ok(State {
                snap_seq,
                ..State::default()
            });
        };
        let first = self
            .first(&esub, 1)
            .await?
            .ok_or_else(|| corrupt(&esub, last.seq, "a last event but no first"))?;
        let mut state = State {
            head: None,
            head_seq: last.seq,
            allocated: Some(last.meta.id),
            since_snapshot: 0,
            horizon: Some(first.meta.id),
            horizon_seq: first.seq,
            compacted: first.meta.prev.is_some(),
            events: self.count(&esub).await?,
            snap_seq,
        };
        let (at, doc, applied) = self
            .rebuild(rkey, &state, last.meta.id.0)
            .await?
            .ok_or_else(|| corrupt(&esub, last.seq, "events but no snapshot"))?;
        if at != last.meta.id {
            return Err(corrupt(
                &esub,
                last.seq,
                "the rebuild does not reach the last event",
            ));
        }
        let json = Bytes::from(serde_json::to_vec(&doc).expect("document serializes"));
        state.head = Some(Head {
            id: at,
            doc: Arc::new(doc),
            json,
        });
        state.since_snapshot = applied;
        Ok(state)
    }

    // ---- writes ----

    /// Publishes one message and waits for its acknowledgement, retrying
    /// (with the same `Nats-Msg-Id`, so a publish that did land is not
    /// stored twice) while the cluster does not answer. `expect`: the
    /// subject's last sequence this message must follow (fencing).
    /// A duplicate acknowledgement is accepted only if the stored message
    /// is this one (same id header and payload).
    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        headers: &HeaderMap,
        payload: &Bytes,
        expect: Option<u64>,
        resource: &ResourceId,
    ) -> Result<u64, StoreError> {
        let js = &self.inner.js;
        let mut attempts = 0u32;
        let r = retry("publishing", || {
            attempts += 1;
            let retried = attempts > 1;
            async move {
                let mut m = jetstream::message::PublishMessage::build()
                    .payload(payload.clone())
                    .headers(headers.clone())
                    .message_id(msg_id);
                if let Some(e) = expect {
                    m = m.expected_last_subject_sequence(e);
                }
                let ack = match js.send_publish(subject.to_owned(), m).await {
                    Ok(f) => f.await,
                    Err(e) => Err(e),
                };
                use jetstream::context::PublishErrorKind as K;
                match ack {
                    Ok(ack) if ack.duplicate => {
                        Ok(self.same_message(ack.sequence, msg_id, payload).await)
                    }
                    Ok(ack) => Ok(Ok(ack.sequence)),
                    Err(e) if e.kind() == K::WrongLastSequence => {
                        // A retry whose first attempt did land sees its own
                        // message as the subject's last.
                        if retried {
                            if let Ok(Some(seq)) = self.own_last(subject, msg_id, payload).await {
                                return Ok(Ok(seq));
                            }
                        }
                        Ok(Err(StoreError::Fenced {
                            id: resource.clone(),
                            expected: expect.unwrap_or(0),
                        }))
                    }
                    Err(e) if e.kind() == K::MaxPayloadExceeded => {
                        Ok(Err(cluster_err("publishing", e)))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        self.wrote(r)
    }

    /// The sequence of the message at `seq` if it is the one with
    /// `msg_id` and `payload`; else the error that a deduplication merged
    /// a different message into an earlier one.
    async fn same_message(
        &self,
        seq: u64,
        msg_id: &str,
        payload: &Bytes,
    ) -> Result<u64, StoreError> {
        let log = &self.inner.log;
        let m = retry("reading a deduplicated message", || async {
            log.get_raw_message(seq)
                .await
                .map(Ok)
                .map_err(|e| e.to_string())
        })
        .await?;
        let id = m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str());
        if id == Some(msg_id) && m.payload == *payload {
            Ok(seq)
        } else {
            Err(StoreError::Cluster(format!(
                "JetStream deduplicated message {msg_id} into a different message at sequence {seq}"
            )))
        }
    }

    /// The last message of `subject`'s sequence, if it is ours.
    async fn own_last(
        &self,
        subject: &str,
        msg_id: &str,
        payload: &Bytes,
    ) -> Result<Option<u64>, StoreError> {
        let log = &self.inner.log;
        let m = log
            .get_last_raw_message_by_subject(subject)
            .await
            .map_err(|e| cluster_err("reading", e))?;
        let id = m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str());
        Ok((id == Some(msg_id) && m.payload == *payload).then_some(m.sequence))
    }

    /// Publishes an event or snapshot: inline, or its chunks first (on the
    /// blob subject, unfenced: alone they are unreachable) and then the
    /// message that lists them. Returns the message's sequence.
    #[allow(clippy::too_many_arguments)]
    async fn put_value(
        &self,
        rkey: u64,
        kind: Kind,
        mut meta: Meta,
        json: &Bytes,
        expect: Option<u64>,
        resource: &ResourceId,
    ) -> Result<u64, StoreError> {
        let l = &self.inner.layout;
        let tag = match kind {
            Kind::Event => 'e',
            Kind::Snapshot => 's',
            _ => 'h',
        };
        let value_max = self.inner.value_max.load(Ordering::Relaxed);
        let payload = if json.len() <= value_max {
            meta.body = Body::Inline;
            json.clone()
        } else {
            let parts = codec::split(json, value_max);
            if json.len() > codec::MAX_CHUNKS * codec::CHUNK || parts.len() > 4 * codec::MAX_CHUNKS
            {
                return Err(StoreError::Cluster(format!(
                    "a value of {} bytes is over the cluster log's limit of {} bytes",
                    json.len(),
                    codec::MAX_CHUNKS * codec::CHUNK
                )));
            }
            let bsub = l.subject(rkey, Kind::Blob);
            let mut seqs = Vec::with_capacity(parts.len());
            for (i, part) in parts.iter().enumerate() {
                let of = codec::chunk_of(tag, meta.id, meta.nonce, i);
                // The owner tag names the kind too: an append's event and
                // snapshot share id and nonce.
                let msg_id = format!("{rkey}.b.{of}");
                let h = codec::chunk_headers(&of);
                seqs.push(
                    self.publish(&bsub, &msg_id, &h, part, None, resource)
                        .await?,
                );
            }
            meta.body = Body::Chunks {
                seqs,
                len: json.len(),
            };
            Bytes::new()
        };
        let msg_id = Layout::msg_id(rkey, kind, meta.id.0, meta.nonce, 0);
        let h = codec::headers(&meta);
        self.publish(
            &l.subject(rkey, kind),
            &msg_id,
            &h,
            &payload,
            expect,
            resource,
        )
        .await
    }

    /// Removes every message of a deleted resource, then its tombstone.
    async fn purge(&self, rkey: u64) -> Result<(), StoreError> {
        let filter = self.inner.layout.all_of(rkey);
        let log = &self.inner.log;
        retry("purging a deleted resource", || async {
            log.purge()
                .filter(filter.clone())
                .await
                .map(|_| Ok(()))
                .map_err(|e| e.to_string())
        })
        .await?;
        self.kv_delete(&Layout::tombstone_key(rkey)).await
    }

    /// Purges `subject` below `seq` (or keeping the last `keep`); returns
    /// how many messages went.
    async fn purge_subject(
        &self,
        subject: &str,
        below: Option<u64>,
        keep: Option<u64>,
    ) -> Result<u64, StoreError> {
        let log = &self.inner.log;
        let r = retry("purging", || async {
            let p = log.purge().filter(subject.to_owned());
            let r = match (below, keep) {
                (Some(s), _) => p.sequence(s).await,
                (None, Some(k)) => p.keep(k).await,
                (None, None) => p.await,
            };
            r.map(|r| Ok(r.purged)).map_err(|e| e.to_string())
        })
        .await;
        self.wrote(r)
    }

    fn entry(&self, id: &ResourceId) -> Result<Arc<Entry>, StoreError> {
        let e = read(&self.inner.resources)
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchResource(id.clone()))?;
        if e.quarantine.is_some() {
            return Err(e.refused());
        }
        Ok(e)
    }

    // ---- the operations of the trait ----

    async fn create(&self, spec: ResourceSpec, now_ms: u64) -> Result<Created, StoreError> {
        let _admin = self.inner.admin.lock().await;
        if let Some(e) = read(&self.inner.resources).get(&spec.id) {
            return Ok(Created::Exists(read(&e.record).clone()));
        }
        let id = spec.id.clone();
        self.insert_new(spec, now_ms).await?;
        Ok(Created::New(
            self.resource_of(&id)
                .ok_or_else(|| StoreError::NoSuchResource(id.clone()))?,
        ))
    }

    async fn put(&self, spec: ResourceSpec, now_ms: u64) -> Result<ResourceRecord, StoreError> {
        let _admin = self.inner.admin.lock().await;
        let existing = read(&self.inner.resources).get(&spec.id).cloned();
        match existing {
            None => self.insert_new(spec.clone(), now_ms).await?,
            Some(e) if e.quarantine.is_some() => return Err(e.refused()),
            Some(e) => {
                let record = ResourceRecord {
                    spec: spec.clone(),
                    created_ms: read(&e.record).created_ms,
                };
                self.kv_put(
                    &Layout::resource_key(&spec.id),
                    Bytes::from(encode_resource(e.rkey, &record)),
                )
                .await?;
                *write(&e.record) = record;
            }
        }
        self.resource_of(&spec.id)
            .ok_or_else(|| StoreError::NoSuchResource(spec.id.clone()))
    }

    /// Caller holds `admin`. The rkey is a fresh revision of the bucket's
    /// allocator key: unique and never reused.
    async fn insert_new(&self, spec: ResourceSpec, now_ms: u64) -> Result<(), StoreError> {
        let rkey = self.kv_put(Layout::RKEY_KEY, Bytes::new()).await?;
        let record = ResourceRecord {
            spec,
            created_ms: now_ms,
        };
        self.kv_put(
            &Layout::resource_key(&record.spec.id),
            Bytes::from(encode_resource(rkey, &record)),
        )
        .await?;
        let id = record.spec.id.clone();
        write(&self.inner.resources)
            .insert(id, Arc::new(Entry::new(rkey, record, State::default())));
        Ok(())
    }

    async fn delete(&self, id: &ResourceId) -> Result<bool, StoreError> {
        let Some(entry) = read(&self.inner.resources).get(id).cloned() else {
            return Ok(false);
        };
        if entry.quarantine.is_some() {
            return Err(entry.refused());
        }
        let _append = entry.append.lock().await;
        let _admin = self.inner.admin.lock().await;
        if entry.deleted.swap(true, Ordering::SeqCst) {
            return Ok(false);
        }
        let r = async {
            // The tombstone first: `open` finishes a delete that has one.
            self.kv_put(&Layout::tombstone_key(entry.rkey), Bytes::new())
                .await?;
            self.kv_delete(&Layout::resource_key(id)).await
        }
        .await;
        if let Err(e) = r {
            entry.deleted.store(false, Ordering::SeqCst);
            return Err(e);
        }
        write(&self.inner.resources).remove(id);
        let store = self.clone();
        let rkey = entry.rkey;
        tokio::spawn(async move {
            if let Err(e) = store.purge(rkey).await {
                tracing::warn!(rkey, error = %e, "purging a deleted resource failed; retried at next open");
            }
        });
        Ok(true)
    }

    fn resource_of(&self, id: &ResourceId) -> Option<ResourceRecord> {
        read(&self.inner.resources)
            .get(id)
            .map(|e| read(&e.record).clone())
    }

    async fn append_edit(
        &self,
        id: &ResourceId,
        expected: Option<EventId>,
        heavy: bool,
        edit: Edit,
        now_ms: u64,
    ) -> Result<Edited, StoreError> {
        let entry = self.entry(id)?;
        let guard = entry.append.clone().lock_owned().await;
        if entry.deleted.load(Ordering::SeqCst) {
            return Err(StoreError::NoSuchResource(id.clone()));
        }
        let state = read(&entry.state).clone();
        let head_id = state.head.as_ref().map(|h| h.id);
        if let Some(want) = expected {
            if head_id != Some(want) {
                return Ok(Edited::HeadMoved(head_id));
            }
        }
        // As in the sled backend: the edit, diff and encoding run off the
        // calling thread for large documents, under the append lock.
        let prev = state.head.as_ref().map(|h| h.doc.clone());
        let heavy = heavy
            || prev
                .as_deref()
                .is_some_and(|p| diff::nodes_at_least(p, crate::cpu::INLINE_NODES));
        let step = crate::cpu::run(
            heavy,
            move || -> Result<Result<Option<Encoded>, String>, TooDeep> {
                let doc = match edit(prev.as_deref()) {
                    Ok(doc) => doc,
                    Err(why) => return Ok(Err(why)),
                };
                check_depth(&doc)?;
                Ok(Ok(crate::log::encode(prev.as_deref(), doc)))
            },
        )
        .await
        .map_err(|e| StoreError::Cluster(e.to_string()))??;
        let encoded = match step {
            Ok(encoded) => encoded,
            Err(why) => return Ok(Edited::Refused(why)),
        };
        let Some(Encoded {
            patch_json,
            doc_json,
            doc,
            budget_exceeded,
        }) = encoded
        else {
            return Ok(Edited::Unchanged(head_id));
        };
        let last = state.allocated.max(head_id);
        let event_id = next_id(last, now_ms).ok_or_else(|| StoreError::IdsExhausted(id.clone()))?;
        let snapshot_every = read(&entry.record).spec.snapshot_every.max(1);
        let snapshot = state.head.is_none() || state.since_snapshot + 1 >= snapshot_every;
        write(&entry.state).allocated = Some(event_id);
        // From here the log and the cached head move together: the commit
        // runs in its own task holding the append lock, so a cancelled
        // caller cannot stop it half-way.
        let store = self.clone();
        let resource = id.clone();
        let event_json = patch_json.clone();
        let commit_entry = entry.clone();
        let commit = tokio::spawn(async move {
            let _guard = guard;
            let entry = commit_entry;
            let nonce: u64 = rand::random();
            let meta = Meta {
                id: event_id,
                prev: head_id,
                before: state.head_seq,
                nonce,
                body: Body::Inline,
            };
            // The snapshot first: the event is what makes the version
            // exist; a snapshot without its event is recognised (nonce)
            // and removed at open.
            let snap_seq = if snapshot {
                let seq = store
                    .put_value(
                        entry.rkey,
                        Kind::Snapshot,
                        Meta {
                            prev: None,
                            ..meta.clone()
                        },
                        &doc_json,
                        Some(state.snap_seq),
                        &resource,
                    )
                    .await?;
                write(&entry.state).snap_seq = seq;
                Some(seq)
            } else {
                None
            };
            let event_seq = match store
                .put_value(
                    entry.rkey,
                    Kind::Event,
                    meta,
                    &event_json,
                    Some(state.head_seq),
                    &resource,
                )
                .await
            {
                Ok(seq) => seq,
                Err(e) => {
                    // Not acknowledged, never published: take the snapshot
                    // back (best effort), so the snapshot subject keeps
                    // only snapshots of events.
                    if let Some(seq) = snap_seq {
                        if store.inner.log.delete_message(seq).await.is_ok() {
                            write(&entry.state).snap_seq = state.snap_seq;
                        }
                    }
                    // Fenced (another writer appended), or a failure after
                    // which the event may have landed unacknowledged: the
                    // cached head may be stale. Read it back from the log
                    // (best effort), so the next append follows what is
                    // stored instead of being refused forever.
                    if let Ok(fresh) = store.load_state(entry.rkey, false).await {
                        let mut s = write(&entry.state);
                        let allocated = s.allocated.max(fresh.allocated);
                        *s = State { allocated, ..fresh };
                    }
                    return Err(e);
                }
            };
            let mut s = write(&entry.state);
            s.head = Some(Head {
                id: event_id,
                doc: Arc::new(doc),
                json: doc_json,
            });
            s.head_seq = event_seq;
            s.events += 1;
            s.since_snapshot = if snapshot { 0 } else { s.since_snapshot + 1 };
            if s.horizon.is_none() {
                s.horizon = Some(event_id);
                s.horizon_seq = event_seq;
            }
            Ok::<_, StoreError>(())
        });
        commit
            .await
            .map_err(|e| StoreError::Cluster(format!("commit task failed: {e}")))??;
        if budget_exceeded {
            self.inner.diff_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Edited::Appended(
            Event {
                id: event_id,
                patch: patch_json,
            },
            head_id,
        ))
    }

    async fn read_after(
        &self,
        id: &ResourceId,
        after: Ulid,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ReadAfter, StoreError> {
        let entry = self.entry(id)?;
        let s = read(&entry.state).clone();
        let (Some(head), Some(horizon)) = (&s.head, s.horizon) else {
            return Ok(ReadAfter::Events(Vec::new()));
        };
        if after < horizon.0 {
            return Ok(ReadAfter::BeforeHorizon { horizon });
        }
        if after >= head.id.0 || limit == 0 {
            return Ok(ReadAfter::Events(Vec::new()));
        }
        let esub = self.inner.layout.subject(entry.rkey, Kind::Event);
        let events = async {
            let from = self
                .find_last_le(&esub, s.horizon_seq, s.head_seq, after)
                .await?
                .map_or(s.horizon_seq.saturating_sub(1), |f| f.seq);
            self.read_events(entry.rkey, from, head.id.0, s.head_seq, limit, max_bytes)
                .await
        }
        .await;
        // A compaction may have moved the horizon past `after` meanwhile.
        if let Some(h) = read(&entry.state).horizon {
            if after < h.0 {
                return Ok(ReadAfter::BeforeHorizon { horizon: h });
            }
        }
        Ok(ReadAfter::Events(
            events?.into_iter().map(|(e, _)| e).collect(),
        ))
    }

    async fn contains(&self, id: &ResourceId, event: EventId) -> Result<bool, StoreError> {
        let entry = self.entry(id)?;
        let s = read(&entry.state).clone();
        match (&s.head, s.horizon) {
            (Some(head), Some(h)) if h <= event && event <= head.id => {}
            _ => return Ok(false),
        }
        let esub = self.inner.layout.subject(entry.rkey, Kind::Event);
        Ok(self
            .find_last_le(&esub, s.horizon_seq, s.head_seq, event.0)
            .await?
            .is_some_and(|f| f.meta.id == event))
    }

    async fn document_at(&self, id: &ResourceId, point: Point) -> Result<At, StoreError> {
        let entry = self.entry(id)?;
        let s = read(&entry.state).clone();
        let (Some(head), Some(horizon)) = (&s.head, s.horizon) else {
            return Ok(At::NotYet);
        };
        let bound = point.upper_bound();
        if bound >= head.id.0 {
            return Ok(At::Found {
                id: head.id,
                doc: head.doc.clone(),
            });
        }
        let before_horizon = |h: EventId, compacted: bool| {
            if compacted {
                At::Compacted { horizon: h }
            } else {
                At::NotYet
            }
        };
        if bound < horizon.0 {
            return Ok(before_horizon(horizon, s.compacted));
        }
        let rebuilt = self.rebuild(entry.rkey, &s, bound).await;
        let now = read(&entry.state).clone();
        if let Some(h) = now.horizon {
            if bound < h.0 {
                return Ok(before_horizon(h, now.compacted));
            }
        }
        let (id, doc, _) = rebuilt?.ok_or_else(|| StoreError::Corrupt {
            key: format!("no snapshot at or before {bound} for rkey {}", entry.rkey),
        })?;
        Ok(At::Found {
            id,
            doc: Arc::new(doc),
        })
    }

    async fn history(
        &self,
        id: &ResourceId,
        after: Option<Point>,
        before: Option<Point>,
        limit: usize,
    ) -> Result<History, StoreError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.history_once(id, after, before, limit).await {
                Ok(h) => return Ok(h),
                Err((true, _)) if attempts < HISTORY_ATTEMPTS => continue,
                Err((_, e)) => return Err(e),
            }
        }
    }

    /// One attempt of `history`; `Err((true, e))`: a compaction raced it.
    async fn history_once(
        &self,
        id: &ResourceId,
        after: Option<Point>,
        before: Option<Point>,
        limit: usize,
    ) -> Result<History, (bool, StoreError)> {
        let entry = self.entry(id).map_err(|e| (false, e))?;
        let s = read(&entry.state).clone();
        let (Some(head), Some(horizon)) = (&s.head, s.horizon) else {
            return Ok(History::Events {
                events: Vec::new(),
                next_after: None,
            });
        };
        let lo = after.map_or(Ulid::nil(), Point::upper_bound);
        if s.compacted && after.is_some() && lo < horizon.0 {
            return Ok(History::Compacted { horizon });
        }
        let lo = if after.is_none() {
            Ulid(horizon.0 .0.saturating_sub(1))
        } else {
            lo
        };
        let hi = before.map_or(head.id.0, |b| b.upper_bound().min(head.id.0));
        if hi <= lo || limit == 0 {
            return Ok(History::Events {
                events: Vec::new(),
                next_after: None,
            });
        }
        let esub = self.inner.layout.subject(entry.rkey, Kind::Event);
        let scanned = async {
            let from = self
                .find_last_le(&esub, s.horizon_seq, s.head_seq, lo)
                .await?
                .map_or(s.horizon_seq.saturating_sub(1), |f| f.seq);
            self.read_events(
                entry.rkey,
                from,
                hi,
                s.head_seq,
                limit.saturating_add(1),
                usize::MAX,
            )
            .await
        }
        .await;
        let now = read(&entry.state).clone();
        let compacted_to = now.horizon.filter(|_| now.compacted);
        if let Some(h) = compacted_to {
            if after.is_some() && lo < h.0 {
                return Ok(History::Compacted { horizon: h });
            }
        }
        let mut events: Vec<Event> = match scanned {
            Ok(events) => events.into_iter().map(|(e, _)| e).collect(),
            Err(e) if compacted_to.is_some_and(|h| h != horizon) => return Err((true, e)),
            Err(e) => return Err((false, e)),
        };
        if let Some(h) = compacted_to {
            events.retain(|e| e.id >= h);
        }
        let next_after = if events.len() > limit {
            events.truncate(limit);
            events.last().map(|e| e.id)
        } else {
            None
        };
        Ok(History::Events { events, next_after })
    }

    /// Moves the horizon to the newest event older than `retain`: its
    /// document goes to the horizon-snapshot subject first (harmless
    /// alone), then the events before it are purged (that makes the new
    /// horizon), then older snapshots and chunks. A crash between steps
    /// leaves a valid log with extra messages.
    async fn compact(&self, id: &ResourceId, now_ms: u64) -> Result<Compaction, StoreError> {
        let entry = self.entry(id)?;
        let _compact = entry.compact.lock().await;
        let Some(retain) = read(&entry.record).spec.retain else {
            return Ok(Compaction::Nothing);
        };
        let s = read(&entry.state).clone();
        let (Some(head), Some(horizon)) = (&s.head, s.horizon) else {
            return Ok(Compaction::Nothing);
        };
        let retain_ms = u64::try_from(retain.as_millis()).unwrap_or(u64::MAX);
        let cutoff = Point::Time(now_ms.saturating_sub(retain_ms)).upper_bound();
        let l = &self.inner.layout;
        let rkey = entry.rkey;
        let esub = l.subject(rkey, Kind::Event);
        let Some(target) = self
            .find_last_le(&esub, s.horizon_seq, s.head_seq, cutoff.min(head.id.0))
            .await?
        else {
            return Ok(Compaction::Nothing);
        };
        let new_horizon = target.meta.id;
        if new_horizon <= horizon {
            return Ok(Compaction::Nothing);
        }
        let (at, doc, _) = self
            .rebuild(rkey, &s, new_horizon.0)
            .await?
            .ok_or_else(|| corrupt(&esub, target.seq, "no snapshot before the new horizon"))?;
        debug_assert_eq!(at, new_horizon);
        let json = Bytes::from(serde_json::to_vec(&doc).expect("document serializes"));
        let meta = Meta {
            prev: None,
            body: Body::Inline,
            ..target.meta.clone()
        };
        self.put_value(rkey, Kind::Horizon, meta, &json, None, id)
            .await?;
        let removed_events = self.purge_subject(&esub, Some(target.seq), None).await?;
        {
            let mut st = write(&entry.state);
            st.horizon = Some(new_horizon);
            st.horizon_seq = target.seq;
            st.compacted = true;
            st.events = st.events.saturating_sub(removed_events);
        }
        // Readers now refuse points below the new horizon: the rest can go.
        self.purge_subject(&l.subject(rkey, Kind::Horizon), None, Some(1))
            .await?;
        let ssub = l.subject(rkey, Kind::Snapshot);
        let mut removed_snapshots = 0;
        let snap_seq = read(&entry.state).snap_seq;
        if snap_seq > 0 {
            if let Some(b) = new_horizon.0 .0.checked_sub(1) {
                if let Some(old) = self.find_last_le(&ssub, 1, snap_seq, Ulid(b)).await? {
                    // Never the subject's last message: the next snapshot's
                    // fencing expects it.
                    let below = if old.seq < snap_seq {
                        old.seq + 1
                    } else {
                        old.seq
                    };
                    removed_snapshots = self.purge_subject(&ssub, Some(below), None).await?;
                }
            }
        }
        // Chunks written before the horizon event's predecessor belong to
        // purged events and snapshots only.
        self.purge_subject(
            &l.subject(rkey, Kind::Blob),
            Some(target.meta.before + 1),
            None,
        )
        .await?;
        Ok(Compaction::Done {
            horizon: new_horizon,
            removed_events,
            removed_snapshots,
        })
    }

    fn health(&self) -> Health {
        let mut quarantined: Vec<(ResourceId, Quarantine)> = read(&self.inner.resources)
            .iter()
            .filter_map(|(id, e)| e.quarantine.clone().map(|q| (id.clone(), q)))
            .collect();
        quarantined.sort_by(|a, b| a.0.cmp(&b.0));
        Health {
            failing: lock(&self.inner.failing).clone(),
            errors: self.inner.errors.load(Ordering::Relaxed),
            quarantined,
            unattributed: self.inner.unattributed.clone(),
        }
    }

    /// Stores values longer than `n` bytes in chunks of `n` from now on
    /// (tests: small documents take the chunk path). At most the default.
    #[doc(hidden)]
    pub fn set_value_max(&self, n: usize) {
        self.inner
            .value_max
            .store(n.clamp(1, codec::INLINE_MAX), Ordering::Relaxed);
    }

    /// The NATS client (tests use it to watch the connection).
    #[doc(hidden)]
    pub fn client(&self) -> async_nats::Client {
        self.inner.client.clone()
    }
}

/// The first message of `subject` at or after `seq` in `stream`, read from
/// the stream's leader (a direct get may be answered by a replica that has
/// not stored the newest acknowledged messages yet).
async fn first_raw(
    stream: &stream::Stream,
    subject: &str,
    seq: u64,
) -> Result<Option<jetstream::message::StreamMessage>, StoreError> {
    retry("reading", || async {
        match stream.get_first_raw_message_by_subject(subject, seq).await {
            Ok(m) => Ok(Ok(Some(m))),
            Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                Ok(Ok(None))
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

impl Storage for ClusterStore {
    fn create(
        &self,
        spec: ResourceSpec,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        Box::pin(ClusterStore::create(self, spec, now_ms))
    }

    fn put(
        &self,
        spec: ResourceSpec,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<ResourceRecord, StoreError>> {
        Box::pin(ClusterStore::put(self, spec, now_ms))
    }

    fn delete<'a>(&'a self, id: &'a ResourceId) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(ClusterStore::delete(self, id))
    }

    fn resources(&self) -> Vec<ResourceRecord> {
        let mut v: Vec<ResourceRecord> = read(&self.inner.resources)
            .values()
            .map(|e| read(&e.record).clone())
            .collect();
        v.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        v
    }

    fn resource(&self, id: &ResourceId) -> Option<ResourceRecord> {
        self.resource_of(id)
    }

    fn append<'a>(
        &'a self,
        id: &'a ResourceId,
        doc: Value,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Appended>, StoreError>> {
        Box::pin(async move {
            check_depth(&doc)?;
            let heavy = diff::nodes_at_least(&doc, crate::cpu::INLINE_NODES);
            match ClusterStore::append_edit(
                self,
                id,
                None,
                heavy,
                Box::new(move |_| Ok(doc)),
                now_ms,
            )
            .await?
            {
                Edited::Appended(e, prev) => Ok(Some((e, prev))),
                Edited::Unchanged(_) | Edited::HeadMoved(_) | Edited::Refused(_) => Ok(None),
            }
        })
    }

    fn append_edit<'a>(
        &'a self,
        id: &'a ResourceId,
        expected: Option<EventId>,
        heavy: bool,
        edit: Edit,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Edited, StoreError>> {
        Box::pin(ClusterStore::append_edit(
            self, id, expected, heavy, edit, now_ms,
        ))
    }

    fn head(&self, id: &ResourceId) -> Result<Option<Head>, StoreError> {
        Ok(read(&self.entry(id)?.state).head.clone())
    }

    fn status(&self, id: &ResourceId) -> Result<LogStatus, StoreError> {
        let e = read(&self.inner.resources)
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchResource(id.clone()))?;
        let s = read(&e.state);
        Ok(LogStatus {
            last_event_id: s.head.as_ref().map(|h| h.id),
            horizon: s.horizon,
            compacted: s.compacted,
            events: s.events,
        })
    }

    fn read_after<'a>(
        &'a self,
        id: &'a ResourceId,
        after: Ulid,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<ReadAfter, StoreError>> {
        Box::pin(ClusterStore::read_after(self, id, after, limit, max_bytes))
    }

    fn contains<'a>(
        &'a self,
        id: &'a ResourceId,
        event: EventId,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(ClusterStore::contains(self, id, event))
    }

    fn document_at<'a>(
        &'a self,
        id: &'a ResourceId,
        point: Point,
    ) -> BoxFuture<'a, Result<At, StoreError>> {
        Box::pin(ClusterStore::document_at(self, id, point))
    }

    fn history<'a>(
        &'a self,
        id: &'a ResourceId,
        after: Option<Point>,
        before: Option<Point>,
        limit: usize,
    ) -> BoxFuture<'a, Result<History, StoreError>> {
        Box::pin(ClusterStore::history(self, id, after, before, limit))
    }

    fn compact<'a>(
        &'a self,
        id: &'a ResourceId,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Compaction, StoreError>> {
        Box::pin(ClusterStore::compact(self, id, now_ms))
    }

    fn quarantine(&self, id: &ResourceId) -> Option<Quarantine> {
        read(&self.inner.resources)
            .get(id)
            .and_then(|e| e.quarantine.clone())
    }

    fn health(&self) -> Health {
        ClusterStore::health(self)
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let now = crate::model::now_ms().to_string();
            self.kv_put(Layout::PROBE_KEY, Bytes::from(now))
                .await
                .map(|_| ())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Every write returned only once acknowledged: nothing is pending.
        Box::pin(std::future::ready(Ok(())))
    }

    fn flushes(&self) -> u64 {
        self.inner.acks.load(Ordering::Relaxed)
    }

    fn diff_budget_exceeded(&self) -> u64 {
        self.inner.diff_fallbacks.load(Ordering::Relaxed)
    }

    fn put_webhook<'a>(
        &'a self,
        record: &'a WebhookRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = Layout::webhook_key(&record.spec.id);
            self.kv_put(&key, Bytes::from(webhooks::encode_webhook(record)))
                .await?;
            write(&self.inner.webhooks).insert(record.spec.id.clone(), record.clone());
            Ok(())
        })
    }

    fn delete_webhook<'a>(&'a self, id: &'a ResourceId) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            if !read(&self.inner.webhooks).contains_key(id) {
                return Ok(false);
            }
            // The record first: a crash between leaves cursors without a
            // webhook, which nothing reads and the next delete of that id
            // (or a new webhook of it) overwrites.
            let r = self.kv_delete(&Layout::webhook_key(id)).await;
            self.wrote(r)?;
            write(&self.inner.webhooks).remove(id);
            let resources: Vec<ResourceId> = read(&self.inner.cursors)
                .get(id)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for r in resources {
                let res = self.kv_delete(&Layout::cursor_key(id, &r)).await;
                self.wrote(res)?;
                if let Some(m) = write(&self.inner.cursors).get_mut(id) {
                    m.remove(&r);
                }
            }
            write(&self.inner.cursors).remove(id);
            Ok(true)
        })
    }

    fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        Ok(read(&self.inner.webhooks).values().cloned().collect())
    }

    fn cursors(&self, id: &ResourceId) -> Result<BTreeMap<ResourceId, Cursor>, StoreError> {
        Ok(read(&self.inner.cursors)
            .get(id)
            .cloned()
            .unwrap_or_default())
    }

    fn set_cursor<'a>(
        &'a self,
        webhook: &'a ResourceId,
        resource: &'a ResourceId,
        cursor: Option<Cursor>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = Layout::cursor_key(webhook, resource);
            match cursor {
                Some(c) => {
                    self.kv_put(&key, Bytes::from(webhooks::encode_cursor(c)))
                        .await?;
                    write(&self.inner.cursors)
                        .entry(webhook.clone())
                        .or_default()
                        .insert(resource.clone(), c);
                }
                None => {
                    let r = self.kv_delete(&key).await;
                    self.wrote(r)?;
                    if let Some(m) = write(&self.inner.cursors).get_mut(webhook) {
                        m.remove(resource);
                    }
                }
            }
            Ok(())
        })
    }
}
