//! nginx + nchan, started and stopped through `benches/nchan/run.sh`, and
//! the process-memory readings for both systems.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Nchan {
    pub dir: PathBuf,
    pub port: u16,
    pub master: u32,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/nchan/run.sh")
}

impl Nchan {
    /// Installs nginx + nchan if missing, then starts it on `port`.
    pub fn start(dir: &Path, port: u16) -> Result<Nchan, String> {
        let st = Command::new(script())
            .arg("install")
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err("installing nginx + nchan failed".into());
        }
        let out = Command::new(script())
            .arg("start")
            .arg(dir)
            .arg(port.to_string())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "starting nginx failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let master = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| "no nginx pid".to_string())?;
        Ok(Nchan {
            dir: dir.to_owned(),
            port,
            master,
        })
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.master];
        pids.extend(children(self.master));
        pids
    }
}

impl Drop for Nchan {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
    }
}

fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_kb(pid: Option<u32>, field: &str) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    kb_field(&std::fs::read_to_string(path).unwrap_or_default(), field)
}

/// `Pss` of `/proc/<pid>/smaps_rollup`, in bytes: shared pages (nchan's
/// shared memory, nginx's text) split between the processes mapping them,
/// so the sum over processes does not count them twice.
pub fn pss(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/smaps_rollup"),
        None => "/proc/self/smaps_rollup".into(),
    };
    kb_field(&std::fs::read_to_string(path).unwrap_or_default(), "Pss")
}

fn kb_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// RSS and PSS of a set of processes (`None` = this one), summed.
pub fn memory(pids: &[Option<u32>]) -> (u64, u64) {
    pids.iter().fold((0, 0), |(r, p), pid| {
        (r + status_kb(*pid, "VmRSS"), p + pss(*pid))
    })
}
