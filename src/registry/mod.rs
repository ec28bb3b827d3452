//! The live set of resources: creates, updates and deletes them in the log
//! and keeps exactly one poller running per resource (`pollers`); holds
//! each resource's poll status; compacts in the background (`compactor`);
//! and, for the streamdata route's proxy mode, creates ad-hoc resources for
//! unknown URLs and removes them after `proxy.idle` without subscribers
//! (`proxy`). Built once, from its [`Parts`], with every fetcher made from
//! the configuration inside: nothing can be swapped or set later.

mod compactor;
mod pollers;
mod proxy;

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::model::{now_ms, EventId, ResourceId, ResourceRecord, ResourceSpec};
use crate::poll::fetch::{FetchConfig, FetchError, Fetcher};
use crate::poll::poller::PollStatus;
use crate::store::{Created, Edit, Edited, LogStatus, Quarantine, Store, StoreError};

pub use proxy::ProxyError;

/// Everything known about one resource, for the API.
#[derive(Clone, Debug)]
pub struct ResourceInfo {
    pub record: ResourceRecord,
    pub log: LogStatus,
    pub poll: PollStatus,
    pub subscribers: usize,
    /// Created by the proxy for an unknown streamdata URL.
    pub ad_hoc: bool,
    /// Set when its stored data could not be read at start-up.
    pub quarantine: Option<Quarantine>,
}

/// What a registry is built from.
pub struct Parts {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// How upstreams are fetched (timeouts, body cap, the guard); the
    /// proxy's and the trusted fetcher are derived from it.
    pub fetch: FetchConfig,
    pub proxy: ProxyConfig,
    /// Stops pollers, the compactor and the reaper.
    pub shutdown: CancellationToken,
    /// Where pollers and appends run: a runtime of their own (see
    /// `app::IngestRuntime`), so that fan-out work cannot delay them. Their
    /// CPU-heavy steps run on the blocking pool (`crate::cpu`).
    pub ingest: tokio::runtime::Handle,
}

/// See the module docs.
pub struct Registry {
    ingest: tokio::runtime::Handle,
    store: Store,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    fetchers: pollers::Fetchers,
    pollers: pollers::Pollers,
    proxy: Mutex<proxy::Proxy>,
    shutdown: CancellationToken,
    /// Serialises create/update/delete so a poller is never started for a
    /// resource being deleted.
    admin: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// Builds the registry; nothing polls until [`Registry::start_all`].
    pub fn new(parts: Parts) -> Result<Arc<Registry>, FetchError> {
        let fetchers = pollers::Fetchers {
            proxy: Fetcher::new(FetchConfig {
                allowed_hosts: parts.proxy.allowed_hosts.clone(),
                ..parts.fetch.clone()
            })?,
            trusted: Fetcher::new(FetchConfig {
                allow_private: true,
                ..parts.fetch.clone()
            })?,
            guarded: Fetcher::new(parts.fetch)?,
        };
        Ok(Arc::new(Registry {
            proxy: Mutex::new(proxy::Proxy::new(parts.proxy, &parts.store)),
            ingest: parts.ingest,
            store: parts.store,
            hub: parts.hub,
            metrics: parts.metrics,
            fetchers,
            pollers: pollers::Pollers::default(),
            shutdown: parts.shutdown,
            admin: tokio::sync::Mutex::new(()),
        }))
    }

    /// The log, for in-process callers that write to it without a poller
    /// (the fan-out bench is the upstream of its resources). The API does
    /// not use it: it sees only `Service`.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether `url` may be registered as an upstream (the guard, as
    /// configured, on what can be checked without a request).
    pub fn check_url(&self, url: &str) -> Result<(), FetchError> {
        self.fetchers.guarded.check_url(url)
    }

    /// Appends `doc` as the next version of `id` and publishes it once
    /// durable, exactly as a poll that fetched it would (minus the poll
    /// status): for callers that have the document in hand, such as the
    /// fan-out bench, which needs more than one event per poll interval.
    /// `None` when it equals the current version.
    pub async fn ingest(
        &self,
        id: &ResourceId,
        doc: serde_json::Value,
    ) -> Result<Option<EventId>, StoreError> {
        let (store, hub, metrics, id) = (
            self.store.clone(),
            self.hub.clone(),
            self.metrics.clone(),
            id.clone(),
        );
        // On the pollers' runtime, like every other append.
        self.ingest
            .spawn(
                async move { crate::poll::poller::ingest(&store, &hub, &metrics, &id, doc).await },
            )
            .await
            .map_err(|e| StoreError::Flush(format!("ingest task failed: {e}")))?
    }

    /// [`Registry::ingest`] of what `edit` makes of the head, if
    /// `expected` (when given) is the newest event: the push path. On the
    /// pollers' runtime like every append, so a client that goes away
    /// mid-request stops nothing.
    pub async fn ingest_edit(
        &self,
        id: &ResourceId,
        expected: Option<EventId>,
        heavy: bool,
        edit: Edit,
    ) -> Result<Edited, StoreError> {
        let (store, hub, metrics, id) = (
            self.store.clone(),
            self.hub.clone(),
            self.metrics.clone(),
            id.clone(),
        );
        self.ingest
            .spawn(async move {
                crate::poll::poller::ingest_edit(&store, &hub, &metrics, &id, expected, heavy, edit)
                    .await
            })
            .await
            .map_err(|e| StoreError::Flush(format!("ingest task failed: {e}")))?
    }

    /// Asks the poller of `id` to poll now: coalesced with a poll in
    /// flight, spaced by `poll::poller::TRIGGER_SPACING`, back-off reset.
    /// False if no poller runs for it (unknown, push or quarantined).
    pub fn poll_now(&self, id: &ResourceId) -> bool {
        self.pollers.trigger(id)
    }

    /// The most a pushed document may weigh, as JSON text: the upstream
    /// body limit.
    pub fn max_push_body(&self) -> usize {
        self.fetchers.guarded.max_body()
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

    /// [`Registry::put`] for a resource polled without the upstream guard:
    /// one the operator vouched for, such as the built-in demo on loopback.
    pub async fn put_trusted(&self, spec: ResourceSpec) -> Result<ResourceRecord, StoreError> {
        self.pollers.trust(&spec.id);
        self.put(spec).await
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
        if !unchanged || !self.pollers.is_running(&record.spec.id) {
            self.start(record.spec.clone());
        }
        Ok(record)
    }

    /// Stops polling, deletes the log, ends open streams. False if unknown.
    pub async fn delete(&self, id: &ResourceId) -> Result<bool, StoreError> {
        let _admin = self.admin.lock().await;
        // The poller stops between steps; an append in flight completes.
        self.pollers.stop(id).await;
        let deleted = self.store.delete(id).await?;
        self.hub.close(id);
        lock(&self.proxy).active.remove(id);
        Ok(deleted)
    }

    /// One resource's settings, log status and poll status.
    pub fn info(&self, id: &ResourceId) -> Option<ResourceInfo> {
        let record = self.store.resource(id)?;
        let ad_hoc = record.spec.ad_hoc;
        let log = self.store.status(id).ok()?;
        let poll = self.pollers.status(id);
        Some(ResourceInfo {
            record,
            log,
            poll,
            subscribers: self.hub.subscribers(id),
            ad_hoc,
            quarantine: self.store.quarantine(id),
        })
    }

    /// [`Registry::info`] of every resource, ordered by id.
    pub fn infos(&self) -> Vec<ResourceInfo> {
        self.store
            .resources()
            .iter()
            .filter_map(|r| self.info(&r.spec.id))
            .collect()
    }
}
