//! One subscriber's feed, transport-neutral: resume point → log catch-up →
//! live, without a gap or a duplicate. Encoders (SSE today; long-poll,
//! NDJSON, WebSocket and webhooks to come) turn its [`Message`]s into bytes.
//!
//! The feed subscribes to the hub *before* it reads the log, keeps a cursor
//! (every event ≤ cursor is delivered or covered by a snapshot), skips live
//! events ≤ cursor, and goes back to the log when the hub reports `Lagged`
//! or an event whose `prev` is past the cursor (pushpin's prev-id). A
//! resume point the log cannot serve gets a snapshot. The feed ends by
//! itself on shutdown and when the resource is deleted.
//!
//! A feed built [`Feed::with_subtree`] streams the value at one JSON
//! Pointer instead (`subtree`): the same cursor and ids, snapshots of that
//! value, each event rewritten relative to it and left out where it does
//! not change it. Live events are rewritten once per pointer and shared;
//! catch-up replays the log onto the document as of the cursor.

pub mod subtree;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use ulid::Ulid;

use crate::hub::{Notice, Published, UpstreamError};
use crate::metrics::Metrics;
use crate::model::{Event, EventId, Point, ResourceId};
use crate::store::{At, ReadAfter, Store, StoreError};
use subtree::{Pointer, Versions, VersionsGuard};

/// Where a subscriber starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// No resume point: a snapshot, then live.
    Fresh,
    /// `Last-Event-ID` (or its query forms): patches after it if it is a
    /// retained event id of this resource, else a snapshot.
    LastEventId(Ulid),
    /// `?since=T`: patches with id > T, or a snapshot if T is before the
    /// horizon.
    Since(Point),
}

/// How a feed reads the log and keeps an idle connection alive.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// An idle feed yields [`Message::KeepAlive`] at least this often.
    pub keep_alive: Duration,
    /// Events per log read while catching up.
    pub page: usize,
    /// Bytes of patches per log read while catching up (at least one
    /// event): a subscriber catching up holds about this much, whatever
    /// the size of the events.
    pub page_bytes: usize,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            keep_alive: Duration::from_secs(15),
            page: 512,
            page_bytes: 256 * 1024,
        }
    }
}

/// Everything a feed needs; cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub config: FeedConfig,
    pub shutdown: CancellationToken,
}

/// What a feed yields, in order. An encoder writes one batch of these as
/// one chunk.
#[derive(Clone, Debug)]
pub enum Message {
    /// The whole document as of event `id`: the subscriber replaces its copy.
    Snapshot { id: EventId, json: Bytes },
    /// One event read from the log (catch-up).
    Patch(Event),
    /// One event from the hub, with its encodings cached for every
    /// subscriber (`Published::frame`).
    Live(Arc<Published>),
    /// The upstream is failing; the feed goes on.
    Error(Arc<UpstreamError>),
    /// Nothing was sent for a while: a heartbeat, in the encoder's form.
    KeepAlive,
}

/// What a live event is to a feed.
enum Live {
    /// Send this (the event, or its rewritten form for a subtree).
    Send(Arc<crate::hub::Published>),
    /// It does not touch the feed's subtree.
    Skip,
    /// The documents it needs are no longer kept: read it from the log.
    FromLog,
}

/// The keep-alive timer's period: half the promised interval, so that a
/// tick that finds nothing sent since the one before it yields a heartbeat
/// at most `keep_alive` after the last message. Re-arming a timer per
/// message instead (and reading the clock for it) cost ~2 % of the CPU of
/// a 10,000-subscriber fan-out.
fn half(keep_alive: Duration) -> Duration {
    (keep_alive / 2).max(Duration::from_millis(1))
}

/// One subscriber's position in one resource's feed.
pub struct Feed {
    ctx: Ctx,
    id: ResourceId,
    rx: broadcast::Receiver<Notice>,
    start: Option<Resume>,
    /// The upstream's error when the feed began, sent with the first batch.
    failing: Option<UpstreamError>,
    /// Every event with id ≤ cursor is delivered or covered by a snapshot.
    /// `None` until the first snapshot (a resource never fetched yet).
    cursor: Option<Ulid>,
    /// The next batch comes from the log, not the hub.
    catching_up: bool,
    done: bool,
    keep_alive: std::pin::Pin<Box<Sleep>>,
    /// A batch went out since the keep-alive timer last fired.
    sent: bool,
    /// Created once: a `cancelled()` future made per event (and dropped)
    /// takes the token's lock twice per message for every subscriber.
    shutdown: std::pin::Pin<Box<WaitForCancellationFutureOwned>>,
    /// Set for a subtree feed (`?path=`).
    subtree: Option<Box<Subtree>>,
}

