//! What every test binary shares: the binary under test ([`bin`]), the one gate for a missing
//! prerequisite ([`require`]: under CI it fails, otherwise the test skips and [`skipped`]
//! records it, so `scripts/test` can end with the number and names of the tests that did not
//! run instead of a bare "all tests passed"), the one test CA ([`tls`]), the one mock upstream
//! ([`upstream`]), and the helpers more than one test binary needs. The per-area helpers build
//! on it as submodules: [`e2e`] (the real client, containers: [`e2e::mock`], [`e2e::docker`]),
//! [`egress`] (the namespace lab, [`egress::connect`]), [`init`] (bottle-init in namespaces) and
//! [`proxy`] (the proxy in-process). Every test binary declares only `mod support;` (a folder,
//! because a file directly under tests/ would become a test binary of its own) and so compiles
//! every submodule, hence the dead-code allowance: each binary uses a different subset.

#![allow(dead_code)]

pub mod e2e;
pub mod egress;
pub mod init;
pub mod proxy;
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
    let line = format!("{binary}::{test}: {reason}");
    if let Err(e) = append_line(&path, &line) {
        // Not recording a skip would hide it: fail the test instead.
        panic!("cannot record the skip in {}: {e}", path.to_string_lossy());
    }
}

/// Appends `line` and a newline to the log at `path` (scripts/test's skip and retry logs) in
/// one write with O_APPEND: lines from tests running in parallel never interleave.
pub fn append_line(path: &std::ffi::OsStr, line: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
}

/// A command that ended: what it printed and how long it took, described in full when a test
/// fails.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: std::time::Duration,
    /// The command as run (empty when the caller only had the child).
    pub cmdline: String,
}

impl Finished {
    /// The exit code; a death by signal fails the test.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {}", self.describe()))
    }
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {:?}\nelapsed: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            self.elapsed,
            self.out(),
            self.err()
        )
    }
    /// Fails the test if `secret` appears in stdout or stderr.
    pub fn assert_no_secret(&self, secret: &str) {
        for (name, bytes) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            assert!(
                secret.is_empty() || !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret in {name}\n{}",
                self.describe()
            );
        }
    }
    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.status.code(), Some(code), "\n{}", self.describe());
    }
}

/// `git log -1 --format='%h %cs'` of the repository (the build context): what
/// `bottle-init --version` names. None outside a git clone.
pub fn git_head() -> Option<String> {
    let o = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "log",
            "-1",
            "--format=%h %cs",
        ])
        .output()
        .ok()?;
    let s = String::from_utf8(o.stdout).ok()?.trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

/// Reads an HTTP head a byte at a time (so nothing after it is consumed): up to and with the
/// blank line, at most `max` bytes, or what came before an error or EOF.
pub fn read_head(r: &mut impl std::io::Read, max: usize) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < max {
        match r.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

/// Sets a socket timeout (`opt`: SO_RCVTIMEO or SO_SNDTIMEO) on a raw descriptor.
pub fn set_fd_timeout(fd: i32, opt: libc::c_int, d: std::time::Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a pointer to a live timeval and its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// Writes `passwd` and `group` into `dir`: the host's, with uid/gid 1000 replaced by a `claude`
/// user whose home is `home` (the host may have its own uid 1000). Tests bind-mount them over
/// /etc in a private mount namespace.
pub fn write_identity_files(dir: &Path, home: &Path) {
    let keep = |file: &str, id_field: usize| -> String {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split(':').collect();
                f.first() != Some(&"claude") && f.get(id_field) != Some(&"1000")
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let passwd = keep("/etc/passwd", 2)
        + &format!(
            "claude:x:1000:1000:bottle test:{}:/bin/sh\n",
            home.display()
        );
    let group = keep("/etc/group", 2) + "claude:x:1000:\n";
    std::fs::write(dir.join("passwd"), passwd).unwrap();
    std::fs::write(dir.join("group"), group).unwrap();
}
