#!/bin/sh
# Runs the request-path fuzz target for a bounded time (CI: FUZZ_SECONDS, default 60).
# Works on a stable toolchain: cargo-fuzz needs nightly-only flags (-Zsanitizer), which
# RUSTC_BOOTSTRAP=1 unlocks. Needs `cargo install cargo-fuzz` and a C++ compiler (libFuzzer).
# Without cargo-fuzz it falls back to the libFuzzer-free bounded random-input test over the
# same harness (src/http/fuzz.rs).
set -eu
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
if cargo fuzz --version >/dev/null 2>&1; then
    mkdir -p corpus/request_path
    RUSTC_BOOTSTRAP=1 exec cargo fuzz run request_path corpus/request_path -- \
        -max_total_time="$seconds" -print_final_stats=1
fi
echo "cargo-fuzz not installed: running the bounded random-input harness instead" >&2
cd ..
FUZZ_SECONDS="$seconds" exec cargo test --test proxy fuzz_request_path_bounded -- --nocapture
