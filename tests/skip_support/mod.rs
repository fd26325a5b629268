//! The one place a test records that it skipped (a prerequisite is missing and CI is unset),
//! so `scripts/test` can end with the number and names of the tests that did not run instead
//! of a bare "all tests passed". Each gate in tests/*_support calls [`skipped`]; every test
//! binary with a gate declares `mod skip_support;` (a folder, because a file directly under
//! tests/ would become a test binary of its own).

use std::io::Write;

/// Names the variable `scripts/test` sets to the file that collects `test: reason` lines.
pub const SKIP_LOG_VAR: &str = "BOTTLE_TEST_SKIP_LOG";

/// Prints the skip loudly and appends `binary::test: reason` to `$BOTTLE_TEST_SKIP_LOG`.
/// libtest names each test's thread after the test; the binary is this executable without
/// cargo's `-<hash>` suffix.
pub fn skipped(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .map(|n| match n.rsplit_once('-') {
            Some((stem, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => stem.to_string(),
            _ => n,
        })
        .unwrap_or_else(|| "tests".to_string());
    let reason = reason.replace('\n', " ");
    eprintln!("\n*** SKIPPED {binary}::{test} (CI unset): {reason} ***\n");
    let Some(path) = std::env::var_os(SKIP_LOG_VAR).filter(|p| !p.is_empty()) else {
        return;
    };
    // One write with O_APPEND: lines from tests running in parallel never interleave.
    let line = format!("{binary}::{test}: {reason}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        // Not recording a skip would hide it: fail the test instead.
        panic!("cannot record the skip in {}: {e}", path.to_string_lossy());
    }
}
