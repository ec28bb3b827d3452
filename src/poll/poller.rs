//! The poll loop of one resource: fetch (conditionally), append what
//! changed, publish it once durable, report failures, back off.
//!
//! The loop never waits on a client: publishing to the hub cannot block.
//! It is cancelled only between steps (while fetching or sleeping), never
//! inside an append. A poll-now trigger (`POST …/poll`) ends the sleep
//! early: triggers coalesce into at most one queued poll after the one in
//! flight, a triggered poll starts no sooner than [`TRIGGER_SPACING`] after
//! the previous poll started, and it resets the back-off. A paginated
//! resource's poll fetches every page (`poll::pages`), showing the page in
//! flight in its status (`polling`); every verdict leaves its figures
//! (`last_poll`). The parse, diff and encoding of a large document run
//! on the blocking pool (`crate::cpu`), one at a time per resource, so a
//! costly document delays only its own loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::fetch::{FetchError, Fetched, Fetcher, Validators};
use super::pages::{self, PageCache, Progress};
use crate::hub::{Hub, UpstreamError};
use crate::metrics::Metrics;
use crate::model::{now_ms, EventId, ResourceId, ResourceSpec};
use crate::store::{Edit, Edited, Store, StoreError};

/// Appends a new version of `id` and, once it is durable, publishes it:
/// what happens to every fetched document, and to documents handed over by
/// [`crate::registry::Registry::ingest`], so that both take one path.
/// `None` when the document did not change.
pub(crate) async fn ingest(
    store: &Store,
    hub: &Hub,
    metrics: &Metrics,
    id: &ResourceId,
    doc: Value,
) -> Result<Option<EventId>, StoreError> {
    let Some((event, prev)) = store.append(id, doc, now_ms()).await? else {
        return Ok(None);
    };
    Metrics::inc(&metrics.events_appended);
    let event_id = event.id;
    hub.publish_version(id, event, prev, produced(store, id, event_id));
    Ok(Some(event_id))
}

/// [`ingest`] of what `edit` makes of the head, if `expected` (when given)
/// is still the newest event: the same append, metrics and publish, for
/// documents their owner pushes.
pub(crate) async fn ingest_edit(
    store: &Store,
    hub: &Hub,
    metrics: &Metrics,
    id: &ResourceId,
    expected: Option<EventId>,
    heavy: bool,
    edit: Edit,
) -> Result<Edited, StoreError> {
    let edited = store
        .append_edit(id, expected, heavy, edit, now_ms())
        .await?;
    if let Edited::Appended(event, prev) = &edited {
        Metrics::inc(&metrics.events_appended);
        let doc = produced(store, id, event.id);
        hub.publish_version(id, event.clone(), *prev, doc);
    }
    Ok(edited)
}

/// The document event `event` produced, while it is still the head (the
/// store's own `Arc`: no copy). Subtree feeds need it; when another append
/// got in first, they read the log instead.
fn produced(store: &Store, id: &ResourceId, event: EventId) -> Option<Arc<Value>> {
    match store.head(id) {
        Ok(Some(head)) if head.id == event => Some(head.doc),
        _ => None,
    }
}

/// The least time from the start of one poll to the start of a poll that a
/// trigger asked for: the most a flood of `POST …/poll` makes of one
/// upstream is one poll per spacing (the minimum interval).
pub const TRIGGER_SPACING: Duration = ResourceSpec::MIN_INTERVAL;

/// Longest back-off after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What clients see of a resource's polling.
#[derive(Clone, Debug, Default)]
pub struct PollStatus {
    /// Unix ms of the last poll that reached a verdict (success or failure).
    pub last_polled_ms: Option<u64>,
    /// Set while the upstream is failing; cleared by the next success.
    pub last_error: Option<UpstreamError>,
    /// The last poll that reached a verdict, in figures.
    pub last_poll: Option<LastPoll>,
    /// A paginated poll under way: the page being fetched now.
    pub polling: Option<Polling>,
}

