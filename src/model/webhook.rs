//! Webhook settings and cursors as every layer sees them (the disk form is
//! `log::webhooks`'s, the wire form `api::webhooks`'s). Pure.

use std::collections::BTreeMap;

use super::{EventId, Point, ResourceId};

/// Which resources a webhook follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resources {
    /// `["*"]`: every resource, including those created later.
    All,
    /// The named resources, sorted, without duplicates.
    List(Vec<ResourceId>),
}

impl Resources {
    /// Whether `id` is one of them.
    pub fn includes(&self, id: &ResourceId) -> bool {
        match self {
            Resources::All => true,
            Resources::List(l) => l.binary_search(id).is_ok(),
        }
    }
}

/// Where a webhook starts on a resource it has no cursor for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// No `from`: a snapshot, then patches.
    Fresh,
    /// `from: T`: the patches after T (a snapshot where T is before the
    /// horizon).
    Since(Point),
    /// `from: "now"`: resources that existed at creation got a cursor at
    /// their head then; a resource created later starts with its first
    /// version, as a snapshot.
    Now,
}

/// A webhook's settings, validated (`webhook::spec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSpec {
    /// `[A-Za-z0-9._-]{1,128}`, the rules of resource ids.
    pub id: ResourceId,
    /// Where messages are POSTed; it passed the upstream guard.
    pub url: String,
    /// The resources it follows.
    pub resources: Resources,
    /// A JSON Pointer (RFC 6901) to the subtree followed; stored, applied
    /// once the feed takes a path.
    pub path: Option<String>,
    /// Where it starts on a resource it has no cursor for.
    pub from: Start,
    /// Pending patches of a resource are sent as one.
    pub coalesce: bool,
    /// Extra request headers (validated: no hop-by-hop, no `webhook-*`).
    pub headers: BTreeMap<String, String>,
    /// `whsec_` + base64 of the key.
    pub secret: String,
}

/// A webhook as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookRecord {
    /// Its settings.
    pub spec: WebhookSpec,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Set while the webhook is disabled: why (a 410, retries exhausted).
    pub disabled: Option<String>,
}

/// One webhook's position in one resource's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// Every message up to this event got a 2xx: delivery resumes after it
    /// (with a snapshot if it is no longer retained).
    Acked(EventId),
    /// Moved back by a replay: the patches after this point (a snapshot
    /// where it is before the horizon).
    Replay(Point),
}
