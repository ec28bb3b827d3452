//! patchfeed turns any JSON-over-HTTP API into a resumable stream of changes.
//!
//! Code map:
//! - `model`: pure domain types (`ResourceId`, `EventId`, `Point`, `Event`).
//! - `diff`: pure RFC 6902 diff/apply.
//! - `log`: the durable per-resource change log; the only module naming sled.
//! - `cpu`: where the CPU-heavy steps of ingest (parse, diff) run.
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod demo;
pub mod diff;
pub mod feed;
pub mod hub;
pub mod log;
pub mod metrics;
pub mod model;
pub mod poll;
pub mod registry;
pub mod service;
pub mod store;
pub mod transport;
