//! Support code for the tests that run the real Claude Code client and real containers:
//! the Messages API mock, network namespaces the mock can listen in, process inspection as
//! root (environ, memory), and the prerequisite checks that fail under CI and skip otherwise.
#![allow(dead_code)] // Each test binary uses a different subset.

pub mod docker;
pub mod mock;

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::support::Finished;

/// Serialises the heavy tests of one binary: claude is a 250 MB binary and the timing tests
/// (pacing, docker stop) must not share 2 cores with three other claude runs.
pub static HEAVY: Mutex<()> = Mutex::new(());

pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

#[allow(unused_imports)] // every test binary compiles this module, not every one uses both
pub use crate::support::{is_root, require};

pub fn have_tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The pinned Claude Code native binary (BOTTLE_TEST_CLAUDE), checked to be the pinned version.
pub fn claude_binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("BOTTLE_TEST_CLAUDE")
        .map(PathBuf::from)
        .ok_or(
            "BOTTLE_TEST_CLAUDE is unset: point it at the native claude binary (.ci/run installs \
         @anthropic-ai/claude-code into .cache/claude; scripts/test sets the variable)",
        )?;
    let out = Command::new(&path)
        .arg("--version")
        .env("DISABLE_AUTOUPDATER", "1")
        .output()
        .map_err(|e| format!("BOTTLE_TEST_CLAUDE={}: cannot run it: {e}", path.display()))?;
    let want = std::env::var("BOTTLE_TEST_CLAUDE_VERSION").map_err(|_| {
        "BOTTLE_TEST_CLAUDE_VERSION is unset (scripts/test reads it from scripts/claude-code.env)"
            .to_string()
    })?;
    let got = String::from_utf8_lossy(&out.stdout);
    if !got.starts_with(&format!("{want} ")) {
        return Err(format!(
            "BOTTLE_TEST_CLAUDE={} reports {got:?}, expected {want}",
            path.display()
        ));
    }
    Ok(path)
}

/// A random token that looks like the real thing and occurs nowhere by chance.
pub fn fake_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// A network namespace held open by a file descriptor.
pub struct NetNs {
    file: File,
}

impl NetNs {
    /// A fresh namespace whose only interface is `lo`, brought up.
    pub fn new_loopback() -> io::Result<NetNs> {
        std::thread::spawn(|| -> io::Result<NetNs> {
            // Namespaces are per thread: this throwaway thread moves, the test thread stays.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let file = File::open("/proc/thread-self/ns/net")?;
            let st = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()?;
            if !st.success() {
                return Err(io::Error::other(format!("ip link set lo up: {st}")));
            }
            Ok(NetNs { file })
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
    }

    /// A namespace from an open `/proc/PID/ns/net` file.
    pub fn from_file(file: File) -> NetNs {
        NetNs { file }
    }

    /// The network namespace of a running process (e.g. a container's PID 1).
    pub fn of_pid(pid: u32) -> io::Result<NetNs> {
        Ok(NetNs {
            file: File::open(format!("/proc/{pid}/ns/net"))?,
        })
    }

    /// Runs `f` on a thread that has joined this namespace: sockets it creates and processes it
    /// spawns belong to the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(self.file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into the test network namespace");
                f()
            })
            .join()
            .expect("netns thread panicked")
        })
    }

    /// Binds a loopback listener inside the namespace.
    pub fn listen(&self, port: u16) -> io::Result<std::net::TcpListener> {
        self.run(|| std::net::TcpListener::bind(("127.0.0.1", port)))
    }

    /// Listeners on 127.0.0.1 and, when the namespace has IPv6, on ::1 with the same port:
    /// `localhost` then works whichever address a client resolves first.
    pub fn listen_localhost(&self, port: u16) -> io::Result<Vec<std::net::TcpListener>> {
        self.run(|| {
            let v4 = std::net::TcpListener::bind(("127.0.0.1", port))?;
            let port = v4.local_addr()?.port();
            let mut out = vec![v4];
            if let Ok(v6) = std::net::TcpListener::bind(("::1", port)) {
                out.push(v6);
            }
            Ok(out)
        })
    }
}

