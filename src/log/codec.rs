//! On-disk record encodings. These are disk types, never wire types: the
//! API has its own. Every value starts with a one-byte codec version.
//!
//! Resource records (JSON after the version byte), inline event and
//! snapshot JSON, and the head of a chunked value; key layout is `keys`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::{is_ad_hoc_id, Pages, PagesInput, ResourceId, ResourceRecord, ResourceSpec};

/// Version of the whole storage format, kept under `keys::VERSION`.
/// Version 2 added chunked event and snapshot values (`keys`); a version-1
/// data dir is valid version-2 data, so `Store::open` upgrades it in place
/// by rewriting the version key (an older patchfeed then refuses the dir
/// with a clear error instead of misreading a chunked value).
pub(crate) const FORMAT_VERSION: u32 = 2;

/// Format versions that `Store::open` reads (and upgrades to the current).
pub(crate) const READABLE_VERSIONS: [u32; 2] = [1, FORMAT_VERSION];

const RECORD_V1: u8 = 1;
/// An event or snapshot value whose JSON is stored in chunks.
const CHUNKED_V2: u8 = 2;

#[derive(Serialize, Deserialize)]
struct DiskResource {
    rkey: u64,
    id: String,
    url: String,
    interval_ms: u64,
    headers: BTreeMap<String, String>,
    snapshot_every: u32,
    retain_ms: Option<u64>,
    created_ms: u64,
    /// Created by the streamdata proxy. Absent in records written before
    /// the flag was stored: see [`legacy_ad_hoc`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ad_hoc: Option<bool>,
    /// A push resource (fed by its owner, no url). Absent in records
    /// written before push resources existed, and then false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    push: bool,
    /// A paginated upstream. Absent in records written before pagination
    /// existed (and in those of unpaginated resources), and then none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pages: Option<DiskPages>,
}

/// `ResourceSpec::pages` on disk: the settings as given, defaults filled in.
#[derive(Serialize, Deserialize)]
struct DiskPages {
    next: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    param: Option<String>,
    items: String,
    max: u32,
}

/// Whether a record written before the ad-hoc flag existed was made by the
/// proxy. Those versions inferred it from the id alone, which also caught
/// resources registered under such an id; here it takes the id the proxy
/// derives from the URL *and* the settings the proxy always gave its
/// resources (retain one day, the default `snapshot_every`). A registered
/// resource that differs in either is kept: keeping a resource is the safe
/// way to be wrong.
fn legacy_ad_hoc(spec: &ResourceSpec) -> bool {
    is_ad_hoc_id(&spec.id, &spec.url)
        && spec.retain == Some(ResourceSpec::AD_HOC_RETAIN)
        && spec.snapshot_every == ResourceSpec::DEFAULT_SNAPSHOT_EVERY
}

pub(crate) fn encode_resource(rkey: u64, r: &ResourceRecord) -> Vec<u8> {
    let d = DiskResource {
        rkey,
        id: r.spec.id.as_str().to_owned(),
        url: r.spec.url.clone(),
        interval_ms: u64::try_from(r.spec.interval.as_millis()).unwrap_or(u64::MAX),
        headers: r.spec.headers.clone(),
        snapshot_every: r.spec.snapshot_every,
        retain_ms: r
            .spec
            .retain
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        created_ms: r.created_ms,
        ad_hoc: Some(r.spec.ad_hoc),
        push: r.spec.push,
        pages: r.spec.pages.as_ref().map(|p| {
            let i = p.input();
            DiskPages {
                next: i.next,
                param: i.param,
                items: p.items.clone(),
                max: p.max,
            }
        }),
    };
    let mut out = vec![RECORD_V1];
    // Serializing a struct of strings and integers to a Vec cannot fail.
    serde_json::to_writer(&mut out, &d).expect("DiskResource serializes");
    out
}

