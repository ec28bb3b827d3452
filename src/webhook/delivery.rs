//! One (webhook, resource) worker: reads the resource's feed from the
//! webhook's cursor, turns each snapshot and patch into a message, sends it
//! until a 2xx (retrying on the schedule), and only then moves the cursor,
//! durably. One message in flight; the next is read only after that.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;

use super::{lock, Attempt, Hook, Manager};
use crate::feed::subtree::Pointer;
use crate::feed::{Feed, Message, Resume};
use crate::metrics::Metrics;
use crate::model::{now_ms, Cursor, EventId, Point, ResourceId, Start};
use crate::store::At;

/// Most patches coalesced into one message.
const MAX_COALESCE: usize = 10_000;
/// Most bytes of a receiver's answer read (then dropped) per attempt.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One message, built once: its retries send the same body.
pub(crate) struct Outgoing {
    /// `webhook-id`.
    msg_id: String,
    /// The event it brings the receiver to.
    event: EventId,
    body: Bytes,
}

/// How sending one message ended.
enum Sent {
    /// A 2xx.
    Delivered,
    /// The worker is to stop: shutdown, delete, replay, or the webhook was
    /// disabled.
    Stopped,
}

pub(crate) struct Worker {
    mgr: Arc<Manager>,
    hook: Arc<Hook>,
    webhook: ResourceId,
    resource: ResourceId,
    token: CancellationToken,
    /// The event id whose document the next patch applies to.
    prev: Option<EventId>,
    /// Messages read from the feed and not yet sent (at most one batch).
    queue: VecDeque<Message>,
    /// The stored cursor when the worker was started.
    cursor: Option<Cursor>,
}

impl Worker {
    pub(crate) fn new(
        mgr: Arc<Manager>,
        hook: Arc<Hook>,
        resource: ResourceId,
        cursor: Option<Cursor>,
        token: CancellationToken,
    ) -> Worker {
        Worker {
            cursor,
            webhook: hook.id(),
            mgr,
            hook,
            resource,
            token,
            prev: None,
            queue: VecDeque::new(),
        }
    }

    /// Where to start: the stored cursor, else the webhook's `from`; and
    /// the `prev` of the first patch.
    async fn start(&self) -> Result<(Resume, Option<EventId>), crate::store::StoreError> {
        let cursor = self.cursor;
        let from = lock(&self.hook.record).spec.from;
        let since = match (cursor, from) {
            (Some(Cursor::Acked(e)), _) => return Ok((Resume::LastEventId(e.0), Some(e))),
            (Some(Cursor::Replay(p)), _) | (None, Start::Since(p)) => p,
            (None, Start::Fresh | Start::Now) => return Ok((Resume::Fresh, None)),
        };
        // The first patch after `since` applies to the newest event at or
        // before it.
        let prev = match self.mgr.store.document_at(&self.resource, since).await? {
            At::Found { id, .. } => Some(id),
            At::NotYet | At::Compacted { .. } => None,
        };
        Ok((Resume::Since(since), prev))
    }

    /// The one place a webhook's feed is made: with the webhook's `path`,
    /// the feed of that subtree, so the messages, `prev` (the previous
    /// message sent) and the coalesced patches follow it.
    fn open_feed(&self, resume: Resume) -> Feed {
        let rx = self.mgr.hub.subscribe(&self.resource);
        let mut ctx = self.mgr.feed.clone();
        ctx.shutdown = self.token.clone();
        let feed = Feed::new(ctx, self.resource.clone(), rx, resume, None);
        match self.pointer() {
            Some(p) => feed.with_subtree(p, &self.mgr.hub.versions(&self.resource)),
            None => feed,
        }
    }

    /// The webhook's `path`, parsed (it was validated when the webhook was
    /// made; `None` also for `""`, the whole document).
    fn pointer(&self) -> Option<Pointer> {
        let path = lock(&self.hook.record).spec.path.clone()?;
        Pointer::parse(&path).ok().flatten()
    }

