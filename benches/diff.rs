//! The diff on a corpus of realistic changes: patch bytes against document
//! bytes (ours, the json-patch crate's index-by-index diff), and diff time
//! against the time to parse the new document with serde_json.
//!
//! `cargo bench --bench diff` prints the size table, the work each
//! scenario spends of its diff budget, a table of diff time over parse time
//! (medians of alternating rounds) and the same for issue 17's hostile
//! documents (deep nesting around a large array, which spend the whole
//! budget), then runs the criterion timings (skipped with
//! `PATCHFEED_DIFF_RATIOS_ONLY=1`; `PATCHFEED_DIFF_HOSTILE_ONLY=1` prints
//! only the hostile table). With `PATCHFEED_DIFF_CORPUS=DIR` it only writes the corpus
//! (`NAME.a.json`, `NAME.b.json`) and our patch sizes (`ours.json`) for
//! `benches/peers/run.sh`, which diffs the same pairs with npm `rfc6902`,
//! npm `fast-json-patch` and Python `jsonpatch`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use serde_json::{json, Value};

fn item(i: usize) -> Value {
    json!({
        "id": i,
        "name": format!("Product {i} — deluxe edition"),
        "price": (i * 37 % 1000) as f64 / 10.0,
        "tags": ["a", "b"],
        "stock": { "warehouse": i % 7, "count": i * 3 % 50 },
    })
}

fn list(n: usize) -> Vec<Value> {
    (0..n).map(item).collect()
}

/// Deterministic scenarios: (name, before, after).
fn corpus() -> Vec<(&'static str, Value, Value)> {
    let mut out = Vec::new();

    let ticker = |p: f64, v: u64| json!({"symbol": "BTC-EUR", "bid": p, "ask": p + 1.5, "volume": v, "ts": 1_763_800_000_000u64 + v});
    out.push(("ticker", ticker(61000.5, 10), ticker(61002.0, 11)));

    let a = list(1000);
    let mut b = a.clone();
    b.insert(0, item(5000));
    out.push((
        "list_front_insert",
        json!({ "items": a.clone() }),
        json!({ "items": b }),
    ));

    let mut b = a.clone();
    b.insert(500, item(5001));
    out.push((
        "list_middle_insert",
        json!({ "items": a.clone() }),
        json!({ "items": b }),
    ));

    let mut b = a.clone();
    for at in [900, 500, 10] {
        b.remove(at);
    }
    out.push((
        "list_deletes",
        json!({ "items": a.clone() }),
        json!({ "items": b }),
    ));

    let mut b = a.clone();
    let x = b.remove(100);
    b.insert(800, x);
    out.push((
        "list_move",
        json!({ "items": a.clone() }),
        json!({ "items": b }),
    ));

    let mut b = a.clone();
    b[500]["price"] = json!(1.25);
    out.push((
        "list_field_edit",
        json!({ "items": a.clone() }),
        json!({ "items": b }),
    ));

    let config = |v: u64, extra: bool| {
        let mut c = json!({
            "service": { "name": "api", "replicas": 3, "env": { "LOG": "info", "REGION": "eu-west-1" } },
            "database": { "host": "db.internal", "port": 5432, "pool": { "min": 2, "max": 20 }, "replicas": ["r1", "r2"] },
            "features": { "beta": false, "limits": { "rps": 100 + v, "burst": 20 } },
            "version": v,
        });
        if extra {
            c["features"]["new_ui"] = json!(true);
            c["database"]["replicas"] = json!(["r1", "r2", "r3"]);
            c["service"]["env"].as_object_mut().unwrap().remove("LOG");
        }
        c
    };
    out.push(("nested_config", config(1, false), config(2, true)));

    let uni = |k: usize| {
        json!({
            "title": "Zoë’s café — 東京 😀",
            "lines": (0..50).map(|i| format!("行 {i}: ünïcödé ✓ {}", if i == k { "changed ✎" } else { "same" })).collect::<Vec<_>>(),
        })
    };
    out.push(("unicode", uni(100), uni(25)));

    let big = |k: usize| {
        json!({
            "blobs": (0..10).map(|i| {
                let mut s = "lorem ipsum dolor sit amet ".repeat(400);
                if i == k { s.push_str(" (edited)"); }
                s
            }).collect::<Vec<_>>(),
        })
    };
    out.push(("large_strings", big(100), big(4)));

    let ra: Vec<Value> = (0..200).map(|i| json!(i * 3)).collect();
    let mut rb = ra.clone();
    rb.insert(0, json!(-1));
    rb.remove(100);
    rb.insert(150, json!(7777));
    out.push(("root_array", Value::Array(ra), Value::Array(rb)));

    out
}

fn bytes<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).unwrap().len()
}

fn write_corpus(dir: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut ours = serde_json::Map::new();
    for (name, a, b) in corpus() {
        std::fs::write(
            format!("{dir}/{name}.a.json"),
            serde_json::to_vec(&a).unwrap(),
        )
        .unwrap();
        std::fs::write(
            format!("{dir}/{name}.b.json"),
            serde_json::to_vec(&b).unwrap(),
        )
        .unwrap();
        let p = patchfeed::diff::diff(&a, &b);
        std::fs::write(
            format!("{dir}/{name}.patchfeed.patch.json"),
            serde_json::to_vec(&p).unwrap(),
        )
        .unwrap();
        std::fs::write(
            format!("{dir}/{name}.json_patch_crate.patch.json"),
            serde_json::to_vec(&json_patch::diff(&a, &b)).unwrap(),
        )
        .unwrap();
        let mut check = a.clone();
        json_patch::patch(&mut check, &p).unwrap();
        assert_eq!(check, b, "{name}");
        ours.insert(
            name.into(),
            json!({ "ours": bytes(&p), "json_patch_crate": bytes(&json_patch::diff(&a, &b)), "doc": bytes(&b) }),
        );
    }
    std::fs::write(
        format!("{dir}/ours.json"),
        serde_json::to_vec_pretty(&ours).unwrap(),
    )
    .unwrap();
}

