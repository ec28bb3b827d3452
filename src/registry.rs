//! The live set of resources: creates, updates and deletes them in the store
//! and keeps exactly one poller running per resource; holds each resource's
//! poll status; runs compaction in the background; and, for the streamdata
//! route's proxy mode, creates ad-hoc resources for unknown URLs and removes
//! them after `proxy.idle` without subscribers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;
use crate::hub::Hub;
use crate::log::{Compaction, Created, LogStatus, Quarantine, Store, StoreError};
use crate::metrics::Metrics;
use crate::model::{
    ad_hoc_base, normalize_url, now_ms, EventId, ResourceId, ResourceInput, ResourceRecord,
    ResourceSpec,
};
use crate::poll::fetch::{FetchError, Fetcher};
use crate::poll::poller::{PollStatus, Poller};

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

/// Why the proxy would not create a resource for a URL.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no resource polls this URL, and proxy mode is off")]
    Disabled,
    #[error("{0}")]
    Refused(crate::poll::fetch::FetchError),
    #[error("the proxy already runs {0} ad-hoc resources (proxy.max_resources)")]
    Full(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Proxy {
    config: ProxyConfig,
    fetcher: Fetcher,
    /// Ad-hoc resources and when each last had a subscriber.
    active: HashMap<ResourceId, tokio::time::Instant>,
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    status: Arc<Mutex<PollStatus>>,
}

pub struct Registry {
    /// Where pollers and appends run: a runtime of their own (see
    /// `app::IngestRuntime`), so that fan-out work cannot delay them.
    ingest: tokio::runtime::Handle,
    store: Store,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    fetcher: Fetcher,
    /// Used for resources the operator vouched for (the built-in demo on
    /// loopback), which the upstream guard would otherwise refuse.
    trusted_fetcher: Fetcher,
    trusted: Mutex<HashSet<ResourceId>>,
    proxy: Mutex<Proxy>,
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
        ingest: tokio::runtime::Handle,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            ingest,
            store,
            hub,
            metrics,
            fetcher,
            trusted_fetcher: trusted_fetcher.clone(),
            trusted: Mutex::new(HashSet::new()),
            proxy: Mutex::new(Proxy {
                config: ProxyConfig::default(),
                fetcher: trusted_fetcher.clone(),
                active: HashMap::new(),
            }),
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

    /// Starts a poller for every stored resource that has none, except
    /// quarantined ones: nothing may be appended to a log that cannot be
    /// read.
    pub fn start_all(&self) {
        for r in self.store.resources() {
            if self.store.quarantine(&r.spec.id).is_some() {
                continue;
            }
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
        } else if lock(&self.proxy).active.contains_key(&id) {
            lock(&self.proxy).fetcher.clone()
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
        let task = self.ingest.spawn(poller.run(cancel.clone()));
        pollers.insert(
            id,
            Running {
                cancel,
                task,
                status,
            },
        );
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
        lock(&self.proxy).active.remove(id);
        Ok(deleted)
    }

    pub fn info(&self, id: &ResourceId) -> Option<ResourceInfo> {
        let record = self.store.resource(id)?;
        let ad_hoc = record.spec.ad_hoc;
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
            ad_hoc,
            quarantine: self.store.quarantine(id),
        })
    }

    pub fn infos(&self) -> Vec<ResourceInfo> {
        self.store
            .resources()
            .iter()
            .filter_map(|r| self.info(&r.spec.id))
            .collect()
    }

    /// The upstream error of `id` now, if its last poll failed.
    pub fn last_error(&self, id: &ResourceId) -> Option<crate::hub::UpstreamError> {
        let pollers = lock(&self.pollers);
        let status = lock(&pollers.get(id)?.status);
        status.last_error.clone()
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
                Ok(Compaction::Nothing)
                | Err(StoreError::NoSuchResource(_) | StoreError::Quarantined { .. }) => {}
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

    // ---- proxy mode (the streamdata route) ----

    /// Sets up proxy mode and adopts the ad-hoc resources a previous run
    /// left in the store (they are reaped like new ones, even with proxy
    /// mode now off). Which resources are ad hoc is stored with each one
    /// (`ResourceSpec::ad_hoc`), never read from its id. Call before
    /// `start_all`.
    pub fn configure_proxy(&self, config: ProxyConfig, fetcher: Fetcher) {
        let now = tokio::time::Instant::now();
        let mut p = lock(&self.proxy);
        for r in self.store.resources() {
            // A quarantined one is kept for its operator, not reaped.
            if r.spec.ad_hoc && self.store.quarantine(&r.spec.id).is_none() {
                p.active.insert(r.spec.id.clone(), now);
            }
        }
        p.config = config;
        p.fetcher = fetcher;
    }

    pub fn proxy_enabled(&self) -> bool {
        lock(&self.proxy).config.enabled
    }

    /// Ad-hoc resources now.
    pub fn ad_hoc_count(&self) -> usize {
        lock(&self.proxy).active.len()
    }

    /// The resource whose upstream is `url` with exactly `headers`.
    pub fn find_by_upstream(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
    ) -> Option<ResourceId> {
        let want = normalize_url(url);
        self.store
            .resources()
            .into_iter()
            .find(|r| normalize_url(&r.spec.url) == want && &r.spec.headers == headers)
            .map(|r| r.spec.id)
    }

    /// The resource for `url` + `headers`, created ad hoc (proxy mode) if
    /// none exists. Guarded like any upstream, plus `proxy.allowed_hosts`.
    pub async fn proxy_resource(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<ResourceId, ProxyError> {
        let _admin = self.admin.lock().await;
        if let Some(id) = self.find_by_upstream(url, headers) {
            self.touch(&id);
            return Ok(id);
        }
        let (config, fetcher, count) = {
            let p = lock(&self.proxy);
            (p.config.clone(), p.fetcher.clone(), p.active.len())
        };
        if !config.enabled {
            return Err(ProxyError::Disabled);
        }
        fetcher.check_url(url).map_err(ProxyError::Refused)?;
        if count >= config.max_resources {
            return Err(ProxyError::Full(config.max_resources));
        }
        let base = ad_hoc_base(url);
        let id = (1..=16u32)
            .map(|n| {
                if n == 1 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                }
            })
            .filter_map(|s| ResourceId::new(&s).ok())
            .find(|id| self.store.resource(id).is_none())
            .ok_or_else(|| ProxyError::Full(config.max_resources))?;
        // The same validator as the config file and the API: the URL and
        // headers come from a client's request.
        let spec = ResourceSpec::validate(ResourceInput {
            id: Some(id.as_str().to_owned()),
            url: url.to_owned(),
            interval: Some(config.interval),
            headers: headers.clone(),
            snapshot_every: None,
            retain: Some(Some(ResourceSpec::AD_HOC_RETAIN)),
            ad_hoc: true,
        })
        .map_err(|e| ProxyError::Refused(FetchError::InvalidUrl(e.to_string())))?;
        let created = self.store.create(spec, now_ms()).await?;
        // Registered (and its idle clock started) only now: a slow create
        // must not look idle to the reaper. Before `start`, which picks the
        // proxy's fetcher for ad-hoc resources.
        lock(&self.proxy)
            .active
            .insert(id.clone(), tokio::time::Instant::now());
        if let Created::New(r) = created {
            tracing::info!(resource = %id, "proxy: new ad-hoc resource");
            Metrics::inc(&self.metrics.proxy_created);
            self.start(r.spec);
        }
        Ok(id)
    }

    /// Marks an ad-hoc resource as in use now.
    pub fn touch(&self, id: &ResourceId) {
        if let Some(t) = lock(&self.proxy).active.get_mut(id) {
            *t = tokio::time::Instant::now();
        }
    }

    /// Removes ad-hoc resources idle (no subscriber) for `proxy.idle`.
    pub fn spawn_proxy_reaper(self: &Arc<Self>) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let idle = lock(&this.proxy).config.idle;
                let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
                tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                this.reap_idle().await;
            }
        })
    }

    async fn reap_idle(&self) {
        let now = tokio::time::Instant::now();
        let idle: Vec<ResourceId> = {
            let mut p = lock(&self.proxy);
            let limit = p.config.idle;
            let mut out = Vec::new();
            for (id, last) in p.active.iter_mut() {
                if self.hub.subscribers(id) > 0 {
                    *last = now;
                } else if now.duration_since(*last) >= limit {
                    out.push(id.clone());
                }
            }
            out
        };
        for id in idle {
            // A client may have arrived meanwhile.
            if self.hub.subscribers(&id) > 0 {
                continue;
            }
            match self.delete(&id).await {
                Ok(_) => {
                    Metrics::inc(&self.metrics.proxy_reaped);
                    tracing::info!(resource = %id, "proxy: ad-hoc resource idle, removed");
                }
                Err(e) => {
                    tracing::warn!(resource = %id, error = %e, "proxy: removing an idle resource failed")
                }
            }
        }
    }
}