pub(crate) fn decode_resource(v: &[u8]) -> Option<(u64, ResourceRecord)> {
    let (&ver, body) = v.split_first()?;
    if ver != RECORD_V1 {
        return None;
    }
    let d: DiskResource = serde_json::from_slice(body).ok()?;
    let mut spec = ResourceSpec {
        id: ResourceId::new(&d.id).ok()?,
        url: d.url,
        interval: Duration::from_millis(d.interval_ms),
        headers: d.headers,
        snapshot_every: d.snapshot_every.max(1),
        retain: d.retain_ms.map(Duration::from_millis),
        ad_hoc: false,
        push: d.push,
        // Written by `encode_resource` from validated settings; a record
        // that no longer validates does not decode (and is quarantined).
        pages: match d.pages {
            None => None,
            Some(p) => Some(
                Pages::validate(PagesInput {
                    next: p.next,
                    items: Some(p.items),
                    param: p.param,
                    max: Some(p.max),
                })
                .ok()?,
            ),
        },
    };
    spec.ad_hoc = d.ad_hoc.unwrap_or_else(|| legacy_ad_hoc(&spec));
    Some((
        d.rkey,
        ResourceRecord {
            spec,
            created_ms: d.created_ms,
        },
    ))
}

/// Events and snapshots stored inline: version byte, then JSON text (a
/// patch array, or a whole document).
pub(crate) fn encode_json(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 1);
    out.push(RECORD_V1);
    out.extend_from_slice(json);
    out
}

/// Length of a chunked value's head: version, JSON length, chunk count.
pub(crate) const CHUNKED_HEAD_LEN: usize = 1 + 8 + 4;

/// The head of a chunked event or snapshot: version byte 2, the JSON's
/// length (u64 BE) and its number of chunks (u32 BE). The chunks are the
/// JSON's bytes in order, under `keys::chunk`.
pub(crate) fn encode_chunked(len: u64, chunks: u32) -> [u8; CHUNKED_HEAD_LEN] {
    let mut out = [0u8; CHUNKED_HEAD_LEN];
    out[0] = CHUNKED_V2;
    out[1..9].copy_from_slice(&len.to_be_bytes());
    out[9..].copy_from_slice(&chunks.to_be_bytes());
    out
}

/// An event or snapshot value, decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The JSON text itself.
    Inline(Bytes),
    /// The JSON is `len` bytes in `chunks` chunks.
    Chunked { len: u64, chunks: u32 },
}

