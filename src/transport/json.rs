//! The JSON message encoding shared by long-poll, NDJSON and WebSocket:
//! `{"type":"snapshot","id":…,"data":<document>}`,
//! `{"type":"patch","id":…,"data":[<ops>]}`,
//! `{"type":"error","data":{"code","message","status"?}}`. Stored JSON text
//! (documents, patches) is spliced in unparsed; a live event's message is
//! encoded once and shared (`hub::Encoding::Json`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::feed::Message;
use crate::hub::{Encoding, UpstreamError};
use crate::model::{Event, EventId};

/// The message of `m` as compact JSON (one line: JSON text holds no raw
/// newline); `None` for a heartbeat, which each transport writes its own way.
pub fn message(m: &Message) -> Option<Bytes> {
    Some(match m {
        Message::Snapshot { id, json } => with_data("snapshot", Some(*id), json),
        Message::Patch(e) => patch(e),
        Message::Live(p) => p.frame(Encoding::Json, patch),
        Message::Error(e) => error(e),
        Message::KeepAlive => return None,
    })
}

/// The id a message carries, if any.
pub fn id(m: &Message) -> Option<EventId> {
    match m {
        Message::Snapshot { id, .. } => Some(*id),
        Message::Patch(e) => Some(e.id),
        Message::Live(p) => Some(p.event.id),
        Message::Error(_) | Message::KeepAlive => None,
    }
}

fn patch(e: &Event) -> Bytes {
    with_data("patch", Some(e.id), &e.patch)
}

/// `{"type":"error","data":{…}}`.
pub fn error(e: &UpstreamError) -> Bytes {
    // Serializing strings and integers cannot fail.
    let data = serde_json::to_vec(e).expect("error notice serializes");
    with_data("error", None, &data)
}

fn with_data(kind: &str, id: Option<EventId>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 64);
    out.put_slice(b"{\"type\":\"");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\"");
    if let Some(id) = id {
        out.put_slice(b",\"id\":\"");
        out.put_slice(id.to_string().as_bytes());
        out.put_slice(b"\"");
    }
    out.put_slice(b",\"data\":");
    out.put_slice(data);
    out.put_slice(b"}");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ulid::Ulid;

    #[test]
    fn messages_are_the_contracts_shape_and_parse() {
        let id = EventId(Ulid::from_parts(1, 2));
        let e = Event {
            id,
            patch: Bytes::from_static(br#"[{"op":"add","path":"/a","value":1}]"#),
        };
        let m = message(&Message::Patch(e)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "patch", "id": id.to_string(), "data": [{"op": "add", "path": "/a", "value": 1}]})
        );
        let s = message(&Message::Snapshot {
            id,
            json: Bytes::from_static(b"{\"x\":[1]}"),
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "snapshot", "id": id.to_string(), "data": {"x": [1]}})
        );
        let err = UpstreamError {
            code: "timeout".into(),
            message: "slow".into(),
            status: None,
            time_ms: 0,
        };
        let v: serde_json::Value = serde_json::from_slice(&error(&err)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "data": {"code": "timeout", "message": "slow"}})
        );
        assert!(message(&Message::KeepAlive).is_none());
    }
}
