//! patchfeed turns any JSON-over-HTTP API into a resumable stream of
//! changes: it polls each upstream, diffs versions into RFC 6902 patches,
//! appends them to a durable per-resource log, and serves them.
//!
//! Code map (details in `docs/ARCHITECTURE.md`):
//! - [`model`], [`diff`]: pure domain types and the RFC 6902 diff.
//! - [`store`]: the `Storage` trait every layer above the log talks to;
//!   [`log`]: its sled backend, the only code that names sled;
//!   [`cluster`]: its NATS JetStream backend (`[cluster]`), the only code
//!   that names NATS.
//! - `poll`: fetch, guard, back-off, one poller per resource; `cpu`: where
//!   heavy parses and diffs run.
//! - `hub` → `feed` → `transport`: live fan-out, one subscriber's gap-free
//!   cursor, and its wire encodings (SSE).
//! - [`Registry`] (resources and their pollers, compactor, proxy) →
//!   `service` (the operations the API sees) → [`api`] (routes, auth,
//!   errors).
//! - [`webhook`]: webhooks out, one durable cursor per (webhook, resource)
//!   read through `feed`, signed and retried.
//! - [`app`]: assembly from a [`config::Config`], accept loop, shutdown;
//!   [`cli`]: the command line.
pub mod api;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
mod cpu;
mod demo;
pub mod diff;
mod feed;
mod hub;
pub mod log;
mod metrics;
pub mod model;
mod poll;
mod registry;
mod service;
pub mod store;
mod transport;
pub mod webhook;

pub use poll::fetch;
pub use registry::Registry;
