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
//! | `e` rkey, event ULID, chunk u32 BE    | one chunk of a chunked event value  |
//! | `s` rkey, event ULID, chunk u32 BE    | one chunk of a chunked snapshot     |
//! | `H` rkey u64 BE                       | horizon ULID; present once compacted|
//! | `D` rkey u64 BE                       | tombstone: deleted, purge pending   |
//! | `W` webhook-id bytes                  | webhook record (`webhooks`)         |
//! | `C` webhook-id, `0x00`, resource-id   | a webhook's cursor in one resource  |
//!
//! An `E` or `S` value whose JSON is longer than the store's chunk size is
//! stored chunked (format version 2): the `E`/`S` value only says how many
//! bytes and chunks there are, and the JSON is split, in order, over the
//! `e`/`s` keys with the same rkey and ULID and chunk index 0, 1, ....
//! sled 0.34 writes any page fragment over a quarter of its segment size
//! to a separate blob file and, when every write is such a blob, deletes
//! replaced blobs hardly ever (and never after a restart), so no value
//! handed to sled may come near that size; see `values`. Shorter values
//! are stored inline exactly as in format version 1, so a version-1 data
//! dir is read unchanged. Chunk keys live under their own tags so that the
//! range scans over `E` and `S` keys see one key per event or snapshot.

use ulid::Ulid;

use crate::model::{EventId, ResourceId};

pub(crate) const VERSION: &[u8] = b"V";
pub(crate) const NEXT_RKEY: &[u8] = b"Q";
pub(crate) const RESOURCE: u8 = b'R';
pub(crate) const EVENT: u8 = b'E';
pub(crate) const SNAPSHOT: u8 = b'S';
pub(crate) const EVENT_CHUNK: u8 = b'e';
pub(crate) const SNAPSHOT_CHUNK: u8 = b's';
pub(crate) const HORIZON: u8 = b'H';
pub(crate) const TOMBSTONE: u8 = b'D';
pub(crate) const WEBHOOK: u8 = b'W';
pub(crate) const CURSOR: u8 = b'C';

/// Length of an event or snapshot key.
pub(crate) const ENTRY_KEY_LEN: usize = 1 + 8 + 16;

pub(crate) fn resource(id: &ResourceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.as_str().len());
    k.push(RESOURCE);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

pub(crate) fn webhook(id: &ResourceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.as_str().len());
    k.push(WEBHOOK);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// The prefix of every cursor of webhook `id`: ids never hold `0x00`, so
/// no other webhook's cursors share it.
pub(crate) fn cursor_prefix(id: &ResourceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.as_str().len());
    k.push(CURSOR);
    k.extend_from_slice(id.as_str().as_bytes());
    k.push(0);
    k
}

pub(crate) fn cursor(webhook: &ResourceId, resource: &ResourceId) -> Vec<u8> {
    let mut k = cursor_prefix(webhook);
    k.extend_from_slice(resource.as_str().as_bytes());
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

/// Length of a chunk key: an entry key and a chunk index.
pub(crate) const CHUNK_KEY_LEN: usize = ENTRY_KEY_LEN + 4;

/// The chunk tag of an entry tag: `e` for `E`, `s` for `S`.
pub(crate) fn chunk_tag(tag: u8) -> u8 {
    tag.to_ascii_lowercase()
}

/// Key of chunk `index` of the chunked `E` or `S` value at (`rkey`, `id`).
pub(crate) fn chunk(tag: u8, rkey: u64, id: Ulid, index: u32) -> [u8; CHUNK_KEY_LEN] {
    let mut k = [0u8; CHUNK_KEY_LEN];
    k[..ENTRY_KEY_LEN].copy_from_slice(&entry(chunk_tag(tag), rkey, id));
    k[ENTRY_KEY_LEN..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Key of chunk `index` of the value under `entry_key` (an `E` or `S` key),
/// if `entry_key` has that shape.
pub(crate) fn chunk_of(entry_key: &[u8], index: u32) -> Option<[u8; CHUNK_KEY_LEN]> {
    if entry_key.len() != ENTRY_KEY_LEN {
        return None;
    }
    let mut k = [0u8; CHUNK_KEY_LEN];
    k[0] = chunk_tag(entry_key[0]);
    k[1..ENTRY_KEY_LEN].copy_from_slice(&entry_key[1..]);
    k[ENTRY_KEY_LEN..].copy_from_slice(&index.to_be_bytes());
    Some(k)
}

/// The smallest key above every key that starts with `prefix`; `None` if
/// there is none (the prefix is all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The chunk index in a chunk key, if the key has that shape.
pub(crate) fn chunk_index(key: &[u8]) -> Option<u32> {
    let b: [u8; 4] = key.get(ENTRY_KEY_LEN..)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
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

    #[test]
    fn chunk_keys_sort_by_entry_then_index_under_their_own_tag() {
        let id = Ulid::from_parts(5, 7);
        let c0 = chunk(EVENT, 1, id, 0);
        let c1 = chunk(EVENT, 1, id, 1);
        let next = chunk(EVENT, 1, Ulid::from_parts(6, 0), 0);
        assert!(c0 < c1 && c1 < next);
        assert_eq!(c0[0], EVENT_CHUNK);
        assert_eq!(chunk(SNAPSHOT, 1, id, 0)[0], SNAPSHOT_CHUNK);
        assert!(c0.starts_with(&entry(EVENT_CHUNK, 1, id)));
        assert_eq!(chunk_index(&c1), Some(1));
        assert_eq!(chunk_index(&c1[..ENTRY_KEY_LEN]), None);
        // Every chunk of an id sorts between that id's entry key and the
        // next id's: the id ranges used by compaction cover whole values.
        assert!(entry(EVENT_CHUNK, 1, id)[..] < c0[..]);
        assert!(
            chunk(EVENT, 1, id, u32::MAX)[..] < entry(EVENT_CHUNK, 1, Ulid::from_parts(5, 8))[..]
        );
        assert_eq!(
            chunk_of(&entry(SNAPSHOT, 1, id), 3),
            Some(chunk(SNAPSHOT, 1, id, 3))
        );
        assert_eq!(chunk_of(&c0, 3), None);
    }

    #[test]
    fn prefix_end_is_above_every_key_with_the_prefix() {
        let p = entry_prefix(EVENT_CHUNK, 7);
        let end = prefix_end(&p).unwrap();
        assert!(chunk(EVENT, 7, Ulid::max(), u32::MAX)[..] < end[..]);
        assert!(entry_prefix(EVENT_CHUNK, 8)[..] >= end[..]);
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
