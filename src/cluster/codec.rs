//! The message formats of the JetStream backend (disk types of this
//! backend, never wire types), versioned by the `Pf-V` header.
//!
//! Events, snapshots and horizon snapshots carry their metadata in
//! headers and their JSON (a patch, or a whole document) as the payload:
//!
//! - `Pf-Id`: the event id (a ULID; a snapshot's is its event's);
//! - `Pf-Prev`: events only: the id of the event before (`-` for none);
//! - `Pf-Before`: the sequence of the event subject's message before the
//!   event (0: none). An event is published expecting exactly that last
//!   subject sequence (fencing); a snapshot's event is the first event
//!   message after it;
//! - `Pf-Nonce`: random per append, the same on the event and its
//!   snapshot, so that a snapshot whose event never landed (a crash
//!   between the two) is recognised even if a later event gets its id;
//! - `Pf-Blob` and `Pf-Len`: a payload over [`INLINE_MAX`] is stored as
//!   chunks on the `.b` subject; the message lists their sequences and the
//!   total length, and carries no payload. Each chunk names its owner in
//!   `Pf-Of` (`<kind>.<id>.<index>`).

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::model::EventId;

/// The message format version this patchfeed writes and reads.
pub(crate) const VERSION: &str = "1";

/// Largest payload stored in the message itself; larger ones are chunked.
/// Below NATS's default `max_payload` (1 MB) with room for headers.
pub(crate) const INLINE_MAX: usize = 256 * 1024;

/// Largest payload of a message of chunked values (the same size: a
/// payload over [`INLINE_MAX`] is cut into chunks of it).
pub(crate) const CHUNK: usize = INLINE_MAX;

/// Most chunks of one payload: 16 MiB documents (the upstream body cap)
/// and their root-replace patches fit, with room. Tests that shrink the
/// chunk size get more.
pub(crate) const MAX_CHUNKS: usize = 160;

const H_VERSION: &str = "Pf-V";
const H_ID: &str = "Pf-Id";
const H_PREV: &str = "Pf-Prev";
const H_BEFORE: &str = "Pf-Before";
const H_NONCE: &str = "Pf-Nonce";
const H_BLOB: &str = "Pf-Blob";
const H_LEN: &str = "Pf-Len";
const H_OF: &str = "Pf-Of";

/// Where a message's JSON is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// In the payload.
    Inline,
    /// In chunks at these stream sequences, `len` bytes in all.
    Chunks {
        /// The chunks' sequences, in order.
        seqs: Vec<u64>,
        /// Total length.
        len: usize,
    },
}

/// The metadata of an event or snapshot message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) id: EventId,
    /// Events: the event before; `None` for the first ever (a compacted
    /// log's first retained event has one).
    pub(crate) prev: Option<EventId>,
    pub(crate) before: u64,
    pub(crate) nonce: u64,
    pub(crate) body: Body,
}

/// The headers of `m`.
pub(crate) fn headers(m: &Meta) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(H_VERSION, VERSION);
    h.insert(H_ID, m.id.to_string());
    h.insert(
        H_PREV,
        m.prev.map_or_else(|| "-".to_owned(), |p| p.to_string()),
    );
    h.insert(H_BEFORE, m.before.to_string());
    h.insert(H_NONCE, format!("{:016x}", m.nonce));
    if let Body::Chunks { seqs, len } = &m.body {
        let list: Vec<String> = seqs.iter().map(u64::to_string).collect();
        h.insert(H_BLOB, list.join(","));
        h.insert(H_LEN, len.to_string());
    }
    h
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a str, String> {
    h.get(name)
        .map(|v| v.as_str())
        .ok_or_else(|| format!("no {name} header"))
}

fn ulid(s: &str, name: &str) -> Result<EventId, String> {
    ulid::Ulid::from_string(s)
        .map(EventId)
        .map_err(|_| format!("{name} is not a ULID"))
}

