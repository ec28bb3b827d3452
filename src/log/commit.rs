//! Group commit: one flush (fsync) makes every write applied before it
//! durable, so concurrent appenders share flushes instead of paying one each.
//!
//! Appenders apply their batch, then enqueue a waiter. A dedicated thread
//! takes the first waiter, drains every other queued one (bounded), flushes
//! once and answers them all. Any write applied before its waiter was queued
//! is covered, because the flush starts after the waiter was dequeued.
//!
//! The same flushes bound how far sled's log writes may run ahead of its
//! disk writes ([`GroupCommit::wrote`]): sled 0.34 hands every sealed log
//! buffer to its I/O pool of 7 threads and never waits for them, and with
//! 7 or more buffers in flight it can deadlock when it shrinks its file
//! (see [`UNFLUSHED_BUDGET`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

/// Most waiters answered by one flush; the rest wait for the next.
const MAX_BATCH: usize = 4096;
/// Bound of the waiter queue; appenders wait for room beyond it.
const QUEUE: usize = 16 * 1024;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Most bytes of values written since the last flush began (a removed key
/// counts as one chunk) before a writer waits for the next flush
/// ([`GroupCommit::wrote`]).
///
/// Why: sled 0.34.7 writes each sealed log buffer (one 512 KiB segment at
/// most) on its I/O pool, which stays at 7 threads under load, and never
/// waits for those writes. When it frees the segment at the end of its
/// file it queues the truncation on that pool, and a writer that then
/// needs a new segment waits for the truncation while holding the segment
/// accountant, which every finishing buffer write needs: with 7 writes
/// ahead of the truncation, nothing moves again (spacejam/sled#1269, fixed
/// only after 0.34). A flush returns once every buffer sealed before it is
/// written, so with at most this many bytes between flushes (about 3 log
/// buffers once sled's node rewrites are counted, `docs/BENCHMARKS.md`)
/// the pool always has a thread free for the truncation.
pub(crate) const UNFLUSHED_BUDGET: u64 = 256 * 1024;

/// A flush running longer than this counts as a storage failure
/// ([`StorageHealth::failing`]): a flush takes milliseconds, and one that
/// does not return means sled is stuck (its 0.34.7 truncation deadlock,
/// `UNFLUSHED_BUDGET`) or the disk hangs; no write can be durable again.
pub const FLUSH_STUCK: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the store's writes are failing: set by a failed write or flush,
/// or by a flush that has not returned for [`FLUSH_STUCK`]; cleared by the
/// next flush that succeeds.
///
/// sled 0.34 keeps the first IO error of its write path as a global error
/// and returns it from every later write and flush of that `Db` until it is
/// reopened, so in practice a failure stays set until the process restarts
/// (`app` exits for a supervisor; see `docs/RELIABILITY.md`).
#[derive(Default)]
pub struct StorageHealth {
    /// The error, and since when (unix ms), while failing.
    failing: Mutex<Option<(String, u64)>>,
    errors: AtomicU64,
    /// When the flush running now began (unix ms); 0 while none runs.
    flush_began: AtomicU64,
}

impl StorageHealth {
    /// The error and since when (unix ms), while writes are failing.
    pub fn failing(&self) -> Option<(String, u64)> {
        let failed = self
            .failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        failed.or_else(|| self.stuck(crate::model::now_ms()))
    }

    /// A flush that began at least [`FLUSH_STUCK`] before `now_ms` and has
    /// not returned, as an error and since when.
    fn stuck(&self, now_ms: u64) -> Option<(String, u64)> {
        let began = self.flush_began.load(Relaxed);
        let running = now_ms.saturating_sub(began);
        (began != 0 && u128::from(running) >= FLUSH_STUCK.as_millis()).then(|| {
            (
                format!("a flush has not returned for {} s", running / 1000),
                began,
            )
        })
    }

    fn flush_begins(&self) {
        self.flush_began
            .store(crate::model::now_ms().max(1), Relaxed);
    }

    fn flush_ends(&self) {
        self.flush_began.store(0, Relaxed);
    }

    /// Writes and flushes that failed so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    /// Records a failed write or flush; returns the error for `?`.
    pub(crate) fn failed<E: std::fmt::Display>(&self, e: E) -> E {
        self.errors.fetch_add(1, Relaxed);
        let mut f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            tracing::error!(error = %e, "storage: a write failed; the store is failing");
            *f = Some((e.to_string(), crate::model::now_ms()));
        }
        e
    }

    fn flushed(&self) {
        let mut f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if f.take().is_some() {
            tracing::warn!("storage: a flush succeeded again; the store recovered");
        }
    }
}

