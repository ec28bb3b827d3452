//! Fuzz target `diff_roundtrip`: see `checks::diff_roundtrip` for what it checks.
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::diff_roundtrip(data));
