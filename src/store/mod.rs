//! The change log as everything above it sees it: the [`Storage`] trait and
//! its contract. Backends: sled, embedded (`crate::log`, the default and the
//! only code that names sled), and NATS JetStream (`crate::cluster`,
//! selected by `[cluster]`). The model proptest and the crash test are
//! written against the trait and run against both.
//!
//! Everything above the log (api, feed, poll, registry) holds a [`Store`],
//! a shared `dyn Storage`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use ulid::Ulid;

pub use crate::log::{
    At, Compaction, Created, Edit, Edited, Head, History, LogStatus, Quarantine, ReadAfter,
    StoreError, Unattributed,
};
use crate::model::{
    Cursor, Event, EventId, Point, ResourceId, ResourceRecord, ResourceSpec, WebhookRecord,
};

/// An appended event and the id of the event before it (`None` for the
/// first): what the hub's prev-id chain needs.
pub type Appended = (Event, Option<EventId>);

/// What `/healthz` and `/metrics` show of the storage.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// While writes fail: the error and since when (Unix ms).
    pub failing: Option<(String, u64)>,
    /// Failed writes and flushes so far.
    pub errors: u64,
    /// Resources whose stored data could not be read when the log was
    /// opened, ordered by id; they answer `resource_quarantined`.
    pub quarantined: Vec<(ResourceId, Quarantine)>,
    /// Unreadable records that name no resource.
    pub unattributed: Vec<Unattributed>,
}

/// The handle every layer above the log holds.
pub type Store = Arc<dyn Storage>;

/// Opens (or creates) the embedded sled log in `dir`.
pub fn open_sled(dir: &std::path::Path) -> Result<Store, StoreError> {
    Ok(Arc::new(crate::log::Store::open(dir)?))
}

/// Opens the change log on the NATS JetStream cluster of `cfg`.
pub async fn open_cluster(cfg: &crate::config::ClusterConfig) -> Result<Store, StoreError> {
    crate::cluster::open(cfg).await
}

