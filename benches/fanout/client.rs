//! The client role: one process, one current-thread runtime, many raw TCP
//! connections speaking one transport (`FANOUT_TRANSPORT`): SSE (default),
//! WebSocket (`ws`: RFC 6455 frames, pongs to pings) or long-poll
//! (`longpoll`: one request at a time, `since` the last id, keep-alive).
//! Raw TCP with minimal HTTP/1.1, chunked, SSE and WebSocket parsers
//! rather than reqwest so that the clients, which share the machine's two
//! cores with the server under test, cost as little CPU as possible.
//!
//! Each connection checks that ids strictly increase and that the sequence
//! numbers embedded in the documents (`seq`) run without a gap or a
//! duplicate, and records receipt − embedded time (`t_ns`).
//!
//! Protocol with the parent: environment in (`FANOUT_*`), then one line
//! `ready <ok> <failed>` on stdout once every connection has its first
//! frame (or failed), then `result <json>` when every connection has seen
//! `FANOUT_LAST` or the parent writes a line on stdin, or at the deadline.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hist::Hist;

pub const ROLE_ENV: &str = "FANOUT_ROLE";

/// What every connection of a client process shares; the parent merges
/// the processes' tallies into one of the same type.
#[derive(Default)]
pub struct Totals {
    pub ok: u64,
    pub failed: u64,
    pub ready: u64,
    /// Connections that have seen the last sequence number.
    pub done: u64,
    /// Connections that ended (EOF, error) before they were done.
    pub dropped: u64,
    pub events: u64,
    pub gaps: u64,
    pub dups: u64,
    pub id_errors: u64,
    pub bytes: u64,
    pub snapshots: u64,
    pub lat: Hist,
    pub lat_sched: Hist,
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    /// Replay: from the start of the connect to the last event.
    pub elapsed_ns: u64,
}

impl Totals {
    /// The `result` line a client process prints.
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok, "failed": self.failed, "ready": self.ready, "done": self.done,
            "dropped": self.dropped, "events": self.events, "gaps": self.gaps,
            "dups": self.dups, "id_errors": self.id_errors, "bytes": self.bytes,
            "snapshots": self.snapshots, "first_recv_ns": self.first_recv_ns,
            "last_recv_ns": self.last_recv_ns, "elapsed_ns": self.elapsed_ns,
            "lat": self.lat.encode(),
            "lat_sched": self.lat_sched.encode(),
        })
    }

    /// Adds one process's `result` line: counts add up, the first and last
    /// receipt and the elapsed time take the extremes, histograms merge.
    pub fn merge_json(&mut self, v: &serde_json::Value) {
        let g = |k: &str| v[k].as_u64().unwrap_or(0);
        self.ok += g("ok");
        self.failed += g("failed");
        self.ready += g("ready");
        self.done += g("done");
        self.dropped += g("dropped");
        self.events += g("events");
        self.gaps += g("gaps");
        self.dups += g("dups");
        self.id_errors += g("id_errors");
        self.bytes += g("bytes");
        self.snapshots += g("snapshots");
        let f = g("first_recv_ns");
        if f > 0 && (self.first_recv_ns == 0 || f < self.first_recv_ns) {
            self.first_recv_ns = f;
        }
        self.last_recv_ns = self.last_recv_ns.max(g("last_recv_ns"));
        self.elapsed_ns = self.elapsed_ns.max(g("elapsed_ns"));
        self.lat
            .merge(&Hist::decode(v["lat"].as_str().unwrap_or("")));
        self.lat_sched
            .merge(&Hist::decode(v["lat_sched"].as_str().unwrap_or("")));
    }
}

