//! Issue 13: webhook delivery, in process, to a loopback receiver served
//! by the same process (so the receiver's cost is on the same 2 cores).
//!
//! 1. Deliveries per second: 1,000 push resources, `W` webhooks on every
//!    resource (`from: "now"`, so no snapshots), `E` events appended per
//!    resource as fast as the log takes them; the clock runs from the first
//!    append to the receiver's last 2xx. W = 1 (E = 10: 10,000 deliveries)
//!    and W = 100 (E = 1: 100,000 deliveries).
//! 2. Append → receiver 2xx: one resource, one event every 20 ms, ROUNDS
//!    events; the time from `ingest` returning (the event durable) to the
//!    receiver holding its message. Twice, side by side in one run: the
//!    fast webhook alone, then beside a webhook on the same resources whose
//!    endpoint never answers (every request held until the timeout) and one
//!    whose port refuses connections.
//!
//! usage: cargo bench --bench webhooks [-- ROUNDS]   (default 300)
//! Bounded: every wait has a deadline (120 s), every loop a count.
//! Figures in docs/BENCHMARKS.md ("Webhooks").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use patchfeed::app;
use patchfeed::config::Config;
use patchfeed::model::{ResourceId, ResourceSpec};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const RESOURCES: usize = 1000;
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Rx {
    count: AtomicU64,
    /// Arrival time by event id (latency runs only).
    seen: Mutex<HashMap<String, Instant>>,
    record: std::sync::atomic::AtomicBool,
}

async fn hook(State(rx): State<Arc<Rx>>, body: Bytes) -> StatusCode {
    rx.count.fetch_add(1, Relaxed);
    if rx.record.load(Relaxed) {
        // `"id":"<26 chars>"` is the message's second field.
        if let Some(i) = body.windows(6).position(|w| w == b"\"id\":\"") {
            if let Some(id) = body.get(i + 6..i + 32) {
                let id = String::from_utf8_lossy(id).into_owned();
                rx.seen.lock().unwrap().insert(id, Instant::now());
            }
        }
    }
    StatusCode::NO_CONTENT
}

async fn hang() -> StatusCode {
    tokio::time::sleep(Duration::from_secs(60)).await;
    StatusCode::OK
}

async fn receiver() -> (String, String, Arc<Rx>) {
    let rx = Arc::new(Rx::default());
    let app = Router::new()
        .route("/hook", post(hook))
        .route("/hang", post(hang))
        .with_state(rx.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (
        format!("http://{addr}/hook"),
        format!("http://{addr}/hang"),
        rx,
    )
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn wait_count(rx: &Rx, want: u64) {
    let deadline = Instant::now() + DEADLINE;
    while rx.count.load(Relaxed) < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} delivered",
            rx.count.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(rounds));
}

