//! Every name the JetStream backend uses, in one place: streams, the KV
//! bucket, subjects, keys and message ids. All start with the configured
//! prefix, so deployments (and tests) can share one NATS cluster.
//!
//! - stream `<P>_LOG`, subjects `<P>.log.>`: per resource (its `rkey`, a
//!   number never reused) the events on `<P>.log.<rkey>.e`, the append
//!   snapshots on `.s`, compaction's horizon snapshots on `.h`, and the
//!   chunks of payloads too large for one message on `.b`;
//! - KV bucket `<P>_RES`: resource records `r.<hex of the id>`, delete
//!   tombstones `t.<rkey>`, the rkey allocator `rkey`, the probe `probe`,
//!   webhook records `w.<hex of the id>` and their cursors
//!   `c.<hex of the webhook>.<hex of the resource>`.

use crate::model::ResourceId;

/// The names of one deployment (one prefix).
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    prefix: String,
}

/// The four subjects of one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Events: one message per event, in id order.
    Event,
    /// Snapshots written by appends, every `snapshot_every` events.
    Snapshot,
    /// Snapshots written by compaction at the new horizon.
    Horizon,
    /// Chunks of an event or snapshot payload too large for one message.
    Blob,
}

impl Kind {
    fn token(self) -> &'static str {
        match self {
            Kind::Event => "e",
            Kind::Snapshot => "s",
            Kind::Horizon => "h",
            Kind::Blob => "b",
        }
    }
}

impl Layout {
    /// The layout under `prefix` (validated by the config).
    pub(crate) fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream of every resource's log.
    pub(crate) fn log_stream(&self) -> String {
        format!("{}_LOG", self.prefix)
    }

    /// The subjects of [`Layout::log_stream`].
    pub(crate) fn log_subjects(&self) -> String {
        format!("{}.log.>", self.prefix)
    }

    /// One subject of one resource.
    pub(crate) fn subject(&self, rkey: u64, kind: Kind) -> String {
        format!("{}.log.{rkey}.{}", self.prefix, kind.token())
    }

    /// Every subject of one resource (for its purge on delete).
    pub(crate) fn all_of(&self, rkey: u64) -> String {
        format!("{}.log.{rkey}.>", self.prefix)
    }

    /// The KV bucket of resources.
    pub(crate) fn bucket(&self) -> String {
        format!("{}_RES", self.prefix)
    }

    /// The KV key of a resource record. Ids may contain `.` (and `..`),
    /// which KV keys treat as separators, so the key is the id in hex.
    pub(crate) fn resource_key(id: &ResourceId) -> String {
        let mut k = String::with_capacity(2 + 2 * id.as_str().len());
        k.push_str("r.");
        for b in id.as_str().bytes() {
            k.push_str(&format!("{b:02x}"));
        }
        k
    }

    /// The KV key of a webhook record: `w.<hex of its id>`.
    pub(crate) fn webhook_key(id: &ResourceId) -> String {
        format!("w.{}", &Self::resource_key(id)[2..])
    }

    /// The KV key of webhook `webhook`'s cursor in `resource`:
    /// `c.<hex of the webhook>.<hex of the resource>` (hex has no `.`, so
    /// `c.<hex>.>` is exactly one webhook's cursors).
    pub(crate) fn cursor_key(webhook: &ResourceId, resource: &ResourceId) -> String {
        format!(
            "c.{}.{}",
            &Self::resource_key(webhook)[2..],
            &Self::resource_key(resource)[2..]
        )
    }

    /// The (webhook, resource) of a [`Layout::cursor_key`].
    pub(crate) fn ids_of_cursor_key(key: &str) -> Option<(ResourceId, ResourceId)> {
        let (w, r) = key.strip_prefix("c.")?.split_once('.')?;
        Some((
            Self::id_of_key(&format!("r.{w}"))?,
            Self::id_of_key(&format!("r.{r}"))?,
        ))
    }

    /// The resource id of a [`Layout::resource_key`].
    pub(crate) fn id_of_key(key: &str) -> Option<ResourceId> {
        let hex = key.strip_prefix("r.")?;
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
        ResourceId::new(std::str::from_utf8(&bytes?).ok()?).ok()
    }

    /// The KV key of a delete in progress (its purge not yet finished).
    pub(crate) fn tombstone_key(rkey: u64) -> String {
        format!("t.{rkey}")
    }

    /// The KV key whose revisions allocate rkeys: every put of it gets a
    /// new, higher revision (the bucket stream's sequence).
    pub(crate) const RKEY_KEY: &'static str = "rkey";

    /// The KV key `Storage::probe` writes.
    pub(crate) const PROBE_KEY: &'static str = "probe";

    /// The stream subject of a KV key (for reads from the stream leader).
    pub(crate) fn kv_subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket())
    }

    /// The `Nats-Msg-Id` of one message: unique per resource, kind and
    /// event id, so that a retried publish is deduplicated, and never
    /// merged with another message (the ack's `duplicate` is checked).
    /// The append's nonce is part of it: a new process that reuses an id
    /// after a crash (the event never landed) is not deduplicated into
    /// the dead one's message.
    pub(crate) fn msg_id(rkey: u64, kind: Kind, id: ulid::Ulid, nonce: u64, part: usize) -> String {
        format!("{rkey}.{}.{id}.{nonce:016x}.{part}", kind.token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_keys_round_trip_and_are_valid_kv_keys() {
        for s in ["a", "a.b", "..x", "A-_.9", &"z".repeat(128)] {
            let id = ResourceId::new(s).unwrap();
            let k = Layout::resource_key(&id);
            assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
            assert_eq!(Layout::id_of_key(&k), Some(id));
        }
        assert_eq!(Layout::id_of_key("r.6"), None);
        assert_eq!(Layout::id_of_key("t.1"), None);
    }
}
