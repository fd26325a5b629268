//! Fuzzes the proxy's request path: head parsing and validation, the upstream rewrite and the
//! body framer. The invariants live in `bottle_init::http::fuzz` so the bounded CI test
//! (`cargo test --test proxy fuzz_request_path_bounded`) checks exactly the same ones.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bottle_init::http::fuzz::request_path(data);
});
