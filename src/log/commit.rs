//! Group commit: one flush (fsync) makes every write applied before it
//! durable, so concurrent appenders share flushes instead of paying one each.
//!
//! Appenders apply their batch, then enqueue a waiter. A dedicated thread
//! takes the first waiter, drains every other queued one (bounded), flushes
//! once and answers them all. Any write applied before its waiter was queued
//! is covered, because the flush starts after the waiter was dequeued.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

/// Most waiters answered by one flush; the rest wait for the next.
const MAX_BATCH: usize = 4096;
/// Bound of the waiter queue; appenders wait for room beyond it.
const QUEUE: usize = 16 * 1024;

type Waiter = oneshot::Sender<Result<(), String>>;

pub(crate) struct GroupCommit {
    tx: Option<mpsc::Sender<Waiter>>,
    /// Flushes done so far (each answers one batch of waiters).
    flushes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    pub(crate) fn start(db: sled::Db) -> std::io::Result<GroupCommit> {
        let (tx, mut rx) = mpsc::channel::<Waiter>(QUEUE);
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
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
                    let r = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    counter.fetch_add(1, Relaxed);
                    for w in waiters.drain(..) {
                        let _ = w.send(r.clone());
                    }
                }
            })?;
        Ok(GroupCommit {
            tx: Some(tx),
            flushes,
            thread: Some(thread),
        })
    }

    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Relaxed)
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
