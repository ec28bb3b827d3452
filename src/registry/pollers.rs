//! The registry's pollers: exactly one task per polled resource (none for
//! a quarantined or a push one), each with the fetcher its kind calls for — guarded,
//! the proxy's (guarded plus `proxy.allowed_hosts`), or trusted (the
//! built-in demo on loopback) — and its poll status kept across restarts of
//! the task.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{lock, Registry};
use crate::hub::UpstreamError;
use crate::model::{ResourceId, ResourceSpec};
use crate::poll::fetch::Fetcher;
use crate::poll::poller::{PollStatus, Poller};

/// The three fetchers, built once from the configuration.
pub(super) struct Fetchers {
    /// Behind the upstream guard, as configured.
    pub(super) guarded: Fetcher,
    /// The guard plus `proxy.allowed_hosts`, for ad-hoc resources.
    pub(super) proxy: Fetcher,
    /// Without the guard, for resources the operator vouched for (the demo).
    pub(super) trusted: Fetcher,
}

pub(super) struct Running {
    cancel: CancellationToken,
    /// Poll now (see `Poller::trigger`).
    trigger: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
    status: Arc<Mutex<PollStatus>>,
}

/// Running pollers and the resources exempt from the guard.
#[derive(Default)]
pub(super) struct Pollers {
    running: Mutex<HashMap<ResourceId, Running>>,
    trusted: Mutex<HashSet<ResourceId>>,
}

impl Pollers {
    /// Stops the poller of `id` and waits for it (an append in flight
    /// completes). False if none ran.
    pub(super) async fn stop(&self, id: &ResourceId) -> bool {
        let running = lock(&self.running).remove(id);
        lock(&self.trusted).remove(id);
        match running {
            Some(r) => {
                r.cancel.cancel();
                let _ = r.task.await;
                true
            }
            None => false,
        }
    }

    /// Asks the poller of `id` to poll now (coalesced, spaced: see
    /// `poll::poller`). False if none runs.
    pub(super) fn trigger(&self, id: &ResourceId) -> bool {
        match lock(&self.running).get(id) {
            Some(r) => {
                r.trigger.notify_one();
                true
            }
            None => false,
        }
    }

    pub(super) fn is_running(&self, id: &ResourceId) -> bool {
        lock(&self.running).contains_key(id)
    }

    pub(super) fn trust(&self, id: &ResourceId) {
        lock(&self.trusted).insert(id.clone());
    }

    pub(super) fn status(&self, id: &ResourceId) -> PollStatus {
        lock(&self.running)
            .get(id)
            .map(|r| lock(&r.status).clone())
            .unwrap_or_default()
    }
}

impl Registry {
    /// Starts a poller for every stored resource that has none, except
    /// quarantined ones: nothing may be appended to a log that cannot be
    /// read.
    pub fn start_all(&self) {
        for r in self.store.resources() {
            if self.store.quarantine(&r.spec.id).is_some() {
                continue;
            }
            if !lock(&self.pollers.running).contains_key(&r.spec.id) {
                self.start(r.spec);
            }
        }
    }

    /// Starts (or restarts, with new settings) the poller of `spec.id`.
    pub(super) fn start(&self, spec: ResourceSpec) {
        let id = spec.id.clone();
        let fetcher = if lock(&self.pollers.trusted).contains(&id) {
            self.fetchers.trusted.clone()
        } else if spec.ad_hoc {
            self.fetchers.proxy.clone()
        } else {
            self.fetchers.guarded.clone()
        };
        let mut pollers = lock(&self.pollers.running);
        // Keep the status across a restart of the poller.
        let status = match pollers.remove(&id) {
            Some(old) => {
                old.cancel.cancel();
                old.status
            }
            None => Arc::default(),
        };
        // A push resource is fed by its owner: no poller (an old one, from
        // before its settings changed, was cancelled above).
        if spec.push {
            return;
        }
        let cancel = self.shutdown.child_token();
        let trigger = Arc::new(tokio::sync::Notify::new());
        let poller = Poller {
            spec,
            store: self.store.clone(),
            hub: self.hub.clone(),
            metrics: self.metrics.clone(),
            fetcher,
            status: status.clone(),
            trigger: trigger.clone(),
        };
        let task = self.ingest.spawn(poller.run(cancel.clone()));
        pollers.insert(
            id,
            Running {
                cancel,
                trigger,
                task,
                status,
            },
        );
    }

    /// The upstream error of `id` now, if its last poll failed.
    pub fn last_error(&self, id: &ResourceId) -> Option<UpstreamError> {
        let pollers = lock(&self.pollers.running);
        let status = lock(&pollers.get(id)?.status);
        status.last_error.clone()
    }

    /// Resources whose upstream is failing now.
    pub fn failing(&self) -> usize {
        lock(&self.pollers.running)
            .values()
            .filter(|r| lock(&r.status).last_error.is_some())
            .count()
    }

    /// Stops every poller and waits for them (an append in flight finishes).
    pub async fn stop_all(&self) {
        let running: Vec<Running> = lock(&self.pollers.running)
            .drain()
            .map(|(_, r)| r)
            .collect();
        for r in &running {
            r.cancel.cancel();
        }
        for r in running {
            let _ = r.task.await;
        }
    }
}
