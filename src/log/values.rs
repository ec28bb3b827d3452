//! Event and snapshot values on disk: inline when short, else chunked, so
//! that sled never holds a page fragment large enough to become a blob.
//!
//! Why: sled 0.34 writes any log message longer than a quarter of its
//! segment size (512 KiB by default, so about 128 KiB) to a file of its own
//! under `blobs/`. A replaced blob file is deleted only once the segment
//! holding its replacement stops being the active one, and that segment
//! fills only with inline bytes; when every write is a blob, each adds a
//! ~40-byte pointer, so thousands of writes pass before any blob is deleted,
//! and the pending deletions live in memory only: a restart forgets them
//! for good (recovery removes only blobs newer than its stable log). With
//! ~400 KB documents that was 587 MB and 573 blob files for 30 retained
//! events. Inline data, by contrast, lives in segments that sled's
//! cleaner compacts and reuses.
//!
//! A leaf node in sled 0.34 holds up to 16 entries before it splits (a few
//! more while it merges with a sibling) whatever their size, and sled
//! rewrites a node whole when it consolidates it, so it is the node, not
//! the value, that must stay under the blob threshold: [`CHUNK_BYTES`]
//! keeps 20 full chunks and their keys (about 83 KB) well below 128 KiB.
//!
//! Layout (`keys`): a value of at most the chunk size is stored inline, as
//! in format version 1. A longer one is split in order over chunk keys
//! (`e`/`s`, with the entry's rkey and ULID and a chunk index), and the
//! entry key holds only the JSON's length and the number of chunks. The
//! chunks are written before the entry key, which alone makes the value
//! exist: chunks without their entry key are unreachable, removed at open
//! when above the last event, and by compaction and purge otherwise. Reads
//! use the count in the entry key, never "every chunk under the prefix",
//! so stale chunks with a higher index (a reused id after a crash) are
//! never read. Reading does not depend on the writer's chunk size.

use bytes::Bytes;
use ulid::Ulid;

use super::{codec, commit::GroupCommit, corrupt, keys, StoreError};

/// Longest JSON stored inline, and the size of each chunk of a longer one.
/// See the module doc for why it is this small.
pub(crate) const CHUNK_BYTES: usize = 4096;

/// Most bytes reserved up front when reading a chunked value: the length in
/// its entry key is checked against the chunks actually read, but is not
/// trusted for an allocation.
const MAX_RESERVE: u64 = 64 << 20;

/// Writes the value of the `tag` entry (`EVENT` or `SNAPSHOT`) at
/// (`rkey`, `id`): chunks first (when longer than `chunk_bytes`), the entry
/// key last. After each insert it reports the bytes to `commit`, which
/// makes it wait for a flush once too much is unflushed
/// (`commit::UNFLUSHED_BUDGET`: a sled deadlock otherwise).
pub(crate) async fn put(
    tree: &sled::Tree,
    commit: &GroupCommit,
    tag: u8,
    rkey: u64,
    id: Ulid,
    json: &[u8],
    chunk_bytes: usize,
) -> Result<(), StoreError> {
    let key = keys::entry(tag, rkey, id);
    let chunk_bytes = chunk_bytes.max(1);
    if json.len() <= chunk_bytes {
        tree.insert(&key[..], codec::encode_json(json))?;
        return wrote(commit, key.len() + json.len()).await;
    }
    let mut chunks = 0u32;
    for part in json.chunks(chunk_bytes) {
        let chunk_key = keys::chunk(tag, rkey, id, chunks);
        tree.insert(&chunk_key[..], part)?;
        wrote(commit, chunk_key.len() + part.len()).await?;
        chunks = chunks
            .checked_add(1)
            .expect("fewer than 2^32 chunks: a value in memory is far below 2^32 chunk sizes");
    }
    let len = u64::try_from(json.len()).expect("a length in memory fits u64");
    tree.insert(&key[..], &codec::encode_chunked(len, chunks)[..])?;
    Ok(())
}

async fn wrote(commit: &GroupCommit, bytes: usize) -> Result<(), StoreError> {
    commit.wrote(bytes).await.map_err(StoreError::Flush)
}

/// The JSON text of the entry value `v` read under `key` (an `E` or `S`
/// key), gathering its chunks if it is chunked.
pub(crate) fn get(tree: &sled::Tree, key: &[u8], v: &[u8]) -> Result<Bytes, StoreError> {
    match codec::decode_value(v).ok_or_else(|| corrupt(key))? {
        codec::Stored::Inline(json) => Ok(json),
        codec::Stored::Chunked { len, chunks } => {
            let last = chunks.checked_sub(1).ok_or_else(|| corrupt(key))?;
            let (Some(lo), Some(hi)) = (keys::chunk_of(key, 0), keys::chunk_of(key, last)) else {
                return Err(corrupt(key));
            };
            let reserve = usize::try_from(len.min(MAX_RESERVE)).unwrap_or(0);
            let mut out = Vec::with_capacity(reserve);
            let mut next = 0u32;
            for kv in tree.range(lo..=hi) {
                let (k, part) = kv?;
                if keys::chunk_index(&k) != Some(next) {
                    return Err(corrupt(&k));
                }
                out.extend_from_slice(&part);
                next += 1;
            }
            if next != chunks || u64::try_from(out.len()).ok() != Some(len) {
                return Err(corrupt(key));
            }
            Ok(Bytes::from(out))
        }
    }
}

/// Removes the `tag` entry at (`rkey`, `id`) and any chunks under its id:
/// the entry key first, so the value is gone at once and a crash leaves
/// only unreachable chunks.
pub(crate) fn remove(tree: &sled::Tree, tag: u8, rkey: u64, id: Ulid) -> Result<(), StoreError> {
    tree.remove(&keys::entry(tag, rkey, id)[..])?;
    let prefix = keys::entry(keys::chunk_tag(tag), rkey, id);
    let chunks: Vec<sled::IVec> = tree.scan_prefix(prefix).keys().collect::<Result<_, _>>()?;
    for k in chunks {
        tree.remove(k)?;
    }
    Ok(())
}
