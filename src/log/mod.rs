//! The durable per-resource change log, on sled. The only module that names
//! sled.
//!
//! [`Store`] keeps, per resource: its settings, an append-only log of events
//! (event id → RFC 6902 patch), a snapshot of the document every
//! `snapshot_every` events, and a horizon (the oldest point still served).
//! [`Store::append`] returns only once its event is durable; readers never
//! see an event that is not, so nothing read from here can be lost by a
//! crash. Key layout: `keys`. Disk encodings: `codec`.
//!
//! No write here uses a sled batch or transaction. In sled 0.34 the first
//! `apply_batch` in a process switches every later operation onto one
//! global lock: a batch takes it exclusively and a `flush` holds it shared
//! through its fsync, so appenders park behind every flush. Measured with
//! 20,000 appends across 1,000 resources: 8,000/s at 95 µs of CPU each
//! (256,000 context switches) with batches, 74,000/s at 14 µs (17,000) with
//! plain inserts. Multi-key changes are therefore ordered single writes,
//! relying on sled recovering a prefix of its log after a crash (it refuses
//! a segment whose predecessor was torn): each change writes first what is
//! harmless alone, and last the key that makes it visible. An event's
//! snapshot goes before the event, and a snapshot whose event is missing is
//! ignored (`rebuild`) and removed at open.
//!
//! Event and snapshot values longer than a few KiB are stored in chunks
//! (`values`): sled 0.34 keeps large values in blob files that it does not
//! reliably delete, so disk use would not follow what is retained. Chunks
//! are written before the key that makes their value exist, like the rest.
//!
//! Every value write and every removal is counted by the group commit
//! (`commit::UNFLUSHED_BUDGET`): past 256 KiB since the last flush began,
//! the writer waits for a flush, so sled 0.34.7's log stays about 3 buffers
//! ahead of its disk writes, below the 7 its file-truncation deadlock needs.

mod codec;
mod commit;
mod depth;
mod ids;
#[cfg(test)]
mod integrity_tests;
mod keys;
#[cfg(test)]
pub(crate) mod tests;
mod values;
pub(crate) mod webhooks;

pub use commit::{StorageHealth, FLUSH_STUCK};
pub use depth::{check_depth, TooDeep, MAX_DOC_DEPTH};
// Shared with the JetStream backend (`crate::cluster`): one resource record
// format, one id allocation, one diff-and-encode step for every backend.
pub(crate) use codec::{decode_resource, encode_resource};
pub(crate) use ids::next as next_id;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde_json::Value;
use ulid::Ulid;

use crate::diff;
use crate::model::{Event, EventId, Point, ResourceId, ResourceRecord, ResourceSpec};

/// Failures of the store. Expected outcomes (an unknown point, a compacted
/// range) are values of the read functions, not errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an IO or corruption error.
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A flush did not complete; the last append may not be durable.
    #[error("flush failed: {0}")]
    Flush(String),
    /// A stored value could not be decoded.
    #[error("corrupt record at key {key:?}")]
    Corrupt {
        /// The key, in readable form.
        key: String,
    },
    /// The data dir was written by an incompatible version of patchfeed.
    #[error("data dir has storage format version {found}, this patchfeed reads version {expected}; use a matching patchfeed or a new data dir")]
    Version {
        /// The version the data dir records.
        found: u32,
        /// The version this patchfeed writes.
        expected: u32,
    },
    /// The data dir holds a sled database that is not patchfeed's.
    #[error("data dir is not a patchfeed store (no format version key)")]
    Foreign,
    /// The resource does not exist (or was deleted).
    #[error("no such resource: {0}")]
    NoSuchResource(ResourceId),
    /// No event id greater than the last one exists.
    #[error("event ids exhausted for resource {0}")]
    IdsExhausted(ResourceId),
    /// The stored events do not apply to the stored snapshot.
    #[error("stored patch does not apply at {at}: {source}")]
    BadPatch {
        /// The event whose patch failed.
        at: EventId,
        /// Why it did not apply.
        source: diff::ApplyError,
    },
    /// Could not start the flush thread.
    #[error("could not start flush thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The document is nested deeper than the log can store and re-read.
    #[error(transparent)]
    TooDeep(#[from] TooDeep),
    /// The resource's stored data could not be read at open: it is kept
    /// untouched on disk and refuses every read and write.
    #[error("resource {id} is quarantined: {}", .quarantine.reason)]
    Quarantined {
        /// The resource.
        id: ResourceId,
        /// What could not be read, and why.
        quarantine: Quarantine,
    },
    /// The clustered backend (NATS JetStream) failed or timed out, after
    /// its bounded retries; nothing was acknowledged.
    #[error("cluster storage error: {0}")]
    Cluster(String),
    /// The clustered log refused an append: another writer appended after
    /// the sequence this one expected to follow (it lost its lease, or
    /// two writers raced). Nothing was stored.
    #[error("append to {id} rejected: the log moved past sequence {expected} (another writer appended first)")]
    Fenced {
        /// The resource.
        id: ResourceId,
        /// The subject sequence the append expected to follow.
        expected: u64,
    },
}

/// Why a resource's stored data could not be loaded at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantine {
    /// The first key that could not be read, in readable form (empty
    /// when the error names none).
    pub key: String,
    /// Why it could not be read: the error's message.
    pub reason: String,
}

/// A resource record whose key does not even name a valid resource id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unattributed {
    /// The record's key, in readable form.
    pub key: String,
    /// Why it could not be read.
    pub reason: String,
}

/// The newest durable version of a resource's document.
#[derive(Clone, Debug)]
pub struct Head {
    /// The event that produced this version.
    pub id: EventId,
    /// The document as of that event.
    pub doc: Arc<Value>,
    /// `doc` as JSON text.
    pub json: Bytes,
}

/// What [`Store::create`] did.
#[derive(Debug)]
pub enum Created {
    /// The resource was stored, as this record.
    New(ResourceRecord),
    /// A resource with that id exists; nothing was changed.
    Exists(ResourceRecord),
}

