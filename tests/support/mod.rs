//! What every test binary shares: the binary under test ([`bin`]), the one gate for a missing
//! prerequisite ([`require`]: under CI it fails, otherwise the test skips and [`skipped`]
//! records it, so `scripts/test` can end with the number and names of the tests that did not
//! run instead of a bare "all tests passed"). The per-area helpers in tests/*_support build on
//! it. Every test binary declares `mod support;` (a folder, because a file directly under
//! tests/ would become a test binary of its own).

#![allow(dead_code)]

pub mod tls;
pub mod upstream;

use std::io::Write;
use std::path::{Path, PathBuf};

/// The binary under test: `BOTTLE_INIT_TEST_BIN` (e.g. the static release build) or the one
/// cargo built for this test run.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("BOTTLE_INIT_TEST_BIN")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_bottle-init").to_string())
    })
}

/// CI is set (scripts/test and .ci/run set CI=true): a missing prerequisite fails the test.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The one gate: `ok` or, under CI, a failure naming `what`; otherwise the test skips, loudly
/// and recorded. Returns false when the caller should return.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if under_ci() {
        panic!("prerequisite missing under CI (CI forbids skipping): {what}");
    }
    skipped(what);
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root with the given tools on PATH (namespaces, nftables, setresuid need root).
pub fn require_root_with(tools: &[&str], why: &str) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    match (is_root(), missing.is_empty()) {
        (true, true) => true,
        (false, _) => require(false, &format!("needs root ({why})")),
        (true, false) => require(false, &format!("{} missing ({why})", missing.join(", "))),
    }
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

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
