//! The real bottle-init binary under a small file-descriptor limit (issue 10 items 4 and 13):
//! `prlimit --nofile=1024:1024`, as Docker's default soft limit with no higher hard limit.
//! A flood of idle connections must never wedge the proxy: every connection it accepts and
//! cannot serve gets a 503 `overloaded_error` (never a reset or a silent close), a
//! well-behaved client keeps getting answers during the flood, and the proxy serves normally
//! right after the flood closes. The child gets back the soft limit it would have had.
//!
//! Runs as root (bottle-init must), in a loopback-only network namespace of its own with the
//! TLS mock upstream of `support::e2e`. Fails instead of skipping under CI=true.

mod support;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::e2e::mock::{Expect, Mock, MockConfig};
use support::e2e::{NetNs, fake_secret, have_tool, is_root, require};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const FLOOD: usize = 1100;

fn prerequisites(test: &str) -> bool {
    require(
        is_root(),
        &format!("{test}: needs root (bottle-init starts as root)"),
    ) && require(have_tool("prlimit"), "prlimit (util-linux)")
        && require(have_tool("ip"), "ip (iproute2)")
}

/// This test process opens more than 1100 sockets itself: raise its own soft limit.
fn raise_own_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a live local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= 4096,
        "the test needs >= 4096 fds, hard limit {}",
        lim.rlim_max
    );
}

struct Running {
    ns: NetNs,
    mock: Mock,
    token: String,
    dir: tempfile::TempDir,
    init: Option<Child>,
    stderr: PathBuf,
}

impl Running {
    /// bottle-init under `prlimit --nofile=SOFT:HARD`, its child a shell that writes what it
    /// got (proxy URL, session secret, its own fd limits) to a file and sleeps.
    fn start(soft: u64, hard: u64) -> Running {
        let ns = NetNs::new_loopback().expect("netns");
        let token = fake_secret("sk-ant-oat01-flood-");
        let listeners = ns.listen_localhost(0).expect("mock listener");
        let mock = Mock::start_on(
            listeners,
            MockConfig::new(Expect::Bearer(token.clone()), "flood ok"),
        )
        .expect("mock");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = dir.path().join("child");
        std::fs::create_dir(&out).unwrap();
        nix::unistd::chown(&out, Some(1000.into()), Some(1000.into())).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o700)).unwrap();
        let stderr = dir.path().join("stderr");
        let script = "printf '%s\\n%s\\n%s %s\\n' \"$ANTHROPIC_BASE_URL\" \"$CLAUDE_CODE_OAUTH_TOKEN\" \
                      \"$(ulimit -Sn)\" \"$(ulimit -Hn)\" > \"$0/env.tmp\" && mv \"$0/env.tmp\" \"$0/env\"; \
                      exec sleep 600";
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={soft}:{hard}"))
            .arg("--")
            .arg(support::bin())
            .args(["--", "sh", "-c", script])
            .arg(&out)
            .env_clear()
            .env("PATH", PATH)
            .env("CLAUDE_CODE_OAUTH_TOKEN", &token)
            .env("BOTTLE_USER", "1000:1000")
            .env("BOTTLE_UPSTREAM", mock.url())
            .env("BOTTLE_UPSTREAM_CA", mock.ca_pem())
            .env("BOTTLE_RUN_DIR", dir.path().join("run"))
            .env("BOTTLE_GRACE", "1")
            .env("BOTTLE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let init = ns.run(|| cmd.spawn().expect("spawn bottle-init"));
        Running {
            ns,
            mock,
            token,
            dir,
            init: Some(init),
            stderr,
        }
    }

    /// (proxy address, session secret, the child's "soft hard" fd limits).
    fn child_env(&self) -> (SocketAddr, String, String) {
        let path = self.dir.path().join("child/env");
        let start = Instant::now();
        while !path.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the child never wrote its environment\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        let url = lines.next().unwrap();
        let addr = url.strip_prefix("http://").unwrap().parse().unwrap();
        let session = lines.next().unwrap().to_string();
        (addr, session, lines.next().unwrap_or("").to_string())
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn init_pid(&self) -> u32 {
        // prlimit execs bottle-init in place.
        self.init.as_ref().unwrap().id()
    }

    /// SIGTERM, wait, and check that no secret reached bottle-init's output.
    fn stop(mut self, session: &str) -> String {
        let mut init = self.init.take().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(init.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let _ = init.wait();
        let err = self.stderr();
        assert!(
            !err.contains(&self.token),
            "the real token is in bottle-init's output"
        );
        assert!(
            !err.contains(session),
            "the session secret is in bottle-init's output"
        );
        err
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.init.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn request(session: &str) -> Vec<u8> {
    format!(
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {session}\r\n\
         content-type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .into_bytes()
}

/// What a connection got: `503`, `200`, `held` (nothing yet, still open), `closed` (EOF with
/// no answer), `reset`, or `error:<kind>`.
fn outcome_of(buf: &[u8], err: Option<std::io::Error>, eof: bool) -> String {
    if buf.starts_with(b"HTTP/1.1 ") && buf.len() >= 12 {
        let status = String::from_utf8_lossy(&buf[9..12]).into_owned();
        if status == "503" && support::e2e::mock::find(buf, b"overloaded_error").is_none() {
            return "503-without-overloaded_error".into();
        }
        return status;
    }
    match err {
        Some(e) if e.kind() == ErrorKind::ConnectionReset => "reset".into(),
        Some(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            if buf.is_empty() {
                "held".into()
            } else {
                "partial".into()
            }
        }
        Some(e) => format!("error:{:?}", e.kind()),
        None if eof && buf.is_empty() => "closed".into(),
        None => "partial".into(),
    }
}

/// Reads what has arrived without waiting; `None` while nothing has (and the socket is open).
fn poll_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    s.set_nonblocking(true).unwrap();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Some(outcome_of(buf, None, true)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // A complete answer (ours close the connection) or nothing yet.
                if support::e2e::mock::find(buf, b"\"}}").is_some() {
                    return Some(outcome_of(buf, None, false));
                }
                return None;
            }
            Err(e) => return Some(outcome_of(buf, Some(e), false)),
        }
    }
}

/// One request on a fresh connection, answer within `limit`.
fn try_once(ns: &NetNs, addr: SocketAddr, session: &str, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let s = ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
    let mut s = match s {
        Ok(s) => s,
        Err(e) => return (format!("connect:{:?}", e.kind()), start.elapsed()),
    };
    s.set_read_timeout(Some(limit)).unwrap();
    if let Err(e) = s.write_all(&request(session)) {
        return (outcome_of(b"", Some(e), false), start.elapsed());
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return (outcome_of(&buf, None, true), start.elapsed()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                let body_end = support::e2e::mock::find(&buf, b"\r\n\r\n");
                // The mock's and the proxy's answers both carry a Content-Length.
                if let Some(h) = body_end {
                    let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    if len.is_some_and(|n| buf.len() >= h + 4 + n) {
                        return (outcome_of(&buf, None, false), start.elapsed());
                    }
                }
            }
            Err(e) => return (outcome_of(&buf, Some(e), false), start.elapsed()),
        }
    }
}

