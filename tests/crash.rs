//! Crash test of the change log (harness = false): a child process appends
//! continuously to several resources and prints each event id once
//! `append` has returned (the store's promise: durable); the parent kills
//! it with SIGKILL at random moments, reopens the data dir and checks that
//!
//! - every id the child reported is present and rebuilds to its document;
//! - each resource's log is one chain: ids strictly increase (across every
//!   restart), versions follow each other with no gap and no duplicate
//!   (replaying the patches from the horizon reproduces every version and
//!   ends at the head);
//! - the next child continues the chain from the stored head.
//!
//! Child and parent use the log only through the `Storage` trait
//! (`store::Store`); the test runs against sled, then against the
//! JetStream backend on a real 3-node NATS cluster (replicas 3) that it
//! starts on loopback and stops by pid (`cluster::testing`).
//!
//! Bounded: `PATCHFEED_CRASH_ROUNDS` kills for sled (default 30) and
//! `PATCHFEED_CRASH_CLUSTER_ROUNDS` for the cluster (default 8), each
//! after 50–400 ms of appending.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use patchfeed::cluster::testing::{unique_prefix, NatsCluster};
use patchfeed::config::ClusterConfig;
use patchfeed::model::{EventId, Point, ResourceId, ResourceSpec};
use patchfeed::store::{open_cluster, open_sled, At, ReadAfter, Store};
use serde_json::{json, Value};
use ulid::Ulid;

const CHILD_ENV: &str = "PATCHFEED_CRASH_CHILD";
/// Set for a child of the cluster run: the NATS URLs, comma-separated,
/// and the prefix of its streams (`CHILD_ENV` is then the prefix).
const NATS_ENV: &str = "PATCHFEED_CRASH_NATS";

/// Where the log under test lives.
#[derive(Clone)]
enum Backend {
    Sled(std::path::PathBuf),
    Cluster(ClusterConfig),
}

impl Backend {
    /// The backend a child was started for.
    fn from_env(arg: &str) -> Backend {
        match std::env::var(NATS_ENV) {
            Ok(urls) => Backend::Cluster(ClusterConfig {
                nats: urls.split(',').map(str::to_owned).collect(),
                replicas: 3,
                node: "crash".into(),
                lease: ClusterConfig::DEFAULT_LEASE,
                prefix: arg.to_owned(),
            }),
            Err(_) => Backend::Sled(arg.into()),
        }
    }

    async fn open(&self) -> Store {
        match self {
            Backend::Sled(dir) => open_sled(dir).unwrap(),
            Backend::Cluster(cfg) => open_cluster(cfg).await.unwrap(),
        }
    }

    fn child_command(&self, exe: &std::path::Path) -> Command {
        let mut c = Command::new(exe);
        match self {
            Backend::Sled(dir) => {
                c.env(CHILD_ENV, dir);
            }
            Backend::Cluster(cfg) => {
                c.env(CHILD_ENV, &cfg.prefix)
                    .env(NATS_ENV, cfg.nats.join(","));
            }
        }
        c
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sled(_) => "sled",
            Backend::Cluster(_) => "cluster",
        }
    }
}
const RESOURCES: usize = 4;
/// Appends per child, at most (it is killed long before).
const MAX_APPENDS: u64 = 1_000_000;

fn rid(r: usize) -> ResourceId {
    ResourceId::new(&format!("r{r}")).unwrap()
}

/// Version `seq` of resource `r`: changes everywhere a patch can, including
/// a front insert into an array and keys that need escaping. The last
/// resource's documents (and patches) are ~9 KB, over the store's chunk
/// size, so kills also land inside chunked writes.
fn doc(r: usize, seq: u64) -> Value {
    let mut d = json!({
        "seq": seq,
        "r": r,
        "list": (0..(seq % 9)).rev().collect::<Vec<_>>(),
        "a/b~c": format!("é{seq}"),
        "nested": { "even": seq.is_multiple_of(2), "third": seq / 3 },
    });
    if r == RESOURCES - 1 {
        d["pad"] = json!(format!("{seq:x}").repeat(9000 / format!("{seq:x}").len()));
    }
    d
}

fn seq_of(v: &Value) -> u64 {
    v["seq"].as_u64().expect("every stored document has a seq")
}

fn spec(r: usize) -> ResourceSpec {
    ResourceSpec {
        id: rid(r),
        url: "http://127.0.0.1:9/unused".into(),
        interval: Duration::from_secs(1),
        headers: Default::default(),
        snapshot_every: 5,
        retain: None,
        ad_hoc: false,
        push: false,
        pages: None,
    }
}

