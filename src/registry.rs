//! The live set of resources: creates, updates and deletes them in the store
//! and keeps exactly one poller running per resource; holds each resource's
//! poll status; runs compaction in the background.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::log::{Compaction, Created, LogStatus, Store, StoreError};
use crate::metrics::Metrics;
use crate::model::{now_ms, ResourceId, ResourceRecord, ResourceSpec};
use crate::poll::fetch::Fetcher;
use crate::poll::poller::{PollStatus, Poller};

/// Everything known about one resource, for the API.
#[derive(Clone, Debug)]
pub struct ResourceInfo {
    pub record: ResourceRecord,
    pub log: LogStatus,
    pub poll: PollStatus,
    pub subscribers: usize,
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    status: Arc<Mutex<PollStatus>>,
}

pub struct Registry {
    store: Store,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    fetcher: Fetcher,
    /// Used for resources the operator vouched for (the built-in demo on
    /// loopback), which the upstream guard would otherwise refuse.
    trusted_fetcher: Fetcher,
    trusted: Mutex<HashSet<ResourceId>>,
    pollers: Mutex<HashMap<ResourceId, Running>>,
    shutdown: CancellationToken,
    /// Serialises create/update/delete so a poller is never started for a
    /// resource being deleted.
    admin: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        fetcher: Fetcher,
        trusted_fetcher: Fetcher,
        shutdown: CancellationToken,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            store,
            hub,
            metrics,
            fetcher,
            trusted_fetcher,
            trusted: Mutex::new(HashSet::new()),
            pollers: Mutex::new(HashMap::new()),
            shutdown,
            admin: tokio::sync::Mutex::new(()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// Lets `id` be polled without the upstream guard (the demo).
    pub fn trust(&self, id: &ResourceId) {
        lock(&self.trusted).insert(id.clone());
    }

    /// Starts a poller for every stored resource that has none.
    pub fn start_all(&self) {
        for r in self.store.resources() {
            if !lock(&self.pollers).contains_key(&r.spec.id) {
                self.start(r.spec);
            }
        }
    }

    /// Starts (or restarts, with new settings) the poller of `spec.id`.
    fn start(&self, spec: ResourceSpec) {
        let id = spec.id.clone();
        let fetcher = if lock(&self.trusted).contains(&id) {
            self.trusted_fetcher.clone()
        } else {
            self.fetcher.clone()
        };
        let mut pollers = lock(&self.pollers);
        // Keep the status across a restart of the poller.
        let status = match pollers.remove(&id) {
            Some(old) => {
                old.cancel.cancel();
                old.status
            }
            None => Arc::default(),
        };
        let cancel = self.shutdown.child_token();
        let poller = Poller {
            spec,
            store: self.store.clone(),
            hub: self.hub.clone(),
            metrics: self.metrics.clone(),
            fetcher,
            status: status.clone(),
        };
        let task = tokio::spawn(poller.run(cancel.clone()));
        pollers.insert(
            id,
            Running {
                cancel,
                task,
                status,
            },
        );
    }

    /// Creates a resource and starts polling it; `Exists` changes nothing.
    pub async fn create(&self, spec: ResourceSpec) -> Result<Created, StoreError> {
        let _admin = self.admin.lock().await;
        let created = self.store.create(spec, now_ms()).await?;
        if let Created::New(r) = &created {
            self.start(r.spec.clone());
        }
        Ok(created)
    }

    /// Creates or updates a resource (config file at start-up); restarts its
    /// poller if the settings changed.
    pub async fn put(&self, spec: ResourceSpec) -> Result<ResourceRecord, StoreError> {
        let _admin = self.admin.lock().await;
        let unchanged = self
            .store
            .resource(&spec.id)
            .is_some_and(|r| r.spec == spec);
        let record = self.store.put(spec, now_ms()).await?;
        if !unchanged || !lock(&self.pollers).contains_key(&record.spec.id) {
            self.start(record.spec.clone());
        }
        Ok(record)
    }

    /// Stops polling, deletes the log, ends open streams. False if unknown.
    pub async fn delete(&self, id: &ResourceId) -> Result<bool, StoreError> {
        let _admin = self.admin.lock().await;
        let running = lock(&self.pollers).remove(id);
        if let Some(r) = running {
            r.cancel.cancel();
            // The poller stops between steps; an append in flight completes.
            let _ = r.task.await;
        }
        let deleted = self.store.delete(id).await?;
        self.hub.close(id);
        lock(&self.trusted).remove(id);
        Ok(deleted)
    }

    pub fn info(&self, id: &ResourceId) -> Option<ResourceInfo> {
        let record = self.store.resource(id)?;
        let log = self.store.status(id).ok()?;
        let poll = lock(&self.pollers)
            .get(id)
            .map(|r| lock(&r.status).clone())
            .unwrap_or_default();
        Some(ResourceInfo {
            record,
            log,
            poll,
            subscribers: self.hub.subscribers(id),
        })
    }

    pub fn infos(&self) -> Vec<ResourceInfo> {
        self.store
            .resources()
            .iter()
            .filter_map(|r| self.info(&r.spec.id))
            .collect()
    }

    /// Resources whose upstream is failing now.
    pub fn failing(&self) -> usize {
        lock(&self.pollers)
            .values()
            .filter(|r| lock(&r.status).last_error.is_some())
            .count()
    }

    /// Compacts every resource every `every`, until shutdown.
    pub fn spawn_compactor(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                this.compact_all().await;
            }
        })
    }

    pub async fn compact_all(&self) {
        for r in self.store.resources() {
            if self.shutdown.is_cancelled() {
                return;
            }
            match self.store.compact(&r.spec.id, now_ms()).await {
                Ok(Compaction::Done { removed_events, .. }) => {
                    Metrics::inc(&self.metrics.compactions);
                    self.metrics
                        .compacted_events
                        .fetch_add(removed_events, Relaxed);
                }
                Ok(Compaction::Nothing) | Err(StoreError::NoSuchResource(_)) => {}
                Err(e) => tracing::error!(resource = %r.spec.id, error = %e, "compaction failed"),
            }
        }
    }

    /// Stops every poller and waits for them (an append in flight finishes).
    pub async fn stop_all(&self) {
        let running: Vec<Running> = lock(&self.pollers).drain().map(|(_, r)| r).collect();
        for r in &running {
            r.cancel.cancel();
        }
        for r in running {
            let _ = r.task.await;
        }
    }
}