fn print_sizes() {
    println!(
        "{:<20} {:>10} {:>12} {:>10} {:>16}",
        "scenario", "doc bytes", "patch bytes", "ratio", "json-patch crate"
    );
    for (name, a, b) in corpus() {
        let ours = bytes(&patchfeed::diff::diff(&a, &b));
        let old = bytes(&json_patch::diff(&a, &b));
        let doc = bytes(&b);
        println!(
            "{name:<20} {doc:>10} {ours:>12} {:>10.4} {old:>16}",
            ours as f64 / doc as f64
        );
    }
}

/// Diff time over parse time per scenario, as medians of rounds that
/// alternate the two, so that noise on this shared machine hits both alike.
fn print_ratios() {
    const ROUNDS: usize = 41;
    println!();
    println!("| scenario | diff median | parse median | diff / parse |");
    println!("|---|---:|---:|---:|");
    for (name, a, b) in corpus() {
        let text = serde_json::to_vec(&b).unwrap();
        // Enough iterations per round for ~20 ms of parsing.
        let t = Instant::now();
        black_box(serde_json::from_slice::<Value>(&text).unwrap());
        let iters = (20_000_000 / t.elapsed().as_nanos().max(1)).clamp(1, 100_000) as u32;
        let (mut d, mut p) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(patchfeed::diff::diff(black_box(&a), black_box(&b)));
            }
            d.push(t.elapsed() / iters);
            let t = Instant::now();
            for _ in 0..iters {
                black_box(serde_json::from_slice::<Value>(black_box(&text)).unwrap());
            }
            p.push(t.elapsed() / iters);
        }
        d.sort();
        p.sort();
        let (d, p) = (d[ROUNDS / 2], p[ROUNDS / 2]);
        println!(
            "| {name} | {d:.1?} | {p:.1?} | {:.2} |",
            d.as_secs_f64() / p.as_secs_f64()
        );
    }
    println!();
}

/// Work spent of the budget per scenario: realistic changes must never
/// reach it (the run fails if one does).
fn print_budget() {
    println!();
    println!("| scenario | nodes | work spent | budget | spent / budget |");
    println!("|---|---:|---:|---:|---:|");
    for (name, a, b) in corpus() {
        let budget = patchfeed::diff::budget(&a, &b);
        let d = patchfeed::diff::diff_within(&a, &b, budget);
        assert!(!d.budget_exceeded, "{name} exceeded its diff budget");
        let nodes = patchfeed::diff::nodes(&a) + patchfeed::diff::nodes(&b);
        println!(
            "| {name} | {nodes} | {} | {budget} | {:.1}% |",
            d.work,
            100.0 * d.work as f64 / budget as f64
        );
    }
}

/// Issue 17's hostile shape: `depth` arrays around one of `n` elements
/// (0 and 1, about 2 bytes each), every element of which flips between
/// versions 0 and 1.
fn hostile(depth: usize, n: usize, version: usize) -> Value {
    let mut doc = Value::Array((0..n).map(|i| json!((i + version) % 2)).collect());
    for _ in 0..depth {
        doc = Value::Array(vec![doc]);
    }
    doc
}

/// Median diff and parse time of the hostile documents (1 MB and 4 MB,
/// 120 deep), alternating rounds.
fn print_hostile() {
    const ROUNDS: usize = 7;
    println!();
    println!("| hostile document | bytes | diff median | parse median | patch ops |");
    println!("|---|---:|---:|---:|---:|");
    for n in [500_000, 2_000_000] {
        let (a, b) = (hostile(120, n, 0), hostile(120, n, 1));
        let text = serde_json::to_vec(&b).unwrap();
        let (mut d, mut p) = (Vec::new(), Vec::new());
        let mut ops = 0;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let patch = black_box(patchfeed::diff::diff(black_box(&a), black_box(&b)));
            d.push(t.elapsed());
            ops = patch.0.len();
            drop(patch);
            let t = Instant::now();
            black_box(serde_json::from_slice::<Value>(black_box(&text)).unwrap());
            p.push(t.elapsed());
        }
        d.sort();
        p.sort();
        println!(
            "| 120 deep around {n} elements | {} | {:.1?} | {:.1?} | {ops} |",
            text.len(),
            d[ROUNDS / 2],
            p[ROUNDS / 2]
        );
    }
    println!();
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("diff");
    g.sample_size(30)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (name, a, b) in corpus() {
        let text = serde_json::to_vec(&b).unwrap();
        g.bench_with_input(
            BenchmarkId::new("diff", name),
            &(&a, &b),
            |bench, (a, b)| bench.iter(|| patchfeed::diff::diff(a, b)),
        );
        g.bench_with_input(BenchmarkId::new("parse", name), &text, |bench, text| {
            bench.iter(|| serde_json::from_slice::<Value>(text).unwrap())
        });
    }
    g.finish();
}

fn main() {
    if let Ok(dir) = std::env::var("PATCHFEED_DIFF_CORPUS") {
        write_corpus(&dir);
        return;
    }
    if std::env::var_os("PATCHFEED_DIFF_HOSTILE_ONLY").is_some() {
        print_hostile();
        return;
    }
    print_sizes();
    print_budget();
    print_ratios();
    print_hostile();
    if std::env::var_os("PATCHFEED_DIFF_RATIOS_ONLY").is_some() {
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
