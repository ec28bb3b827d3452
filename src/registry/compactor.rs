//! The registry's compactor: every `limits.compact_every`, each resource's
//! events older than its `retain` are compacted away (see
//! `Storage::compact`), until shutdown.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Registry;
use crate::metrics::Metrics;
use crate::model::now_ms;
use crate::store::{Compaction, StoreError};

impl Registry {
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

    /// One compaction pass over every resource.
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
}
