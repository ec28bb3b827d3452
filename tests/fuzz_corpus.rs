//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the same
//! checks the fuzz targets run (`fuzz/checks.rs`, included here), so that
//! plain `cargo test` — and CI, which has no nightly and no libFuzzer —
//! keeps every input the fuzzer found interesting passing.
//! How to fuzz: `fuzz/README.md`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../fuzz/checks.rs"]
mod checks;

/// Every file of one target's corpus, in name order.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every corpus file of `target`, then fails naming every
/// file whose check panicked. A corpus smaller than `min_files` fails too:
/// a replay of nothing would pass for the wrong reason.
fn replay(target: &str, min_files: usize, check: fn(&[u8])) {
    let files = corpus(target);
    assert!(
        files.len() >= min_files,
        "fuzz/corpus/{target} has {} files, expected at least {min_files}",
        files.len()
    );
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", f.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn parse_point_corpus() {
    replay("parse_point", 10, checks::parse_point);
}

#[test]
fn config_toml_corpus() {
    replay("config_toml", 10, checks::config_toml);
}

#[test]
fn diff_roundtrip_corpus() {
    replay("diff_roundtrip", 10, checks::diff_roundtrip);
}

#[test]
fn log_model_corpus() {
    replay("log_model", 5, checks::log_model);
}