/// One finished poll, in figures (the resource view's `last_poll`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastPoll {
    /// `changed`, `unchanged`, `not_modified` or `failed`.
    pub outcome: &'static str,
    /// Pages fetched (1 for an unpaginated resource); for a failed poll,
    /// up to and including the failing one.
    pub pages: u32,
    /// Of those, pages that answered 304.
    pub not_modified: u32,
    /// Items in the document: the collection's length for a paginated
    /// resource, else the document's length if it is an array, else 1
    /// (0 for a failed poll that had none yet).
    pub items: u64,
    /// Body bytes received (a 304: none).
    pub bytes: u64,
    /// From the first request to the verdict (the append included).
    pub duration_ms: u64,
}

/// A paginated poll under way (the resource view's `polling`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Polling {
    /// Unix ms when the poll started.
    pub started_ms: u64,
    /// What is being fetched now.
    pub progress: Progress,
}

/// One poll's fetch: what it found, the pages to keep once its document
/// is stored (a paginated resource), and its figures.
struct Got {
    fetched: Fetched,
    keep: Option<PageCache>,
    figures: Figures,
}

/// A poll's figures so far (see [`LastPoll`]).
#[derive(Clone, Copy, Default)]
struct Figures {
    pages: u32,
    not_modified: u32,
    /// Known for a paginated resource; else counted from the document.
    items: Option<u64>,
    bytes: u64,
}

pub struct Poller {
    pub spec: ResourceSpec,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub fetcher: Fetcher,
    pub status: Arc<Mutex<PollStatus>>,
    /// Poll now: ends the sleep. `Notify` keeps at most one permit, so any
    /// number of triggers during a poll make one more poll, not many.
    pub trigger: Arc<tokio::sync::Notify>,
}

