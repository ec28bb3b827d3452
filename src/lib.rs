//! patchfeed turns any JSON-over-HTTP API into a resumable stream of changes.
//!
//! Code map:
//! - `model`: pure domain types (`ResourceId`, `EventId`, `Point`, `Event`).
//! - `diff`: pure RFC 6902 diff/apply.
//! - `log`: the durable per-resource change log; the only module naming sled.
pub mod diff;
pub mod log;
pub mod model;
