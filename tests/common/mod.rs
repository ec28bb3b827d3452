//! The one test harness, shared by every integration test crate (each
//! includes it with `mod common;` or `#[path = "../common/mod.rs"] mod
//! common;`):
//!
//! - `server`: the real `patchfeed` binary on a temp data dir (`Server`);
//! - `inproc`: the server in-process, on loopback (`InProcess`, through
//!   `patchfeed::app::serve`) or without sockets (`App`: the router on a
//!   temp store, called with `oneshot`, every task on the test's runtime so
//!   that a paused clock drives pollers, feeds and the proxy reaper);
//! - `upstream`: one loopback upstream (`Upstream`) — a scripted document
//!   with ETags and fault modes on `/doc`, fixed routes `/big`, `/loop`,
//!   `/redirect`, and counters;
//! - `sse`: one SSE parser (`take_block`, `parse_block`) under two clients:
//!   `Sse` (any body stream: reqwest or an in-process response) and
//!   `RawSse` (a raw socket that reads only when asked);
//! - `receiver`: a loopback webhook receiver with scripted answers, and
//!   signature checks by the reference Standard Webhooks implementation;
//! - `http`: clients, raw-socket requests, `Reply`, `eventually`, metrics.
//!
//! Every wait is bounded; every process started here is ended by its pid.

// Each test crate uses a part of the harness.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod http;
pub mod inproc;
pub mod receiver;
pub mod server;
pub mod sse;
pub mod upstream;

pub use http::*;
pub use inproc::{hold_clock, App, InProcess};
pub use receiver::{Answer, Received, Receiver};
pub use server::Server;
pub use sse::{parse_block, take_block, take_frame, Frame, RawSse, Sse};
pub use upstream::{blob, doc, Mode, Upstream, UpstreamState, BIG_BLOB};