async fn run(rounds: usize) {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&base).unwrap();
    // On the real disk, not tmpfs: cursor writes must cost what they cost.
    let data = tempfile::Builder::new()
        .prefix("webhooks")
        .tempdir_in(&base)
        .unwrap();
    let ids: Vec<ResourceId> = (0..RESOURCES)
        .map(|i| ResourceId::new(&format!("r{i}")).unwrap())
        .collect();
    let mut config = Config {
        data_dir: data.path().join("patchfeed"),
        allow_private_upstreams: true,
        resources: ids
            .iter()
            .map(|id| ResourceSpec {
                id: id.clone(),
                url: String::new(),
                interval: Duration::from_secs(5),
                headers: Default::default(),
                snapshot_every: 100,
                retain: None,
                ad_hoc: false,
                push: true,
                pages: None,
            })
            .collect(),
        ..Config::default()
    };
    config.webhooks.timeout = Duration::from_secs(2);
    config.webhooks.max_in_flight = 1024;
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = app::start(config, false, listener, shutdown.clone())
        .await
        .unwrap();
    let api = format!("http://{}", running.addr);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let reg = running.registry.clone();
    let (fast_url, hang_url, rx) = receiver().await;
    let refused_url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        format!("http://{a}/hook")
    };
    let mut version = 0u64;
    for id in &ids {
        reg.ingest(id, json!({"v": version})).await.unwrap();
    }
    let create = |id: String, url: String| {
        let (http, api) = (http.clone(), api.clone());
        async move {
            let r = http
                .post(format!("{api}/v1/webhooks"))
                .json(&json!({"id": id, "url": url, "resources": ["*"], "from": "now"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        }
    };
    let delete = |id: String| {
        let (http, api) = (http.clone(), api.clone());
        async move {
            let r = http
                .delete(format!("{api}/v1/webhooks/{id}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }
    };
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    // 1. Throughput. One webhook: the events are in the log first and the
    // webhook starts behind them (`from` a point before them), so the
    // figure is delivery alone, not the append rate. A hundred: they are
    // created first (`from: "now"`; creating costs a view of 1,000
    // cursors each), then one event is appended per resource; the clock
    // runs from the first append to the last 2xx.
    for (hooks, events) in [(1usize, 10usize), (100, 1)] {
        let mark = patchfeed::model::now_ms();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let from = if hooks == 1 {
            json!(mark)
        } else {
            json!("now")
        };
        let create_all = || async {
            let t = Instant::now();
            for h in 0..hooks {
                let r = http
                    .post(format!("{api}/v1/webhooks"))
                    .json(&json!({"id": format!("t{h}"), "url": fast_url, "resources": ["*"], "from": from}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
            t.elapsed()
        };
        let mut created = Duration::ZERO;
        if hooks > 1 {
            created = create_all().await;
            // Let every worker subscribe.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let before = rx.count.load(Relaxed);
        let want = before + (hooks * events * RESOURCES) as u64;
        let t_append = Instant::now();
        let mut tasks = Vec::new();
        for chunk in ids.chunks(RESOURCES / 50) {
            let (reg, chunk) = (reg.clone(), chunk.to_vec());
            version += 1;
            let v0 = version * 1000;
            tasks.push(tokio::spawn(async move {
                for e in 0..events {
                    for id in &chunk {
                        reg.ingest(id, json!({"v": v0 + e as u64})).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let appended = t_append.elapsed();
        let t0 = if hooks == 1 {
            let t0 = Instant::now();
            created = create_all().await;
            t0
        } else {
            t_append
        };
        wait_count(&rx, want).await;
        let took = t0.elapsed();
        println!(
            "throughput: {hooks} webhook(s) x {RESOURCES} resources x {events} event(s): {} deliveries in {:.2}s = {:.0}/s (creating took {:.2}s, appending {:.2}s)",
            want - before,
            took.as_secs_f64(),
            (want - before) as f64 / took.as_secs_f64(),
            created.as_secs_f64(),
            appended.as_secs_f64()
        );
        for h in 0..hooks {
            delete(format!("t{h}")).await;
        }
    }

    // 2. Latency, the fast webhook alone and beside dead ones.
    create("fast".into(), fast_url.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    rx.record.store(true, Relaxed);
    let mut results = Vec::new();
    for phase in ["alone", "beside a hanging and a refusing endpoint"] {
        if phase != "alone" {
            create("hanging".into(), hang_url.clone()).await;
            create("refusing".into(), refused_url.clone()).await;
            // Give every resource a pending message for the dead ones.
            for id in &ids {
                version += 1;
                reg.ingest(id, json!({"v": version})).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut lat = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            version += 1;
            let ev = reg
                .ingest(&ids[0], json!({"v": version}))
                .await
                .unwrap()
                .unwrap();
            let durable = Instant::now();
            let key = ev.to_string();
            let deadline = durable + DEADLINE;
            let at = loop {
                if let Some(t) = rx.seen.lock().unwrap().get(&key).copied() {
                    break t;
                }
                assert!(Instant::now() < deadline, "event {key} never arrived");
                tokio::time::sleep(Duration::from_micros(200)).await;
            };
            lat.push(at.saturating_duration_since(durable).as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        results.push((phase, pct(&mut lat.clone(), 0.5), pct(&mut lat, 0.99)));
    }
    for (phase, p50, p99) in results {
        println!(
            "append -> receiver 2xx, {phase}: p50 {p50:.2} ms, p99 {p99:.2} ms ({rounds} events)"
        );
    }
    println!(
        "load average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.wait()).await;
}
