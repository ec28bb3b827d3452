//! The JetStream backend beside sled, in one run (harness = false):
//!
//! - durable appends/s, 1,000 resources appending concurrently (each
//!   append returns once durable: fsynced by sled, acknowledged by a
//!   quorum of a 3-node NATS cluster with replicas 3);
//! - replay: events/s reading 10,000 events of one resource in pages of
//!   1,000 (`read_after`).
//!
//! The cluster runs on loopback (started here, stopped by pid), sled on
//! the real disk under `target/bench-data`. Rounds alternate between the
//! backends, so both see the same machine load; medians are printed.
//!
//! Run: `cargo bench --bench cluster` (nats-server on PATH or in
//! `PATCHFEED_NATS_SERVER`). Bounded: `ROUNDS` rounds of 2,000 appends per
//! backend, one replay setup of 10,000 appends each.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use patchfeed::cluster::testing::{unique_prefix, NatsCluster};
use patchfeed::model::{ResourceId, ResourceSpec};
use patchfeed::store::{open_cluster, open_sled, ReadAfter, Store};
use serde_json::{json, Value};
use ulid::Ulid;

const RESOURCES: usize = 1000;
const PER_RESOURCE: u64 = 2;
const ROUNDS: usize = 5;
const REPLAY: u64 = 10_000;

fn spec(id: &str) -> ResourceSpec {
    ResourceSpec {
        id: ResourceId::new(id).unwrap(),
        url: "http://127.0.0.1:9/x".into(),
        interval: Duration::from_secs(1),
        headers: Default::default(),
        snapshot_every: 100,
        retain: None,
        ad_hoc: false,
        push: false,
        pages: None,
    }
}

fn ticker(n: u64) -> Value {
    json!({ "n": n, "bid": 61000 + n % 97, "ask": 61050 + n % 89, "ts": n * 1000 })
}

/// One round: every resource appends `PER_RESOURCE` versions, all
/// resources at once. Returns appends/s.
async fn round(store: &Store, ids: &[ResourceId], version: &mut u64) -> f64 {
    let start = Instant::now();
    let base = *version;
    *version += PER_RESOURCE;
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        let (store, id) = (store.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..PER_RESOURCE {
                store
                    .append(&id, ticker(base + k), patchfeed::model::now_ms())
                    .await
                    .unwrap()
                    .expect("a new version");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (ids.len() as u64 * PER_RESOURCE) as f64 / start.elapsed().as_secs_f64()
}

async fn replay(store: &Store) -> f64 {
    let id = ResourceId::new("replay").unwrap();
    store.create(spec("replay"), 0).await.unwrap();
    for n in 0..REPLAY {
        store
            .append(&id, ticker(n), patchfeed::model::now_ms())
            .await
            .unwrap();
    }
    let start = Instant::now();
    // The first event is the horizon: everything after it is read.
    let mut after: Ulid = store.status(&id).unwrap().horizon.unwrap().0;
    let mut read = 0u64;
    loop {
        let ReadAfter::Events(evs) = store
            .read_after(&id, after, 1000, usize::MAX)
            .await
            .unwrap()
        else {
            panic!("before the horizon");
        };
        if evs.is_empty() {
            break;
        }
        read += evs.len() as u64;
        after = evs.last().unwrap().id.0;
    }
    assert_eq!(read, REPLAY - 1, "every event after the first");
    read as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let cluster = NatsCluster::start(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("cluster-vs-sled")
        .tempdir_in(base)
        .unwrap();
    rt.block_on(async {
        let sled = open_sled(dir.path()).unwrap();
        let nats = open_cluster(&cluster.config(&unique_prefix("bench"), 3))
            .await
            .unwrap();
        let ids: Vec<ResourceId> = (0..RESOURCES)
            .map(|i| ResourceId::new(&format!("r{i}")).unwrap())
            .collect();
        for id in &ids {
            sled.create(spec(id.as_str()), 0).await.unwrap();
            nats.create(spec(id.as_str()), 0).await.unwrap();
        }
        println!("load average before: {}", loadavg());
        let (mut vs, mut vn) = (0u64, 0u64);
        // A warm-up round each (first versions, connection warm-up).
        round(&sled, &ids, &mut vs).await;
        round(&nats, &ids, &mut vn).await;
        let (mut s, mut n) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            s.push(round(&sled, &ids, &mut vs).await);
            n.push(round(&nats, &ids, &mut vn).await);
        }
        let (ms, mn) = (median(s.clone()), median(n.clone()));
        println!(
            "append_durable/1000: sled {ms:.0}/s, cluster (3 nodes, R3) {mn:.0}/s, ratio cluster/sled {:.3} (rounds: sled {s:.0?}, cluster {n:.0?})",
            mn / ms
        );
        let rs = replay(&sled).await;
        let rn = replay(&nats).await;
        println!(
            "read_after/10k: sled {rs:.0} events/s, cluster {rn:.0} events/s, ratio {:.3}",
            rn / rs
        );
        println!("load average after: {}", loadavg());
    });
    drop(cluster);
}
