//! Fuzzes the passive usage scanner (SSE and JSON response bodies). The invariants live in
//! `bottle_init::http::usage::fuzz_harness` (built under cargo-fuzz's `--cfg fuzzing`), which
//! the unit tests (`cargo test --lib http::usage`) run on generated and mutated bodies too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bottle_init::http::usage::fuzz_harness(data);
});
