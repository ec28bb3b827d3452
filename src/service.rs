//! The one service the HTTP API sees: the operations the contract names —
//! create, list, get and delete resources; the document at a point; history;
//! subscribe from a resume point; poll now; push a document or a patch; the
//! streamdata route's resource for an upstream URL; health — over the
//! registry, the log and the hub. Handlers
//! never reach the store, the fetchers or the hub themselves.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::feed::subtree::Pointer;
use crate::feed::{self, Feed, Resume};
use crate::hub::{Hub, UpstreamError};
use crate::metrics::{Metrics, Sampled};
use crate::model::{EventId, Point, ResourceId, ResourceSpec};
use crate::poll::fetch::FetchError;
use crate::registry::{ProxyError, Registry, ResourceInfo};
use crate::store::{At, Created, Edit, Edited, Health, History, Store, StoreError};

/// The document of a resource at a point, as the API serves it.
#[derive(Debug)]
pub enum Document {
    /// The document as of event `id`, as JSON text.
    Found { id: EventId, json: Bytes },
    /// Before the first version (or no version yet).
    NotYet,
    /// Before the horizon of a compacted log.
    Compacted { horizon: EventId },
}

/// A change a client pushes to a push resource's document.
#[derive(Debug)]
pub enum Change {
    /// The new whole document (`PUT`).
    Document(serde_json::Value),
    /// RFC 6902, applied atomically to the current document.
    JsonPatch(json_patch::Patch),
    /// RFC 7396, merged into the current document.
    MergePatch(serde_json::Value),
}

/// The edit of the head (`null` before the first version) that `change`
/// asks for: what [`Service::push`] hands the log, under its append lock.
pub(crate) fn edit_for(change: Change) -> Edit {
    match change {
        Change::Document(doc) => Box::new(move |_| Ok(doc)),
        Change::JsonPatch(patch) => Box::new(move |head| {
            let mut doc = head.cloned().unwrap_or(serde_json::Value::Null);
            // On a copy: an error leaves the head as it was.
            crate::diff::apply_or_discard(&mut doc, &patch.0).map_err(|e| e.to_string())?;
            Ok(doc)
        }),
        Change::MergePatch(patch) => Box::new(move |head| {
            let mut doc = head.cloned().unwrap_or(serde_json::Value::Null);
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }),
    }
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Durable: the new event, or (`changed` false) the current one.
    Done {
        event_id: Option<EventId>,
        changed: bool,
    },
    /// `If-Match` named another event than the newest (`head`).
    PreconditionFailed { head: Option<EventId> },
    /// The JSON Patch does not apply (its message); nothing stored.
    PatchFailed(String),
    /// The resource is polled: its versions come from its upstream.
    Polled,
}

/// What a poll-now request did.
#[derive(Debug, PartialEq, Eq)]
pub enum PollNow {
    /// The poller polls now, or right after the poll in flight.
    Triggered,
    /// A push resource: nothing to poll.
    Push,
}

/// See the module docs.
pub struct Service {
    registry: Arc<Registry>,
    store: Store,
    hub: Arc<Hub>,
    feed: feed::Ctx,
    metrics: Arc<Metrics>,
    /// Open WebSocket sessions: once upgraded they leave the HTTP
    /// connection cap, so they have their own of the same size.
    ws_slots: Arc<tokio::sync::Semaphore>,
    max_ws_sessions: u32,
    /// Webhooks out: their own operations (`crate::webhook::Manager`).
    webhooks: Arc<crate::webhook::Manager>,
}

impl Service {
    /// The service over a running registry; `feed` is what every
    /// subscription reads the log and keeps alive with.
    pub fn new(
        registry: Arc<Registry>,
        hub: Arc<Hub>,
        feed: feed::Ctx,
        max_ws_sessions: usize,
        webhooks: Arc<crate::webhook::Manager>,
    ) -> Service {
        Service {
            webhooks,
            ws_slots: Arc::new(tokio::sync::Semaphore::new(max_ws_sessions)),
            max_ws_sessions: u32::try_from(max_ws_sessions).unwrap_or(u32::MAX),
            store: feed.store.clone(),
            metrics: feed.metrics.clone(),
            registry,
            hub,
            feed,
        }
    }