/// Answer of [`Store::read_after`].
#[derive(Debug, PartialEq)]
pub enum ReadAfter {
    /// Events with id > the point, oldest first; fewer than `limit` means the
    /// reader is at the head.
    Events(Vec<Event>),
    /// The point is older than the horizon: the events after it are not all
    /// retained (or never belonged to this log).
    BeforeHorizon {
        /// The oldest point the log still serves.
        horizon: EventId,
    },
}

/// Answer of [`Store::document_at`].
#[derive(Debug, PartialEq)]
pub enum At {
    /// The version as of the point.
    Found {
        /// The newest event the point includes.
        id: EventId,
        /// The document as of that event.
        doc: Arc<Value>,
    },
    /// The point is before the horizon of a compacted log.
    Compacted {
        /// The oldest point the log still serves.
        horizon: EventId,
    },
    /// The point is before the first version (or there is none yet).
    NotYet,
}

/// Answer of [`Store::history`].
#[derive(Debug, PartialEq)]
pub enum History {
    /// One page of the interval.
    Events {
        /// Events in (`after`, `before`], oldest first, at most `limit`.
        events: Vec<Event>,
        /// Cursor for the next page: pass it as `after`. `None` at the end.
        next_after: Option<EventId>,
    },
    /// The interval starts before the horizon of a compacted log.
    Compacted {
        /// The oldest point the log still serves.
        horizon: EventId,
    },
}

/// A change to the current document, computed under the append lock from
/// the head (`None` before the first version): the new whole document, or
/// why the change does not apply (then nothing is stored).
pub type Edit = Box<dyn FnOnce(Option<&Value>) -> Result<Value, String> + Send>;

/// Answer of [`Store::append_edit`].
#[derive(Debug)]
pub enum Edited {
    /// Appended, durable; with the id before it.
    Appended(Event, Option<EventId>),
    /// The edit produced the current document: nothing appended. The head
    /// id (`None` only if there is no version yet).
    Unchanged(Option<EventId>),
    /// The head was not the expected event: nothing was computed or stored.
    /// The actual head id.
    HeadMoved(Option<EventId>),
    /// The edit refused to apply (its message): nothing stored.
    Refused(String),
}

/// What [`Store::compact`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Compaction {
    /// Nothing older than `retain` (or no `retain`).
    Nothing,
    /// History before a new horizon was removed.
    Done {
        /// The new horizon: the newest event older than `retain`, now
        /// stored as a snapshot.
        horizon: EventId,
        /// Events removed.
        removed_events: u64,
        /// Snapshots removed.
        removed_snapshots: u64,
    },
}

/// Status of a resource's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStatus {
    /// The newest event; `None` before the first version.
    pub last_event_id: Option<EventId>,
    /// Oldest point served; the first event until compaction moves it.
    pub horizon: Option<EventId>,
    /// Whether compaction ever removed history.
    pub compacted: bool,
    /// Events retained: from the horizon to the newest, both included.
    pub events: u64,
}

/// The change log. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    tree: sled::Db,
    resources: RwLock<HashMap<ResourceId, Arc<Entry>>>,
    /// Serialises create/update/delete of resource records.
    admin: Mutex<()>,
    commit: commit::GroupCommit,
    /// Whether writes are failing now; shared with the flush thread.
    health: Arc<StorageHealth>,
    /// Resource records whose key names no valid resource id: kept on disk,
    /// reported by health, served by nothing.
    unattributed: Vec<Unattributed>,
    /// Appends whose diff ran out of budget (stored as a root `replace`).
    diff_fallbacks: AtomicU64,
    /// JSON longer than this is stored chunked (`values`). Reads do not
    /// depend on it; tests shrink it so small documents take the chunk path.
    chunk_bytes: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Leave nothing for sled's background writers, so the directory's
        // lock is released as soon as the last handle goes.
        let _ = self.tree.flush();
    }
}

/// Opens sled, waiting a bounded time for the directory lock: sled's
/// background writers may hold it for a moment after a `Store` in this
/// process was dropped (a restart in place). Another live process keeps
/// it, and gets the error after the wait.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
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
    /// Set at open when this resource's data could not be read; such an
    /// entry never changes, and `Store::entry` refuses it.
    quarantine: Option<Quarantine>,
}

#[derive(Clone, Default)]
struct State {
    /// Newest durable version; readers never look past `head.id`.
    head: Option<Head>,
    /// Highest id ever allocated, durable or not: the next id is above it.
    allocated: Option<EventId>,
    /// Events since the newest snapshot.
    since_snapshot: u32,
    horizon: Option<EventId>,
    compacted: bool,
    /// Events from the horizon to the head, both included.
    events: u64,
}

/// Most keys removed per sled batch while compacting or purging, so that no
/// single batch holds the tree for long.
const DELETE_CHUNK: usize = 1024;

/// Attempts of [`Store::history`] when compactions keep removing what it
/// reads; each one moves the horizon, so a retry rarely races again.
const HISTORY_ATTEMPTS: u32 = 4;

enum HistoryFailed {
    /// A compaction moved the horizon while the scan read: try again.
    Raced(StoreError),
    Store(StoreError),
}

impl From<StoreError> for HistoryFailed {
    fn from(e: StoreError) -> Self {
        HistoryFailed::Store(e)
    }
}

/// Every per-event key family, removed together by compaction and purge.
const ENTRY_TAGS: [u8; 4] = [
    keys::EVENT,
    keys::EVENT_CHUNK,
    keys::SNAPSHOT,
    keys::SNAPSHOT_CHUNK,
];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

fn corrupt(key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        key: keys::display(key),
    }
}

/// What is shown of a resource whose record cannot be decoded: its id
/// (from the key) and nothing else.
pub(crate) fn placeholder_record(id: ResourceId) -> ResourceRecord {
    ResourceRecord {
        spec: ResourceSpec {
            id,
            url: String::new(),
            interval: ResourceSpec::DEFAULT_INTERVAL,
            headers: Default::default(),
            snapshot_every: ResourceSpec::DEFAULT_SNAPSHOT_EVERY,
            retain: None,
            ad_hoc: false,
            push: false,
            pages: None,
        },
        created_ms: 0,
    }
}

/// Whether a failure to load one resource is that resource's alone (its
/// records cannot be decoded or do not chain), as opposed to the database
/// failing, which is fatal for the whole dir.
fn is_resource_local(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Corrupt { .. } | StoreError::BadPatch { .. } | StoreError::TooDeep(_)
    )
}

