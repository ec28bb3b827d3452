//! The registry's proxy mode, for the streamdata route: an unknown upstream
//! URL gets an ad-hoc resource (guarded, plus `proxy.allowed_hosts`),
//! shared by every client of the same URL and headers, and removed after
//! `proxy.idle` without subscribers. Whether a resource is ad hoc is stored
//! with it (`ResourceSpec::ad_hoc`), never read from its id.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{lock, Registry};
use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::model::{ad_hoc_base, normalize_url, now_ms, ResourceId, ResourceInput, ResourceSpec};
use crate::poll::fetch::FetchError;
use crate::store::{Created, StoreError};

/// Why the proxy would not create a resource for a URL.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no resource polls this URL, and proxy mode is off")]
    Disabled,
    #[error("{0}")]
    Refused(FetchError),
    #[error("the proxy already runs {0} ad-hoc resources (proxy.max_resources)")]
    Full(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Proxy settings and the ad-hoc resources in use.
pub(super) struct Proxy {
    pub(super) config: ProxyConfig,
    /// Ad-hoc resources and when each last had a subscriber.
    pub(super) active: HashMap<ResourceId, tokio::time::Instant>,
}

impl Proxy {
    /// Proxy mode as configured, adopting the ad-hoc resources a previous
    /// run left in the store (they are reaped like new ones, even with
    /// proxy mode now off). A quarantined one is kept for its operator.
    pub(super) fn new(config: ProxyConfig, store: &crate::store::Store) -> Proxy {
        let now = tokio::time::Instant::now();
        let active = store
            .resources()
            .into_iter()
            .filter(|r| r.spec.ad_hoc && store.quarantine(&r.spec.id).is_none())
            .map(|r| (r.spec.id, now))
            .collect();
        Proxy { config, active }
    }
}

impl Registry {
    /// Whether unknown streamdata URLs get ad-hoc resources.
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
            .find(|r| {
                !r.spec.push && normalize_url(&r.spec.url) == want && &r.spec.headers == headers
            })
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
        let (config, count) = {
            let p = lock(&self.proxy);
            (p.config.clone(), p.active.len())
        };
        if !config.enabled {
            return Err(ProxyError::Disabled);
        }
        self.fetchers
            .proxy
            .check_url(url)
            .map_err(ProxyError::Refused)?;
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
            url: Some(url.to_owned()),
            interval: Some(config.interval),
            headers: headers.clone(),
            snapshot_every: None,
            retain: Some(Some(ResourceSpec::AD_HOC_RETAIN)),
            ad_hoc: true,
            push: false,
            pages: None,
        })
        .map_err(|e| ProxyError::Refused(FetchError::InvalidUrl(e.to_string())))?;
        let created = self.store.create(spec, now_ms()).await?;
        // Registered (and its idle clock started) only now: a slow create
        // must not look idle to the reaper.
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