fn tally(v: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in v {
        *m.entry(s.clone()).or_insert(0) += 1;
    }
    m
}

/// The connection cap bottle-init announced for this limit.
fn announced_cap(stderr: &str) -> Option<usize> {
    let line = stderr
        .lines()
        .find(|l| l.contains("proxy: RLIMIT_NOFILE"))?;
    let after = line.split("up to ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn fd_exhaustion_never_wedges_the_proxy_and_every_overflow_connection_gets_503() {
    if !prerequisites("fd_exhaustion_never_wedges_the_proxy") {
        return;
    }
    let _g = support::e2e::heavy();
    raise_own_nofile();
    let run = Running::start(1024, 1024);
    let (addr, session, _) = run.child_env();
    // Control: served normally before the flood.
    let (first, _) = try_once(&run.ns, addr, &session, Duration::from_secs(10));
    assert_eq!(first, "200", "{}", run.stderr());

    // The flood: idle connections that send nothing and never close.
    let started = Instant::now();
    let mut flood: Vec<TcpStream> = run.ns.run(|| {
        (0..FLOOD)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect"))
            .collect()
    });
    let connected = started.elapsed();
    eprintln!("{FLOOD} connections open after {connected:?}");
    let started = Instant::now();
    // Meanwhile a well-behaved client: a request, a read, a retry 100 ms after each answer.
    let client = {
        let ns_file = std::fs::File::open(format!("/proc/{}/ns/net", run.init_pid())).unwrap();
        let session = session.clone();
        std::thread::spawn(move || {
            let ns = NetNs::from_file(ns_file);
            let mut tries = Vec::new();
            while tries.len() < 13 && started.elapsed() < Duration::from_secs(3) {
                tries.push(try_once(&ns, addr, &session, Duration::from_secs(10)));
                std::thread::sleep(Duration::from_millis(100));
            }
            tries
        })
    };
    let mut results: Vec<Option<String>> = vec![None; FLOOD];
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); FLOOD];
    let mut snapshot = None;
    // Served idle connections are closed 10 s after their accept (the head timeout): look
    // before that.
    let deadline = started + Duration::from_secs(4);
    while Instant::now() < deadline {
        for (i, s) in flood.iter_mut().enumerate() {
            if results[i].is_none() {
                results[i] = poll_answer(s, &mut bufs[i]);
            }
        }
        if snapshot.is_none() && started.elapsed() >= Duration::from_secs(1) {
            snapshot = Some(tally(
                &results
                    .iter()
                    .map(|r| r.clone().unwrap_or_else(|| "held".into()))
                    .collect::<Vec<_>>(),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tries = client.join().unwrap();
    eprintln!("after 1 s: {snapshot:?}");
    let outcomes: Vec<String> = results
        .iter()
        .map(|r| r.clone().unwrap_or_else(|| "held".into()))
        .collect();
    let counts = tally(&outcomes);
    let try_counts = tally(&tries.iter().map(|t| t.0.clone()).collect::<Vec<_>>());
    let slowest = tries.iter().map(|t| t.1).max().unwrap_or_default();
    eprintln!(
        "flood of {FLOOD} idle connections under nofile 1024:1024: {counts:?}; well-behaved \
         client, {} tries: {try_counts:?}, slowest answer {slowest:?}",
        tries.len()
    );
    let cap = announced_cap(&run.stderr());

    // Every connection was either held (a served slot) or answered 503 overloaded_error.
    for (k, n) in &counts {
        assert!(
            k == "held" || k == "503",
            "{n} flood connections got {k:?}: {counts:?}\n{}",
            run.stderr()
        );
    }
    assert_eq!(
        counts.get("held").copied(),
        cap,
        "the held connections are exactly the announced cap: {counts:?}\n{}",
        run.stderr()
    );
    assert!(
        tries.len() >= 5,
        "the well-behaved client got too few answers: {tries:?}"
    );
    for (what, took) in &tries {
        assert_eq!(
            what, "503",
            "a well-behaved try got {what:?} after {took:?}: {tries:?}"
        );
    }

    // The flood ends; the proxy serves at once.
    drop(flood);
    let after = Instant::now();
    let mut served = None;
    while after.elapsed() < Duration::from_secs(10) {
        let (what, _) = try_once(&run.ns, addr, &session, Duration::from_secs(10));
        if what == "200" {
            served = Some(after.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let served = served.unwrap_or_else(|| panic!("not served after the flood\n{}", run.stderr()));
    eprintln!("served {served:?} after the flood closed");
    // And keeps serving: a burst of sequential requests, all 200.
    for _ in 0..20 {
        assert_eq!(
            try_once(&run.ns, addr, &session, Duration::from_secs(10)).0,
            "200"
        );
    }
    assert!(
        run.mock.messages().len() >= 22,
        "the mock saw {} requests",
        run.mock.messages().len()
    );
    let err = run.stop(&session);
    assert!(!err.contains("accept failed"), "{err}");
}

/// Item 4, the last line of defence: descriptors run out under the proxy anyway (here its
/// limit is lowered from outside while it runs, below what it sized itself for). accept then
/// fails with EMFILE: each pending connection is answered 503 through the reserve
/// descriptor, none is reset or left waiting, and accept is retried, so the proxy serves
/// again once descriptors are free.
#[test]
fn accept_failures_are_answered_through_the_reserve_and_retried() {
    if !prerequisites("accept_failures_are_answered_through_the_reserve_and_retried") {
        return;
    }
    let run = Running::start(1024, 1024);
    let (addr, session, _) = run.child_env();
    assert_eq!(
        try_once(&run.ns, addr, &session, Duration::from_secs(10)).0,
        "200"
    );
    let pid = run.init_pid().to_string();
    let st = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=48:1024"])
        .status()
        .unwrap();
    assert!(st.success());
    let mut conns: Vec<TcpStream> = run.ns.run(|| {
        (0..200)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect"))
            .collect()
    });
    let mut results: Vec<Option<String>> = vec![None; conns.len()];
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for (i, s) in conns.iter_mut().enumerate() {
            if results[i].is_none() {
                results[i] = poll_answer(s, &mut bufs[i]);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let counts = tally(
        &results
            .iter()
            .map(|r| r.clone().unwrap_or_else(|| "held".into()))
            .collect::<Vec<_>>(),
    );
    eprintln!("200 connections with the limit lowered to 48: {counts:?}");
    for k in counts.keys() {
        assert!(k == "held" || k == "503", "{counts:?}\n{}", run.stderr());
    }
    assert!(counts.get("503").copied().unwrap_or(0) > 100, "{counts:?}");
    assert!(
        run.stderr().contains("through the reserve descriptor"),
        "{}",
        run.stderr()
    );
    // Descriptors come back: the proxy accepts and serves again without any new event.
    drop(conns);
    let st = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=1024:1024"])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    loop {
        let (what, _) = try_once(&run.ns, addr, &session, Duration::from_secs(10));
        if what == "200" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not served again: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    run.stop(&session);
}

/// Item 4: bottle-init raises its soft limit to the hard limit; the child starts with the
/// soft limit it would have had without bottle-init.
#[test]
fn the_child_keeps_the_original_nofile_soft_limit() {
    if !prerequisites("the_child_keeps_the_original_nofile_soft_limit") {
        return;
    }
    let run = Running::start(1024, 4096);
    let (addr, session, limits) = run.child_env();
    assert_eq!(limits, "1024 4096", "the child's soft and hard limits");
    let proc_limits = std::fs::read_to_string(format!("/proc/{}/limits", run.init_pid())).unwrap();
    let line = proc_limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["4096", "4096"], "PID 1's own limit: {line}");
    assert_eq!(
        try_once(&run.ns, addr, &session, Duration::from_secs(10)).0,
        "200"
    );
    let err = run.stop(&session);
    assert!(err.contains("proxy: RLIMIT_NOFILE 4096"), "{err}");
}