fn quarantine_of(e: &StoreError) -> Quarantine {
    let key = match e {
        StoreError::Corrupt { key } => key.clone(),
        StoreError::BadPatch { at, .. } => format!("event {at}"),
        _ => String::new(),
    };
    Quarantine {
        key,
        reason: e.to_string(),
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, checks its format version and
    /// rebuilds each resource's head from its newest snapshot and events.
    /// A resource whose record, snapshot or events cannot be decoded is
    /// quarantined (see [`Store::quarantined`]), not fatal; a wrong format
    /// version, a foreign database or an IO error is.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = open_db(dir)?;
        match db.get(keys::VERSION)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| corrupt(keys::VERSION))?;
                if !codec::READABLE_VERSIONS.contains(&found) {
                    return Err(StoreError::Version {
                        found,
                        expected: codec::FORMAT_VERSION,
                    });
                }
                if found != codec::FORMAT_VERSION {
                    // Version-1 data is valid as is; the new version only
                    // keeps an older patchfeed from misreading chunks.
                    db.insert(keys::VERSION, &codec::FORMAT_VERSION.to_be_bytes())?;
                    db.flush()?;
                }
            }
            None if db.is_empty() => {
                db.insert(keys::VERSION, &codec::FORMAT_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            None => return Err(StoreError::Foreign),
        }

        let tombstones: Vec<u64> = db
            .scan_prefix([keys::TOMBSTONE])
            .keys()
            .filter_map(|k| k.ok().and_then(|k| keys::u64_value(&k[1..])))
            .collect();
        // One resource whose data cannot be read is quarantined, never the
        // whole dir: every other resource is loaded and served. Nothing of a
        // quarantined resource is changed on disk. Errors of the database
        // itself (IO) stay fatal.
        let mut resources = HashMap::new();
        let mut unattributed = Vec::new();
        for kv in db.scan_prefix([keys::RESOURCE]) {
            let (k, v) = kv?;
            let Some((rkey, record)) = codec::decode_resource(&v) else {
                let q = Quarantine {
                    key: keys::display(&k),
                    reason: "the resource record cannot be decoded".into(),
                };
                let id = std::str::from_utf8(&k[1..])
                    .ok()
                    .and_then(|s| ResourceId::new(s).ok());
                tracing::error!(key = %q.key, reason = %q.reason, "quarantined a resource: its stored record is unreadable (kept on disk untouched)");
                match id {
                    Some(id) => {
                        let record = placeholder_record(id.clone());
                        resources.insert(id, Arc::new(Entry::quarantined(record, q)));
                    }
                    None => unattributed.push(Unattributed {
                        key: q.key,
                        reason: q.reason,
                    }),
                }
                continue;
            };
            if tombstones.contains(&rkey) {
                // A delete wrote its tombstone, then crashed before removing
                // the record: finish it (the caller never got its answer).
                db.remove(&k)?;
                continue;
            }
            let entry = match load_state(&db, rkey, &record.spec.id) {
                Ok(state) => Entry::new(rkey, record, state),
                Err(e) if is_resource_local(&e) => {
                    let q = quarantine_of(&e);
                    tracing::error!(resource = %record.spec.id, key = %q.key, reason = %q.reason, "quarantined a resource: its stored log is unreadable (kept on disk untouched)");
                    Entry::quarantined(record, q)
                }
                Err(e) => return Err(e),
            };
            resources.insert(entry.id(), Arc::new(entry));
        }
        let health = Arc::new(StorageHealth::default());
        let commit = commit::GroupCommit::start(db.clone(), health.clone())?;
        let store = Store {
            inner: Arc::new(Inner {
                tree: db,
                resources: RwLock::new(resources),
                admin: Mutex::new(()),
                commit,
                health,
                unattributed,
                diff_fallbacks: AtomicU64::new(0),
                chunk_bytes: AtomicUsize::new(values::CHUNK_BYTES),
            }),
        };
        // Finish purges that a crash interrupted.
        for rkey in tombstones {
            store.purge(rkey)?;
        }
        Ok(store)
    }

    /// Sets the chunk size for values written from now on.
    #[cfg(test)]
    fn set_chunk_bytes(&self, n: usize) {
        self.inner.chunk_bytes.store(n, Ordering::Relaxed);
    }

    fn chunk_bytes(&self) -> usize {
        self.inner.chunk_bytes.load(Ordering::Relaxed)
    }

    /// Group-commit flushes (fsyncs) so far; appends share them.
    pub fn flushes(&self) -> u64 {
        self.inner.commit.flushes()
    }

    /// Whether writes are failing now, and how many have failed.
    pub fn health(&self) -> &StorageHealth {
        &self.inner.health
    }

    /// Tries one real write and flush (the format version key, rewritten
    /// with its own value), so that a store whose writes failed can show
    /// it writes again: a bare flush with nothing new to write succeeds
    /// even on a failed sled. Clears [`StorageHealth::failing`] on success.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let tree = self.inner.tree.clone();
        let health = self.inner.health.clone();
        tokio::task::spawn_blocking(move || {
            tree.insert(keys::VERSION, &codec::FORMAT_VERSION.to_be_bytes())
                .map_err(|e| health.failed(e))?;
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|e| StoreError::Flush(format!("probe task failed: {e}")))??;
        self.flush().await
    }

    /// The quarantined resources (by id, ordered), and resource records
    /// whose key names no resource.
    pub fn quarantined(&self) -> (Vec<(ResourceId, Quarantine)>, Vec<Unattributed>) {
        let mut named: Vec<(ResourceId, Quarantine)> = read(&self.inner.resources)
            .iter()
            .filter_map(|(id, e)| e.quarantine.clone().map(|q| (id.clone(), q)))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (named, self.inner.unattributed.clone())
    }

    /// Why `id` is quarantined, if it is.
    pub fn quarantine(&self, id: &ResourceId) -> Option<Quarantine> {
        read(&self.inner.resources)
            .get(id)
            .and_then(|e| e.quarantine.clone())
    }

    /// Appends so far whose diff ran out of budget and were stored as one
    /// `replace` of the whole document.
    pub fn diff_budget_exceeded(&self) -> u64 {
        self.inner.diff_fallbacks.load(Ordering::Relaxed)
    }

    /// Flushes everything to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.commit.durable().await.map_err(StoreError::Flush)
    }

    // ---- resources ----

    /// Creates a resource, unless one with that id exists.
    pub async fn create(&self, spec: ResourceSpec, now_ms: u64) -> Result<Created, StoreError> {
        {
            let _admin = lock(&self.inner.admin);
            if let Some(e) = read(&self.inner.resources).get(&spec.id) {
                return Ok(Created::Exists(read(&e.record).clone()));
            }
            self.insert_new(spec.clone(), now_ms)?;
        }
        self.flush().await?;
        Ok(Created::New(self.resource(&spec.id).ok_or_else(|| {
            StoreError::NoSuchResource(spec.id.clone())
        })?))
    }

    /// Creates a resource, or updates the settings of an existing one
    /// (keeping its log and creation time).
    pub async fn put(&self, spec: ResourceSpec, now_ms: u64) -> Result<ResourceRecord, StoreError> {
        {
            let _admin = lock(&self.inner.admin);
            let existing = read(&self.inner.resources).get(&spec.id).cloned();
            match existing {
                None => self.insert_new(spec.clone(), now_ms)?,
                Some(e) if e.quarantine.is_some() => return Err(e.refused()),
                Some(e) => {
                    let record = ResourceRecord {
                        spec: spec.clone(),
                        created_ms: read(&e.record).created_ms,
                    };
                    self.inner.tree.insert(
                        keys::resource(&spec.id),
                        codec::encode_resource(e.rkey, &record),
                    )?;
                    *write(&e.record) = record;
                }
            }
        }
        self.flush().await?;
        self.resource(&spec.id)
            .ok_or_else(|| StoreError::NoSuchResource(spec.id.clone()))
    }

    /// Caller holds `admin`.
    fn insert_new(&self, spec: ResourceSpec, now_ms: u64) -> Result<(), StoreError> {
        let tree = &self.inner.tree;
        let rkey = match tree.get(keys::NEXT_RKEY)? {
            Some(v) => keys::u64_value(&v).ok_or_else(|| corrupt(keys::NEXT_RKEY))?,
            None => 1,
        };
        let record = ResourceRecord {
            spec,
            created_ms: now_ms,
        };
        // The counter first: a crash between the two only skips an rkey.
        tree.insert(keys::NEXT_RKEY, &(rkey + 1).to_be_bytes())?;
        tree.insert(
            keys::resource(&record.spec.id),
            codec::encode_resource(rkey, &record),
        )?;
        let id = record.spec.id.clone();
        write(&self.inner.resources)
            .insert(id, Arc::new(Entry::new(rkey, record, State::default())));
        Ok(())
    }

    /// Deletes a resource and, in the background, its events and snapshots.
    /// Returns false if there was no such resource. Waits for an append in
    /// flight to finish, so none lands after the delete.
    pub async fn delete(&self, id: &ResourceId) -> Result<bool, StoreError> {
        let Some(entry) = read(&self.inner.resources).get(id).cloned() else {
            return Ok(false);
        };
        if entry.quarantine.is_some() {
            return Err(entry.refused());
        }
        let _append = entry.append.lock().await;
        {
            let _admin = lock(&self.inner.admin);
            if entry.deleted.swap(true, Ordering::SeqCst) {
                return Ok(false);
            }
            // The tombstone first: `open` finishes a delete that has one.
            self.inner
                .tree
                .insert(&keys::per_rkey(keys::TOMBSTONE, entry.rkey)[..], &[][..])?;
            self.inner.tree.remove(keys::resource(id))?;
            write(&self.inner.resources).remove(id);
        }
        self.flush().await?;
        let store = self.clone();
        let rkey = entry.rkey;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.purge(rkey) {
                tracing::warn!(rkey, error = %e, "purging a deleted resource failed; retried at next open");
            }
        });
        Ok(true)
    }

    /// Removes every key of a deleted resource, then its tombstone.
    fn purge(&self, rkey: u64) -> Result<(), StoreError> {
        for tag in ENTRY_TAGS {
            self.remove_below(tag, rkey, None)?;
        }
        // The tombstone last, so an interrupted purge is resumed at open.
        self.inner
            .tree
            .remove(&keys::per_rkey(keys::HORIZON, rkey)[..])?;
        self.inner
            .tree
            .remove(&keys::per_rkey(keys::TOMBSTONE, rkey)[..])?;
        Ok(())
    }

    /// Removes the `tag` keys of `rkey` (entries, or chunks with a chunk
    /// tag) with id < `below` (all if None), oldest first, listing them in
    /// bounded chunks. Returns how many keys were removed.
    fn remove_below(&self, tag: u8, rkey: u64, below: Option<EventId>) -> Result<u64, StoreError> {
        let tree = &self.inner.tree;
        let start = keys::entry_prefix(tag, rkey).to_vec();
        // Chunk keys of id `below` sort after its entry-shaped key, so they
        // stay; every key of a lower id sorts before it.
        let end = match below {
            Some(b) => Some(keys::entry(tag, rkey, b.0).to_vec()),
            None => keys::prefix_end(&start),
        };
        let mut removed = 0u64;
        loop {
            let chunk: Vec<sled::IVec> = match &end {
                Some(end) => tree
                    .range(start.as_slice()..end.as_slice())
                    .keys()
                    .take(DELETE_CHUNK)
                    .collect::<Result<_, _>>()?,
                None => tree
                    .range(start.as_slice()..)
                    .keys()
                    .take(DELETE_CHUNK)
                    .collect::<Result<_, _>>()?,
            };
            if chunk.is_empty() {
                return Ok(removed);
            }
            for k in &chunk {
                tree.remove(k)?;
                // What a removal costs in sled's log is not known here: it
                // rewrites the leaf around the key, full of chunks. Counted
                // as one chunk, so a compaction of 4 MB documents (about
                // 10,000 chunk keys) cannot run sled's log far ahead of its
                // disk (`commit::UNFLUSHED_BUDGET`).
                self.inner
                    .commit
                    .wrote_blocking(tree, k.len() + values::CHUNK_BYTES)?;
            }
            removed += chunk.len() as u64;
        }
    }

    /// Every resource, ordered by id.
    pub fn resources(&self) -> Vec<ResourceRecord> {
        let mut v: Vec<ResourceRecord> = read(&self.inner.resources)
            .values()
            .map(|e| read(&e.record).clone())
            .collect();
        v.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        v
    }

    /// The record of `id`, quarantined or not.
    pub fn resource(&self, id: &ResourceId) -> Option<ResourceRecord> {
        read(&self.inner.resources)
            .get(id)
            .map(|e| read(&e.record).clone())
    }

    /// The newest durable document, if the resource has one.
    pub fn head(&self, id: &ResourceId) -> Result<Option<Head>, StoreError> {
        Ok(read(&self.entry(id)?.state).head.clone())
    }

    /// Status of the log of `id`; empty for a quarantined resource.
    pub fn status(&self, id: &ResourceId) -> Result<LogStatus, StoreError> {
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

    /// The entry of a live resource: unknown ids and quarantined
    /// resources are refused, so no read or write reaches their data.
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

    // ---- the log ----

    /// Diffs `doc` against the current document and, if they differ, appends
    /// the patch as a new event (plus a snapshot every `snapshot_every`
    /// events) atomically. The diff is bounded by its budget (past it, the
    /// patch is one root `replace`) and, for large documents, runs on the
    /// blocking pool (`crate::cpu`) under the append lock. Returns once the event is durable; `None` when
    /// there was nothing to append. The first version is stored as a patch
    /// that adds the whole document at the root.
    pub async fn append(&self, id: &ResourceId, doc: Value) -> Result<Option<Event>, StoreError> {
        self.append_at(id, doc, crate::model::now_ms()).await
    }

    /// [`Store::append`] with an explicit clock, for tests and replays.
    pub async fn append_at(
        &self,
        id: &ResourceId,
        doc: Value,
        now_ms: u64,
    ) -> Result<Option<Event>, StoreError> {
        Ok(self.append_chained(id, doc, now_ms).await?.map(|(e, _)| e))
    }

    /// [`Store::append_at`], also returning the id of the event before the
    /// new one (read under the append lock), for the hub's prev-id chain.
    pub async fn append_chained(
        &self,
        id: &ResourceId,
        doc: Value,
        now_ms: u64,
    ) -> Result<Option<(Event, Option<EventId>)>, StoreError> {
        // Before anything is stored: what is stored must read back.
        check_depth(&doc)?;
        let heavy = diff::nodes_at_least(&doc, crate::cpu::INLINE_NODES);
        match self
            .append_edit(id, None, heavy, Box::new(move |_| Ok(doc)), now_ms)
            .await?
        {
            Edited::Appended(e, prev) => Ok(Some((e, prev))),
            Edited::Unchanged(_) => Ok(None),
            // No precondition, and the edit always applies.
            Edited::HeadMoved(_) | Edited::Refused(_) => Ok(None),
        }
    }

    /// Appends what `edit` makes of the head, diffed against it like
    /// [`Store::append_chained`]: the head check, the edit and the append
    /// happen under the one append lock, so with `expected` = `Some(e)` the
    /// event is appended only if `e` is still the newest event (else
    /// `HeadMoved`, nothing stored), and of two writers expecting the same
    /// head exactly one wins. An edit that refuses, or whose document is
    /// too deep to store, stores nothing. Durable before return. `heavy`:
    /// the caller knows the new document is large, so the edit and the diff
    /// go to the blocking pool even if the head is small.
    ///
    /// The one append path: under the append lock, checks `expected`
    /// against the head, runs `edit` on it, checks the depth, diffs and
    /// encodes (on the blocking pool when the documents are large or
    /// `heavy`), then commits.
    pub async fn append_edit(
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
        // The edit, the diff and the encoding run off the ingest thread
        // when the documents are large (`cpu`), still under the append
        // lock, so the versions of one resource stay in order. A caller
        // dropped while the step runs leaves nothing to undo: nothing is
        // written before it.
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
                // Before anything is stored: what is stored must read back.
                check_depth(&doc)?;
                Ok(Ok(encode(prev.as_deref(), doc)))
            },
        )
        .await
        .map_err(|e| StoreError::Flush(e.to_string()))??;
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
        let last = state.allocated.max(state.head.as_ref().map(|h| h.id));
        let event_id =
            ids::next(last, now_ms).ok_or_else(|| StoreError::IdsExhausted(id.clone()))?;
        let snapshot_every = read(&entry.record).spec.snapshot_every.max(1);
        let snapshot = state.head.is_none() || state.since_snapshot + 1 >= snapshot_every;

        let rkey = entry.rkey;
        let chunk_bytes = self.chunk_bytes();
        let event_json = patch_json.clone();
        let snapshot_json = snapshot.then(|| doc_json.clone());
        write(&entry.state).allocated = Some(event_id);
        // From here the log and the in-memory head must move together, so
        // the commit runs in its own task: dropping this future (a cancelled
        // caller) cannot stop it half-way. It holds the append lock.
        let store = self.clone();
        let commit = tokio::spawn(async move {
            let _guard = guard;
            // The snapshot first: the event is what makes the version
            // exist, and a snapshot without its event is ignored. Each value
            // writes its chunks (if any) before its key.
            let health = &store.inner.health;
            let tree = &store.inner.tree;
            let commit = &store.inner.commit;
            if let Some(json) = &snapshot_json {
                values::put(
                    tree,
                    commit,
                    keys::SNAPSHOT,
                    rkey,
                    event_id.0,
                    json,
                    chunk_bytes,
                )
                .await
                .map_err(|e| health.failed(e))?;
            }
            values::put(
                tree,
                commit,
                keys::EVENT,
                rkey,
                event_id.0,
                &event_json,
                chunk_bytes,
            )
            .await
            .map_err(|e| health.failed(e))?;
            if let Err(e) = store.inner.commit.durable().await {
                // Not durable, never published: take it back so the log stays
                // a chain of what readers saw. Best effort: the disk is failing.
                let _ = values::remove(tree, keys::EVENT, rkey, event_id.0);
                let _ = values::remove(tree, keys::SNAPSHOT, rkey, event_id.0);
                return Err(StoreError::Flush(e));
            }
            let mut s = write(&entry.state);
            s.head = Some(Head {
                id: event_id,
                doc: Arc::new(doc),
                json: doc_json,
            });
            s.since_snapshot = if snapshot { 0 } else { s.since_snapshot + 1 };
            s.horizon.get_or_insert(event_id);
            s.events += 1;
            Ok(())
        });
        commit
            .await
            .map_err(|e| StoreError::Flush(format!("commit task failed: {e}")))??;
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

    /// Up to `limit` events with id > `after`, oldest first, never past the
    /// durable head.
    pub fn read_after(
        &self,
        id: &ResourceId,
        after: Ulid,
        limit: usize,
    ) -> Result<ReadAfter, StoreError> {
        self.read_after_capped(id, after, limit, usize::MAX)
    }

    /// [`Store::read_after`], stopping early once the patches read add up
    /// to `max_bytes` (at least one event is read): memory per read is
    /// bounded by bytes, not only by a count of events of any size.
    pub fn read_after_capped(
        &self,
        id: &ResourceId,
        after: Ulid,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ReadAfter, StoreError> {
        let entry = self.entry(id)?;
        let s = read(&entry.state).clone();
        let (Some(head), Some(horizon)) = (s.head, s.horizon) else {
            return Ok(ReadAfter::Events(Vec::new()));
        };
        if after < horizon.0 {
            return Ok(ReadAfter::BeforeHorizon { horizon });
        }
        if after >= head.id.0 || limit == 0 {
            return Ok(ReadAfter::Events(Vec::new()));
        }
        let events = self.scan_events(entry.rkey, after, head.id.0, limit, max_bytes);
        // A compaction may have moved the horizon past `after` meanwhile
        // (and removed chunks the scan was reading: the answer then is the
        // horizon, not that error).
        if let Some(h) = read(&entry.state).horizon {
            if after < h.0 {
                return Ok(ReadAfter::BeforeHorizon { horizon: h });
            }
        }
        Ok(ReadAfter::Events(events?))
    }

    /// Events in (after, upto], at most `limit`, and no more once their
    /// patches add up to `max_bytes`.
    fn scan_events(
        &self,
        rkey: u64,
        after: Ulid,
        upto: Ulid,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let Some(first) = keys::succ(after) else {
            return Ok(Vec::new());
        };
        let lo = keys::entry(keys::EVENT, rkey, first);
        let hi = keys::entry(keys::EVENT, rkey, upto);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0usize;
        for kv in self.inner.tree.range(lo..=hi).take(limit) {
            if bytes >= max_bytes {
                break;
            }
            let (k, v) = kv?;
            let id = keys::entry_id(&k).ok_or_else(|| corrupt(&k))?;
            let patch = values::get(&self.inner.tree, &k, &v)?;
            bytes = bytes.saturating_add(patch.len());
            out.push(Event { id, patch });
        }
        Ok(out)
    }

    /// Whether `event` is a retained event of this resource.
    pub fn contains(&self, id: &ResourceId, event: EventId) -> Result<bool, StoreError> {
        let entry = self.entry(id)?;
        let s = read(&entry.state).clone();
        let retained = match (s.head, s.horizon) {
            (Some(head), Some(h)) => h <= event && event <= head.id,
            _ => false,
        };
        Ok(retained
            && self
                .inner
                .tree
                .contains_key(keys::entry(keys::EVENT, entry.rkey, event.0))?)
    }

    /// The document as of `point`: rebuilt from the nearest snapshot at or
    /// before it plus the events after that snapshot up to the point.
    pub fn document_at(&self, id: &ResourceId, point: Point) -> Result<At, StoreError> {
        let entry = self.entry(id)?;
        let s = read(&entry.state).clone();
        let (Some(head), Some(horizon)) = (s.head, s.horizon) else {
            return Ok(At::NotYet);
        };
        let bound = point.upper_bound();
        if bound >= head.id.0 {
            return Ok(At::Found {
                id: head.id,
                doc: head.doc,
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
        let rebuilt = self.rebuild(entry.rkey, bound);
        // A compaction may have moved the horizon past `bound` meanwhile.
        let now = read(&entry.state).clone();
        if let Some(h) = now.horizon {
            if bound < h.0 {
                return Ok(before_horizon(h, now.compacted));
            }
        }
        let (id, doc) = rebuilt?.ok_or_else(|| StoreError::Corrupt {
            key: format!("no snapshot at or before {bound} for rkey {}", entry.rkey),
        })?;
        Ok(At::Found {
            id,
            doc: Arc::new(doc),
        })
    }

    /// The document after the last event ≤ `bound`, from the nearest snapshot.
    fn rebuild(&self, rkey: u64, bound: Ulid) -> Result<Option<(EventId, Value)>, StoreError> {
        rebuild(&self.inner.tree, rkey, bound)
    }

    /// Events in (after, before], oldest first, at most `limit`, with a
    /// cursor for the next page.
    pub fn history(
        &self,
        id: &ResourceId,
        after: Option<Point>,
        before: Option<Point>,
        limit: usize,
    ) -> Result<History, StoreError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.history_once(id, after, before, limit) {
                Ok(h) => return Ok(h),
                Err(HistoryFailed::Raced(_)) if attempts < HISTORY_ATTEMPTS => continue,
                Err(HistoryFailed::Raced(e) | HistoryFailed::Store(e)) => return Err(e),
            }
        }
    }

    /// One attempt of [`Store::history`].
    fn history_once(
        &self,
        id: &ResourceId,
        after: Option<Point>,
        before: Option<Point>,
        limit: usize,
    ) -> Result<History, HistoryFailed> {
        let entry = self.entry(id)?;
        let s = read(&entry.state).clone();
        let (Some(head), Some(horizon)) = (s.head, s.horizon) else {
            return Ok(History::Events {
                events: Vec::new(),
                next_after: None,
            });
        };
        let lo = after.map_or(Ulid::nil(), Point::upper_bound);
        if s.compacted && after.is_some() && lo < horizon.0 {
            return Ok(History::Compacted { horizon });
        }
        // Without `after`, start at the oldest retained event (inclusive).
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
        let scanned = self.scan_events(entry.rkey, lo, hi, limit.saturating_add(1), usize::MAX);
        // A compaction may have moved the horizon meanwhile: an explicit
        // interval that now starts below it is gone; an open one starts at it.
        let now = read(&entry.state).clone();
        let compacted_to = now.horizon.filter(|_| now.compacted);
        if let Some(h) = compacted_to {
            if after.is_some() && lo < h.0 {
                return Ok(History::Compacted { horizon: h });
            }
        }
        let mut events = match scanned {
            Ok(events) => events,
            // The compaction removed chunks of an event below the new
            // horizon while the scan read them: scan again from there.
            Err(e) if compacted_to.is_some_and(|h| h != horizon) => {
                return Err(HistoryFailed::Raced(e));
            }
            Err(e) => return Err(e.into()),
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

    /// Drops events and snapshots older than the resource's `retain`, as of
    /// `now_ms`. The document at the newest event older than the cutoff is
    /// stored as a snapshot and becomes the horizon, so the newest snapshot
    /// is never lost and every retained point stays rebuildable.
    pub async fn compact(&self, id: &ResourceId, now_ms: u64) -> Result<Compaction, StoreError> {
        let entry = self.entry(id)?;
        let _compact = entry.compact.lock().await;
        let Some(retain) = read(&entry.record).spec.retain else {
            return Ok(Compaction::Nothing);
        };
        let s = read(&entry.state).clone();
        let (Some(head), Some(horizon)) = (s.head, s.horizon) else {
            return Ok(Compaction::Nothing);
        };
        let retain_ms = u64::try_from(retain.as_millis()).unwrap_or(u64::MAX);
        let cutoff = Point::Time(now_ms.saturating_sub(retain_ms)).upper_bound();
        let lo = keys::entry(keys::EVENT, entry.rkey, horizon.0);
        let hi = keys::entry(keys::EVENT, entry.rkey, cutoff.min(head.id.0));
        let Some(kv) = self.inner.tree.range(lo..=hi).next_back() else {
            return Ok(Compaction::Nothing);
        };
        let (k, _) = kv?;
        let new_horizon = keys::entry_id(&k).ok_or_else(|| corrupt(&k))?;
        if new_horizon <= horizon {
            return Ok(Compaction::Nothing);
        }
        let (at, doc) = self
            .rebuild(entry.rkey, new_horizon.0)?
            .ok_or_else(|| corrupt(&k))?;
        debug_assert_eq!(at, new_horizon);
        // The snapshot first: alone, it is a correct extra snapshot. If the
        // event has one already, it stays: rewriting a chunked value in
        // place could hand a concurrent reader chunks of two writes.
        let skey = keys::entry(keys::SNAPSHOT, entry.rkey, new_horizon.0);
        if !self.inner.tree.contains_key(skey)? {
            values::put(
                &self.inner.tree,
                &self.inner.commit,
                keys::SNAPSHOT,
                entry.rkey,
                new_horizon.0,
                &serde_json::to_vec(&doc).expect("document serializes"),
                self.chunk_bytes(),
            )
            .await?;
        }
        self.inner.tree.insert(
            &keys::per_rkey(keys::HORIZON, entry.rkey)[..],
            &new_horizon.to_bytes()[..],
        )?;
        self.flush().await?;
        // Events in [old horizon, new horizon) stop being retained; only
        // appends above the head run meanwhile, so the count is exact.
        let dropped = self
            .inner
            .tree
            .range(lo..keys::entry(keys::EVENT, entry.rkey, new_horizon.0))
            .count();
        {
            let mut st = write(&entry.state);
            st.horizon = Some(new_horizon);
            st.compacted = true;
            st.events = st
                .events
                .saturating_sub(u64::try_from(dropped).unwrap_or(u64::MAX));
        }
        // Readers now refuse points below the new horizon, so the old keys
        // can go, each family's entry keys before their chunks. A crash
        // here leaves unreachable keys (or chunks) that the next
        // compaction removes.
        let mut removed_events = 0;
        let mut removed_snapshots = 0;
        for (tag, count) in [
            (keys::EVENT, Some(&mut removed_events)),
            (keys::EVENT_CHUNK, None),
            (keys::SNAPSHOT, Some(&mut removed_snapshots)),
            (keys::SNAPSHOT_CHUNK, None),
        ] {
            let removed = self.remove_below(tag, entry.rkey, Some(new_horizon))?;
            if let Some(count) = count {
                *count = removed;
            }
            tokio::task::yield_now().await;
        }
        Ok(Compaction::Done {
            horizon: new_horizon,
            removed_events,
            removed_snapshots,
        })
    }
}

/// A new version as an append stores it: its patch from the previous one
/// and both as JSON text.
pub(crate) struct Encoded {
    pub(crate) patch_json: Bytes,
    pub(crate) doc_json: Bytes,
    pub(crate) doc: Value,
    pub(crate) budget_exceeded: bool,
}

/// The CPU-heavy part of an append: diffs `doc` against `prev` (the first
/// version is a patch that adds the whole document at the root) and
/// serializes the patch and the document. `None` when nothing changed.
pub(crate) fn encode(prev: Option<&Value>, doc: Value) -> Option<Encoded> {
    let (patch, budget_exceeded) = match prev {
        None => (
            json_patch::Patch(vec![json_patch::PatchOperation::Add(
                json_patch::AddOperation {
                    path: json_patch::jsonptr::PointerBuf::root(),
                    value: doc.clone(),
                },
            )]),
            false,
        ),
        Some(p) => {
            let d = diff::diff_budgeted(p, &doc);
            if d.patch.0.is_empty() {
                return None;
            }
            (d.patch, d.budget_exceeded)
        }
    };
    // Serializing a Value (or a patch of Values) to a Vec cannot fail.
    let patch_json = Bytes::from(serde_json::to_vec(&patch).expect("patch serializes"));
    let doc_json = Bytes::from(serde_json::to_vec(&doc).expect("document serializes"));
    Some(Encoded {
        patch_json,
        doc_json,
        doc,
        budget_exceeded,
    })
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

    /// An entry for a resource whose data could not be read. Its rkey is
    /// 0, which no resource is ever given, and it is never used: every
    /// read and write of a quarantined entry is refused.
    fn quarantined(record: ResourceRecord, q: Quarantine) -> Entry {
        Entry {
            quarantine: Some(q),
            ..Entry::new(0, record, State::default())
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

/// The document after the last event ≤ `bound`: the nearest snapshot at or
/// before `bound`, plus the events after it.
fn rebuild(
    tree: &sled::Tree,
    rkey: u64,
    bound: Ulid,
) -> Result<Option<(EventId, Value)>, StoreError> {
    let lo = keys::entry(keys::SNAPSHOT, rkey, Ulid::nil());
    let hi = keys::entry(keys::SNAPSHOT, rkey, bound);
    // The newest snapshot whose event exists: a crash (or a failed flush)
    // between writing a snapshot and its event leaves a snapshot of a
    // version that never was.
    let mut found = None;
    for kv in tree.range(lo..=hi).rev() {
        let (k, v) = kv?;
        let id = keys::entry_id(&k).ok_or_else(|| corrupt(&k))?;
        if tree.contains_key(keys::entry(keys::EVENT, rkey, id.0))? {
            found = Some((k, v, id));
            break;
        }
    }
    let Some((k, v, mut id)) = found else {
        return Ok(None);
    };
    let json = values::get(tree, &k, &v)?;
    let mut doc: Value = serde_json::from_slice(&json).map_err(|_| corrupt(&k))?;
    if let Some(first) = keys::succ(id.0) {
        let lo = keys::entry(keys::EVENT, rkey, first);
        let hi = keys::entry(keys::EVENT, rkey, bound);
        if first <= bound {
            for kv in tree.range(lo..=hi) {
                let (k, v) = kv?;
                let eid = keys::entry_id(&k).ok_or_else(|| corrupt(&k))?;
                let json = values::get(tree, &k, &v)?;
                let patch: json_patch::Patch =
                    serde_json::from_slice(&json).map_err(|_| corrupt(&k))?;
                // On error the document is dropped: no undo log needed.
                diff::apply_or_discard(&mut doc, &patch.0)
                    .map_err(|source| StoreError::BadPatch { at: eid, source })?;
                id = eid;
            }
        }
    }
    Ok(Some((id, doc)))
}

/// Removes the snapshots after the last event `last` (all of them if there
/// is none), and the chunks of snapshots and events after it: a crash
/// between writing a snapshot and its event leaves a snapshot, and one
/// inside a chunked write leaves chunks. Left in place, a snapshot would
/// be counted as the newest one, and a later event could (in theory) be
/// given its id. The snapshot key goes before its chunks.
fn remove_orphan_snapshots(
    tree: &sled::Tree,
    rkey: u64,
    last: Option<EventId>,
) -> Result<(), StoreError> {
    let first = match last {
        None => Ulid::nil(),
        Some(l) => match keys::succ(l.0) {
            Some(f) => f,
            None => return Ok(()),
        },
    };
    for tag in [keys::SNAPSHOT, keys::SNAPSHOT_CHUNK, keys::EVENT_CHUNK] {
        let start = keys::entry(tag, rkey, first);
        let end = keys::prefix_end(&keys::entry_prefix(tag, rkey))
            .expect("a tag is not 0xff, so its prefixes have an end");
        // Bounded by what one crash can leave: the chunks of one event and
        // its snapshot.
        let orphans: Vec<sled::IVec> = tree
            .range(&start[..]..end.as_slice())
            .keys()
            .collect::<Result<_, _>>()?;
        for k in orphans {
            tree.remove(k)?;
        }
    }
    Ok(())
}

/// Rebuilds a resource's in-memory state at open.
fn load_state(tree: &sled::Tree, rkey: u64, id: &ResourceId) -> Result<State, StoreError> {
    let eprefix = keys::entry_prefix(keys::EVENT, rkey);
    let Some(last) = tree.scan_prefix(eprefix).keys().next_back() else {
        remove_orphan_snapshots(tree, rkey, None)?;
        return Ok(State::default());
    };
    let last = last?;
    let last_id = keys::entry_id(&last).ok_or_else(|| corrupt(&last))?;
    remove_orphan_snapshots(tree, rkey, Some(last_id))?;
    let (at, doc) = rebuild(tree, rkey, last_id.0)?.ok_or_else(|| StoreError::Corrupt {
        key: format!("resource {id}: events but no snapshot"),
    })?;
    let (horizon, compacted) = match tree.get(keys::per_rkey(keys::HORIZON, rkey))? {
        Some(v) => {
            let b: [u8; 16] = v.as_ref().try_into().map_err(|_| corrupt(&v))?;
            (EventId::from_bytes(b), true)
        }
        None => {
            let first = tree
                .scan_prefix(eprefix)
                .keys()
                .next()
                .transpose()?
                .ok_or_else(|| corrupt(&last))?;
            (
                keys::entry_id(&first).ok_or_else(|| corrupt(&first))?,
                false,
            )
        }
    };
    let snap = tree
        .scan_prefix(keys::entry_prefix(keys::SNAPSHOT, rkey))
        .keys()
        .next_back()
        .transpose()?
        .and_then(|k| keys::entry_id(&k));
    let since_snapshot = match snap.and_then(|s| keys::succ(s.0)) {
        Some(first) if first <= last_id.0 => tree
            .range(
                keys::entry(keys::EVENT, rkey, first)..=keys::entry(keys::EVENT, rkey, last_id.0),
            )
            .count(),
        _ => 0,
    };
    // Keys only up to here would do, but sled reads whole pages anyway:
    // one pass over the retained events at open, none afterwards.
    let events = tree
        .range(
            keys::entry(keys::EVENT, rkey, horizon.0)..=keys::entry(keys::EVENT, rkey, last_id.0),
        )
        .count();
    let json = Bytes::from(serde_json::to_vec(&doc).expect("document serializes"));
    Ok(State {
        head: Some(Head {
            id: at,
            doc: Arc::new(doc),
            json,
        }),
        allocated: Some(last_id),
        since_snapshot: u32::try_from(since_snapshot).unwrap_or(u32::MAX),
        horizon: Some(horizon),
        compacted,
        events: u64::try_from(events).unwrap_or(u64::MAX),
    })
}