/// What a subtree feed adds to the cursor.
struct Subtree {
    pointer: Pointer,
    /// Keeps the resource's newest documents at hand while this feed lives.
    versions: VersionsGuard,
    /// The whole document as of the cursor, when known: the "before" of
    /// the next event. In live delivery it is the hub's shared `Arc`; in
    /// catch-up, the feed's own copy, patched event by event.
    base: Option<(Ulid, Arc<Value>)>,
}

impl Feed {
    /// A feed of `id` from `resume`. `rx` must come from `Hub::subscribe`
    /// called before this, so nothing published after the log is read can
    /// be missed. `failing` is the upstream's current error, read after
    /// subscribing: the subscriber hears it at once (after the snapshot or
    /// the first page of catch-up), not only at the next failed poll. Read
    /// after the subscription, a failure can at worst arrive twice, never
    /// be missed.
    pub fn new(
        ctx: Ctx,
        id: ResourceId,
        rx: broadcast::Receiver<Notice>,
        resume: Resume,
        failing: Option<UpstreamError>,
    ) -> Feed {
        let keep_alive = Box::pin(tokio::time::sleep(half(ctx.config.keep_alive)));
        let shutdown = Box::pin(ctx.shutdown.clone().cancelled_owned());
        Feed {
            ctx,
            id,
            rx,
            start: Some(resume),
            failing,
            cursor: None,
            catching_up: false,
            done: false,
            keep_alive,
            sent: true,
            shutdown,
            subtree: None,
        }
    }

    /// This feed narrowed to the value at `pointer` (`versions`: the
    /// resource's, from `Hub::versions`). Every transport gets the subtree
    /// from here.
    pub fn with_subtree(mut self, pointer: Pointer, versions: &Arc<Versions>) -> Feed {
        let versions = versions.watch();
        // The head as of now, so the first live event finds its "before".
        if let Ok(Some(head)) = self.ctx.store.head(&self.id) {
            versions.versions().record(head.id, &head.doc);
        }
        self.subtree = Some(Box::new(Subtree {
            pointer,
            versions,
            base: None,
        }));
        self
    }

    /// The resource this feed follows.
    pub fn resource(&self) -> &ResourceId {
        &self.id
    }

    /// Every event with id ≤ this is delivered or covered (for a subtree
    /// feed, also those left out because they did not touch it); `None`
    /// before the first snapshot.
    pub fn cursor(&self) -> Option<EventId> {
        self.cursor.map(EventId)
    }

    /// Whether the server is shutting down (an ended feed ended for that,
    /// not because its resource was deleted).
    pub fn shutting_down(&self) -> bool {
        self.ctx.shutdown.is_cancelled()
    }

    /// The next batch of messages; `None` once the feed has ended (shutdown,
    /// the resource deleted, or a storage error). The first batch answers
    /// the resume point and may be empty (no version yet, nothing missed).
    pub async fn next(&mut self) -> Option<Vec<Message>> {
        let batch = self.next_batch().await?;
        self.sent = true;
        Some(batch)
    }

