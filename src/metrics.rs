//! Counters and gauges, rendered in the Prometheus text format by
//! `GET /metrics`. Plain atomics: cheap enough for every poll and frame.
//!
//! Aggregates only: no series names a resource, URL or token.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub polls_changed: AtomicU64,
    pub polls_unchanged: AtomicU64,
    pub polls_not_modified: AtomicU64,
    pub polls_failed: AtomicU64,
    pub events_appended: AtomicU64,
    pub append_errors: AtomicU64,
    pub sse_open: AtomicI64,
    pub sse_opened: AtomicU64,
    pub sse_frames: AtomicU64,
    pub sse_catchup_events: AtomicU64,
    pub sse_snapshots: AtomicU64,
    pub sse_lagged: AtomicU64,
    pub http_open: AtomicI64,
    pub http_refused: AtomicU64,
    pub compactions: AtomicU64,
    pub compacted_events: AtomicU64,
    pub proxy_created: AtomicU64,
    pub proxy_reaped: AtomicU64,
    /// Upstream pages answered 2xx (an unpaginated poll is one page).
    pub pages_fetched: AtomicU64,
    /// Upstream pages answered 304.
    pub pages_not_modified: AtomicU64,
    /// Failed polls by error code. The codes are the fixed set of
    /// `FetchError::code` plus the poller's own: the map is bounded.
    pub poll_failures: Mutex<BTreeMap<String, u64>>,
}

/// Gauge values that live elsewhere, sampled at render time.
pub struct Sampled {
    pub resources: usize,
    pub subscribers: usize,
    pub resources_failing: usize,
    pub proxy_resources: usize,
    /// Group-commit flushes of the log so far.
    pub log_flushes: u64,
    /// Writes to the data dir are failing now.
    pub storage_failing: bool,
    /// Writes and flushes of the log that failed so far.
    pub storage_errors: u64,
    /// Resources (and unattributable records) quarantined at start-up.
    pub resources_quarantined: usize,
    /// Appends whose diff ran out of budget (a root `replace` instead).
    pub diff_budget_exceeded: u64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Counts a failed poll under its error code.
    pub fn poll_failed(&self, code: &str) {
        let mut m = self.poll_failures.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                m.insert(code.to_owned(), 1);
            }
        }
    }

    pub fn render(&self, s: &Sampled) -> String {
        let mut out = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, labels: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (l, v) in labels {
                if l.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{l}}} {v}");
                }
            }
        };
        let g = |c: &AtomicU64| c.load(Relaxed);
        counter(
            "patchfeed_polls_total",
            "Upstream polls by outcome.",
            &[
                ("outcome=\"changed\"", g(&self.polls_changed)),
                ("outcome=\"unchanged\"", g(&self.polls_unchanged)),
                ("outcome=\"not_modified\"", g(&self.polls_not_modified)),
                ("outcome=\"failed\"", g(&self.polls_failed)),
            ],
        );
        counter(
            "patchfeed_upstream_pages_total",
            "Upstream pages fetched, by answer (an unpaginated poll is one page).",
            &[
                ("outcome=\"fetched\"", g(&self.pages_fetched)),
                ("outcome=\"not_modified\"", g(&self.pages_not_modified)),
            ],
        );
        let failures: Vec<(String, u64)> = self
            .poll_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(code, n)| (format!("code=\"{code}\""), *n))
            .collect();
        let failures: Vec<(&str, u64)> = failures.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        counter(
            "patchfeed_poll_failures_total",
            "Failed polls by error code (the code of last_error and of event: error).",
            &failures,
        );
        counter(
            "patchfeed_events_appended_total",
            "Events made durable in the log.",
            &[("", g(&self.events_appended))],
        );
        counter(
            "patchfeed_log_flushes_total",
            "Group-commit flushes (fsyncs) of the log; events appended per flush show how well appends share them.",
            &[("", s.log_flushes)],
        );
        counter(
            "patchfeed_diff_budget_exceeded_total",
            "Appends whose diff ran out of its work budget and were stored as one replace of the whole document.",
            &[("", s.diff_budget_exceeded)],
        );
        counter(
            "patchfeed_append_errors_total",
            "Appends that failed.",
            &[("", g(&self.append_errors))],
        );
        counter(
            "patchfeed_storage_errors_total",
            "Writes and flushes of the log that failed.",
            &[("", s.storage_errors)],
        );
        counter(
            "patchfeed_sse_streams_opened_total",
            "Event streams opened.",
            &[("", g(&self.sse_opened))],
        );
        counter(
            "patchfeed_sse_frames_total",
            "SSE chunks written (events, snapshots, errors, keep-alives).",
            &[("", g(&self.sse_frames))],
        );
        counter(
            "patchfeed_sse_catchup_events_total",
            "Events served from the log (resume, lag).",
            &[("", g(&self.sse_catchup_events))],
        );
        counter(
            "patchfeed_sse_snapshots_total",
            "Snapshots sent.",
            &[("", g(&self.sse_snapshots))],
        );
        counter(
            "patchfeed_sse_lagged_total",
            "Times a subscriber fell behind the live buffer and went back to the log.",
            &[("", g(&self.sse_lagged))],
        );
        counter(
            "patchfeed_http_connections_refused_total",
            "Connections refused over max_connections.",
            &[("", g(&self.http_refused))],
        );
        counter(
            "patchfeed_compactions_total",
            "Compactions that removed history.",
            &[("", g(&self.compactions))],
        );
        counter(
            "patchfeed_compacted_events_total",
            "Events removed by compaction.",
            &[("", g(&self.compacted_events))],
        );
        counter(
            "patchfeed_proxy_resources_created_total",
            "Ad-hoc resources created by the streamdata proxy.",
            &[("", g(&self.proxy_created))],
        );
        counter(
            "patchfeed_proxy_resources_removed_total",
            "Ad-hoc resources removed after proxy.idle without subscribers.",
            &[("", g(&self.proxy_reaped))],
        );
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let n = |u: usize| i64::try_from(u).unwrap_or(i64::MAX);
        gauge(
            "patchfeed_resources",
            "Registered resources.",
            n(s.resources),
        );
        gauge(
            "patchfeed_proxy_resources",
            "Ad-hoc resources of the streamdata proxy.",
            n(s.proxy_resources),
        );
        gauge(
            "patchfeed_resources_failing",
            "Resources whose upstream is failing.",
            n(s.resources_failing),
        );
        gauge(
            "patchfeed_storage_failing",
            "1 while writes to the data dir are failing (see /healthz).",
            i64::from(s.storage_failing),
        );
        gauge(
            "patchfeed_resources_quarantined",
            "Resources whose stored data could not be read at start-up.",
            n(s.resources_quarantined),
        );
        gauge(
            "patchfeed_subscribers",
            "Live subscriptions across resources.",
            n(s.subscribers),
        );
        gauge(
            "patchfeed_sse_streams_open",
            "Open event streams.",
            self.sse_open.load(Relaxed),
        );
        gauge(
            "patchfeed_http_connections_open",
            "Open HTTP connections.",
            self.http_open.load(Relaxed),
        );
        out
    }
}
