//! Fuzz target `log_model`: see `checks::log_model` for what it checks.
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::log_model(data));