    async fn next_batch(&mut self) -> Option<Vec<Message>> {
        if self.done {
            return None;
        }
        if let Some(resume) = self.start.take() {
            let mut batch = self.begin(resume).await;
            if let Some(e) = self.failing.take() {
                batch.push(Message::Error(Arc::new(e)));
            }
            return Some(batch);
        }
        loop {
            if self.catching_up {
                // Catch-up returns without waiting: check here, so a long
                // catch-up still ends on shutdown. (Live waits see the
                // shutdown future below.)
                if self.ctx.shutdown.is_cancelled() {
                    return None;
                }
                // A subtree feed's page may hold nothing for it.
                if let Some(batch) = self.catch_up().await.filter(|b| !b.is_empty()) {
                    return Some(batch);
                }
                if self.done {
                    return None;
                }
            }
            tokio::select! {
                biased;
                _ = self.shutdown.as_mut() => return None,
                r = self.rx.recv() => match r {
                    Ok(Notice::Event(p)) => {
                        let Some(cursor) = self.cursor else {
                            if let Some(m) = self.snapshot() {
                                return Some(vec![m]);
                            }
                            continue;
                        };
                        if p.event.id.0 <= cursor {
                            continue;
                        }
                        if p.prev.is_none_or(|prev| prev.0 <= cursor) {
                            match self.live(p) {
                                Live::Send(p) => return Some(vec![Message::Live(p)]),
                                Live::Skip => continue,
                                // Its documents are gone: the log has them.
                                Live::FromLog => self.catching_up = true,
                            }
                            continue;
                        }
                        // Something between the cursor and this event did
                        // not reach us: the log has it.
                        self.catching_up = true;
                    }
                    Ok(Notice::Error(e)) => return Some(vec![Message::Error(e)]),
                    Ok(Notice::Deleted) | Err(RecvError::Closed) => return None,
                    Err(RecvError::Lagged(_)) => {
                        Metrics::inc(&self.ctx.metrics.sse_lagged);
                        if self.cursor.is_none() {
                            if let Some(m) = self.snapshot() {
                                return Some(vec![m]);
                            }
                        } else {
                            self.catching_up = true;
                        }
                    }
                },
                _ = self.keep_alive.as_mut() => {
                    let period = half(self.ctx.config.keep_alive);
                    self.keep_alive.as_mut().reset(Instant::now() + period);
                    if std::mem::take(&mut self.sent) {
                        continue;
                    }
                    return Some(vec![Message::KeepAlive]);
                }
            }
        }
    }

    /// The snapshot or the first page of catch-up for a resume point.
    async fn begin(&mut self, resume: Resume) -> Vec<Message> {
        match resume {
            Resume::Fresh => self.snapshot().into_iter().collect(),
            Resume::LastEventId(id) => match self.ctx.store.contains(&self.id, EventId(id)).await {
                Ok(true) => {
                    self.cursor = Some(id);
                    self.catching_up = true;
                    self.catch_up().await.unwrap_or_default()
                }
                Ok(false) => self.snapshot().into_iter().collect(),
                Err(e) => self.fail(e),
            },
            // A point after the newest event means "now": the subscriber
            // holds the head, and events detected later (even within T's
            // millisecond) are new to it. With no version yet, it waits
            // for the first snapshot like a fresh subscriber.
            Resume::Since(point) => match self.ctx.store.head(&self.id) {
                Ok(Some(head)) => {
                    self.cursor = Some(point.upper_bound().min(head.id.0));
                    self.catching_up = true;
                    self.catch_up().await.unwrap_or_default()
                }
                Ok(None) => Vec::new(),
                Err(e) => self.fail(e),
            },
        }
    }