/// The metadata of a stored message, or why it cannot be read.
pub(crate) fn decode(h: &HeaderMap) -> Result<Meta, String> {
    let v = get(h, H_VERSION)?;
    if v != VERSION {
        return Err(format!(
            "message format version {v}, this patchfeed reads {VERSION}"
        ));
    }
    let id = ulid(get(h, H_ID)?, H_ID)?;
    let prev = match get(h, H_PREV)? {
        "-" => None,
        p => Some(ulid(p, H_PREV)?),
    };
    let before = get(h, H_BEFORE)?
        .parse()
        .map_err(|_| format!("{H_BEFORE} is not a number"))?;
    let nonce =
        u64::from_str_radix(get(h, H_NONCE)?, 16).map_err(|_| format!("{H_NONCE} is not hex"))?;
    let body = match h.get(H_BLOB) {
        None => Body::Inline,
        Some(list) => {
            let seqs: Vec<u64> = list
                .as_str()
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| format!("{H_BLOB} is not a list of sequences"))?;
            if seqs.is_empty() || seqs.len() > 4 * MAX_CHUNKS {
                return Err(format!("{H_BLOB} lists {} chunks", seqs.len()));
            }
            let len = get(h, H_LEN)?
                .parse()
                .map_err(|_| format!("{H_LEN} is not a number"))?;
            Body::Chunks { seqs, len }
        }
    };
    Ok(Meta {
        id,
        prev,
        before,
        nonce,
        body,
    })
}

/// The owner tag of chunk `index` of a payload of `kind_token` for `id`,
/// written by the append with `nonce`.
pub(crate) fn chunk_of(kind_token: char, id: EventId, nonce: u64, index: usize) -> String {
    format!("{kind_token}.{id}.{nonce:016x}.{index}")
}

/// The headers of one chunk.
pub(crate) fn chunk_headers(of: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(H_VERSION, VERSION);
    h.insert(H_OF, of);
    h
}

/// Checks that a chunk message is the one expected.
pub(crate) fn check_chunk(h: &HeaderMap, of: &str) -> Result<(), String> {
    match h.get(H_OF).map(|v| v.as_str()) {
        Some(o) if o == of => Ok(()),
        other => Err(format!("chunk is {other:?}, expected {of}")),
    }
}

/// Splits a payload into chunks of at most `chunk` bytes.
pub(crate) fn split(payload: &Bytes, chunk: usize) -> Vec<Bytes> {
    let chunk = chunk.max(1);
    (0..payload.len())
        .step_by(chunk)
        .map(|i| payload.slice(i..(i + chunk).min(payload.len())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_through_headers() {
        for (prev, body) in [
            (None, Body::Inline),
            (
                Some(EventId(ulid::Ulid::from_parts(5, 6))),
                Body::Chunks {
                    seqs: vec![3, 9, 12],
                    len: 600_000,
                },
            ),
        ] {
            let m = Meta {
                id: EventId(ulid::Ulid::from_parts(7, 8)),
                prev,
                before: 41,
                nonce: u64::MAX,
                body,
            };
            assert_eq!(decode(&headers(&m)).unwrap(), m);
        }
        let mut h = headers(&Meta {
            id: EventId(ulid::Ulid::nil()),
            prev: None,
            before: 0,
            nonce: 1,
            body: Body::Inline,
        });
        h.insert(H_VERSION, "2");
        assert!(decode(&h).unwrap_err().contains("version 2"));
        assert!(decode(&HeaderMap::new()).is_err());
    }

    #[test]
    fn split_covers_the_payload_in_bounded_chunks() {
        let p = Bytes::from(vec![7u8; 2 * CHUNK + 5]);
        let parts = split(&p, CHUNK);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|c| c.len() <= CHUNK));
        assert_eq!(parts.concat(), p.to_vec());
        assert!(split(&Bytes::new(), 7).is_empty());
        assert_eq!(split(&Bytes::from_static(b"abcdefg"), 3).len(), 3);
    }
}