/// A child process killed (SIGKILL, by pid) when dropped, so a failing test leaves nothing.
pub struct Guard(pub Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut()
            && c.try_wait().ok().flatten().is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for `child` (stdout/stderr piped) with a time limit; kills it on timeout.
pub fn wait_timeout(child: Child, limit: Duration) -> Finished {
    let start = Instant::now();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<io::Result<Output>>();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(o)) => Finished {
            status: o.status,
            stdout: o.stdout,
            stderr: o.stderr,
            elapsed: start.elapsed(),
            cmdline: String::new(),
        },
        Ok(Err(e)) => panic!("waiting for pid {pid}: {e}"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
            let o = rx.recv_timeout(Duration::from_secs(10));
            let (out, err) = match o {
                Ok(Ok(o)) => (o.stdout, o.stderr),
                _ => (Vec::new(), Vec::new()),
            };
            panic!(
                "pid {pid} did not finish within {limit:?}; killed it\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
    }
}

/// Parent pid of `pid` from /proc/PID/stat (None when it is gone).
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// Every live descendant of `root` (host pids).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(pp) = ppid(pid)
            {
                all.push((pid, pp));
            }
        }
    }
    let mut out = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &all {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// A `Key:` line of /proc/PID/status.
pub fn status_field(pid: u32, key: &str) -> Option<String> {
    let f = File::open(format!("/proc/{pid}/status")).ok()?;
    io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
}

pub fn real_uid(pid: u32) -> Option<u32> {
    status_field(pid, "Uid")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The environment of `pid` as `NAME=value` strings (read as root).
pub fn environ(pid: u32) -> io::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// Number of memory bytes of `pid` scanned, and whether `needle` occurs in them.
/// Reads, as root through /proc/PID/mem, every page that is really there (resident or
/// swapped, per /proc/PID/pagemap) of every readable mapping with a non-zero Rss: claude
/// reserves tens of gigabytes it never touches, and reading those would only fault in zeros.
/// grep does the searching because test code is unoptimised.
pub fn memory_contains(pid: u32, needle: &str) -> io::Result<(u64, bool)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut mem = File::open(format!("/proc/{pid}/mem"))?;
    let mut pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    let dir = tempfile::tempdir()?;
    let pat = dir.path().join("pattern");
    std::fs::write(&pat, needle)?;
    let mut grep = Command::new("grep")
        .args(["-a", "-F", "-q", "-f"])
        .arg(&pat)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut stdin = grep.stdin.take().expect("piped stdin");
    let page = 4096u64;
    let mut scanned = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let overlap = needle.len().saturating_sub(1) as u64;
    'maps: for (start, end) in resident_readable_mappings(&smaps) {
        // Runs of present pages, from one pagemap entry (8 bytes) per page.
        let npages = ((end - start) / page) as usize;
        let mut entries = vec![0u8; npages * 8];
        if pagemap.seek(SeekFrom::Start(start / page * 8)).is_err()
            || pagemap.read_exact(&mut entries).is_err()
        {
            continue;
        }
        let present = |i: usize| {
            let e = u64::from_le_bytes(entries[i * 8..i * 8 + 8].try_into().unwrap());
            e & (3 << 62) != 0 // bit 63: present, bit 62: swapped
        };
        let mut i = 0;
        while i < npages {
            if !present(i) {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < npages && present(i) {
                i += 1;
            }
            let mut off = start + run_start as u64 * page;
            let run_end = start + i as u64 * page;
            while off < run_end {
                let want = ((run_end - off) as usize).min(buf.len());
                if mem.seek(SeekFrom::Start(off)).is_err() {
                    continue 'maps;
                }
                let n = match mem.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => continue 'maps,
                    Ok(n) => n,
                };
                scanned += n as u64;
                if io::Write::write_all(&mut stdin, &buf[..n]).is_err() {
                    break 'maps; // grep found it and exited.
                }
                // A newline ends grep's line; re-read the last needle.len()-1 bytes next time
                // so a needle straddling two reads is still seen whole.
                let _ = io::Write::write_all(&mut stdin, b"\n");
                off = if off + n as u64 >= run_end {
                    run_end
                } else {
                    off + (n as u64).saturating_sub(overlap).max(1)
                };
            }
        }
    }
    drop(stdin);
    let found = grep.wait()?.success();
    Ok((scanned, found))
}

/// (start, end) of the readable mappings in /proc/PID/smaps text that have pages in memory,
/// skipping [vvar]/[vsyscall] (not readable through mem).
fn resident_readable_mappings(smaps: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(s), Ok(e)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let perms = f.next().unwrap_or("");
            let name = line.split_whitespace().nth(5).unwrap_or("");
            current = (perms.starts_with('r') && name != "[vvar]" && name != "[vsyscall]")
                .then_some((s, e));
            continue;
        }
        if first == "Rss:" {
            let kb: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if let (Some(m), true) = (current.take(), kb > 0) {
                out.push(m);
            }
        }
    }
    out
}

/// Files under `dir` (recursively) whose contents contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file()
                && let Ok(data) = std::fs::read(&p)
                && mock::find(&data, needle).is_some()
            {
                hits.push(p);
            }
        }
    }
    hits
}

/// Asserts `needle` occurs nowhere in `hay`, naming where.
pub fn assert_absent(hay: &str, needle: &str, place: &str) {
    assert!(!hay.contains(needle), "the secret appears in {place}");
}
