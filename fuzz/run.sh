#!/bin/sh
# Runs the fuzz targets for a bounded time (CI: FUZZ_SECONDS, default 60, split evenly between
# the targets): request_path (the proxy's request path) and usage_scan (the passive usage
# scanner of response bodies, seeded from seeds/usage_scan with usage_scan.dict).
# Works on a stable toolchain: cargo-fuzz needs nightly-only flags (-Zsanitizer), which
# RUSTC_BOOTSTRAP=1 unlocks. Needs `cargo install cargo-fuzz` and a C++ compiler (libFuzzer).
# Without cargo-fuzz it falls back to the libFuzzer-free bounded random-input tests over the
# same harnesses (src/http/fuzz.rs, and the proptests in src/http/usage.rs).
set -eu
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
targets="request_path usage_scan"
if cargo fuzz --version >/dev/null 2>&1; then
    each=$(( seconds / 2 ))
    [ "$each" -ge 1 ] || each=1
    for t in $targets; do
        mkdir -p "corpus/$t"
        set -- "corpus/$t"
        [ -d "seeds/$t" ] && set -- "$@" "seeds/$t"
        dict=""
        [ -f "$t.dict" ] && dict="-dict=$t.dict"
        echo "fuzz: target $t for $each s"
        # shellcheck disable=SC2086 # $dict is one word or none
        RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$@" -- \
            -max_total_time="$each" -print_final_stats=1 $dict
    done
    exit 0
fi
echo "cargo-fuzz not installed: running the bounded random-input harnesses instead" >&2
cd ..
FUZZ_SECONDS="$seconds" cargo test --test proxy fuzz_request_path_bounded -- --nocapture
exec cargo test --lib http::usage