fn child(backend: Backend) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store: Store = backend.open().await;
        let mut tasks = Vec::new();
        for r in 0..RESOURCES {
            store
                .create(spec(r), patchfeed::model::now_ms())
                .await
                .unwrap();
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = rid(r);
                let start = match store.head(&id).unwrap() {
                    Some(h) => seq_of(&h.doc) + 1,
                    None => 0,
                };
                for seq in start..start + MAX_APPENDS {
                    let (e, _prev) = store
                        .append(&id, doc(r, seq), patchfeed::model::now_ms())
                        .await
                        .unwrap()
                        .expect("every version differs");
                    // Reported only now that it is durable; one write per line.
                    let line = format!("{r} {} {seq}\n", e.id);
                    let mut out = std::io::stdout().lock();
                    out.write_all(line.as_bytes()).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

struct Reported {
    r: usize,
    id: EventId,
    seq: u64,
}

fn parse(line: &str) -> Option<Reported> {
    let mut it = line.split(' ');
    let r = it.next()?.parse().ok()?;
    let id = EventId(Ulid::from_string(it.next()?).ok()?);
    let seq = it.next()?.parse().ok()?;
    Some(Reported { r, id, seq })
}

/// Checks the whole store; returns each resource's head (id, seq).
fn verify(backend: &Backend, reported: &[Reported], round: usize) -> Vec<Option<(EventId, u64)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(verify_store(backend, reported, round))
}

/// [`verify`] through the `Storage` trait, as every backend is read.
async fn verify_store(
    backend: &Backend,
    reported: &[Reported],
    round: usize,
) -> Vec<Option<(EventId, u64)>> {
    let store: Store = backend.open().await;
    for rep in reported {
        let id = rid(rep.r);
        assert!(
            store.contains(&id, rep.id).await.unwrap(),
            "round {round}: reported durable event {} of r{} is missing",
            rep.id,
            rep.r
        );
        match store.document_at(&id, Point::Id(rep.id.0)).await.unwrap() {
            At::Found { id: found, doc: d } => {
                assert_eq!(
                    found, rep.id,
                    "round {round}: document_at({}) found another event",
                    rep.id
                );
                assert_eq!(
                    *d,
                    doc(rep.r, rep.seq),
                    "round {round}: wrong document at {}",
                    rep.id
                );
            }
            other => panic!("round {round}: document_at({}) = {other:?}", rep.id),
        }
    }
    let mut heads = Vec::new();
    for r in 0..RESOURCES {
        let id = rid(r);
        let Some(status) = store.resource(&id).and_then(|_| store.status(&id).ok()) else {
            heads.push(None);
            continue;
        };
        let (Some(horizon), Some(last)) = (status.horizon, status.last_event_id) else {
            heads.push(None);
            continue;
        };
        // Replay the whole chain from the horizon.
        let At::Found { doc: first, .. } =
            store.document_at(&id, Point::Id(horizon.0)).await.unwrap()
        else {
            panic!("round {round}: no document at the horizon of r{r}");
        };
        let mut current = (*first).clone();
        assert_eq!(
            current,
            doc(r, seq_of(&current)),
            "round {round}: r{r} horizon document"
        );
        let mut cursor = horizon;
        loop {
            let ReadAfter::Events(events) = store
                .read_after(&id, cursor.0, 1000, usize::MAX)
                .await
                .unwrap()
            else {
                panic!("round {round}: read_after(horizon) of r{r} is before the horizon");
            };
            for e in &events {
                assert!(
                    e.id > cursor,
                    "round {round}: r{r}: id {} does not follow {cursor}",
                    e.id
                );
                let patch: json_patch::Patch = serde_json::from_slice(&e.patch).unwrap();
                let before = seq_of(&current);
                json_patch::patch(&mut current, &patch).unwrap();
                assert_eq!(
                    seq_of(&current),
                    before + 1,
                    "round {round}: r{r}: gap or duplicate at {}",
                    e.id
                );
                assert_eq!(
                    current,
                    doc(r, before + 1),
                    "round {round}: r{r}: wrong version at {}",
                    e.id
                );
                cursor = e.id;
            }
            if events.len() < 1000 {
                break;
            }
        }
        assert_eq!(
            cursor, last,
            "round {round}: r{r}: the chain does not end at the head"
        );
        let head = store.head(&id).unwrap().unwrap();
        assert_eq!(
            *head.doc, current,
            "round {round}: r{r}: head differs from the replayed chain"
        );
        heads.push(Some((last, seq_of(&current))));
    }
    drop(store);
    heads
}

fn rounds(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    run(
        &Backend::Sled(dir.path().to_owned()),
        rounds("PATCHFEED_CRASH_ROUNDS", 30),
    );
    let cluster = NatsCluster::start(3);
    run(
        &Backend::Cluster(cluster.config(&unique_prefix("crash"), 3)),
        rounds("PATCHFEED_CRASH_CLUSTER_ROUNDS", 8),
    );
    drop(cluster);
}

fn run(backend: &Backend, rounds: usize) {
    let exe = std::env::current_exe().unwrap();
    let mut prev_heads: Vec<Option<(EventId, u64)>> = vec![None; RESOURCES];
    let (mut total_reported, mut total_stored) = (0usize, 0u64);
    for round in 0..rounds {
        let mut child = backend
            .child_command(&exe)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| parse(&l))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rand::random_range(50..400)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the child ended by itself: {status}"
        );
        let reported = reader.join().unwrap();
        total_reported += reported.len();

        let heads = verify(backend, &reported, round);
        // Across the restart: the chain only grew, from where it was.
        for r in 0..RESOURCES {
            if let (Some((prev_id, prev_seq)), Some((id, seq))) = (prev_heads[r], heads[r]) {
                assert!(
                    id >= prev_id && seq >= prev_seq,
                    "round {round}: r{r} went back from {prev_id}/{prev_seq} to {id}/{seq}"
                );
            }
            if let Some(max) = reported.iter().filter(|x| x.r == r).map(|x| x.seq).max() {
                assert!(
                    heads[r].is_some_and(|(_, s)| s >= max),
                    "round {round}: r{r} head is behind a reported event"
                );
            }
        }
        total_stored = heads.iter().flatten().map(|(_, s)| s + 1).sum();
        prev_heads = heads;
    }
    assert!(
        total_reported > 0,
        "{}: no child reported an append",
        backend.name()
    );
    println!(
        "crash ({}): {rounds} SIGKILLs, {total_reported} reported-durable appends all found, {total_stored} events in {RESOURCES} gap-free chains",
        backend.name()
    );
}

fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(arg) => child(Backend::from_env(&arg)),
        Err(_) => parent(),
    }
}