    pub(crate) async fn run(mut self) {
        let (resume, prev) = match self.start().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(webhook = %self.webhook, resource = %self.resource, error = %e, "webhook worker cannot read its cursor");
                return;
            }
        };
        self.prev = prev;
        let mut feed = self.open_feed(resume);
        let coalesce = lock(&self.hook.record).spec.coalesce;
        loop {
            let msg = match self.queue.pop_front() {
                Some(m) => m,
                None => match feed.next().await {
                    Some(batch) => {
                        self.queue.extend(batch);
                        continue;
                    }
                    // Shutdown, stopped, the resource deleted, or a storage
                    // error (logged by the feed).
                    None => return,
                },
            };
            let out = match msg {
                Message::Snapshot { id, json } => self.message("snapshot", id, None, &json),
                Message::Patch(e) if coalesce => match self.coalesced(&mut feed, e).await {
                    Some(out) => out,
                    None => continue,
                },
                Message::Patch(e) => self.message("patch", e.id, self.prev, &e.patch),
                Message::Live(p) if coalesce => {
                    match self.coalesced(&mut feed, p.event.clone()).await {
                        Some(out) => out,
                        None => continue,
                    }
                }
                Message::Live(p) => {
                    // The previous message sent: the event before this one
                    // without a path (the feed is gap-free), the last one
                    // that touched the subtree with one.
                    let prev = self.prev.or(p.prev);
                    self.message("patch", p.event.id, prev, &p.event.patch)
                }
                // Upstream errors are not events: nothing to deliver.
                Message::Error(_) | Message::KeepAlive => continue,
            };
            match self.send(&out).await {
                Sent::Delivered => {
                    self.prev = Some(out.event);
                    let stored = self
                        .mgr
                        .store
                        .set_cursor(
                            &self.webhook,
                            &self.resource,
                            Some(Cursor::Acked(out.event)),
                        )
                        .await;
                    if let Err(e) = stored {
                        // Not durable: stop rather than send what a crash
                        // would resend out of order. The manager restarts
                        // the worker from the stored cursor.
                        tracing::error!(webhook = %self.webhook, resource = %self.resource, error = %e, "could not store a webhook cursor");
                        return;
                    }
                }
                Sent::Stopped => return,
            }
        }
    }

    /// The body of a message: the feed's message plus `resource`, `time`
    /// (the event's) and `prev`, in that order.
    fn message(&self, kind: &str, id: EventId, prev: Option<EventId>, data: &[u8]) -> Outgoing {
        let id_s = id.to_string();
        let prev_s = prev.map(|p| p.to_string());
        let mut body = Vec::with_capacity(data.len() + 160);
        body.extend_from_slice(format!(r#"{{"type":"{kind}","id":"{id_s}","data":"#).as_bytes());
        body.extend_from_slice(data);
        // Resource ids and ULIDs need no JSON escaping.
        body.extend_from_slice(
            format!(
                r#","resource":"{}","time":"{}","prev":{}}}"#,
                self.resource,
                id.time_rfc3339(),
                prev_s
                    .as_deref()
                    .map_or("null".to_owned(), |p| format!("\"{p}\""))
            )
            .as_bytes(),
        );
        Outgoing {
            msg_id: super::sign::message_id(
                self.webhook.as_str(),
                self.resource.as_str(),
                kind,
                &id_s,
                prev_s.as_deref(),
            ),
            event: id,
            body: Bytes::from(body),
        }
    }

    /// `first` and every patch pending behind it (queued, or ready in the
    /// feed now), as one patch from `prev` to the newest. A snapshot
    /// among them ends the run (it is sent next). Falls back to `first`
    /// alone when the documents cannot be rebuilt.
    async fn coalesced(&mut self, feed: &mut Feed, first: crate::model::Event) -> Option<Outgoing> {
        let mut events = vec![first];
        'gather: while events.len() < MAX_COALESCE {
            while let Some(m) = self.queue.pop_front() {
                match m {
                    Message::Patch(e) => events.push(e),
                    Message::Live(p) => events.push(p.event.clone()),
                    Message::Error(_) | Message::KeepAlive => {}
                    snapshot @ Message::Snapshot { .. } => {
                        self.queue.push_front(snapshot);
                        break 'gather;
                    }
                }
                if events.len() >= MAX_COALESCE {
                    break 'gather;
                }
            }
            // What the feed has ready now, without waiting.
            match feed.next().now_or_never() {
                Some(Some(batch)) if !batch.is_empty() => self.queue.extend(batch),
                _ => break,
            }
        }
        if events.len() == 1 {
            let e = events.pop()?;
            return Some(self.message("patch", e.id, self.prev, &e.patch));
        }
        let last = events.last()?.id;
        match self.squash(&events).await {
            Some(patch) => Some(self.message("patch", last, self.prev, &patch)),
            None => {
                // Send them one by one.
                let mut rest = events.into_iter();
                let first = rest.next()?;
                for e in rest.rev() {
                    self.queue.push_front(Message::Patch(e));
                }
                Some(self.message("patch", first.id, self.prev, &first.patch))
            }
        }
    }

    /// One patch from the document at `prev` to the one after `events`,
    /// diffed within the diff's budget, off the async threads.
    async fn squash(&self, events: &[crate::model::Event]) -> Option<Vec<u8>> {
        let prev = self.prev?;
        let At::Found { id, doc } = self
            .mgr
            .store
            .document_at(&self.resource, Point::Id(prev.0))
            .await
            .ok()?
        else {
            return None;
        };
        if id != prev {
            return None;
        }
        let patches: Vec<Bytes> = events.iter().map(|e| e.patch.clone()).collect();
        // With a path, the events' patches are relative to the value at
        // the pointer (null where it does not exist), as the messages are.
        let start = match self.pointer() {
            Some(p) => p.get(&doc).cloned().unwrap_or(serde_json::Value::Null),
            None => (*doc).clone(),
        };
        tokio::task::spawn_blocking(move || {
            let mut doc = start.clone();
            for p in patches {
                let ops: json_patch::Patch = serde_json::from_slice(&p).ok()?;
                crate::diff::apply(&mut doc, &ops.0).ok()?;
            }
            let patch = crate::diff::diff_budgeted(&start, &doc).patch;
            serde_json::to_vec(&patch).ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// Sends `out` until a 2xx, on the retry schedule; disables the
    /// webhook on a 410 or once the schedule is exhausted.
    async fn send(&self, out: &Outgoing) -> Sent {
        let mut failed: u32 = 0;
        loop {
            if self.token.is_cancelled() {
                return Sent::Stopped;
            }
            let (status, retry_after, error, took) = tokio::select! {
                biased;
                _ = self.token.cancelled() => return Sent::Stopped,
                r = self.attempt(out) => r,
            };
            let attempt = failed + 1;
            let c = &self.mgr.counters;
            match (status, &error) {
                (Some(s), _) if (200..300).contains(&s) => Metrics::inc(&c.attempts_ok),
                (Some(_), _) => Metrics::inc(&c.attempts_status),
                (None, Some(e)) if e.starts_with("timeout") => Metrics::inc(&c.attempts_timeout),
                _ => Metrics::inc(&c.attempts_error),
            }
            self.hook.push_attempt(Attempt {
                resource: self.resource.clone(),
                event_id: out.event,
                attempt,
                time_ms: now_ms().saturating_sub(u64::try_from(took.as_millis()).unwrap_or(0)),
                status,
                error: error.clone(),
                duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            });
            if status.is_some_and(|s| (200..300).contains(&s)) {
                lock(&self.hook.retrying).remove(&self.resource);
                Metrics::inc(&c.delivered);
                return Sent::Delivered;
            }
            let what = match (status, &error) {
                (Some(s), _) => format!("status {s}"),
                (None, Some(e)) => e.clone(),
                (None, None) => "no answer".to_owned(),
            };
            if status == Some(410) {
                Metrics::inc(&c.abandoned);
                self.mgr
                    .disable(
                        &self.hook,
                        &self.token,
                        format!(
                            "the endpoint answered 410 Gone (message {} of {})",
                            out.event, self.resource
                        ),
                    )
                    .await;
                return Sent::Stopped;
            }
            failed += 1;
            let wait = self
                .mgr
                .settings
                .retry
                .wait(failed, retry_after, rand::random::<f64>());
            let Some(wait) = wait else {
                Metrics::inc(&c.abandoned);
                self.mgr
                    .disable(
                        &self.hook,
                        &self.token,
                        format!(
                            "retries exhausted: {failed} attempts of message {} of {} failed, the last with {what}",
                            out.event, self.resource
                        ),
                    )
                    .await;
                return Sent::Stopped;
            };
            lock(&self.hook.retrying).insert(self.resource.clone());
            tokio::select! {
                biased;
                _ = self.token.cancelled() => return Sent::Stopped,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt: waits for a slot (the webhook's, then the global one),
    /// signs with the current time, POSTs. Returns the status, the
    /// `Retry-After` asked for, an error without a status, and how long
    /// the request took.
    async fn attempt(
        &self,
        out: &Outgoing,
    ) -> (Option<u16>, Option<Duration>, Option<String>, Duration) {
        let _mine = self.hook.slots.acquire().await;
        let _all = self.mgr.in_flight.acquire().await;
        let began = tokio::time::Instant::now();
        let ts = now_ms() / 1000;
        let sig = self.hook.key.sign(&out.msg_id, ts, &out.body);
        let (url, headers) = {
            let r = lock(&self.hook.record);
            (r.spec.url.clone(), r.spec.headers.clone())
        };
        let mut req = self
            .mgr
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &out.msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let result = req.body(out.body.clone()).send().await;
        let answer = match result {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| super::schedule::parse_retry_after(v, now_ms()));
                // Read a bounded part of the answer, so the connection can
                // be reused; the rest is dropped with it.
                let mut read = 0usize;
                while read < MAX_ANSWER_BYTES {
                    match resp.chunk().await {
                        Ok(Some(c)) => read += c.len(),
                        _ => break,
                    }
                }
                (Some(status), retry_after, None)
            }
            Err(e) => {
                // Without the URL: it may carry credentials.
                let e = e.without_url();
                let what = if e.is_timeout() {
                    format!("timeout after {:?}", self.mgr.settings.timeout)
                } else if e.is_connect() {
                    format!("connection failed: {}", source_text(&e))
                } else {
                    format!("request failed: {}", source_text(&e))
                };
                (None, None, Some(what))
            }
        };
        (answer.0, answer.1, answer.2, began.elapsed())
    }
}

/// The innermost cause of an error, which says what happened (reqwest's
/// own text only says which step).
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
