//! Live fan-out: one bounded broadcast channel per resource carrying events
//! that are already durable, upstream-error notices, and the end of the
//! resource.
//!
//! Each event travels with the id of the event before it (pushpin's
//! prev-id), so a subscriber can tell whether it follows on from what it
//! sent. Frames are encoded once per event and [`Encoding`] and shared by
//! every subscriber. The hub never waits: a subscriber that falls behind the
//! channel's capacity sees `Lagged` and must go back to the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::broadcast;

use serde_json::Value;

use crate::feed::subtree::{Projections, Versions};
use crate::model::{Event, EventId, ResourceId};

/// An upstream failure as shown to clients (`event: error`, `last_error`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamError {
    /// Stable snake_case code, e.g. `upstream_status`.
    pub code: String,
    pub message: String,
    /// The upstream's HTTP status, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// When it happened, Unix milliseconds.
    #[serde(skip)]
    pub time_ms: u64,
}

/// The wire encodings of an event, each computed once per event and shared
/// by every subscriber that uses it. A new encoding is one more variant
/// here; `Published`'s frame cache is sized from [`Encoding::COUNT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// SSE `event: patch` on `/v1/.../events`.
    SseNative,
    /// SSE `event: patch` on the streamdata route (ASCII-only JSON).
    SseStreamdata,
    /// The JSON message `{"type":"patch","id":…,"data":[…]}` of long-poll,
    /// NDJSON and WebSocket.
    Json,
}

impl Encoding {
    /// Number of variants.
    pub const COUNT: usize = 3;

    fn slot(self) -> usize {
        self as usize
    }
}

/// A durable event as published, with its encoded frames cached: one slot
/// per [`Encoding`], each filled by the first subscriber that needs it.
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    /// The resource's previous event id; `None` for its first event.
    pub prev: Option<EventId>,
    frames: [OnceLock<Bytes>; Encoding::COUNT],
    /// The event as seen by subtree (`?path=`) subscribers, once per
    /// pointer.
    pub(crate) subtrees: Projections,
}

impl Published {
    pub fn new(event: Event, prev: Option<EventId>) -> Published {
        Published {
            event,
            prev,
            frames: Default::default(),
            subtrees: Projections::default(),
        }
    }

    /// The frame of `encoding`, encoded by `encode` on first use.
    pub fn frame(&self, encoding: Encoding, encode: impl FnOnce(&Event) -> Bytes) -> Bytes {
        self.frames[encoding.slot()]
            .get_or_init(|| encode(&self.event))
            .clone()
    }
}

#[derive(Clone, Debug)]
pub enum Notice {
    Event(Arc<Published>),
    Error(Arc<UpstreamError>),
    /// The resource was deleted: streams end.
    Deleted,
}

/// Per-resource channels. Channels are created on first use and removed
/// when the resource is deleted.
pub struct Hub {
    capacity: usize,
    channels: Mutex<HashMap<ResourceId, Channel>>,
}

/// One resource's channel, and its newest documents while it has subtree
/// subscribers.
struct Channel {
    tx: broadcast::Sender<Notice>,
    versions: Arc<Versions>,
}

impl Hub {
    pub fn new(capacity: usize) -> Hub {
        Hub {
            capacity: capacity.max(1),
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn channel<T>(&self, id: &ResourceId, f: impl FnOnce(&Channel) -> T) -> T {
        let mut ch = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        f(ch.entry(id.clone()).or_insert_with(|| Channel {
            tx: broadcast::channel(self.capacity).0,
            versions: Arc::default(),
        }))
    }

    fn sender(&self, id: &ResourceId) -> broadcast::Sender<Notice> {
        self.channel(id, |c| c.tx.clone())
    }

    /// The newest documents of `id`, kept while a subtree feed watches
    /// them (`Versions::watch`).
    pub fn versions(&self, id: &ResourceId) -> Arc<Versions> {
        self.channel(id, |c| c.versions.clone())
    }

    pub fn subscribe(&self, id: &ResourceId) -> broadcast::Receiver<Notice> {
        self.sender(id).subscribe()
    }

    /// Publishes a durable event. Never blocks.
    pub fn publish(&self, id: &ResourceId, event: Event, prev: Option<EventId>) {
        let _ = self
            .sender(id)
            .send(Notice::Event(Arc::new(Published::new(event, prev))));
    }

    /// [`Hub::publish`] with the document the event produced (`None` if
    /// unknown), kept for subtree subscribers if there are any. Never
    /// blocks.
    pub fn publish_version(
        &self,
        id: &ResourceId,
        event: Event,
        prev: Option<EventId>,
        doc: Option<Arc<Value>>,
    ) {
        let (tx, versions) = self.channel(id, |c| (c.tx.clone(), c.versions.clone()));
        if let Some(doc) = &doc {
            versions.record(event.id, doc);
        }
        let _ = tx.send(Notice::Event(Arc::new(Published::new(event, prev))));
    }

    pub fn publish_error(&self, id: &ResourceId, err: UpstreamError) {
        let _ = self.sender(id).send(Notice::Error(Arc::new(err)));
    }

    /// Ends every stream of `id` and forgets its channel.
    pub fn close(&self, id: &ResourceId) {
        let tx = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(c) = tx {
            let _ = c.tx.send(Notice::Deleted);
        }
    }

    /// Open subscriptions to `id`.
    pub fn subscribers(&self, id: &ResourceId) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map_or(0, |c| c.tx.receiver_count())
    }

    /// Open subscriptions to all resources.
    pub fn total_subscribers(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|c| c.tx.receiver_count())
            .sum()
    }
}
