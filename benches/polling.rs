//! Polling cost: the real `patchfeed` binary polls 1,000 resources every
//! second against a loopback upstream; we read the server's CPU time from
//! `/proc/<pid>/stat` and its poll counts from `/metrics` over a window.
//!
//! Scenarios (each document ~2 KB, 10 of the 1,000 change every second):
//! - `etag`: the upstream sends an `ETag` and answers `If-None-Match` with 304;
//! - `last_modified`: only `Last-Modified`, answered with 304 likewise;
//! - `no_validators`: every poll downloads the body, which patchfeed
//!   compares with the current document (an identical body is no event).
//!
//! Run: `cargo bench --bench polling` (figures in docs/BENCHMARKS.md).
//! `PATCHFEED_POLLING_SECS` sets the measured window (default 30 s).

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

#[path = "../tests/common/binary.rs"]
mod binary;

const RESOURCES: usize = 1000;
/// Changes per second across all resources (1% of them).
const CHANGES_PER_SEC: u64 = 10;

#[derive(Clone, Copy, PartialEq)]
enum Validators {
    ETag,
    LastModified,
    None,
}

struct Upstream {
    validators: Validators,
    /// Version of each document, and when it last changed.
    versions: Vec<(u64, SystemTime)>,
    requests: u64,
    not_modified: u64,
}

fn doc(i: usize, v: u64) -> String {
    let rows: Vec<_> = (0..16)
        .map(|k| json!({"k": k, "label": format!("row {k} of resource {i}"), "value": (k as u64 * 31 + v) % 997}))
        .collect();
    json!({"id": i, "version": v, "status": "open", "rows": rows}).to_string()
}

async fn serve(
    State(s): State<Arc<Mutex<Upstream>>>,
    Path(i): Path<usize>,
    headers: HeaderMap,
) -> Response {
    let mut u = s.lock().unwrap();
    u.requests += 1;
    let Some(&(v, changed)) = u.versions.get(i) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = format!("\"{i}-{v}\"");
    let lm = httpdate(changed);
    let fresh = match u.validators {
        Validators::ETag => {
            headers
                .get(header::IF_NONE_MATCH)
                .and_then(|h| h.to_str().ok())
                == Some(&etag)
        }
        Validators::LastModified => {
            headers
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|h| h.to_str().ok())
                == Some(&lm)
        }
        Validators::None => false,
    };
    if fresh {
        u.not_modified += 1;
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let validators = u.validators;
    drop(u);
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], doc(i, v)).into_response();
    let h = resp.headers_mut();
    match validators {
        Validators::ETag => {
            h.insert(header::ETAG, etag.parse().unwrap());
        }
        Validators::LastModified => {
            h.insert(header::LAST_MODIFIED, lm.parse().unwrap());
        }
        Validators::None => {}
    }
    resp
}

/// RFC 9110 IMF-fixdate (second precision: each document here changes at
/// most once per 100 s).
fn httpdate(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The child's user + system CPU time.
fn cpu_time(pid: u32, tck: u64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / tck)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Poll counts by outcome from `/metrics`.
async fn polls(client: &reqwest::Client, addr: SocketAddr) -> HashMap<String, u64> {
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("patchfeed_polls_total{outcome=\""))
        .filter_map(|l| {
            let (k, v) = l.split_once("\"} ")?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM the process we started, by pid; SIGKILL if it lingers.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(upstream: SocketAddr) -> Server {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nallow_private_upstreams = true\n",
        dir.path().join("data").display()
    );
    for i in 0..RESOURCES {
        config.push_str(&format!(
            "\n[[resource]]\nid = \"r{i}\"\nurl = \"http://{upstream}/r/{i}\"\ninterval = \"1s\"\n"
        ));
    }
    let path = dir.path().join("patchfeed.toml");
    std::fs::write(&path, config).unwrap();
    let (child, base) = binary::spawn_announced(
        Command::new(env!("CARGO_BIN_EXE_patchfeed"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null()),
    );
    let addr = base
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {base:?}"));
    Server {
        child,
        addr,
        _dir: dir,
    }
}

fn scenario(rt: &tokio::runtime::Runtime, name: &str, validators: Validators, window: Duration) {
    let state = Arc::new(Mutex::new(Upstream {
        validators,
        versions: vec![(0, SystemTime::now() - Duration::from_secs(3600)); RESOURCES],
        requests: 0,
        not_modified: 0,
    }));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let upstream = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/r/{i}", get(serve))
        .with_state(state.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let (s1, s2) = (stop.clone(), stop.clone());
    rt.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s1.cancelled().await })
            .await
            .unwrap()
    });
    // Bounded: the changer stops with the scenario.
    let changer = state.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / CHANGES_PER_SEC));
        let mut next = 0usize;
        loop {
            tokio::select! {
                _ = s2.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut u = changer.lock().unwrap();
            // Spread over the resources: 7 is coprime with 1,000.
            next = (next + 7) % RESOURCES;
            let (v, _) = u.versions[next];
            u.versions[next] = (v + 1, SystemTime::now());
        }
    });

    let server = start_server(upstream);
    let pid = server.child.id();
    let tck = clk_tck();
    let client = reqwest::Client::new();
    // Warm-up: every resource's first poll stores its snapshot.
    std::thread::sleep(Duration::from_secs(5));
    let (p0, c0, r0) = (
        rt.block_on(polls(&client, server.addr)),
        cpu_time(pid, tck),
        state.lock().unwrap().requests,
    );
    let t0 = Instant::now();
    std::thread::sleep(window);
    let (p1, c1, r1) = (
        rt.block_on(polls(&client, server.addr)),
        cpu_time(pid, tck),
        state.lock().unwrap().requests,
    );
    let secs = t0.elapsed().as_secs_f64();
    let rss = rss_kib(pid);
    drop(server);
    stop.cancel();

    let d = |k: &str| p1.get(k).copied().unwrap_or(0) - p0.get(k).copied().unwrap_or(0);
    let total: u64 = ["changed", "unchanged", "not_modified", "failed"]
        .iter()
        .map(|k| d(k))
        .sum();
    let cpu = (c1 - c0).as_secs_f64();
    println!(
        "| {name} | {:.0} | {:.0} | {:.1} | {:.1}% | {:.1}% | {:.1}% | {} | {:.1} |",
        total as f64 / secs,
        (r1 - r0) as f64 / secs,
        cpu * 1e6 / total.max(1) as f64,
        cpu * 100.0 / secs,
        d("not_modified") as f64 * 100.0 / total.max(1) as f64,
        d("changed") as f64 * 100.0 / total.max(1) as f64,
        d("failed"),
        rss as f64 / 1024.0,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter word picks scenarios.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let window = Duration::from_secs(
        std::env::var("PATCHFEED_POLLING_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cpuinfo = String::new();
    if let Ok(mut f) = std::fs::File::open("/proc/cpuinfo") {
        let _ = f.read_to_string(&mut cpuinfo);
    }
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']))
        .unwrap_or("?");
    println!(
        "{RESOURCES} resources polled every 1 s, {CHANGES_PER_SEC} changes/s, {}-s window, {} cores ({model})\n",
        window.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("| scenario | polls/s | upstream requests/s | server CPU µs per poll | server CPU (% of one core) | 304 share | changed share | failed | server RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, v) in [
        ("etag", Validators::ETag),
        ("last_modified", Validators::LastModified),
        ("no_validators", Validators::None),
    ] {
        if filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())) {
            scenario(&rt, name, v, window);
        }
    }
}
