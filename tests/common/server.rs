//! The real `patchfeed` binary on a temp data dir: started with a TOML
//! config (and extra arguments or environment), its stderr in a file, its
//! address from the one stdout line. Killed (by pid) on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{client, WAIT};

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    pub stderr: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl Server {
    /// Starts the binary with `config` (TOML) on a fresh data dir.
    pub fn start(config: &str) -> Server {
        Server::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Server {
        Server::start_with(config, env, &[])
    }

    /// With extra `serve` arguments (e.g. `--demo`).
    pub fn start_with(config: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("patchfeed.toml");
        std::fs::write(&path, config).expect("write config");
        let stderr = dir.path().join("stderr.log");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut s = Server {
            child: None,
            base: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            config: path,
            stderr,
            env,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// Starts the binary on this server's data dir (after `kill`).
    pub fn spawn(&mut self) {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .expect("stderr file");
        let (child, base) = super::binary::spawn_announced(
            Command::new(env!("CARGO_BIN_EXE_patchfeed"))
                .arg("serve")
                .args(&self.args)
                .args(["--listen", "127.0.0.1:0", "--config"])
                .arg(&self.config)
                .arg("--data-dir")
                .arg(self.dir.path().join("data"))
                // Only what the test asks for: the caller's RUST_LOG would
                // change what stderr holds.
                .env_remove("RUST_LOG")
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stderr(err),
        );
        self.addr = base
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not an address: {base}"));
        self.base = base;
        self.child = Some(child);
    }

    /// SIGKILL, then start again on the same data dir (a new port).
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts again on the same data dir after the process ended.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after the process ended");
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The pid of the running process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `sig` (`-TERM`, `-INT`, …) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill {sig}");
    }

    /// Waits (at most `within`) for the process to exit; SIGKILL and a
    /// panic if it does not.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not exit within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, wait for a clean exit (15 s at most), and return stderr,
    /// which must not show a panic.
    pub async fn stop(mut self) -> String {
        self.signal("-TERM");
        let status = self.wait_exit(Duration::from_secs(15)).await;
        let log = std::fs::read_to_string(&self.stderr).expect("stderr");
        assert!(!log.contains("panicked"), "the server panicked:\n{log}");
        assert!(status.success(), "exit status {status}; stderr:\n{log}");
        log
    }

    /// Resident set size now, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status("VmRSS:")
    }

    /// Peak resident set size so far, in KiB.
    pub fn rss_peak_kib(&self) -> u64 {
        self.proc_status("VmHWM:")
    }

    fn proc_status(&self, key: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in /proc status"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = client().get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = client()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> u16 {
        client()
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE")
            .status()
            .as_u16()
    }

    /// Every event id in the log of `id`, oldest first (history pages).
    pub async fn history_ids(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..1000 {
            let q = match &after {
                Some(a) => format!("/v1/resources/{id}/history?limit=1000&after={a}"),
                None => format!("/v1/resources/{id}/history?limit=1000"),
            };
            let (status, v) = self.get(&q).await;
            assert_eq!(status, 200, "{v}");
            for e in v["events"].as_array().expect("events") {
                out.push(e["id"].as_str().expect("id").to_owned());
            }
            match v["next_after"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => return out,
            }
        }
        panic!("history did not end");
    }

    /// Waits until the current document of `id` is `want`.
    pub async fn wait_document(&self, id: &str, want: &Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, v) = self.get(&format!("/v1/resources/{id}/document")).await;
            if status == 200 && &v == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the document of {id} never became the expected one"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Waits until `GET /v1/resources/{id}` satisfies `pred`.
    pub async fn wait_resource(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, v) = self.get(&format!("/v1/resources/{id}")).await;
            if status == 200 && pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