struct Cfg {
    addr: String,
    path: String,
    last_event_id: Option<String>,
    first: u64,
    /// The last sequence number, if known yet: from `FANOUT_LAST`, or a
    /// `last N` line from the parent once it has stopped publishing.
    last: std::cell::Cell<u64>,
    /// `sched <start_ns> <period_ns>` from the parent: event `seq` was due
    /// at start + (seq − 1) × period, for latency from the schedule (which
    /// counts the time a blocked publisher held an event back).
    sched: std::cell::Cell<Option<(u64, u64)>>,
    /// Latency is meaningless for a replay of old events.
    replay: bool,
    /// Ready once the first SSE event arrived (patchfeed's snapshot), not
    /// only the response head (nchan sends nothing until a message).
    wait_first_event: bool,
    transport: Transport,
}

/// How a connection reads the feed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
    LongPoll,
}

impl Transport {
    pub fn parse(s: &str) -> Transport {
        match s {
            "sse" => Transport::Sse,
            "ws" => Transport::Ws,
            "longpoll" => Transport::LongPoll,
            other => panic!("unknown transport {other:?}: sse, ws or longpoll"),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn main() {
    crate::raise_nofile();
    let cfg = Rc::new(Cfg {
        addr: env("FANOUT_ADDR").expect("FANOUT_ADDR"),
        path: env("FANOUT_PATH").expect("FANOUT_PATH"),
        last_event_id: env("FANOUT_LAST_EVENT_ID"),
        first: env("FANOUT_FIRST").unwrap().parse().unwrap(),
        last: std::cell::Cell::new(env("FANOUT_LAST").map_or(u64::MAX, |v| v.parse().unwrap())),
        sched: std::cell::Cell::new(None),
        replay: env("FANOUT_REPLAY").is_some(),
        wait_first_event: env("FANOUT_WAIT_FIRST_EVENT").is_some(),
        transport: Transport::parse(&env("FANOUT_TRANSPORT").unwrap_or_else(|| "sse".into())),
    });
    let conns: u64 = env("FANOUT_CONNS").unwrap().parse().unwrap();
    let deadline = Duration::from_secs(env("FANOUT_DEADLINE_SECS").unwrap().parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let totals = Rc::new(RefCell::new(Totals::default()));
        let started = Instant::now();
        // Few connects in flight at once, so the server's listen backlog
        // never overflows (a dropped SYN costs a 1 s retransmit).
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
        let conns_state: Rc<RefCell<Vec<Rc<Shared>>>> = Rc::default();
        for _ in 0..conns {
            let (cfg, totals, gate) = (cfg.clone(), totals.clone(), gate.clone());
            let shared = Rc::new(Shared {
                next: std::cell::Cell::new(cfg.first),
                done: std::cell::Cell::new(false),
                t0: Instant::now(),
            });
            conns_state.borrow_mut().push(shared.clone());
            tokio::task::spawn_local(async move {
                let permit = gate.acquire_owned().await.unwrap();
                connection(cfg, totals, shared, permit).await;
            });
        }
        // Ready: every connection has its first frame or failed.
        let until = started + deadline;
        loop {
            let (ready, failed) = {
                let t = totals.borrow();
                (t.ready, t.failed)
            };
            if ready + failed >= conns || Instant::now() > until {
                println!("ready {ready} {failed}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Until every connection is done, the parent says stop, or the
        // deadline. A `last N` line sets the last sequence number.
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut stdin_open = true;
        loop {
            {
                let t = totals.borrow();
                if t.done + t.dropped + t.failed >= conns || Instant::now() > until {
                    break;
                }
            }
            tokio::select! {
                l = stdin.next_line(), if stdin_open => match l {
                    Ok(Some(l)) if l.starts_with("sched ") => {
                        let v: Vec<u64> = l.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
                        cfg.sched.set(Some((v[0], v[1])));
                    }
                    Ok(Some(l)) => match l.strip_prefix("last ") {
                        Some(n) => {
                            cfg.last.set(n.trim().parse().unwrap());
                            // Connections already past it are done now.
                            for c in conns_state.borrow().iter() {
                                c.check_done(&cfg, &totals);
                            }
                        }
                        None => break,
                    },
                    _ => stdin_open = false,
                },
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        println!("result {}", totals.borrow().to_json());
    });
    // Sockets close with the process.
    std::process::exit(0);
}

/// What the main loop sees of a connection.
struct Shared {
    /// The next sequence number expected.
    next: std::cell::Cell<u64>,
    /// Has seen the last sequence number.
    done: std::cell::Cell<bool>,
    t0: Instant,
}

impl Shared {
    fn check_done(&self, cfg: &Cfg, totals: &RefCell<Totals>) {
        if !self.done.get() && self.next.get() > cfg.last.get() {
            self.done.set(true);
            let mut t = totals.borrow_mut();
            t.done += 1;
            t.elapsed_ns = t.elapsed_ns.max(self.t0.elapsed().as_nanos() as u64);
        }
    }
}

/// Per-connection SSE state.
struct Conn {
    shared: Rc<Shared>,
    last_id: Vec<u8>,
    ready: bool,
    // The event being parsed.
    id: Vec<u8>,
    event: Vec<u8>,
    data: Vec<u8>,
}

async fn connection(
    cfg: Rc<Cfg>,
    totals: Rc<RefCell<Totals>>,
    shared: Rc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut permit = Some(permit);
    let mut sock = match TcpStream::connect(&cfg.addr).await {
        Ok(s) => s,
        Err(_) => {
            totals.borrow_mut().failed += 1;
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    match cfg.transport {
        Transport::Sse => {}
        Transport::Ws => return ws_connection(cfg, totals, shared, permit, sock).await,
        Transport::LongPoll => {
            return long_poll_connection(cfg, totals, shared, permit, sock).await
        }
    }
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        cfg.path
    );
    if let Some(id) = &cfg.last_event_id {
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    if sock.write_all(req.as_bytes()).await.is_err() {
        totals.borrow_mut().failed += 1;
        return;
    }
    let mut c = Conn {
        shared,
        last_id: Vec::new(),
        ready: false,
        id: Vec::new(),
        event: Vec::new(),
        data: Vec::new(),
    };
    let mut raw: Vec<u8> = Vec::with_capacity(4096);
    let mut body: Vec<u8> = Vec::with_capacity(4096);
    let mut head_done = false;
    let mut chunked = false;
    // Bytes left in the current chunk; `None` while reading a size line.
    let mut chunk_left: Option<usize> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = now_ns();
        totals.borrow_mut().bytes += n as u64;
        raw.extend_from_slice(&buf[..n]);
        if !head_done {
            let Some(end) = find(&raw, b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") && !head.starts_with("http/1.0 200") {
                totals.borrow_mut().failed += 1;
                return;
            }
            chunked = head.contains("transfer-encoding: chunked");
            raw.drain(..end + 4);
            head_done = true;
            totals.borrow_mut().ok += 1;
            if !cfg.wait_first_event {
                c.ready = true;
                totals.borrow_mut().ready += 1;
                permit.take();
            }
        }
        // De-chunk what we have into `body`.
        if chunked {
            let mut at = 0;
            loop {
                match chunk_left {
                    None => {
                        let Some(e) = find(&raw[at..], b"\r\n") else {
                            break;
                        };
                        let line = &raw[at..at + e];
                        let hex = line.split(|b| *b == b';').next().unwrap_or(b"");
                        let size = usize::from_str_radix(
                            std::str::from_utf8(hex).unwrap_or("0").trim(),
                            16,
                        )
                        .unwrap_or(0);
                        at += e + 2;
                        if size == 0 {
                            // End of body.
                            raw.clear();
                            at = 0;
                            break;
                        }
                        chunk_left = Some(size);
                    }
                    Some(0) => {
                        // The CRLF after a chunk.
                        if raw.len() - at < 2 {
                            break;
                        }
                        at += 2;
                        chunk_left = None;
                    }
                    Some(left) => {
                        let take = left.min(raw.len() - at);
                        if take == 0 {
                            break;
                        }
                        body.extend_from_slice(&raw[at..at + take]);
                        at += take;
                        chunk_left = Some(left - take);
                    }
                }
            }
            raw.drain(..at);
        } else {
            body.append(&mut raw);
        }
        // Parse complete lines.
        let mut at = 0;
        while let Some(e) = body[at..].iter().position(|b| *b == b'\n') {
            let line = &body[at..at + e];
            at += e + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                dispatch(&cfg, &mut c, &totals, now);
                if c.ready && permit.is_some() {
                    permit.take();
                }
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match line.iter().position(|b| *b == b':') {
                Some(p) => {
                    let v = &line[p + 1..];
                    (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"id" => {
                    c.id.clear();
                    c.id.extend_from_slice(value);
                }
                b"event" => {
                    c.event.clear();
                    c.event.extend_from_slice(value);
                }
                b"data" => {
                    if !c.data.is_empty() {
                        c.data.push(b'\n');
                    }
                    c.data.extend_from_slice(value);
                }
                _ => {}
            }
        }
        // Once done, keep reading (and discarding) until the parent stops
        // us, so the server never sees a disconnect mid-measurement.
        body.drain(..at);
    }
    if !c.shared.done.get() {
        totals.borrow_mut().dropped += 1;
    }
}

fn new_conn(shared: Rc<Shared>) -> Conn {
    Conn {
        shared,
        last_id: Vec::new(),
        ready: false,
        id: Vec::new(),
        event: Vec::new(),
        data: Vec::new(),
    }
}

/// Hands one JSON message (`{"type":…,"id":…,"data":…}`, as the WebSocket
/// and long-poll carry it) to [`dispatch`]: its type as the event name, its
/// id, and the message itself as the data (`seq` and `t_ns` are found in
/// it as in an SSE frame's data).
fn dispatch_json(cfg: &Cfg, c: &mut Conn, totals: &RefCell<Totals>, now: u64, msg: &[u8]) {
    let field = |key: &[u8]| -> Vec<u8> {
        let Some(at) = find(msg, key) else {
            return Vec::new();
        };
        let rest = &msg[at + key.len()..];
        let end = rest.iter().position(|b| *b == b'"').unwrap_or(0);
        rest[..end].to_vec()
    };
    c.event = field(b"\"type\":\"");
    c.id = field(b"\"id\":\"");
    c.data.clear();
    c.data.extend_from_slice(msg);
    dispatch(cfg, c, totals, now);
}

/// Reads a response head (status line and headers) from `sock` into
/// `raw`; returns the status, the headers in lower case, and leaves the
/// bytes after the head in `raw`. `None` if the socket ended first.
async fn read_head(
    sock: &mut TcpStream,
    raw: &mut Vec<u8>,
    totals: &RefCell<Totals>,
) -> Option<(u16, String)> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = find(raw, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            raw.drain(..end + 4);
            let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            return Some((status, head));
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                totals.borrow_mut().bytes += n as u64;
                raw.extend_from_slice(&buf[..n]);
            }
        }
    }
}

/// A whole chunked body read from `sock` (after the head, `raw` holding
/// what was read past it); `None` if the socket ended first.
async fn read_chunked(
    sock: &mut TcpStream,
    raw: &mut Vec<u8>,
    totals: &RefCell<Totals>,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        // Every whole chunk in `raw`.
        while let Some(e) = find(raw, b"\r\n") {
            let hex = raw[..e].split(|b| *b == b';').next().unwrap_or(b"");
            let size = usize::from_str_radix(std::str::from_utf8(hex).ok()?.trim(), 16).ok()?;
            if raw.len() < e + 2 + size + 2 {
                break;
            }
            body.extend_from_slice(&raw[e + 2..e + 2 + size]);
            raw.drain(..e + 2 + size + 2);
            if size == 0 {
                return Some(body);
            }
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                totals.borrow_mut().bytes += n as u64;
                raw.extend_from_slice(&buf[..n]);
            }
        }
    }
}

/// A WebSocket session: the handshake, then one JSON message per text
/// frame; pings are answered (a masked, empty pong), so the server keeps
/// an idle session.
async fn ws_connection(
    cfg: Rc<Cfg>,
    totals: Rc<RefCell<Totals>>,
    shared: Rc<Shared>,
    mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
    mut sock: TcpStream,
) {
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        cfg.path
    );
    if let Some(id) = &cfg.last_event_id {
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    let mut raw = Vec::with_capacity(4096);
    if sock.write_all(req.as_bytes()).await.is_err() {
        totals.borrow_mut().failed += 1;
        return;
    }
    match read_head(&mut sock, &mut raw, &totals).await {
        Some((101, _)) => totals.borrow_mut().ok += 1,
        _ => {
            totals.borrow_mut().failed += 1;
            return;
        }
    }
    let mut c = new_conn(shared);
    let mut buf = vec![0u8; 16 * 1024];
    'read: loop {
        let now = now_ns();
        // Every whole frame in `raw`.
        loop {
            if raw.len() < 2 {
                break;
            }
            let opcode = raw[0] & 0x0f;
            let (len, at) = match raw[1] & 0x7f {
                126 if raw.len() >= 4 => (usize::from(u16::from_be_bytes([raw[2], raw[3]])), 4),
                127 if raw.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&raw[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if raw.len() < at + len {
                break;
            }
            let payload: Vec<u8> = raw[at..at + len].to_vec();
            raw.drain(..at + len);
            match opcode {
                1 => {
                    dispatch_json(&cfg, &mut c, &totals, now, &payload);
                    if c.ready && permit.is_some() {
                        permit.take();
                    }
                }
                // A ping: the pong carries its payload, masked (with a
                // zero mask, which leaves it as it is).
                9 if payload.len() < 126 => {
                    let mut pong = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(&payload);
                    if sock.write_all(&pong).await.is_err() {
                        break 'read;
                    }
                }
                8 => break 'read,
                _ => {}
            }
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                totals.borrow_mut().bytes += n as u64;
                raw.extend_from_slice(&buf[..n]);
            }
        }
    }
    if !c.shared.done.get() {
        totals.borrow_mut().dropped += 1;
    }
}

/// Long-poll: a fresh request (the snapshot), then one request at a time
/// with `since` = the answer's `last_event_id`, each waiting up to 60 s,
/// on one keep-alive connection.
async fn long_poll_connection(
    cfg: Rc<Cfg>,
    totals: Rc<RefCell<Totals>>,
    shared: Rc<Shared>,
    mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
    mut sock: TcpStream,
) {
    let mut c = new_conn(shared);
    let mut since = cfg.last_event_id.clone();
    let mut raw = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 16 * 1024];
    let mut first = true;
    // Bounded: the process ends at its deadline or when told to stop.
    loop {
        let query = match &since {
            Some(s) => format!("?since={s}&timeout=60000&limit=1000"),
            None => "?timeout=60000".to_owned(),
        };
        let req = format!(
            "GET {}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            cfg.path
        );
        if sock.write_all(req.as_bytes()).await.is_err() {
            break;
        }
        let Some((status, head)) = read_head(&mut sock, &mut raw, &totals).await else {
            break;
        };
        if status != 200 {
            if first {
                totals.borrow_mut().failed += 1;
                return;
            }
            break;
        }
        if first {
            totals.borrow_mut().ok += 1;
            first = false;
        }
        // An answer at once has a length; one that waited is chunked
        // (its head went out first).
        let body = if head.contains("transfer-encoding: chunked") {
            match read_chunked(&mut sock, &mut raw, &totals).await {
                Some(b) => b,
                None => break,
            }
        } else {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while raw.len() < len {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        totals.borrow_mut().bytes += n as u64;
                        raw.extend_from_slice(&buf[..n]);
                    }
                }
            }
            if raw.len() < len {
                break;
            }
            raw.drain(..len).collect()
        };
        let now = now_ns();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            break;
        };
        for m in v["events"].as_array().into_iter().flatten() {
            let msg = serde_json::to_vec(m).unwrap_or_default();
            dispatch_json(&cfg, &mut c, &totals, now, &msg);
        }
        if c.ready && permit.is_some() {
            permit.take();
        }
        since = v["last_event_id"].as_str().map(str::to_owned).or(since);
    }
    if !c.shared.done.get() {
        totals.borrow_mut().dropped += 1;
    }
}

fn dispatch(cfg: &Cfg, c: &mut Conn, totals: &RefCell<Totals>, now: u64) {
    let data = std::mem::take(&mut c.data);
    let event = std::mem::take(&mut c.event);
    if data.is_empty() {
        c.data = data;
        c.event = event;
        c.data.clear();
        c.event.clear();
        return;
    }
    let mut t = totals.borrow_mut();
    if !c.ready {
        c.ready = true;
        t.ready += 1;
    }
    // Ids strictly increase (ULIDs compare as text; nchan's `time:tag`
    // as numbers).
    if !c.id.is_empty() {
        if !c.last_id.is_empty() && !id_less(&c.last_id, &c.id) {
            t.id_errors += 1;
        }
        std::mem::swap(&mut c.last_id, &mut c.id);
        c.id.clear();
    }
    let seq = number_after(&data, b"seq\"");
    let snapshot = event == b"snapshot";
    if snapshot {
        t.snapshots += 1;
    }
    if let Some(seq) = seq {
        let next = c.shared.next.get();
        if seq >= cfg.first && !c.shared.done.get() {
            if seq == next {
                c.shared.next.set(next + 1);
            } else if seq > next {
                t.gaps += seq - next;
                c.shared.next.set(seq + 1);
            } else {
                t.dups += 1;
            }
            if !snapshot {
                t.events += 1;
                if t.first_recv_ns == 0 {
                    t.first_recv_ns = now;
                }
                t.last_recv_ns = t.last_recv_ns.max(now);
                if !cfg.replay {
                    if let Some(sent) = number_after(&data, b"t_ns\"") {
                        t.lat.record(now.saturating_sub(sent) / 1000);
                    }
                    if let Some((start, period)) = cfg.sched.get() {
                        let due = start + (seq - 1) * period;
                        t.lat_sched.record(now.saturating_sub(due) / 1000);
                    }
                }
            }
            drop(t);
            c.shared.check_done(cfg, totals);
        }
    }
    c.data = data;
    c.event = event;
    c.data.clear();
    c.event.clear();
}

fn id_less(a: &[u8], b: &[u8]) -> bool {
    if a.contains(&b':') || b.contains(&b':') {
        let nums = |s: &[u8]| -> Vec<u64> {
            s.split(|c| !c.is_ascii_digit())
                .filter(|p| !p.is_empty())
                .map(|p| std::str::from_utf8(p).unwrap().parse().unwrap_or(0))
                .collect()
        };
        nums(a) < nums(b)
    } else {
        a < b
    }
}

fn find(h: &[u8], needle: &[u8]) -> Option<usize> {
    h.windows(needle.len()).position(|w| w == needle)
}

/// The first run of digits after `key` in `data`: `"seq":7` in a document,
/// `"path":"/seq","value":7` in a patch.
fn number_after(data: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(data, key)? + key.len();
    let rest = &data[at..];
    let start = rest.iter().position(|b| b.is_ascii_digit())?;
    let mut n: u64 = 0;
    for b in &rest[start..] {
        if !b.is_ascii_digit() {
            break;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}