/// A durable, per-resource, append-only change log with snapshots.
///
/// The contract every backend keeps (and the shared tests check):
///
/// - **Durable before return.** `append` returns `Some` only once the event
///   (and its snapshot, if one is due) would survive a crash; nothing a
///   reader can see is lost by one. Dropping an `append` future after it
///   started committing cannot leave the log and the head apart.
/// - **Ids strictly increase** per resource, across restarts and clock
///   steps back: the next id is `max(now, last + 1)`, `last` read from the
///   log when it is opened.
/// - **Readers never look past the head**: `head`, `read_after`,
///   `document_at` and `history` see exactly the durable events.
/// - **A chain.** Each appended event states the id before it (`prev`), the
///   one readers had as head; applying events in id order from any snapshot
///   yields every later version.
/// - **Pages.** `read_after` returns at most `limit` events and stops once
///   `max_bytes` of patches are read (at least one event), oldest first.
/// - **Snapshots.** A snapshot exists at the horizon and at least every
///   `snapshot_every` events after it, so `document_at` rebuilds any
///   retained point from at most `snapshot_every` patches.
/// - **Horizon.** The oldest point served: the first event until
///   compaction moves it. A point before it is `BeforeHorizon` /
///   `Compacted`, never a wrong answer. Compaction never drops the newest
///   snapshot.
/// - **Expected outcomes are values** (`Created::Exists`, `At::NotYet`,
///   `ReadAfter::BeforeHorizon`, `History::Compacted`, `None` for an
///   unchanged document); errors are failures.
pub trait Storage: Send + Sync + 'static {
    // ---- resources ----

    /// Creates a resource unless one with that id exists (then nothing
    /// changes). Durable before return.
    fn create(&self, spec: ResourceSpec, now_ms: u64)
        -> BoxFuture<'_, Result<Created, StoreError>>;

    /// Creates a resource or updates the settings of an existing one,
    /// keeping its log and creation time. Durable before return.
    fn put(
        &self,
        spec: ResourceSpec,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<ResourceRecord, StoreError>>;

    /// Deletes a resource and its log; false if there was none. An append
    /// in flight finishes first, and none lands after it.
    fn delete<'a>(&'a self, id: &'a ResourceId) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every resource, ordered by id.
    fn resources(&self) -> Vec<ResourceRecord>;

    /// One resource's record.
    fn resource(&self, id: &ResourceId) -> Option<ResourceRecord>;

    // ---- the log ----

    /// Diffs `doc` against the head and, if they differ, appends the patch
    /// as the next event (the first version is one `add` at the root).
    /// Returns the event and the id before it, once durable; `None` when
    /// the document did not change.
    fn append<'a>(
        &'a self,
        id: &'a ResourceId,
        doc: Value,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Appended>, StoreError>>;

    /// [`Storage::append`] of what `edit` makes of the head document
    /// (`None` before the first version), for writers that change the
    /// document themselves (push resources). The precondition, the edit
    /// and the append run under one per-resource lock, against the durable
    /// head:
    ///
    /// - with `expected` = `Some(e)`, unless `e` is the newest event the
    ///   answer is `HeadMoved(actual)` and the edit does not run; so of any
    ///   number of writers expecting the same head, exactly one appends;
    /// - an edit that refuses (`Err`) is `Refused`, a document too deep to
    ///   store is `StoreError::TooDeep`: nothing is stored either way;
    /// - an edit that yields the head document is `Unchanged(head)`;
    /// - `Appended` only once durable, with the id before it.
    ///
    /// `heavy`: the caller knows the new document is large (the edit and
    /// the diff then run off the calling thread, as `append` does).
    fn append_edit<'a>(
        &'a self,
        id: &'a ResourceId,
        expected: Option<EventId>,
        heavy: bool,
        edit: Edit,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Edited, StoreError>>;

    /// The newest durable version, if the resource has one.
    fn head(&self, id: &ResourceId) -> Result<Option<Head>, StoreError>;

    /// Last event, horizon, and whether the log was compacted.
    fn status(&self, id: &ResourceId) -> Result<LogStatus, StoreError>;

    /// Up to `limit` events with id > `after`, oldest first, stopping once
    /// `max_bytes` of patches are read (at least one event).
    fn read_after<'a>(
        &'a self,
        id: &'a ResourceId,
        after: Ulid,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<ReadAfter, StoreError>>;

    /// Whether `event` is a retained event of this resource.
    fn contains<'a>(
        &'a self,
        id: &'a ResourceId,
        event: EventId,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The document as of `point`.
    fn document_at<'a>(
        &'a self,
        id: &'a ResourceId,
        point: Point,
    ) -> BoxFuture<'a, Result<At, StoreError>>;

    /// Events after `after` (exclusive) up to `before` (inclusive), oldest
    /// first, at most `limit`, with the cursor of the next page.
    fn history<'a>(
        &'a self,
        id: &'a ResourceId,
        after: Option<Point>,
        before: Option<Point>,
        limit: usize,
    ) -> BoxFuture<'a, Result<History, StoreError>>;

    /// Removes events older than the resource's `retain` as of `now_ms`,
    /// keeping a snapshot at the new horizon.
    fn compact<'a>(
        &'a self,
        id: &'a ResourceId,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Compaction, StoreError>>;

    /// Set when the resource's stored data could not be read when the log
    /// was opened: every other call on it is refused, its data kept as is.
    fn quarantine(&self, id: &ResourceId) -> Option<Quarantine>;

    /// Write failures and quarantined resources, now.
    fn health(&self) -> Health;

    /// Tries one real durable write, so that a store whose writes failed
    /// can show it writes again (a bare flush with nothing to write proves
    /// nothing).
    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Makes everything written so far durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Durable writes so far (fsyncs, or quorum acknowledgements), for
    /// metrics: appends share them.
    fn flushes(&self) -> u64;

    /// Appends so far whose diff ran out of its work budget and were stored
    /// as one `replace` of the whole document.
    fn diff_budget_exceeded(&self) -> u64;

    // ---- webhooks (`crate::webhook`) ----
    //
    // A webhook is its record plus one cursor per resource: nothing else
    // is stored for it (what it sends is read from the log). Records and
    // cursors live apart from resources: deleting a resource leaves the
    // cursors of webhooks in it to the webhooks.

    /// Creates or replaces webhook `record.spec.id`. Durable before return.
    fn put_webhook<'a>(
        &'a self,
        record: &'a WebhookRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Deletes a webhook and every cursor of it; false if there was none.
    /// Durable before return.
    fn delete_webhook<'a>(&'a self, id: &'a ResourceId) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every webhook, ordered by id.
    fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError>;

    /// The cursors of webhook `id`, by resource.
    fn cursors(
        &self,
        id: &ResourceId,
    ) -> Result<std::collections::BTreeMap<ResourceId, Cursor>, StoreError>;

    /// Sets (`Some`) or removes (`None`) the cursor of `webhook` in
    /// `resource`. Durable before return; concurrent calls may share one
    /// durable write (a backend should batch them, as sled's group commit
    /// does).
    fn set_cursor<'a>(
        &'a self,
        webhook: &'a ResourceId,
        resource: &'a ResourceId,
        cursor: Option<Cursor>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

