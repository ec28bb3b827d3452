//! Encoders of the transport-neutral [`crate::feed::Feed`]: each turns the
//! feed's messages into one wire format — SSE (native and streamdata
//! flavours), and the JSON messages of long-poll and NDJSON. A new
//! transport is a new module here; the feed, its cursor logic and its
//! guarantees stay as they are.

pub mod json;
pub mod sse;
