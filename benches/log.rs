//! Criterion benches of the change log (`log::Store`), on the real disk
//! (under `target/`, not tmpfs: an fsync must cost what it costs).
//!
//! - `append_durable/{1,16,1000}`: durable appends/s with that many
//!   resources appending concurrently (group commit shares the flushes);
//! - `read_after/100k`: events/s reading 100,000 events in pages of 1,000;
//! - `document_at/100KB/{10,100,1000}`: rebuilding a ~100 KB document at a
//!   random retained point, by `snapshot_every` (p50/p99 printed too);
//! - `compact/5000`: events/s removed by compaction.
//!
//! Run: `cargo bench --bench log` (figures in docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use patchfeed::log::{At, ReadAfter, Store};
use patchfeed::model::{EventId, Point, ResourceId, ResourceSpec};
use serde_json::{json, Value};
use ulid::Ulid;

fn data_dir(name: &str) -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(base)
        .unwrap()
}

fn spec(id: &str, snapshot_every: u32, retain: Option<Duration>) -> ResourceSpec {
    ResourceSpec {
        id: ResourceId::new(id).unwrap(),
        url: "http://127.0.0.1:9/x".into(),
        interval: Duration::from_secs(1),
        headers: Default::default(),
        snapshot_every,
        retain,
        ad_hoc: false,
        push: false,
        pages: None,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A small ticker-like document, version `n`.
fn ticker(n: u64) -> Value {
    json!({ "n": n, "bid": 61000 + n % 97, "ask": 61050 + n % 89, "ts": n * 1000 })
}

fn append_durable(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("append_durable");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    for resources in [1usize, 16, 1000] {
        let dir = data_dir("append");
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<ResourceId> = (0..resources)
            .map(|i| {
                let s = spec(&format!("r{i}"), 100, None);
                rt.block_on(store.create(s.clone(), 0)).unwrap();
                s.id
            })
            .collect();
        let ids = Arc::new(ids);
        // Appends per iteration: enough that every resource appends a few times.
        let per_iter = (resources * 4).max(256) as u64;
        let mut version = 0u64;
        g.throughput(Throughput::Elements(per_iter));
        g.bench_function(BenchmarkId::from_parameter(resources), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let base = version;
                    version += per_iter;
                    let (store, ids) = (store.clone(), ids.clone());
                    total += rt.block_on(async move {
                        let start = Instant::now();
                        let per_resource = per_iter as usize / ids.len();
                        let extra = per_iter as usize % ids.len();
                        let mut tasks = Vec::with_capacity(ids.len());
                        for (k, id) in ids.iter().cloned().enumerate() {
                            let n = per_resource + usize::from(k < extra);
                            let store = store.clone();
                            tasks.push(tokio::spawn(async move {
                                for j in 0..n as u64 {
                                    store.append(&id, ticker(base + j)).await.unwrap().unwrap();
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.unwrap();
                        }
                        start.elapsed()
                    });
                }
                total
            })
        });
    }
    g.finish();
}

fn read_after(c: &mut Criterion) {
    const EVENTS: u64 = 100_000;
    let rt = rt();
    let dir = data_dir("read");
    let id = spec("big", 100, None).id;
    // Built on first use only, so a filtered-out run skips it.
    let mut filled: Option<(Store, EventId)> = None;
    let mut g = c.benchmark_group("read_after");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(EVENTS - 1));
    g.bench_function("100k", |b| {
        let (store, horizon) = filled.get_or_insert_with(|| {
            let store = Store::open(dir.path()).unwrap();
            rt.block_on(store.create(spec("big", 100, None), 0))
                .unwrap();
            // Appends to one resource are serial (one flush each): the
            // set-up takes a while, and its rate is a figure of its own.
            let t = Instant::now();
            rt.block_on(async {
                for n in 0..EVENTS {
                    store.append(&id, ticker(n)).await.unwrap().unwrap();
                }
            });
            eprintln!(
                "read_after: {EVENTS} durable appends to one resource took {:?}",
                t.elapsed()
            );
            let horizon = store.status(&id).unwrap().horizon.unwrap();
            (store, horizon)
        });
        b.iter(|| {
            let mut cursor: EventId = *horizon;
            let mut n = 0u64;
            loop {
                let ReadAfter::Events(events) = store.read_after(&id, cursor.0, 1000).unwrap()
                else {
                    panic!("before horizon")
                };
                n += events.len() as u64;
                match events.last() {
                    Some(e) if events.len() == 1000 => cursor = e.id,
                    _ => break,
                }
            }
            assert_eq!(n, EVENTS - 1);
        })
    });
    g.finish();
}

/// A ~100 KB document: 640 items of ~200 bytes; version `n` edits a few.
fn big_doc(n: u64) -> Value {
    let items: Vec<Value> = (0..640u64)
        .map(|i| {
            let touched = (i * 7 + n).is_multiple_of(50);
            json!({
                "id": i,
                "name": format!("item number {i} with a reasonably long descriptive name"),
                "price": if touched { (i * 100 + n) as f64 / 7.0 } else { i as f64 },
                "tags": ["alpha", "beta", "gamma"],
                "stock": { "warehouse": i % 13, "count": if touched { n } else { i } },
            })
        })
        .collect();
    json!({ "version": n, "items": items })
}

fn document_at(c: &mut Criterion) {
    const VERSIONS: u64 = 1000;
    let rt = rt();
    let mut g = c.benchmark_group("document_at/100KB");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for every in [10u32, 100, 1000] {
        let dir = data_dir("at");
        let id = spec("doc", every, None).id;
        let mut built: Option<(Store, Vec<Ulid>)> = None;
        g.bench_function(BenchmarkId::from_parameter(every), |b| {
            let (store, ids) = built.get_or_insert_with(|| {
                eprintln!("document_at: document size {} bytes", serde_json::to_vec(&big_doc(0)).unwrap().len());
                let store = Store::open(dir.path()).unwrap();
                rt.block_on(store.create(spec("doc", every, None), 0)).unwrap();
                let mut ids = Vec::new();
                rt.block_on(async {
                    for n in 0..VERSIONS {
                        ids.push(store.append(&id, big_doc(n)).await.unwrap().unwrap().id.0);
                    }
                });
                // Percentiles over random points (criterion reports means).
                let mut lat: Vec<Duration> = (0..500)
                    .map(|_| {
                        let p = ids[rand::random_range(0..ids.len())];
                        let t = Instant::now();
                        let At::Found { .. } = store.document_at(&id, Point::Id(p)).unwrap() else { panic!() };
                        t.elapsed()
                    })
                    .collect();
                lat.sort();
                eprintln!(
                    "document_at snapshot_every={every}: p50 {:?} p99 {:?} max {:?} (500 random points)",
                    lat[lat.len() / 2],
                    lat[lat.len() * 99 / 100],
                    lat[lat.len() - 1]
                );
                (store, ids)
            });
            b.iter(|| {
                let p = ids[rand::random_range(0..ids.len())];
                store.document_at(&id, Point::Id(p)).unwrap()
            })
        });
    }
    g.finish();
}

fn compact(c: &mut Criterion) {
    const EVENTS: u64 = 5000;
    let rt = rt();
    let mut g = c.benchmark_group("compact");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(EVENTS - 1));
    let day = 24 * 3600 * 1000;
    let now = patchfeed::model::now_ms();
    g.bench_function("5000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = data_dir("compact");
                let store = Store::open(dir.path()).unwrap();
                let s = spec("c", 100, Some(Duration::from_secs(3600)));
                let id = s.id.clone();
                rt.block_on(async {
                    store.create(s, 0).await.unwrap();
                    // All but the last event are older than `retain`.
                    for n in 0..EVENTS - 1 {
                        store
                            .append_at(&id, ticker(n), now - day + n)
                            .await
                            .unwrap()
                            .unwrap();
                    }
                    store
                        .append_at(&id, ticker(EVENTS), now)
                        .await
                        .unwrap()
                        .unwrap();
                });
                let t = Instant::now();
                rt.block_on(store.compact(&id, now)).unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, append_durable, read_after, document_at, compact);
criterion_main!(benches);