impl Storage for crate::log::Store {
    fn create(
        &self,
        spec: ResourceSpec,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        Box::pin(crate::log::Store::create(self, spec, now_ms))
    }

    fn put(
        &self,
        spec: ResourceSpec,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<ResourceRecord, StoreError>> {
        Box::pin(crate::log::Store::put(self, spec, now_ms))
    }

    fn delete<'a>(&'a self, id: &'a ResourceId) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(crate::log::Store::delete(self, id))
    }

    fn resources(&self) -> Vec<ResourceRecord> {
        crate::log::Store::resources(self)
    }

    fn resource(&self, id: &ResourceId) -> Option<ResourceRecord> {
        crate::log::Store::resource(self, id)
    }

    fn append<'a>(
        &'a self,
        id: &'a ResourceId,
        doc: Value,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Appended>, StoreError>> {
        Box::pin(crate::log::Store::append_chained(self, id, doc, now_ms))
    }

    fn append_edit<'a>(
        &'a self,
        id: &'a ResourceId,
        expected: Option<EventId>,
        heavy: bool,
        edit: Edit,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Edited, StoreError>> {
        Box::pin(crate::log::Store::append_edit(
            self, id, expected, heavy, edit, now_ms,
        ))
    }

    fn head(&self, id: &ResourceId) -> Result<Option<Head>, StoreError> {
        crate::log::Store::head(self, id)
    }

    fn status(&self, id: &ResourceId) -> Result<LogStatus, StoreError> {
        crate::log::Store::status(self, id)
    }

    fn read_after<'a>(
        &'a self,
        id: &'a ResourceId,
        after: Ulid,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<ReadAfter, StoreError>> {
        Box::pin(std::future::ready(crate::log::Store::read_after_capped(
            self, id, after, limit, max_bytes,
        )))
    }

    fn contains<'a>(
        &'a self,
        id: &'a ResourceId,
        event: EventId,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(crate::log::Store::contains(
            self, id, event,
        )))
    }

    fn document_at<'a>(
        &'a self,
        id: &'a ResourceId,
        point: Point,
    ) -> BoxFuture<'a, Result<At, StoreError>> {
        Box::pin(std::future::ready(crate::log::Store::document_at(
            self, id, point,
        )))
    }

    fn history<'a>(
        &'a self,
        id: &'a ResourceId,
        after: Option<Point>,
        before: Option<Point>,
        limit: usize,
    ) -> BoxFuture<'a, Result<History, StoreError>> {
        Box::pin(std::future::ready(crate::log::Store::history(
            self, id, after, before, limit,
        )))
    }

    fn compact<'a>(
        &'a self,
        id: &'a ResourceId,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Compaction, StoreError>> {
        Box::pin(crate::log::Store::compact(self, id, now_ms))
    }

    fn quarantine(&self, id: &ResourceId) -> Option<Quarantine> {
        crate::log::Store::quarantine(self, id)
    }

    fn health(&self) -> Health {
        let h = crate::log::Store::health(self);
        let (quarantined, unattributed) = crate::log::Store::quarantined(self);
        Health {
            failing: h.failing(),
            errors: h.errors(),
            quarantined,
            unattributed,
        }
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(crate::log::Store::probe(self))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(crate::log::Store::flush(self))
    }

    fn flushes(&self) -> u64 {
        crate::log::Store::flushes(self)
    }

    fn diff_budget_exceeded(&self) -> u64 {
        crate::log::Store::diff_budget_exceeded(self)
    }

    fn put_webhook<'a>(
        &'a self,
        record: &'a WebhookRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(crate::log::Store::put_webhook(self, record))
    }

    fn delete_webhook<'a>(&'a self, id: &'a ResourceId) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(crate::log::Store::delete_webhook(self, id))
    }

    fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        crate::log::Store::webhooks(self)
    }

    fn cursors(
        &self,
        id: &ResourceId,
    ) -> Result<std::collections::BTreeMap<ResourceId, Cursor>, StoreError> {
        crate::log::Store::cursors(self, id)
    }

    fn set_cursor<'a>(
        &'a self,
        webhook: &'a ResourceId,
        resource: &'a ResourceId,
        cursor: Option<Cursor>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(crate::log::Store::set_cursor(
            self, webhook, resource, cursor,
        ))
    }
}
