//! Black-box integration tests: the real `patchfeed` binary, a real
//! loopback upstream, real HTTP and SSE clients. One test crate (one
//! build), one module per area.

mod changes;
#[path = "../common/mod.rs"]
mod common;
mod crash_server;
mod documents;
mod edges;
mod faults;
mod ingest;
mod ingest_isolation;
mod inproc_api;
mod openapi;
mod pages;
mod paused;
mod store_integrity;
mod stream;
mod subtree;
mod support;
mod webhook_crash;
mod webhooks;
mod ws;
