//! Harness for running the real `bottle-init` binary in test namespaces.
//!
//! Every run happens in a private mount namespace where /etc/passwd and /etc/group are
//! bind-mounted from a temp dir (user `tester`, uid 1000, HOME in the temp dir), so the host's
//! users and home directories are never touched. `pid1` runs add
//! `--pid --fork --mount-proc --net` (bottle-init is PID 1, loopback brought up first).

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use crate::support::Finished;

#[allow(unused_imports)] // not every test binary uses both
pub use crate::support::{bin, which};

pub const TEST_UID: u32 = 1000;

/// Root and the tools the namespace set-up uses (the one gate: tests/support).
pub fn require_root() -> bool {
    crate::support::require_root_with(
        &["unshare", "ip", "mount", "sh"],
        "namespaces; util-linux and iproute2",
    )
}

/// A fresh fake OAuth token, unique per test.
pub fn token() -> String {
    format!("sk-ant-oat01-TESTTOKEN-{}", random_hex(12))
}

pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A temp world: passwd/group files, the tester's HOME, a run dir.
pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("bottle-init-test")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let w = World { dir };
        let home = w.home();
        std::fs::create_dir(&home).unwrap();
        chown(&home, TEST_UID, TEST_UID);
        std::fs::write(
            w.path().join("passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/sh\ntester:x:{TEST_UID}:{TEST_UID}:Tester:{}:/bin/sh\nother:x:1001:1001::/nonexistent:/bin/sh\n",
                home.display()
            ),
        )
        .unwrap();
        std::fs::write(
            w.path().join("group"),
            format!("root:x:0:\ntester:x:{TEST_UID}:\nextra:x:2345:tester\n"),
        )
        .unwrap();
        std::fs::create_dir(w.run_dir()).unwrap();
        std::fs::set_permissions(w.run_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
        w
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn home(&self) -> PathBuf {
        self.path().join("home")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.path().join("run")
    }
}

pub fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

/// How to start bottle-init.
pub struct Opts {
    pub pid1: bool,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Wrap in `strace -f -v -s 4096 -o FILE` (outside the namespaces it is not PID 1 then).
    pub strace: Option<PathBuf>,
}

impl Opts {
    pub fn new(pid1: bool, args: &[&str]) -> Opts {
        Opts {
            // scripts/test-aarch64 sets BOTTLE_TEST_PID1_ONLY: qemu-user has no
            // PR_SET_CHILD_SUBREAPER (EINVAL), so bottle-init only runs there as PID 1.
            pid1: pid1 || std::env::var_os("BOTTLE_TEST_PID1_ONLY").is_some(),
            args: args.iter().map(OsString::from).collect(),
            env: Vec::new(),
            stdin: None,
            timeout: Duration::from_secs(30),
            strace: None,
        }
    }
    pub fn env(mut self, k: &str, v: &str) -> Opts {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
}

/// The command line that starts bottle-init in the world's namespaces.
pub fn command(world: &World, opts: &Opts) -> Command {
    let mut c = Command::new("unshare");
    c.arg("--mount").arg("--propagation").arg("private");
    if opts.pid1 {
        c.args(["--pid", "--fork", "--mount-proc", "--net", "--kill-child"]);
    }
    // HOMES (optional): a directory bind-mounted on /home, for the private-home tests.
    let setup = "set -e; mount --bind \"$W/passwd\" /etc/passwd; mount --bind \"$W/group\" /etc/group; \
                 if [ -n \"${HOMES:-}\" ]; then mount --bind \"$HOMES\" /home; fi; \
                 if [ \"$PID1\" = 1 ]; then ip link set lo up; fi; unset W PID1 HOMES; exec \"$@\"";
    c.args(["--", "sh", "-c", setup, "sh"]);
    if let Some(out) = &opts.strace {
        c.args(["strace", "-f", "-v", "-s", "4096", "-o"]).arg(out);
    }
    c.arg(bin()).args(&opts.args);
    c.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("W", world.path())
        .env("PID1", if opts.pid1 { "1" } else { "0" })
        .env("BOTTLE_RUN_DIR", world.run_dir())
        .env("HOME", "/root");
    for (k, v) in &opts.env {
        c.env(k, v);
    }
    c.current_dir(world.path());
    c
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs to completion (killing it after the timeout) and collects the output.
pub fn run(world: &World, opts: Opts) -> Finished {
    let mut c = command(world, &opts);
    let cmdline = format!("{c:?}");
    c.stdin(if opts.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().expect("spawn unshare");
    let stdin_thread = opts.stdin.map(|bytes| {
        let mut si = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = si.write_all(&bytes);
        })
    });
    let out_thread = reader(child.stdout.take().unwrap());
    let err_thread = reader(child.stderr.take().unwrap());
    let status = wait_timeout(&mut child, opts.timeout, &cmdline);
    if let Some(t) = stdin_thread {
        let _ = t.join();
    }
    let o = Finished {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
        elapsed: start.elapsed(),
        cmdline,
    };
    // Every run: no credential given in the environment shows up in any output.
    for (_, v) in opts.env.iter().filter(|(_, v)| v.starts_with("sk-ant-")) {
        o.assert_no_secret(v);
    }
    o
}

pub fn reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Waits for `child`; SIGKILLs it (our own child, by pid) after `timeout` and panics.
pub fn wait_timeout(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {timeout:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Direct children of `pid` (scan of /proc; no CONFIG_PROC_CHILDREN here).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            let rest = &stat[stat.rfind(')').unwrap() + 1..];
            if rest
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok())
                == Some(pid)
            {
                out.push(p);
            }
        }
    }
    out
}

/// Waits until `pid` has exactly one child matching `comm` (host view) and returns it.
pub fn wait_for_child(pid: u32, comm: &str, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    loop {
        for c in children_of(pid) {
            if std::fs::read_to_string(format!("/proc/{c}/comm"))
                .map(|s| s.trim() == comm)
                .unwrap_or(false)
            {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "no child {comm} of {pid}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every readable byte of a process's memory (as root, through /proc/PID/mem).
pub fn read_memory(pid: u32) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut all = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let range = f.next().unwrap();
        let perms = f.next().unwrap();
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            all.extend_from_slice(&buf);
        }
    }
    assert!(all.len() > 4096, "read almost nothing from /proc/{pid}/mem");
    all
}

/// Parses `Key:\tvalue` lines of /proc/PID/status text.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// A line-oriented reader over a child's stdout for interactive tests.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new<R: Read + Send + 'static>(r: R) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }
    /// Waits for a line containing `needle`.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no line containing {needle:?}; saw {:?}", self.seen),
            }
        }
    }
}