pub(crate) struct GroupCommit {
    tx: Option<mpsc::Sender<Waiter>>,
    /// Flushes done so far (each answers one batch of waiters).
    flushes: Arc<AtomicU64>,
    /// Value bytes written since the last flush began; reset by the flush
    /// thread just before each flush, which covers them.
    unflushed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    pub(crate) fn start(db: sled::Db, health: Arc<StorageHealth>) -> std::io::Result<GroupCommit> {
        let (tx, mut rx) = mpsc::channel::<Waiter>(QUEUE);
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        let unflushed = Arc::new(AtomicU64::new(0));
        let written = unflushed.clone();
        let thread = std::thread::Builder::new()
            .name("patchfeed-flush".into())
            .spawn(move || {
                let mut waiters = Vec::with_capacity(64);
                while let Some(first) = rx.blocking_recv() {
                    waiters.push(first);
                    while waiters.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(w) => waiters.push(w),
                            Err(_) => break,
                        }
                    }
                    written.store(0, Relaxed);
                    health.flush_begins();
                    let flushed = db.flush();
                    health.flush_ends();
                    let r = match flushed {
                        Ok(_) => {
                            health.flushed();
                            Ok(())
                        }
                        Err(e) => Err(health.failed(e).to_string()),
                    };
                    counter.fetch_add(1, Relaxed);
                    for w in waiters.drain(..) {
                        let _ = w.send(r.clone());
                    }
                }
            })?;
        Ok(GroupCommit {
            tx: Some(tx),
            flushes,
            unflushed,
            thread: Some(thread),
        })
    }

    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Relaxed)
    }

    /// Counts `bytes` of values just written; once more than
    /// [`UNFLUSHED_BUDGET`] were written since the last flush began, waits
    /// for a flush. Every writer of event and snapshot values calls it after
    /// each insert, so sled's unwritten log stays within the budget plus
    /// one insert per writer running at that moment.
    pub(crate) async fn wrote(&self, bytes: usize) -> Result<(), String> {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let total = self
            .unflushed
            .fetch_add(bytes, Relaxed)
            .saturating_add(bytes);
        if total > UNFLUSHED_BUDGET {
            self.durable().await?;
        }
        Ok(())
    }

    /// [`GroupCommit::wrote`] for code that cannot await (removals, which
    /// run on blocking threads or between awaits): flushes `tree` itself
    /// once over the budget.
    pub(crate) fn wrote_blocking(&self, tree: &sled::Tree, bytes: usize) -> sled::Result<()> {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let total = self
            .unflushed
            .fetch_add(bytes, Relaxed)
            .saturating_add(bytes);
        if total > UNFLUSHED_BUDGET {
            self.unflushed.store(0, Relaxed);
            tree.flush()?;
        }
        Ok(())
    }

    /// Returns once every write applied before this call is durable.
    pub(crate) async fn durable(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let queue = self.tx.as_ref().ok_or("store is closing")?;
        queue.send(tx).await.map_err(|_| "flush thread stopped")?;
        rx.await.map_err(|_| "flush thread stopped")?
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the queue ends the thread after its current flush; joining
        // it releases its handle on the database, so the directory can be
        // reopened at once.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17 (finding 4, follow-up): a flush stuck inside sled (its
    /// 0.34.7 truncation deadlock) returned no error, so the store never
    /// counted as failing and the server hung with `/healthz` ok. The clock
    /// of a real flush is moved back here: the deadlock itself cannot be
    /// produced on demand.
    #[test]
    fn issue_17_deadlock_a_flush_that_does_not_return_counts_as_failing() {
        let health = StorageHealth::default();
        assert_eq!(health.failing(), None);
        health.flush_begins();
        assert_eq!(health.failing(), None, "a flush that just began");
        let stuck = FLUSH_STUCK.as_millis() as u64;
        let began = crate::model::now_ms() - stuck - 1_000;
        health.flush_began.store(began, Relaxed);
        let (error, since) = health.failing().expect("a stuck flush is a failure");
        assert!(error.contains("has not returned"), "{error}");
        assert_eq!(since, began);
        health.flush_ends();
        assert_eq!(health.failing(), None, "the flush returned");
    }
}
