//! Polling upstreams: one conditional fetch (`fetch`), behind an SSRF guard
//! (`guard`), retried with jittered exponential back-off (`backoff`), in a
//! loop per resource that appends what changed and publishes it (`poller`).

pub mod backoff;
pub mod fetch;
pub mod guard;
pub mod pages;
pub mod poller;
