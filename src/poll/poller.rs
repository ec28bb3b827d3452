//! The poll loop of one resource: fetch (conditionally), append what
//! changed, publish it once durable, report failures, back off.
//!
//! The loop never waits on a client: publishing to the hub cannot block.
//! It is cancelled only between steps (while fetching or sleeping), never
//! inside an append. A poll-now trigger (`POST …/poll`) ends the sleep
//! early: triggers coalesce into at most one queued poll after the one in
//! flight, a triggered poll starts no sooner than [`TRIGGER_SPACING`] after
//! the previous poll started, and it resets the back-off. The parse, diff and encoding of a large document run
//! on the blocking pool (`crate::cpu`), one at a time per resource, so a
//! costly document delays only its own loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::fetch::{Fetched, Fetcher, Validators};
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
        loop {
            let started = Instant::now();
            let fetched = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.fetcher.fetch(&self.spec.url, &self.spec.headers, &validators) => r,
            };
            let delay = match fetched {
                Ok(Fetched::NotModified) => {
                    Metrics::inc(&self.metrics.polls_not_modified);
                    self.healthy();
                    backoff.reset();
                    interval
                }
                Ok(Fetched::Document { doc, validators: v }) => {
                    match ingest(&self.store, &self.hub, &self.metrics, &id, doc).await {
                        Ok(Some(_)) => {
                            Metrics::inc(&self.metrics.polls_changed);
                            validators = v;
                            self.healthy();
                            backoff.reset();
                            interval
                        }
                        Ok(None) => {
                            Metrics::inc(&self.metrics.polls_unchanged);
                            validators = v;
                            self.healthy();
                            backoff.reset();
                            interval
                        }
                        Err(StoreError::NoSuchResource(_)) => return,
                        Err(StoreError::Quarantined { .. }) => return,
                        Err(StoreError::TooDeep(e)) => {
                            // The fetcher checks this first; kept for a
                            // bound that differs (never stored either way).
                            Metrics::inc(&self.metrics.polls_failed);
                            self.failed(UpstreamError {
                                code: "too_deep".into(),
                                message: e.to_string(),
                                status: None,
                                time_ms: now_ms(),
                            });
                            backoff.next_delay()
                        }
                        Err(e) => {
                            // Keep the old validators: the next poll must
                            // fetch the body again.
                            Metrics::inc(&self.metrics.append_errors);
                            tracing::error!(resource = %id, error = %e, "append failed");
                            self.failed(UpstreamError {
                                code: "storage_error".into(),
                                message: "the change could not be stored; retrying".into(),
                                status: None,
                                time_ms: now_ms(),
                            });
                            backoff.next_delay()
                        }
                    }
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.polls_failed);
                    tracing::info!(resource = %id, code = e.code(), error = %e, "poll failed");
                    self.failed(UpstreamError {
                        code: e.code().into(),
                        message: e.to_string(),
                        status: e.status(),
                        time_ms: now_ms(),
                    });
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

    fn healthy(&self) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.last_polled_ms = Some(now_ms());
        s.last_error = None;
    }

    fn failed(&self, err: UpstreamError) {
        {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.last_polled_ms = Some(err.time_ms);
            s.last_error = Some(err.clone());
        }
        self.hub.publish_error(&self.spec.id, err);
    }
}
