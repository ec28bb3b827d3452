//! Fuzz target `parse_point`: see `checks::parse_point` for what it checks.
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::parse_point(data));