    /// The metrics every layer counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether an upstream URL may be registered (the upstream guard, as
    /// configured).
    pub fn check_url(&self, url: &str) -> Result<(), FetchError> {
        self.registry.check_url(url)
    }

    /// Creates a resource and starts polling it; `Exists` changes nothing.
    pub async fn create_resource(&self, spec: ResourceSpec) -> Result<Created, StoreError> {
        let created = self.registry.create(spec).await;
        self.webhooks.resources_changed();
        created
    }

    /// The webhooks and their operations.
    pub fn webhooks(&self) -> &Arc<crate::webhook::Manager> {
        &self.webhooks
    }

    /// Every resource, ordered by id.
    pub fn resources(&self) -> Vec<ResourceInfo> {
        self.registry.infos()
    }

    /// One resource, or `None` if there is none with that id.
    pub fn resource(&self, id: &ResourceId) -> Option<ResourceInfo> {
        self.registry.info(id)
    }

    /// Whether a resource with that id exists.
    pub fn exists(&self, id: &ResourceId) -> bool {
        self.store.resource(id).is_some()
    }

    /// Stops polling, deletes the log, ends open streams. False if unknown.
    pub async fn delete_resource(&self, id: &ResourceId) -> Result<bool, StoreError> {
        if let Some(quarantine) = self.store.quarantine(id) {
            return Err(StoreError::Quarantined {
                id: id.clone(),
                quarantine,
            });
        }
        let deleted = self.registry.delete(id).await;
        self.webhooks.resources_changed();
        deleted
    }

    /// The document now (`at` = `None`) or as of a point.
    pub async fn document(
        &self,
        id: &ResourceId,
        at: Option<Point>,
    ) -> Result<Document, StoreError> {
        Ok(match at {
            None => match self.store.head(id)? {
                Some(h) => Document::Found {
                    id: h.id,
                    json: h.json,
                },
                None => Document::NotYet,
            },
            Some(p) => match self.store.document_at(id, p).await? {
                At::Found { id, doc } => Document::Found {
                    id,
                    // Serializing a Value to a Vec cannot fail.
                    json: Bytes::from(serde_json::to_vec(&*doc).expect("document serializes")),
                },
                At::NotYet => Document::NotYet,
                At::Compacted { horizon } => Document::Compacted { horizon },
            },
        })
    }

    /// [`Service::document`] narrowed to the value at `path`; `Ok(None)`
    /// where the point has a version but no value at `path`.
    pub async fn document_subtree(
        &self,
        id: &ResourceId,
        at: Option<Point>,
        path: &Pointer,
    ) -> Result<Option<Document>, StoreError> {
        let (event, doc) = match at {
            None => match self.store.head(id)? {
                Some(h) => (h.id, h.doc),
                None => return Ok(Some(Document::NotYet)),
            },
            Some(p) => match self.store.document_at(id, p).await? {
                At::Found { id, doc } => (id, doc),
                At::NotYet => return Ok(Some(Document::NotYet)),
                At::Compacted { horizon } => return Ok(Some(Document::Compacted { horizon })),
            },
        };
        Ok(path.get(&doc).map(|_| Document::Found {
            id: event,
            json: path.snapshot(&doc),
        }))
    }

    /// Poll `id` now (coalesced with a poll in flight, spaced, back-off
    /// reset: `poll::poller`).
    pub fn poll_now(&self, id: &ResourceId) -> Result<PollNow, StoreError> {
        let record = self.live_record(id)?;
        if record.spec.push {
            return Ok(PollNow::Push);
        }
        if self.registry.poll_now(id) {
            Ok(PollNow::Triggered)
        } else {
            // Its poller is gone: the resource is being deleted.
            Err(StoreError::NoSuchResource(id.clone()))
        }
    }

    /// The most a pushed body may weigh.
    pub fn max_push_body(&self) -> usize {
        self.registry.max_push_body()
    }

