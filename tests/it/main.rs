//! Black-box integration tests: the real `patchfeed` binary, a real
//! loopback upstream, real HTTP and SSE clients. One test crate (one
//! build), one module per area.

#[path = "../common/binary.rs"]
mod binary;
mod crash_server;
mod documents;
mod faults;
mod ingest_isolation;
mod stream;
mod support;