impl Poller {
    pub async fn run(self, cancel: CancellationToken) {
        let id = self.spec.id.clone();
        let interval = self.spec.interval;
        let mut backoff = Backoff::new(interval, MAX_BACKOFF.max(interval));
        let mut validators = Validators::default();
        let mut cache = PageCache::default();
        // Items of the last stored document, for a 304's figures.
        let mut items = 0u64;
        // The status outlives a poller restarted with new settings: a poll
        // the old one left unfinished is not under way any more.
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .polling = None;
        loop {
            let started = Instant::now();
            let started_ms = now_ms();
            let fetched = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.fetch(&validators, &cache, started_ms) => r,
            };
            let last_poll = |outcome, f: Figures, items| LastPoll {
                outcome,
                pages: f.pages,
                not_modified: f.not_modified,
                items,
                bytes: f.bytes,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            };
            let delay = match fetched {
                Ok(Got {
                    fetched: Fetched::NotModified,
                    figures,
                    ..
                }) => {
                    Metrics::inc(&self.metrics.polls_not_modified);
                    self.healthy(last_poll("not_modified", figures, items));
                    backoff.reset();
                    interval
                }
                Ok(Got {
                    fetched: Fetched::Document { doc, validators: v },
                    keep,
                    figures,
                }) => {
                    let n = figures
                        .items
                        .unwrap_or_else(|| doc.as_array().map_or(1, |a| a.len() as u64));
                    match ingest(&self.store, &self.hub, &self.metrics, &id, doc).await {
                        Ok(appended) => {
                            let outcome = if appended.is_some() {
                                Metrics::inc(&self.metrics.polls_changed);
                                "changed"
                            } else {
                                Metrics::inc(&self.metrics.polls_unchanged);
                                "unchanged"
                            };
                            // What this poll's requests were conditional on
                            // changes only once its document is stored.
                            match keep {
                                Some(pages) => cache = pages,
                                None => validators = v,
                            }
                            items = n;
                            self.healthy(last_poll(outcome, figures, n));
                            backoff.reset();
                            interval
                        }
                        Err(StoreError::NoSuchResource(_)) => return,
                        Err(StoreError::Quarantined { .. }) => return,
                        Err(StoreError::TooDeep(e)) => {
                            // The fetcher checks this first; kept for a
                            // bound that differs (never stored either way).
                            Metrics::inc(&self.metrics.polls_failed);
                            self.failed(
                                UpstreamError {
                                    code: "too_deep".into(),
                                    message: e.to_string(),
                                    status: None,
                                    time_ms: now_ms(),
                                },
                                last_poll("failed", figures, n),
                            );
                            backoff.next_delay()
                        }
                        Err(e) => {
                            // Keep the old validators: the next poll must
                            // fetch the body again.
                            Metrics::inc(&self.metrics.append_errors);
                            tracing::error!(resource = %id, error = %e, "append failed");
                            self.failed(
                                UpstreamError {
                                    code: "storage_error".into(),
                                    message: "the change could not be stored; retrying".into(),
                                    status: None,
                                    time_ms: now_ms(),
                                },
                                last_poll("failed", figures, n),
                            );
                            backoff.next_delay()
                        }
                    }
                }
                Err((e, figures)) => {
                    Metrics::inc(&self.metrics.polls_failed);
                    tracing::info!(resource = %id, code = e.code(), error = %e, "poll failed");
                    self.failed(
                        UpstreamError {
                            code: e.code().into(),
                            message: e.to_string(),
                            status: e.status(),
                            time_ms: now_ms(),
                        },
                        last_poll("failed", figures, figures.items.unwrap_or(0)),
                    );
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(started + delay) => {}
                _ = self.trigger.notified() => {
                    // Asked to poll now: the back-off starts over, and the
                    // poll waits out the spacing.
                    backoff.reset();
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(started + TRIGGER_SPACING) => {}
                    }
                    // A trigger during the spacing is served by the poll
                    // about to start: take its permit.
                    let _ = self.trigger.notified().now_or_never();
                }
            }
        }
    }

    /// One poll's fetch: one conditional GET, or every page of a paginated
    /// resource (`poll::pages`, its progress shown in `polling`). A
    /// failure comes with the figures reached so far.
    async fn fetch(
        &self,
        validators: &Validators,
        cache: &PageCache,
        started_ms: u64,
    ) -> Result<Got, (FetchError, Figures)> {
        let Some(p) = &self.spec.pages else {
            let one = Figures {
                pages: 1,
                ..Figures::default()
            };
            let a = self
                .fetcher
                .fetch_page(&self.spec.url, &self.spec.headers, validators, usize::MAX)
                .await
                .map_err(|e| (e, one))?;
            let not_modified = matches!(a.fetched, Fetched::NotModified);
            Metrics::inc(if not_modified {
                &self.metrics.pages_not_modified
            } else {
                &self.metrics.pages_fetched
            });
            return Ok(Got {
                fetched: a.fetched,
                keep: None,
                figures: Figures {
                    not_modified: u32::from(not_modified),
                    bytes: a.bytes as u64,
                    ..one
                },
            });
        };
        let mut report = |now: &Progress| {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.polling = Some(Polling {
                started_ms,
                progress: now.clone(),
            });
        };
        let r = pages::collect(
            &self.fetcher,
            &self.spec,
            p,
            cache,
            &self.metrics,
            &mut report,
        )
        .await;
        let progress = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .polling
            .take()
            .map(|p| p.progress);
        match r {
            Ok(c) => Ok(Got {
                fetched: c.fetched,
                keep: Some(c.cache),
                figures: Figures {
                    pages: c.pages,
                    not_modified: c.not_modified,
                    items: Some(c.items),
                    bytes: c.bytes,
                },
            }),
            Err(e) => {
                let f = progress.map_or(Figures::default(), |p| Figures {
                    pages: p.page,
                    not_modified: p.not_modified,
                    items: Some(p.items),
                    bytes: p.bytes,
                });
                Err((e, f))
            }
        }
    }

    fn healthy(&self, poll: LastPoll) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.last_polled_ms = Some(now_ms());
        s.last_error = None;
        s.last_poll = Some(poll);
    }

    fn failed(&self, err: UpstreamError, poll: LastPoll) {
        self.metrics.poll_failed(&err.code);
        {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.last_polled_ms = Some(err.time_ms);
            s.last_error = Some(err.clone());
            s.last_poll = Some(poll);
        }
        self.hub.publish_error(&self.spec.id, err);
    }
}
