//! Fan-out load test, patchfeed and nginx + nchan side by side in one run.
//!
//! This process is the patchfeed server (so its RSS is the server's RSS)
//! and the event driver; SSE clients are child processes (this binary
//! re-executed with `FANOUT_ROLE=client`, up to 2,500 connections each:
//! the open-file limit is per process). nchan is started on loopback by
//! `benches/nchan/run.sh` and stopped by its pid.
//!
//! Scenarios, in each round and for each system back to back:
//! - `fanout N` (N = 10,000, 1,000): N subscribers on one resource, 100
//!   events/s for 30 s. Before the events, the RSS with N idle subscribers
//!   minus the RSS before gives the idle memory per subscriber.
//! - `replay R` (R = 100,000): R events stored with no subscriber, then one
//!   client resumes from the first and reads the R − 1 it missed.
//!
//! Events are small ticker documents carrying their sequence number and
//! the wall-clock time (unix ns) taken right before the hand-off: for
//! patchfeed `Registry::ingest` (append, flush, publish — the poller's path
//! after a fetch), for nchan the POST to its publisher, whose body is the
//! very patch text patchfeed sends. Latency = receipt − that time.
//!
//! - `--transports sse,ws,longpoll`: the `fanout N` scenarios over each of
//!   patchfeed's transports in turn (SSE events, WebSocket, long-poll; nchan
//!   only over SSE), named `fanout N ws` etc., with their own table.
//!
//! Run: `cargo bench --bench fanout` (options after `--`: `--secs 30
//! --rate 100 --subs 10000,1000 --replay 100000 --rounds 1 --only both
//! --transports sse`).

#[path = "fanout/client.rs"]
mod client;
#[path = "fanout/hist.rs"]
mod hist;
#[path = "fanout/nchan.rs"]
mod nchan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchfeed::app;
use patchfeed::config::Config;
use patchfeed::model::{now_ms, ResourceId, ResourceSpec};
use patchfeed::Registry;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use hist::Hist;

/// Connections per client process (the open-file limit is per process).
const PER_PROCESS: usize = 2_500;

/// Raises the soft open-file limit to the hard one: 10,000 connections
/// need ~10,000 descriptors on each side. std has no API for it, hence
/// `libc` (a dev-dependency only).
pub fn raise_nofile() {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[derive(Clone, Debug)]
struct Opts {
    secs: u64,
    rate: u64,
    subs: Vec<usize>,
    replay: u64,
    rounds: usize,
    patchfeed: bool,
    nchan: bool,
    /// Transports of the fan-out scenarios: `sse`, `ws`, `longpoll`.
    transports: Vec<String>,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            secs: 30,
            rate: 100,
            subs: vec![10_000, 1_000],
            replay: 100_000,
            rounds: 1,
            patchfeed: true,
            nchan: true,
            transports: vec!["sse".into()],
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let v = args.get(i + 1).cloned().unwrap_or_default();
            match args[i].as_str() {
                "--secs" => o.secs = v.parse().unwrap(),
                "--rate" => o.rate = v.parse().unwrap(),
                "--subs" => {
                    o.subs = v
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse().unwrap())
                        .collect()
                }
                "--replay" => o.replay = v.parse().unwrap(),
                "--rounds" => o.rounds = v.parse().unwrap(),
                "--transports" => {
                    o.transports = v.split(',').map(str::to_owned).collect();
                    for t in &o.transports {
                        client::Transport::parse(t);
                    }
                }
                "--only" => {
                    o.patchfeed = v == "patchfeed" || v == "both";
                    o.nchan = v == "nchan" || v == "both";
                }
                // `cargo bench` passes `--bench`; anything else is ignored.
                _ => {
                    i += 1;
                    continue;
                }
            }
            i += 2;
        }
        o
    }
}

/// A system under test.
enum Sys {
    Patchfeed {
        registry: Arc<Registry>,
        addr: String,
    },
    Nchan {
        n: nchan::Nchan,
        http: reqwest::Client,
    },
}

