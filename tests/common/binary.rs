//! Starting the real `patchfeed` binary and reading where it listens.
//! Shared by the test crates and benches that spawn it, with
//! `#[path = ".../tests/common/binary.rs"] mod binary;`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Spawns `cmd` (a `patchfeed serve …`) with stdout piped and returns the
/// child once it has printed its one stdout line, with the base URL that
/// line names (`http://ADDR`).
pub fn spawn_announced(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn patchfeed");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read stdout");
    let base = line
        .trim()
        .strip_prefix("patchfeed listening on ")
        .unwrap_or_else(|| panic!("no announce line: {line:?}"))
        .to_owned();
    (child, base)
}
