//! The log's model test against the JetStream backend on a real 3-node
//! cluster (started here, on loopback, stopped by pid): the same
//! operations and checks as the sled run (`log::tests::check_model`),
//! across reopens, each case under a fresh stream/bucket prefix.
//!
//! Bounded: `PATCHFEED_CLUSTER_CASES` cases (default 12), each at most 60
//! operations.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::testing::{unique_prefix, NatsCluster};
use super::ClusterStore;
use crate::log::tests::{arb_op, check_model};

fn cases() -> u32 {
    std::env::var("PATCHFEED_CLUSTER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

#[test]
fn issue_14_prop_cluster_log_matches_model() {
    let cluster = NatsCluster::start(3);
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (prop::collection::vec(arb_op(), 1..60), 1u32..5, 0usize..6);
    runner
        .run(&strategy, |(ops, snapshot_every, first_chunk)| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let cfg = cluster.config(&unique_prefix("model"), 3);
            check_model(&rt, ops, snapshot_every, first_chunk, &mut |chunk| {
                let store = rt.block_on(ClusterStore::open(&cfg)).unwrap();
                // Tiny sizes put every value through the chunk path.
                store.set_value_max(chunk * 4);
                (Arc::new(store), None)
            })
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_webhooks_and_cursors_survive_a_reopen() {
    let cluster = NatsCluster::start(3);
    let cfg = cluster.config(&unique_prefix("hooks"), 3);
    crate::log::webhooks::tests::check_webhook_storage(&mut || {
        let cfg = cfg.clone();
        Box::pin(async move {
            let s: crate::store::Store = Arc::new(ClusterStore::open(&cfg).await.unwrap());
            s
        })
    })
    .await;
}
