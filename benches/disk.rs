//! Disk use of the change log under `retain` (harness = false; prints a
//! table). For each document size, one resource gets documents that
//! alternate between two versions of that size, so every event (and every
//! snapshot) is about that large, one every 100 ms of a simulated clock,
//! with `retain = 3s` and a compaction every simulated second (what
//! `compact_every = "1s"` does). The store is the real one, on the real
//! disk under `target/`. Every 5 simulated seconds a row shows the bytes
//! of the files in the data dir, how many of them are sled blob files, and
//! what is retained (events from the horizon, their patch bytes plus one
//! snapshot). Then the resource is deleted, the store reopened, and a
//! second resource gets the same load: its disk use shows whether the
//! space of the first came back.
//!
//! Run: `cargo bench --bench disk` (figures in docs/BENCHMARKS.md).
//! `PATCHFEED_DISK_SIZES` (bytes, comma-separated; default
//! `10000,400000,4000000`), `PATCHFEED_DISK_SECONDS` (simulated seconds
//! per resource; default 30), `PATCHFEED_DISK_CAP_MB` (a run stops once
//! the data dir is larger; default 2048).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use patchfeed::log::{Compaction, Store};
use patchfeed::model::{EventId, ResourceId, ResourceSpec};
use serde_json::{json, Value};

const STEP_MS: u64 = 100;
const RETAIN: Duration = Duration::from_secs(3);
const COMPACT_EVERY_MS: u64 = 1_000;
const ROW_EVERY_MS: u64 = 5_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn data_dir(name: &str) -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(base)
        .unwrap()
}

/// Bytes of the files under `dir`, and how many are sled blob files.
fn disk_usage(dir: &Path) -> (u64, usize) {
    let (mut bytes, mut blobs) = (0, 0);
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                dirs.push(e.path());
            } else {
                bytes += md.len();
                blobs += usize::from(d.ends_with("blobs"));
            }
        }
    }
    (bytes, blobs)
}

/// Bytes this process has passed to write calls so far (`wchar` of
/// `/proc/self/io`; Linux only, else 0): nearly all of it is sled's log.
fn bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:").map(|v| v.trim().parse().ok()))
        })
        .flatten()
        .unwrap_or(0)
}