impl Sys {
    fn name(&self) -> &'static str {
        match self {
            Sys::Patchfeed { .. } => "patchfeed",
            Sys::Nchan { .. } => "nchan",
        }
    }

    fn addr(&self) -> String {
        match self {
            Sys::Patchfeed { addr, .. } => addr.clone(),
            Sys::Nchan { n, .. } => format!("127.0.0.1:{}", n.port),
        }
    }

    fn sub_path(&self, chan: &str, transport: &str) -> String {
        match (self, transport) {
            (Sys::Patchfeed { .. }, "ws") => format!("/v1/resources/{chan}/ws"),
            (Sys::Patchfeed { .. }, "longpoll") => format!("/v1/resources/{chan}/changes"),
            (Sys::Patchfeed { .. }, _) => format!("/v1/resources/{chan}/events"),
            (Sys::Nchan { .. }, _) => format!("/sub/{chan}"),
        }
    }

    /// (RSS, PSS) of the server's processes.
    fn memory(&self) -> (u64, u64) {
        match self {
            Sys::Patchfeed { .. } => nchan::memory(&[None]),
            Sys::Nchan { n, .. } => {
                let pids: Vec<Option<u32>> = n.pids().into_iter().map(Some).collect();
                nchan::memory(&pids)
            }
        }
    }

    /// A new, empty channel. patchfeed's gets version 0 (`seq` 0), so a
    /// fresh client has a snapshot to start from.
    async fn prepare(&self, chan: &str, seed: bool) -> Driver {
        let d = Driver {
            chan: chan.to_owned(),
            prev: ticker(0, 0),
            hand_off: Hist::default(),
        };
        if let Sys::Patchfeed { registry, .. } = self {
            let id = ResourceId::new(chan).unwrap();
            // Created in the store directly, so that no poller runs: the
            // bench is the upstream.
            registry
                .store()
                .create(
                    ResourceSpec {
                        id: id.clone(),
                        url: "http://127.0.0.1:9/unused".into(),
                        interval: Duration::from_secs(3600),
                        headers: Default::default(),
                        snapshot_every: ResourceSpec::DEFAULT_SNAPSHOT_EVERY,
                        retain: None,
                        ad_hoc: false,
                        push: false,
                        pages: None,
                    },
                    now_ms(),
                )
                .await
                .unwrap();
            if seed {
                registry.ingest(&id, d.prev.clone()).await.unwrap();
            }
        }
        d
    }

    /// Publishes version `seq`; returns its id (patchfeed's event id,
    /// nchan's message id) if asked.
    async fn publish(&self, d: &mut Driver, seq: u64, want_id: bool) -> Option<String> {
        let t_ns = client::now_ns();
        let doc = ticker(seq, t_ns);
        let started = Instant::now();
        let id = match self {
            Sys::Patchfeed { registry, .. } => {
                let id = ResourceId::new(&d.chan).unwrap();
                let ev = registry.ingest(&id, doc.clone()).await.unwrap();
                ev.map(|e| e.to_string())
            }
            Sys::Nchan { n, http } => {
                // The same bytes as patchfeed's patch frame data.
                let patch = serde_json::to_vec(&patchfeed::diff::diff(&d.prev, &doc)).unwrap();
                let resp = http
                    .post(format!("http://127.0.0.1:{}/pub/{}", n.port, d.chan))
                    .header("accept", "text/plain")
                    .header("content-type", "application/json")
                    .body(patch)
                    .send()
                    .await
                    .unwrap();
                assert!(
                    resp.status().is_success(),
                    "nchan publish: {}",
                    resp.status()
                );
                let text = resp.text().await.unwrap();
                want_id
                    .then(|| {
                        text.lines()
                            .find_map(|l| l.strip_prefix("last message id: "))
                            .map(|s| s.trim().to_owned())
                    })
                    .flatten()
            }
        };
        d.hand_off.record(started.elapsed().as_micros() as u64);
        d.prev = doc;
        id
    }

    async fn finish(&self, chan: &str) {
        match self {
            Sys::Patchfeed { registry, .. } => {
                let _ = registry.delete(&ResourceId::new(chan).unwrap()).await;
            }
            Sys::Nchan { n, http } => {
                let _ = http
                    .delete(format!("http://127.0.0.1:{}/pub/{chan}", n.port))
                    .send()
                    .await;
            }
        }
    }
}

struct Driver {
    chan: String,
    prev: Value,
    /// Time of the hand-off call: patchfeed's append until durable (and
    /// published), nchan's POST round trip.
    hand_off: Hist,
}

/// A small ticker document; its patch from the previous one is ~100 bytes.
fn ticker(seq: u64, t_ns: u64) -> Value {
    json!({ "sym": "BTC-EUR", "px": 61_000 + seq % 97, "seq": seq, "t_ns": t_ns })
}

