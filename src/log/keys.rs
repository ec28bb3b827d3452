//! The key layout of the one sled tree, in one place.
//!
//! Every key starts with a one-byte tag. Resources get a numeric `rkey` when
//! created, never reused, so a deleted resource's data can be purged lazily
//! while a new resource of the same name starts clean. Numbers are big-endian
//! so that sled's byte order is numeric order, and an event id range scan
//! under one `rkey` is time order.
//!
//! | key                                   | value                               |
//! |---------------------------------------|-------------------------------------|
//! | `V`                                   | storage format version, u32 BE      |
//! | `Q`                                   | next rkey to allocate, u64 BE       |
//! | `R` resource-id bytes                 | resource record (`codec`)           |
//! | `E` rkey u64 BE, event ULID 16 bytes  | event: patch JSON (`codec`)         |
//! | `S` rkey u64 BE, event ULID 16 bytes  | snapshot: document after that event |
//! | `H` rkey u64 BE                       | horizon ULID; present once compacted|
//! | `D` rkey u64 BE                       | tombstone: deleted, purge pending   |

use ulid::Ulid;

use crate::model::{EventId, ResourceId};

pub(crate) const VERSION: &[u8] = b"V";
pub(crate) const NEXT_RKEY: &[u8] = b"Q";
pub(crate) const RESOURCE: u8 = b'R';
pub(crate) const EVENT: u8 = b'E';
pub(crate) const SNAPSHOT: u8 = b'S';
pub(crate) const HORIZON: u8 = b'H';
pub(crate) const TOMBSTONE: u8 = b'D';

/// Length of an event or snapshot key.
pub(crate) const ENTRY_KEY_LEN: usize = 1 + 8 + 16;

pub(crate) fn resource(id: &ResourceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.as_str().len());
    k.push(RESOURCE);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// Key of an event (`tag == EVENT`) or snapshot (`tag == SNAPSHOT`).
pub(crate) fn entry(tag: u8, rkey: u64, id: Ulid) -> [u8; ENTRY_KEY_LEN] {
    let mut k = [0u8; ENTRY_KEY_LEN];
    k[0] = tag;
    k[1..9].copy_from_slice(&rkey.to_be_bytes());
    k[9..].copy_from_slice(&id.to_bytes());
    k
}

/// The 9-byte prefix shared by every event (or snapshot) of one resource.
pub(crate) fn entry_prefix(tag: u8, rkey: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = tag;
    k[1..].copy_from_slice(&rkey.to_be_bytes());
    k
}

pub(crate) fn per_rkey(tag: u8, rkey: u64) -> [u8; 9] {
    entry_prefix(tag, rkey)
}

/// The event id in an event or snapshot key, if the key has that shape.
pub(crate) fn entry_id(key: &[u8]) -> Option<EventId> {
    let b: [u8; 16] = key.get(9..ENTRY_KEY_LEN)?.try_into().ok()?;
    (key.len() == ENTRY_KEY_LEN).then(|| EventId::from_bytes(b))
}

pub(crate) fn u64_value(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// The next ULID in key order, carrying from the random part into the
/// time (`Ulid::increment` refuses to): `Ulid(T, MAX) + 1 = Ulid(T + 1, 0)`.
/// `None` only past the very last ULID.
pub(crate) fn succ(u: Ulid) -> Option<Ulid> {
    u.0.checked_add(1).map(Ulid)
}

/// A key in readable form for errors and logs: `E/7/01J…` for an event or
/// snapshot key, `R<id>` for a resource record, escaped bytes otherwise.
pub(crate) fn display(key: &[u8]) -> String {
    if let (Some(&tag), Some(id)) = (key.first(), entry_id(key)) {
        if tag == EVENT || tag == SNAPSHOT {
            let rkey = u64_value(&key[1..9]).unwrap_or_default();
            return format!("{}/{rkey}/{id}", char::from(tag));
        }
    }
    key.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_sort_by_rkey_then_time() {
        let a = entry(EVENT, 1, Ulid::from_parts(5, 0));
        let b = entry(EVENT, 1, Ulid::from_parts(6, 0));
        let c = entry(EVENT, 2, Ulid::from_parts(1, 0));
        assert!(a < b && b < c);
        assert_eq!(entry_id(&b), Some(EventId(Ulid::from_parts(6, 0))));
        assert_eq!(entry_id(&b[..10]), None);
        assert!(a.starts_with(&entry_prefix(EVENT, 1)));
    }
}
