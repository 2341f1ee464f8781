//! Fuzz target: `cargo fuzz run scan` from `fuzz/` (seed corpus in
//! `fuzz/corpus/scan`). Asserts structure, not just absence of panics;
//! see check.rs.
#![no_main]

include!("check.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));