/// Runs `fut` (the event driver) on a thread and runtime of its own, as
/// patchfeed runs its pollers: a driver queued behind thousands of
/// subscriber tasks would measure the bench's scheduling, not the server.
/// `block_in_place` keeps the server's two workers serving meanwhile.
fn off_runtime<T: Send>(fut: impl std::future::Future<Output = T> + Send) -> T {
    tokio::task::block_in_place(|| {
        std::thread::scope(|sc| {
            sc.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(fut)
            })
            .join()
            .unwrap()
        })
    })
}

struct Env {
    addr: String,
    path: String,
    first: u64,
    /// `None`: told on stdin once publishing ends.
    last: Option<u64>,
    last_event_id: Option<String>,
    replay: bool,
    wait_first_event: bool,
    deadline: Duration,
    transport: String,
}

struct Child {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

fn spawn_clients(conns: usize, env: &Env) -> Vec<Child> {
    let exe = std::env::current_exe().unwrap();
    let procs = conns.div_ceil(PER_PROCESS).max(1);
    (0..procs)
        .map(|p| {
            let n = conns / procs + usize::from(p < conns % procs);
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.env(client::ROLE_ENV, "client")
                .env("FANOUT_ADDR", &env.addr)
                .env("FANOUT_PATH", &env.path)
                .env("FANOUT_CONNS", n.to_string())
                .env("FANOUT_FIRST", env.first.to_string())
                .env("FANOUT_DEADLINE_SECS", env.deadline.as_secs().to_string())
                .env("FANOUT_TRANSPORT", &env.transport)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true);
            if let Some(last) = env.last {
                cmd.env("FANOUT_LAST", last.to_string());
            }
            if let Some(id) = &env.last_event_id {
                cmd.env("FANOUT_LAST_EVENT_ID", id);
            }
            if env.replay {
                cmd.env("FANOUT_REPLAY", "1");
            }
            if env.wait_first_event {
                cmd.env("FANOUT_WAIT_FIRST_EVENT", "1");
            }
            let mut child = cmd.spawn().unwrap();
            let stdin = child.stdin.take().unwrap();
            let lines = BufReader::new(child.stdout.take().unwrap()).lines();
            Child {
                child,
                stdin,
                lines,
            }
        })
        .collect()
}

