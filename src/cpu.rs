//! Where the CPU-heavy steps of ingest run: the JSON parse of a fetched
//! body, and the diff and encoding of an append.
//!
//! Pollers and appends share the ingest runtime's one thread; a step that
//! takes long there delays every other resource's polls. So a step judged
//! large by its caller (a body over `INLINE_BYTES`, a document of at least
//! `INLINE_NODES` nodes) runs on tokio's blocking pool instead, at most
//! [`permits`] at a time (the cores, and at least 2), taken in FIFO order.
//! Each resource has at most one such step at a time (its poller runs one
//! step after another, and its appends take the append lock before
//! diffing), so one resource never holds more than one permit, and a
//! hostile document slows its own resource, not the others. Small steps
//! run inline: handing them to a thread would cost more than they do.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

/// Bodies up to this size are parsed inline (about 0.1 ms).
pub const INLINE_BYTES: usize = 64 * 1024;
/// Documents below this many nodes are diffed and encoded inline.
pub const INLINE_NODES: u64 = 4096;

/// The heavy step was dropped unrun: the runtime is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the ingest runtime is shutting down")]
pub struct ShuttingDown;

/// Heavy steps running at once, at most: the cores, and at least 2, so
/// that one resource's step never makes another's wait for a permit.
pub fn permits() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

fn semaphore() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| Arc::new(Semaphore::new(permits())))
}

/// Runs `step`: inline unless `heavy`, else on the blocking pool once a
/// permit is free. The permit goes with the step, so a caller that stops
/// waiting (a cancelled future) frees it only when the step ends. A panic
/// in the step resumes in the caller, as if the step had run inline.
pub async fn run<T, F>(heavy: bool, step: F) -> Result<T, ShuttingDown>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if !heavy {
        return Ok(step());
    }
    let permit = semaphore()
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        step()
    });
    match job.await {
        Ok(v) => Ok(v),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(ShuttingDown),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn light_steps_run_inline_and_heavy_ones_on_another_thread() {
        let here = std::thread::current().id();
        assert_eq!(
            run(false, move || std::thread::current().id())
                .await
                .unwrap(),
            here
        );
        assert_ne!(
            run(true, move || std::thread::current().id())
                .await
                .unwrap(),
            here
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_permits_heavy_steps_run_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..4 * permits())
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(run(true, move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most >= 1 && most <= permits(), "{most} at once");
    }

    #[tokio::test]
    #[should_panic(expected = "boom")]
    async fn a_panic_in_a_heavy_step_reaches_the_caller() {
        let _ = run(true, || panic!("boom")).await;
    }
}