    /// Applies `change` to the document of push resource `id`, only if its
    /// newest event is `if_match` (when given), and appends the result as
    /// a poll's document would be (diffed, durable, then published).
    /// `heavy`: the body was large.
    pub async fn push(
        &self,
        id: &ResourceId,
        change: Change,
        if_match: Option<EventId>,
        heavy: bool,
    ) -> Result<Pushed, StoreError> {
        if !self.live_record(id)?.spec.push {
            return Ok(Pushed::Polled);
        }
        let edit = edit_for(change);
        Ok(
            match self.registry.ingest_edit(id, if_match, heavy, edit).await? {
                Edited::Appended(event, _) => Pushed::Done {
                    event_id: Some(event.id),
                    changed: true,
                },
                Edited::Unchanged(head) => Pushed::Done {
                    event_id: head,
                    changed: false,
                },
                Edited::HeadMoved(head) => Pushed::PreconditionFailed { head },
                Edited::Refused(why) => Pushed::PatchFailed(why),
            },
        )
    }

    /// The record of a resource that exists and is not quarantined.
    fn live_record(&self, id: &ResourceId) -> Result<crate::model::ResourceRecord, StoreError> {
        let record = self
            .store
            .resource(id)
            .ok_or_else(|| StoreError::NoSuchResource(id.clone()))?;
        if let Some(quarantine) = self.store.quarantine(id) {
            return Err(StoreError::Quarantined {
                id: id.clone(),
                quarantine,
            });
        }
        Ok(record)
    }

    /// One page of the changes after `after` up to `before`.
    pub async fn history(
        &self,
        id: &ResourceId,
        after: Option<Point>,
        before: Option<Point>,
        limit: usize,
    ) -> Result<History, StoreError> {
        self.store.history(id, after, before, limit).await
    }

