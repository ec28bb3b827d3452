//! On-disk record encodings. These are disk types, never wire types: the
//! API has its own. Every value starts with a one-byte codec version.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::{ResourceId, ResourceRecord, ResourceSpec};

/// Version of the whole storage format, kept under `keys::VERSION`.
pub(crate) const FORMAT_VERSION: u32 = 1;

const RECORD_V1: u8 = 1;

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
    let spec = ResourceSpec {
        id: ResourceId::new(&d.id).ok()?,
        url: d.url,
        interval: Duration::from_millis(d.interval_ms),
        headers: d.headers,
        snapshot_every: d.snapshot_every.max(1),
        retain: d.retain_ms.map(Duration::from_millis),
    };
    Some((
        d.rkey,
        ResourceRecord {
            spec,
            created_ms: d.created_ms,
        },
    ))
}

/// Events and snapshots: version byte, then JSON text (a patch array, or a
/// whole document).
pub(crate) fn encode_json(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 1);
    out.push(RECORD_V1);
    out.extend_from_slice(json);
    out
}

/// The JSON text inside an event or snapshot value, without copying.
pub(crate) fn decode_json(v: &sled::IVec) -> Option<Bytes> {
    match v.first() {
        Some(&RECORD_V1) => Some(Bytes::copy_from_slice(&v[1..])),
        _ => None,
    }
}