/// The next line starting with `prefix`, within `timeout`.
async fn line(c: &mut Child, prefix: &str, timeout: Duration) -> Option<String> {
    tokio::time::timeout(timeout, async {
        while let Ok(Some(l)) = c.lines.next_line().await {
            if let Some(rest) = l.strip_prefix(prefix) {
                return Some(rest.trim().to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// Waits for every client's result: they stop by themselves once every
/// connection has the last event; after `drain` they are told to stop.
/// The merged results of a set of client processes.
async fn collect(children: Vec<Child>, drain: Duration) -> client::Totals {
    let mut all = client::Totals::default();
    let until = tokio::time::Instant::now() + drain;
    for mut c in children {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let mut r = line(&mut c, "result ", left).await;
        if r.is_none() {
            let _ = c.stdin.write_all(b"stop\n").await;
            let _ = c.stdin.flush().await;
            r = line(&mut c, "result ", Duration::from_secs(10)).await;
        }
        if let Some(r) = r {
            let v: Value = serde_json::from_str(&r).unwrap();
            all.merge_json(&v);
        }
        // Ends it by its own pid if it has not exited (kill_on_drop too).
        let _ = tokio::time::timeout(Duration::from_secs(5), c.child.wait()).await;
        let _ = c.child.start_kill();
    }
    all
}

/// One scenario's figures, by name.
type Row = BTreeMap<&'static str, f64>;

const MB: f64 = 1024.0 * 1024.0;

async fn fanout(sys: &Sys, chan: &str, subs: usize, o: &Opts, transport: &str) -> Row {
    let mut d = sys.prepare(chan, true).await;
    let (rss0, pss0) = sys.memory();
    let env = Env {
        transport: transport.to_owned(),
        addr: sys.addr(),
        path: sys.sub_path(chan, transport),
        first: 1,
        last: None,
        last_event_id: None,
        replay: false,
        wait_first_event: matches!(sys, Sys::Patchfeed { .. }),
        deadline: Duration::from_secs(180 + 2 * o.secs),
    };
    let connect = Instant::now();
    let mut children = spawn_clients(subs, &env);
    let mut ready = 0u64;
    for c in &mut children {
        let r = line(c, "ready ", Duration::from_secs(150)).await;
        ready += r
            .and_then(|r| r.split_whitespace().next().and_then(|x| x.parse().ok()))
            .unwrap_or(0);
    }
    let connect_s = connect.elapsed().as_secs_f64();
    // Let the connections settle (hyper buffers, nchan's spools).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss1, pss1) = sys.memory();

    // Peak memory while events flow.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss1));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        let pids: Vec<Option<u32>> = match sys {
            Sys::Patchfeed { .. } => vec![None],
            Sys::Nchan { n, .. } => n.pids().into_iter().map(Some).collect(),
        };
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(nchan::memory(&pids).0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // `rate` events/s for `secs`: a system that cannot keep up publishes
    // fewer (the ticker bursts to catch up, so the count is what the
    // system accepted in that time).
    let period = Duration::from_secs(1) / o.rate as u32;
    let drive = Instant::now();
    let first_ns = client::now_ns();
    for c in &mut children {
        let line = format!("sched {first_ns} {}\n", period.as_nanos());
        let _ = c.stdin.write_all(line.as_bytes()).await;
        let _ = c.stdin.flush().await;
    }
    let events = off_runtime(async {
        let mut tick = tokio::time::interval(period);
        let mut events = 0;
        while drive.elapsed() < Duration::from_secs(o.secs) && events < o.secs * o.rate {
            tick.tick().await;
            events += 1;
            sys.publish(&mut d, events, false).await;
        }
        events
    });
    let drive_s = drive.elapsed().as_secs_f64();
    for c in &mut children {
        let _ = c
            .stdin
            .write_all(format!("last {events}\n").as_bytes())
            .await;
        let _ = c.stdin.flush().await;
    }
    let all = collect(children, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    sys.finish(chan).await;

    let window_s = (all.last_recv_ns.saturating_sub(first_ns)) as f64 / 1e9;
    let expected = events * ready;
    let mut r = Row::new();
    r.insert("subscribers", subs as f64);
    r.insert("connected", ready as f64);
    r.insert("connect_s", connect_s);
    r.insert("held", all.done as f64);
    r.insert("dropped", all.dropped as f64);
    r.insert("published", events as f64);
    r.insert("published_per_s", events as f64 / drive_s);
    r.insert("delivered", all.events as f64);
    r.insert("delivered_per_s", all.events as f64 / window_s.max(1e-9));
    r.insert(
        "missing",
        expected.saturating_sub(all.events + all.gaps) as f64,
    );
    r.insert("gaps", all.gaps as f64);
    r.insert("dups", all.dups as f64);
    r.insert("id_errors", all.id_errors as f64);
    r.insert("lat_p50_ms", all.lat.quantile(0.50) as f64 / 1e3);
    r.insert("lat_p99_ms", all.lat.quantile(0.99) as f64 / 1e3);
    r.insert("lat_max_ms", all.lat.max as f64 / 1e3);
    r.insert(
        "sched_lat_p50_ms",
        all.lat_sched.quantile(0.50) as f64 / 1e3,
    );
    r.insert(
        "sched_lat_p99_ms",
        all.lat_sched.quantile(0.99) as f64 / 1e3,
    );
    r.insert("handoff_p50_ms", d.hand_off.quantile(0.50) as f64 / 1e3);
    r.insert("handoff_p99_ms", d.hand_off.quantile(0.99) as f64 / 1e3);
    r.insert("rss_before_mb", rss0 as f64 / MB);
    r.insert("rss_idle_mb", rss1 as f64 / MB);
    r.insert("rss_peak_mb", peak.load(Ordering::Relaxed) as f64 / MB);
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1024.0 / (ready.max(1) as f64);
    r.insert("idle_kb_per_sub_rss", per(rss1, rss0));
    r.insert("idle_kb_per_sub_pss", per(pss1, pss0));
    r
}

async fn replay(sys: &Sys, chan: &str, o: &Opts) -> Row {
    let mut d = sys.prepare(chan, false).await;
    let fill = Instant::now();
    let first_id = off_runtime(async {
        let mut first_id = None;
        for seq in 1..=o.replay {
            let id = sys.publish(&mut d, seq, seq == 1).await;
            if seq == 1 {
                first_id = id;
            }
        }
        first_id
    });
    let fill_s = fill.elapsed().as_secs_f64();
    let env = Env {
        transport: "sse".into(),
        addr: sys.addr(),
        path: sys.sub_path(chan, "sse"),
        first: 2,
        last: Some(o.replay),
        last_event_id: Some(first_id.expect("first event id")),
        replay: true,
        wait_first_event: false,
        deadline: Duration::from_secs(180),
    };
    let children = spawn_clients(1, &env);
    let all = collect(children, Duration::from_secs(170)).await;
    sys.finish(chan).await;
    let secs = all.elapsed_ns as f64 / 1e9;
    let mut r = Row::new();
    r.insert("events", all.events as f64);
    r.insert("complete", (all.done == 1) as u8 as f64);
    r.insert("gaps", all.gaps as f64);
    r.insert("dups", all.dups as f64);
    r.insert("id_errors", all.id_errors as f64);
    r.insert("replay_s", secs);
    r.insert("replay_events_per_s", all.events as f64 / secs.max(1e-9));
    r.insert("replay_mb", all.bytes as f64 / MB);
    r.insert("replay_mb_per_s", all.bytes as f64 / MB / secs.max(1e-9));
    r.insert("fill_events_per_s", o.replay as f64 / fill_s);
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x.abs() >= 1000.0 || x == x.trunc() {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Every round's rows: scenario → system → rows.
type Results = BTreeMap<String, BTreeMap<&'static str, Vec<Row>>>;

/// The median over rounds; for idle memory, the first round's figure:
/// later scenarios reuse memory freed by earlier ones (allocator arenas,
/// nchan's shared memory), which would understate the cost.
fn med(res: &Results, scenario: &str, sys: &str, key: &str) -> f64 {
    let rows = res
        .get(scenario)
        .and_then(|s| s.get(sys))
        .cloned()
        .unwrap_or_default();
    if key.starts_with("idle_kb") || key.starts_with("rss_") {
        return rows
            .first()
            .and_then(|r| r.get(key).copied())
            .unwrap_or(f64::NAN);
    }
    median(rows.iter().filter_map(|r| r.get(key).copied()).collect())
}

fn report(res: &Results, o: &Opts) {
    println!(
        "\n### Fan-out: patchfeed vs nginx + nchan (medians of {} round(s); {} events/s for {} s)\n",
        o.rounds, o.rate, o.secs
    );
    println!("| scenario | metric | patchfeed | nchan | patchfeed / nchan |");
    println!("|---|---|---:|---:|---:|");
    for (scenario, systems) in res {
        let keys: Vec<&'static str> = systems
            .values()
            .flat_map(|rows| rows.iter().flat_map(|r| r.keys().copied()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for k in keys {
            let a = med(res, scenario, "patchfeed", k);
            let b = med(res, scenario, "nchan", k);
            let ratio = if b != 0.0 && !a.is_nan() && !b.is_nan() {
                format!("{:.2}", a / b)
            } else {
                "–".into()
            };
            println!("| {scenario} | {k} | {} | {} | {ratio} |", fmt(a), fmt(b));
        }
    }
    println!("\n### Goals\n");
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    if let Some(&big) = o.subs.iter().max() {
        let s = format!("fanout {big}");
        let held = med(res, &s, "patchfeed", "held");
        let lost = med(res, &s, "patchfeed", "gaps") + med(res, &s, "patchfeed", "dups");
        println!(
            "- {big} concurrent subscribers held, every event, no gap/dup: {} (held {}, gaps+dups {})",
            verdict(held >= big as f64 && lost == 0.0),
            fmt(held),
            fmt(lost)
        );
    }
    for &n in &o.subs {
        let s = format!("fanout {n}");
        let (a, b) = (
            med(res, &s, "patchfeed", "lat_p99_ms"),
            med(res, &s, "nchan", "lat_p99_ms"),
        );
        println!(
            "- {s}: p99 latency ≤ nchan's: {} ({} ms vs {} ms)",
            verdict(a <= b),
            fmt(a),
            fmt(b)
        );
        let (a, b) = (
            med(res, &s, "patchfeed", "delivered_per_s"),
            med(res, &s, "nchan", "delivered_per_s"),
        );
        // Both deliver what is published; 1 % is measurement noise.
        println!(
            "- {s}: delivered events/s ≥ nchan's: {} ({} vs {})",
            verdict(a >= 0.99 * b),
            fmt(a),
            fmt(b)
        );
    }
    let s = format!("replay {}", o.replay);
    let (a, b) = (
        med(res, &s, "patchfeed", "replay_events_per_s"),
        med(res, &s, "nchan", "replay_events_per_s"),
    );
    println!(
        "- replay at least as fast as nchan's: {} ({} vs {} events/s)",
        verdict(a >= b),
        fmt(a),
        fmt(b)
    );
    if let Some(&big) = o.subs.iter().max() {
        let s = format!("fanout {big}");
        let (a, b) = (
            med(res, &s, "patchfeed", "idle_kb_per_sub_rss"),
            med(res, &s, "nchan", "idle_kb_per_sub_rss"),
        );
        println!(
            "- idle memory per subscriber ≤ 1.5 × nchan's (RSS, {big} subscribers): {} ({} KB vs {} KB)",
            verdict(a <= 1.5 * b),
            fmt(a),
            fmt(b)
        );
    }
}

/// patchfeed's transports side by side: one column per transport, the
/// same metrics (medians over rounds; idle memory from the first round).
fn report_transports(res: &Results, o: &Opts) {
    const KEYS: &[&str] = &[
        "connected",
        "held",
        "gaps",
        "dups",
        "id_errors",
        "published_per_s",
        "delivered_per_s",
        "lat_p50_ms",
        "lat_p99_ms",
        "lat_max_ms",
        "idle_kb_per_sub_rss",
        "rss_before_mb",
        "rss_idle_mb",
        "rss_peak_mb",
    ];
    for &n in &o.subs {
        println!(
            "\n### patchfeed transports, {n} subscribers (medians of {} round(s))\n",
            o.rounds
        );
        print!("| metric |");
        for t in &o.transports {
            print!(" {t} |");
        }
        print!("\n|---|");
        for _ in &o.transports {
            print!("---:|");
        }
        println!();
        for k in KEYS {
            print!("| {k} |");
            for t in &o.transports {
                let scenario = match t.as_str() {
                    "sse" => format!("fanout {n}"),
                    _ => format!("fanout {n} {t}"),
                };
                print!(" {} |", fmt(med(res, &scenario, "patchfeed", k)));
            }
            println!();
        }
    }
}

async fn run(o: Opts) {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&base).unwrap();
    // On the real disk, not tmpfs: the flush must cost what it costs.
    let data = tempfile::Builder::new()
        .prefix("fanout")
        .tempdir_in(&base)
        .unwrap();

    let shutdown = CancellationToken::new();
    let mut config = Config {
        data_dir: data.path().join("patchfeed"),
        ..Config::default()
    };
    config.limits.max_connections = 15_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = app::start(config, false, listener, shutdown.clone())
        .await
        .unwrap();
    let mut systems = Vec::new();
    if o.patchfeed {
        systems.push(Sys::Patchfeed {
            registry: running.registry.clone(),
            addr: running.addr.to_string(),
        });
    }
    if o.nchan {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let n = nchan::Nchan::start(&data.path().join("nchan"), port).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        systems.push(Sys::Nchan { n, http });
    }

    let mut res = Results::new();
    let t0 = Instant::now();
    for round in 0..o.rounds {
        for &subs in &o.subs {
            for t in &o.transports {
                for sys in &systems {
                    if t != "sse" && !matches!(sys, Sys::Patchfeed { .. }) {
                        continue;
                    }
                    let (chan, scenario) = match t.as_str() {
                        "sse" => (format!("fan{round}n{subs}"), format!("fanout {subs}")),
                        _ => (
                            format!("fan{round}n{subs}{t}"),
                            format!("fanout {subs} {t}"),
                        ),
                    };
                    let row = fanout(sys, &chan, subs, &o, t).await;
                    eprintln!("round {round} {scenario} {}: {row:?}", sys.name());
                    res.entry(scenario)
                        .or_default()
                        .entry(sys.name())
                        .or_default()
                        .push(row);
                }
            }
        }
        if o.replay > 1 {
            for sys in &systems {
                let chan = format!("replay{round}");
                let row = replay(sys, &chan, &o).await;
                eprintln!("round {round} replay {}: {row:?}", sys.name());
                res.entry(format!("replay {}", o.replay))
                    .or_default()
                    .entry(sys.name())
                    .or_default()
                    .push(row);
            }
        }
    }
    eprintln!("total {:.0} s", t0.elapsed().as_secs_f64());
    report(&res, &o);
    if o.transports.iter().any(|t| t != "sse") {
        report_transports(&res, &o);
    }
    drop(systems);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), running.wait()).await;
}

fn main() {
    if std::env::var(client::ROLE_ENV).as_deref() == Ok("client") {
        client::main();
        return;
    }
    raise_nofile();
    let o = Opts::parse();
    // Two workers: the machine has two cores, and nchan gets two workers.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(o));
}