    /// [`Service::history`] of the value at `path`: the page's events that
    /// change it, rewritten relative to it (`next_after` as for the whole
    /// document, so a page may hold fewer than `limit` events, even none).
    pub async fn history_subtree(
        &self,
        id: &ResourceId,
        after: Option<Point>,
        before: Option<Point>,
        limit: usize,
        path: &Pointer,
    ) -> Result<History, StoreError> {
        let (events, next_after) = match self.store.history(id, after, before, limit).await? {
            History::Events { events, next_after } => (events, next_after),
            compacted @ History::Compacted { .. } => return Ok(compacted),
        };
        let Some(first) = events.first() else {
            return Ok(History::Events { events, next_after });
        };
        // The document before the first event; unknown when that event is
        // the horizon of a compacted log (its change then shows as the
        // whole value after it).
        let before_first = EventId(ulid::Ulid(first.id.0 .0.saturating_sub(1)));
        let mut doc = match self
            .store
            .document_at(id, Point::Id(before_first.0))
            .await?
        {
            At::Found { doc, .. } => Some(doc),
            At::NotYet => Some(Arc::new(serde_json::Value::Null)),
            At::Compacted { .. } => None,
        };
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let ops: json_patch::Patch =
                serde_json::from_slice(&e.patch).map_err(|_| StoreError::Corrupt {
                    key: format!("patch of event {} of {id}", e.id),
                })?;
            let before = doc.as_ref().and_then(|d| path.get(d)).cloned();
            let known = doc.is_some();
            let d = match &mut doc {
                Some(d) => {
                    let d = Arc::make_mut(d);
                    crate::diff::apply_or_discard(d, &ops.0)
                        .map_err(|source| StoreError::BadPatch { at: e.id, source })?;
                    d
                }
                None => {
                    let At::Found { doc: d, .. } =
                        self.store.document_at(id, Point::Id(e.id.0)).await?
                    else {
                        continue;
                    };
                    Arc::make_mut(doc.insert(d))
                }
            };
            let after = path.get(d);
            let patch = if known {
                feed::subtree::project(path, before.as_ref(), &ops.0, after)
            } else {
                Some(feed::subtree::replace_all(after))
            };
            if let Some(patch) = patch {
                out.push(crate::model::Event {
                    id: e.id,
                    // Serializing a patch cannot fail.
                    patch: Bytes::from(serde_json::to_vec(&patch).expect("a patch serializes")),
                });
            }
        }
        Ok(History::Events {
            events: out,
            next_after,
        })
    }

    /// A feed of `id` from `resume`: subscribed to the hub before anything
    /// is read from the log, with the upstream's current error if it is
    /// failing. A quarantined resource is refused.
    pub fn subscribe(&self, id: &ResourceId, resume: Resume) -> Result<Feed, StoreError> {
        self.open_feed(id, resume, None, true, None)
    }

    /// [`Service::subscribe`] to the value at `path` (`None`: the whole
    /// document): the same ids and resume rules, snapshots of that value,
    /// patches relative to it, and only events that change it.
    pub fn subscribe_subtree(
        &self,
        id: &ResourceId,
        resume: Resume,
        path: Option<Pointer>,
    ) -> Result<Feed, StoreError> {
        self.open_feed(id, resume, None, true, path)
    }

    /// [`Service::subscribe`] for one long-poll answer: catch-up pages of at
    /// most `page` events, and no current error in the first batch (the
    /// caller decides when to report it, so that a failing upstream does not
    /// answer every poll at once).
    pub fn subscribe_once(
        &self,
        id: &ResourceId,
        resume: Resume,
        page: usize,
        path: Option<Pointer>,
    ) -> Result<Feed, StoreError> {
        self.open_feed(id, resume, Some(page), false, path)
    }

    fn open_feed(
        &self,
        id: &ResourceId,
        resume: Resume,
        page: Option<usize>,
        with_error: bool,
        path: Option<Pointer>,
    ) -> Result<Feed, StoreError> {
        if let Some(quarantine) = self.store.quarantine(id) {
            return Err(StoreError::Quarantined {
                id: id.clone(),
                quarantine,
            });
        }
        let rx = self.hub.subscribe(id);
        let failing = with_error.then(|| self.registry.last_error(id)).flatten();
        let mut ctx = self.feed.clone();
        if let Some(page) = page {
            ctx.config.page = page.max(1);
        }
        let feed = Feed::new(ctx, id.clone(), rx, resume, failing);
        Ok(match path {
            Some(p) => feed.with_subtree(p, &self.hub.versions(id)),
            None => feed,
        })
    }

    /// The upstream's error now, while it is failing.
    pub fn last_error(&self, id: &ResourceId) -> Option<UpstreamError> {
        self.registry.last_error(id)
    }

    /// A slot for one more WebSocket session, if any is free; held for the
    /// session's life.
    pub fn ws_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.ws_slots.clone().try_acquire_owned().ok()
    }

    /// Waits until every WebSocket session has ended (they end themselves
    /// on shutdown, after their close frame): upgraded connections are not
    /// among the HTTP connections the accept loop drains.
    pub async fn ws_sessions_ended(&self) {
        let _ = self.ws_slots.acquire_many(self.max_ws_sessions).await;
    }

    /// The keep-alive period every feed promises.
    pub fn keep_alive(&self) -> std::time::Duration {
        self.feed.config.keep_alive
    }

    /// The resource polling `url` with exactly `headers` (marked as in use),
    /// or, in proxy mode, a new ad-hoc one.
    pub async fn upstream_resource(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<ResourceId, ProxyError> {
        match self.registry.find_by_upstream(url, headers) {
            Some(id) => {
                self.registry.touch(&id);
                Ok(id)
            }
            None => self.registry.proxy_resource(url, headers).await,
        }
    }

    /// Write failures and quarantined resources.
    pub fn health(&self) -> Health {
        self.store.health()
    }

    /// The gauges `/metrics` samples at scrape time.
    pub fn sampled(&self) -> Sampled {
        let health = self.store.health();
        Sampled {
            resources: self.store.resources().len(),
            subscribers: self.hub.total_subscribers(),
            resources_failing: self.registry.failing(),
            proxy_resources: self.registry.ad_hoc_count(),
            log_flushes: self.store.flushes(),
            storage_failing: health.failing.is_some(),
            storage_errors: health.errors,
            resources_quarantined: health.quarantined.len() + health.unattributed.len(),
            diff_budget_exceeded: self.store.diff_budget_exceeded(),
        }
    }
}

#[cfg(test)]
mod tests;