    /// The current document as a snapshot; moves the cursor to its id.
    /// `None` if the resource has no version yet.
    fn snapshot(&mut self) -> Option<Message> {
        match self.ctx.store.head(&self.id) {
            Ok(Some(head)) => {
                self.cursor = Some(head.id.0);
                self.catching_up = false;
                Metrics::inc(&self.ctx.metrics.sse_snapshots);
                let json = match &mut self.subtree {
                    Some(sub) => {
                        sub.versions.versions().record(head.id, &head.doc);
                        let json = sub.pointer.snapshot(&head.doc);
                        sub.base = Some((head.id.0, head.doc));
                        json
                    }
                    None => head.json,
                };
                Some(Message::Snapshot { id: head.id, json })
            }
            Ok(None) => None,
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// One page of events after the cursor. Clears `catching_up` at the
    /// head. `None` when there is nothing to send.
    async fn catch_up(&mut self) -> Option<Vec<Message>> {
        let cursor = self.cursor?;
        let page = self.ctx.config.page.max(1);
        let page_bytes = self.ctx.config.page_bytes;
        match self
            .ctx
            .store
            .read_after(&self.id, cursor, page, page_bytes)
            .await
        {
            Ok(ReadAfter::Events(events)) => {
                let bytes: usize = events.iter().map(|e| e.patch.len()).sum();
                if events.len() < page && bytes < page_bytes {
                    self.catching_up = false;
                }
                let last = events.last()?.id;
                self.ctx
                    .metrics
                    .sse_catchup_events
                    .fetch_add(events.len() as u64, Relaxed);
                if self.subtree.is_some() {
                    return self.catch_up_subtree(cursor, events).await;
                }
                self.cursor = Some(last.0);
                Some(events.into_iter().map(Message::Patch).collect())
            }
            Ok(ReadAfter::BeforeHorizon { .. }) => self.snapshot().map(|m| vec![m]),
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// What a live event `p` that follows the cursor means to this feed;
    /// moves the cursor past it unless the log must serve it.
    fn live(&mut self, p: Arc<crate::hub::Published>) -> Live {
        let Some(sub) = &mut self.subtree else {
            self.cursor = Some(p.event.id.0);
            return Live::Send(p);
        };
        let versions = sub.versions.versions();
        // The document before `p` is the one as of the cursor: nothing lies
        // between `p.prev` and `p`.
        let before = match (&sub.base, p.prev) {
            (_, None) => None,
            (Some((at, doc)), Some(_)) if Some(*at) == self.cursor => Some(doc.clone()),
            (_, Some(prev)) => match versions.get(prev) {
                Some(doc) => Some(doc),
                None => return Live::FromLog,
            },
        };
        let Some(after) = versions.get(p.event.id) else {
            return Live::FromLog;
        };
        let seen = subtree::rewrite(&p, &sub.pointer, before.as_deref(), &after);
        sub.base = Some((p.event.id.0, after));
        self.cursor = Some(p.event.id.0);
        match seen {
            Some(p) => Live::Send(p),
            None => Live::Skip,
        }
    }

    /// A page of catch-up for a subtree feed: `events` (after `cursor`)
    /// replayed onto the document as of the cursor, each rewritten, those
    /// that do not touch the subtree left out. Moves the cursor to the
    /// page's last event.
    async fn catch_up_subtree(&mut self, cursor: Ulid, events: Vec<Event>) -> Option<Vec<Message>> {
        let mut base = match self.subtree.as_mut().and_then(|s| s.base.take()) {
            Some((at, doc)) if at == cursor => doc,
            _ => match self
                .ctx
                .store
                .document_at(&self.id, Point::Id(cursor))
                .await
            {
                Ok(At::Found { doc, .. }) => doc,
                Ok(At::NotYet) => Arc::new(Value::Null),
                // Compacted meanwhile: start again from the head.
                Ok(At::Compacted { .. }) => return self.snapshot().map(|m| vec![m]),
                Err(e) => {
                    self.fail(e);
                    return None;
                }
            },
        };
        let sub = self.subtree.as_mut()?;
        let mut out = Vec::new();
        for e in events {
            let ops = match serde_json::from_slice::<json_patch::Patch>(&e.patch) {
                Ok(ops) => ops,
                Err(_) => {
                    self.fail(StoreError::Corrupt {
                        key: format!("patch of event {} of {}", e.id, self.id),
                    });
                    return None;
                }
            };
            let before = sub.pointer.get(&base).cloned();
            let doc = Arc::make_mut(&mut base);
            if let Err(source) = crate::diff::apply_or_discard(doc, &ops.0) {
                self.fail(StoreError::BadPatch { at: e.id, source });
                return None;
            }
            let patch = subtree::project(
                &sub.pointer,
                before.as_ref(),
                &ops.0,
                sub.pointer.get(&base),
            );
            if let Some(patch) = patch {
                out.push(Message::Patch(Event {
                    id: e.id,
                    // Serializing a patch cannot fail.
                    patch: Bytes::from(serde_json::to_vec(&patch).expect("a patch serializes")),
                }));
            }
            self.cursor = Some(e.id.0);
        }
        sub.base = self.cursor.map(|c| (c, base));
        Some(out)
    }

    /// Ends the feed on a storage error (logged; a deleted resource is not
    /// an error).
    fn fail(&mut self, e: StoreError) -> Vec<Message> {
        if !matches!(e, StoreError::NoSuchResource(_)) {
            tracing::error!(resource = %self.id, error = %e, "feed ends on a storage error");
        }
        self.done = true;
        Vec::new()
    }
}
