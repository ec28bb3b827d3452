//! The black-box harness of this crate: the real `patchfeed` binary on a
//! temp data dir, a real scripted upstream on loopback, a real streaming
//! SSE client. It lives in `tests/common/` (shared by every test crate);
//! `use crate::support::*` brings all of it. Every wait is bounded.

pub use crate::common::*;