pub(crate) fn decode_value(v: &[u8]) -> Option<Stored> {
    match v.split_first()? {
        (&RECORD_V1, json) => Some(Stored::Inline(Bytes::copy_from_slice(json))),
        (&CHUNKED_V2, head) => {
            let len = u64::from_be_bytes(head.get(..8)?.try_into().ok()?);
            let chunks = u32::from_be_bytes(head.get(8..)?.try_into().ok()?);
            Some(Stored::Chunked { len, chunks })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ad_hoc_base;

    fn spec(id: &str, url: &str, retain: Option<Duration>, ad_hoc: bool) -> ResourceSpec {
        ResourceSpec {
            id: ResourceId::new(id).expect("a valid id"),
            url: url.to_owned(),
            interval: Duration::from_secs(5),
            headers: BTreeMap::new(),
            snapshot_every: ResourceSpec::DEFAULT_SNAPSHOT_EVERY,
            retain,
            ad_hoc,
            push: false,
            pages: None,
        }
    }

    /// A record as versions before the stored flag wrote it.
    fn legacy(s: &ResourceSpec) -> Vec<u8> {
        let mut v = encode_resource(
            7,
            &ResourceRecord {
                spec: s.clone(),
                created_ms: 1,
            },
        );
        let text = std::str::from_utf8(&v[1..]).expect("JSON text").to_owned();
        let without = text
            .replace(r#","ad_hoc":false"#, "")
            .replace(r#","ad_hoc":true"#, "");
        assert!(!without.contains("ad_hoc"), "{without}");
        v.truncate(1);
        v.extend_from_slice(without.as_bytes());
        v
    }

    #[test]
    fn issue_17_the_ad_hoc_flag_is_stored_not_inferred_from_the_id() {
        let url = "http://127.0.0.1:9/doc";
        let derived = ad_hoc_base(url);
        for ad_hoc in [false, true] {
            let s = spec(&derived, url, Some(ResourceSpec::AD_HOC_RETAIN), ad_hoc);
            let r = ResourceRecord {
                spec: s,
                created_ms: 1,
            };
            let (rkey, back) = decode_resource(&encode_resource(7, &r)).expect("decodes");
            assert_eq!((rkey, &back), (7, &r));
        }
        // Written before the flag: only the proxy's id *and* settings
        // make a resource ad hoc; anything else is kept as registered.
        let decode = |s: &ResourceSpec| decode_resource(&legacy(s)).expect("decodes").1.spec.ad_hoc;
        assert!(decode(&spec(
            &derived,
            url,
            Some(ResourceSpec::AD_HOC_RETAIN),
            true
        )));
        assert!(decode(&spec(
            &format!("{derived}-2"),
            url,
            Some(ResourceSpec::AD_HOC_RETAIN),
            true
        )));
        assert!(!decode(&spec(&derived, url, None, false)));
        assert!(!decode(&spec(
            &derived,
            url,
            Some(ResourceSpec::DEFAULT_RETAIN),
            false
        )));
        assert!(!decode(&spec(
            "btc-eur",
            url,
            Some(ResourceSpec::AD_HOC_RETAIN),
            false
        )));
    }

    #[test]
    fn issue_18_the_push_flag_round_trips_and_old_records_read_as_polled() {
        let record = |spec| ResourceRecord {
            spec,
            created_ms: 1,
        };
        let push = ResourceSpec {
            url: String::new(),
            push: true,
            ..spec("p", "", None, false)
        };
        let (_, back) = decode_resource(&encode_resource(3, &record(push.clone()))).expect("reads");
        assert_eq!(back.spec, push);
        // A polled resource's record carries no `push` key, as before push
        // resources existed; one written then reads as polled.
        let polled = spec("r", "http://127.0.0.1:9/doc", None, false);
        let bytes = encode_resource(3, &record(polled.clone()));
        assert!(!String::from_utf8_lossy(&bytes).contains("push"));
        let old = br#"{"rkey":3,"id":"r","url":"http://127.0.0.1:9/doc","interval_ms":5000,"headers":{},"snapshot_every":100,"retain_ms":null,"created_ms":1,"ad_hoc":false}"#;
        let mut v = vec![RECORD_V1];
        v.extend_from_slice(old);
        let (_, back) = decode_resource(&v).expect("an old record reads");
        assert_eq!(back.spec, polled);
    }

    #[test]
    fn issue_18_pages_round_trip_and_records_without_them_read_as_before() {
        use crate::model::{PageNext, Pages};
        let record = |spec| ResourceRecord {
            spec,
            created_ms: 1,
        };
        for next in [
            PageNext::Link,
            PageNext::Url("/next".into()),
            PageNext::Cursor {
                pointer: "/meta/cursor".into(),
                param: "cursor".into(),
            },
        ] {
            let paged = ResourceSpec {
                pages: Some(Pages {
                    next,
                    items: "/data".into(),
                    max: 7,
                }),
                ..spec("p", "http://127.0.0.1:9/list", None, false)
            };
            let (_, back) =
                decode_resource(&encode_resource(3, &record(paged.clone()))).expect("reads");
            assert_eq!(back.spec, paged);
        }
        // An unpaginated resource's record carries no `pages` key, as
        // before pagination existed.
        let plain = spec("r", "http://127.0.0.1:9/doc", None, false);
        let bytes = encode_resource(3, &record(plain));
        assert!(!String::from_utf8_lossy(&bytes).contains("pages"));
        // A record whose pages no longer validate does not decode (the
        // resource is quarantined rather than polled wrongly).
        let bad = br#"{"rkey":3,"id":"r","url":"http://h/","interval_ms":5000,"headers":{},"snapshot_every":100,"retain_ms":null,"created_ms":1,"ad_hoc":false,"pages":{"next":"x","items":"","max":1}}"#;
        let mut v = vec![RECORD_V1];
        v.extend_from_slice(bad);
        assert!(decode_resource(&v).is_none());
    }

    #[test]
    fn inline_and_chunked_values_decode_and_garbage_does_not() {
        assert_eq!(
            decode_value(&encode_json(b"[1]")),
            Some(Stored::Inline(Bytes::from_static(b"[1]")))
        );
        assert_eq!(
            decode_value(&encode_chunked(1 << 33, 7)),
            Some(Stored::Chunked {
                len: 1 << 33,
                chunks: 7
            })
        );
        assert_eq!(decode_value(&encode_chunked(5, 1)[..12]), None);
        assert_eq!(decode_value(&[2; CHUNKED_HEAD_LEN + 1]), None);
        assert_eq!(decode_value(&[9, b'1']), None);
        assert_eq!(decode_value(&[]), None);
    }
}