fn doc(size: usize, n: u64) -> Value {
    let fill = if n.is_multiple_of(2) { "a" } else { "b" };
    json!({ "n": n, "blob": fill.repeat(size) })
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

struct Run {
    /// Disk bytes sampled in the second half of the run.
    steady: Vec<u64>,
    peak: u64,
    append_ms: Vec<f64>,
    stopped: bool,
    /// Bytes written to files per byte of event and snapshot values.
    amplification: f64,
}

/// `seconds` of simulated load on resource `name`, printing a row every
/// 5 simulated seconds.
fn load(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    dir: &Path,
    name: &str,
    size: usize,
    clock: &mut u64,
) -> Run {
    let seconds: u64 = env_or("PATCHFEED_DISK_SECONDS", 30);
    let cap = env_or::<u64>("PATCHFEED_DISK_CAP_MB", 2048) * 1_000_000;
    let id = ResourceId::new(name).unwrap();
    let spec = ResourceSpec {
        id: id.clone(),
        url: "http://127.0.0.1:9/unused".into(),
        interval: Duration::from_millis(STEP_MS),
        headers: Default::default(),
        snapshot_every: ResourceSpec::DEFAULT_SNAPSHOT_EVERY,
        retain: Some(RETAIN),
        ad_hoc: false,
        push: false,
        pages: None,
    };
    rt.block_on(store.create(spec, *clock)).unwrap();
    let mut retained: Vec<(EventId, u64)> = Vec::new();
    let mut run = Run {
        steady: Vec::new(),
        peak: 0,
        append_ms: Vec::new(),
        stopped: false,
        amplification: f64::NAN,
    };
    let (written_before, mut values) = (bytes_written(), 0u64);
    let steps = seconds * 1000 / STEP_MS;
    for n in 0..steps {
        *clock += STEP_MS;
        let t = Instant::now();
        let e = rt
            .block_on(store.append_at(&id, doc(size, n), *clock))
            .unwrap()
            .expect("alternating documents always differ");
        run.append_ms.push(t.elapsed().as_secs_f64() * 1e3);
        retained.push((e.id, e.patch.len() as u64));
        values += e.patch.len() as u64;
        if n.is_multiple_of(u64::from(ResourceSpec::DEFAULT_SNAPSHOT_EVERY)) {
            values += size as u64;
        }
        let elapsed_ms = (n + 1) * STEP_MS;
        if elapsed_ms.is_multiple_of(COMPACT_EVERY_MS) {
            if let Compaction::Done { horizon, .. } =
                rt.block_on(store.compact(&id, *clock)).unwrap()
            {
                retained.retain(|(eid, _)| *eid >= horizon);
                // The snapshot compaction writes at the new horizon.
                values += size as u64;
            }
        }
        let (disk, blobs) = disk_usage(dir);
        run.peak = run.peak.max(disk);
        if elapsed_ms * 2 > seconds * 1000 {
            run.steady.push(disk);
        }
        let stop = disk > cap;
        if elapsed_ms.is_multiple_of(ROW_EVERY_MS) || stop {
            let kept: u64 = retained.iter().map(|r| r.1).sum::<u64>() + size as u64;
            println!(
                "{:>9} {:>8} {:>5.1}s {:>10.1} {:>6} {:>9} {:>11.1}",
                size,
                name,
                elapsed_ms as f64 / 1e3,
                mb(disk),
                blobs,
                retained.len(),
                mb(kept)
            );
        }
        if stop {
            println!("          stopped: data dir over {} MB", cap / 1_000_000);
            run.stopped = true;
            break;
        }
    }
    run.amplification = (bytes_written() - written_before) as f64 / values.max(1) as f64;
    rt.block_on(store.delete(&id)).unwrap();
    run
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let sizes: Vec<usize> = std::env::var("PATCHFEED_DISK_SIZES")
        .unwrap_or_else(|_| "10000,400000,4000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "retain {}s, one event per {} ms, compaction every {} ms (simulated clock)",
        RETAIN.as_secs(),
        STEP_MS,
        COMPACT_EVERY_MS
    );
    println!(
        "{:>9} {:>8} {:>6} {:>10} {:>6} {:>9} {:>11}",
        "doc B", "resource", "t", "disk MB", "blobs", "retained", "retained MB"
    );
    let mut summary = Vec::new();
    for size in sizes {
        let dir = data_dir("disk");
        let mut clock = 1_000_000u64;
        let mut store = Store::open(dir.path()).unwrap();
        let first = load(&rt, &store, dir.path(), "first", size, &mut clock);
        // The purge of a deleted resource runs in the background: give it
        // a moment (bounded), then restart.
        std::thread::sleep(Duration::from_secs(2));
        drop(store);
        store = Store::open(dir.path()).unwrap();
        let (after_delete, blobs) = disk_usage(dir.path());
        println!(
            "{:>9} deleted, reopened: {:.1} MB on disk, {} blob files",
            size,
            mb(after_delete),
            blobs
        );
        let second = if first.stopped {
            None
        } else {
            Some(load(&rt, &store, dir.path(), "second", size, &mut clock))
        };
        drop(store);
        summary.push((size, first, after_delete, second));
    }
    println!();
    println!(
        "{:>9} {:>16} {:>9} {:>14} {:>14} {:>12} {:>14}",
        "doc B",
        "steady disk MB",
        "peak MB",
        "after delete",
        "second peak",
        "ms/append",
        "written/value"
    );
    for (size, mut first, after_delete, second) in summary {
        let mut steady: Vec<f64> = first.steady.iter().map(|&b| mb(b)).collect();
        println!(
            "{:>9} {:>16.1} {:>9.1} {:>14.1} {:>14} {:>12.2} {:>14.2}",
            size,
            median(&mut steady),
            mb(first.peak),
            mb(after_delete),
            second.map_or("-".to_string(), |s| format!("{:.1}", mb(s.peak))),
            median(&mut first.append_ms),
            first.amplification,
        );
    }
}
