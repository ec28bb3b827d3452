//! Encoders of the transport-neutral [`crate::feed::Feed`]: each turns the
//! feed's messages into one wire format. Today: SSE (native and streamdata
//! flavours). A new transport is a new module here; the feed, its cursor
//! logic and its guarantees stay as they are.

pub mod sse;
