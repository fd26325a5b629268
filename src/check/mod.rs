//! `bottle-init check` (issue 12): the user proves, inside the running container, that the
//! credential is out of the child's reach and the egress lock holds.
//!
//! Run as root like `exec`, it takes PID 1's run record (`crate::record`, the same one `exec`
//! joins) and gathers, in this order:
//! 1. the probe: a process dropped exactly like `exec`'s command (the record's recipe,
//!    `child::spawn`, PID 1's egress mode and filter) that runs `bottle-init check --child`
//!    ([`probe`]) and reports what the child user can and cannot do;
//! 2. as root: every process's `/proc/PID/status` and, where root may, its environment (the
//!    probe sent the ones its uid can read: without CAP_SYS_PTRACE, as in Docker, root cannot
//!    read a uid-1000 process's), and PID 1's own environment;
//! 3. the proxy's answers on its TCP address;
//! 4. in `allowlist`, the nftables table listed back and compared (`egress::nft`).
//!
//! [`verdict`] turns that into the report's lines; [`report`] formats them. The real
//! credential (from the environment `docker exec` hands us, or the secret file) is only
//! compared here, never sent to the probe, and every detail is redacted of it and of the
//! session secret before printing.

pub mod probe;
pub mod report;
pub mod verdict;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::child::{self, ChildTerminal, SpawnError};
use crate::config::{ENV_API_KEY, ENV_API_KEY_FILE, ENV_OAUTH, ENV_TOKEN_FILE};
use crate::egress::mode::EgressMode;
use crate::egress::nft::{Nft, Ruleset};
use crate::record::RunRecord;
use crate::scrub::EnvSnapshot;
use crate::secret::Secret;
use crate::sys::{self, Errno};
pub use report::{ProbeTarget, Report, parse_probe};
use verdict::{Observed, Proc, ProcStatus};

/// The probe's whole run (it makes a few local calls and at most two 3 s network attempts).
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// The proxy's answers.
const PROXY_TIMEOUT: Duration = Duration::from_secs(5);
/// A wrong session secret (the real one is 256 random bits).
const WRONG_SECRET: &[u8] = b"bottle-check-wrong-session-secret";
/// The probe's report is small (environments, a status file); this bounds a runaway one.
const MAX_REPORT: usize = 64 << 20;

/// The real credential, as the check knows it: the variable it came in (None: a secret file).
struct Known {
    var: Option<&'static str>,
    value: Secret,
}

/// Runs every check against PID 1's `record`. `env`: this process's environment (the
/// container's, from `docker exec`); its credentials are used for the comparison, then wiped.
pub fn run(record: &RunRecord, env: &mut EnvSnapshot, target: &ProbeTarget) -> Report {
    let spec = &record.child;
    let known = real_credential(env, record);
    env.secrets.clear();
    let probe_addr = (spec.egress == EgressMode::Allowlist)
        .then(|| resolve(target))
        .flatten();
    let probe_arg = probe_addr.map_or_else(|| "-".to_string(), |a| a.to_string());
    let observed = run_probe(record, &env.plain, &probe_arg);
    let procs = scan(&observed);
    let pid1 = std::fs::read("/proc/1/environ").map_err(|e| io_name(&e));

    let real = known.as_ref().map(|k| k.value.expose());
    let mut report = Report::default();
    report.checks.push(verdict::credential(
        known.as_ref().map(|k| (k.var, k.value.expose())),
        &procs,
        pid1.as_deref().map_err(String::as_str),
    ));
    report.checks.push(verdict::child_user(
        &observed,
        real,
        spec.session.expose(),
        spec.user.uid,
    ));
    report
        .checks
        .push(verdict::child_processes(&procs, spec.user.uid, spec.egress));
    let head = ask(
        spec.proxy,
        &verdict::head_request("/", "HEAD", spec.session.expose()),
    );
    let wrong = ask(
        spec.proxy,
        &verdict::head_request("/v1/models", "GET", WRONG_SECRET),
    );
    report.checks.push(verdict::proxy(
        &spec.proxy.to_string(),
        head.as_deref().map_err(Clone::clone),
        wrong.as_deref().map_err(Clone::clone),
    ));
    let table = (spec.egress == EgressMode::Allowlist).then(|| {
        Ruleset::new(spec.user.uid, &[spec.proxy])
            .and_then(|rules| Nft::locate()?.verify(&rules))
            .map_err(|e| e.to_string())
    });
    let shown = match probe_addr {
        Some(a) if a.ip().to_string() != target.host => format!("{target} ({a})"),
        _ => target.to_string(),
    };
    report.checks.push(verdict::egress(
        spec.egress,
        &observed,
        table.as_ref(),
        &shown,
    ));
    let mut secrets: Vec<&[u8]> = vec![spec.session.expose()];
    secrets.extend(real);
    report.redact(&secrets);
    report
}

/// The credential to look for: `CLAUDE_CODE_OAUTH_TOKEN` or `ANTHROPIC_API_KEY` from the
/// environment, else the secret file PID 1 read (as root; its permissions are PID 1's
/// business, checked at its start).
fn real_credential(env: &EnvSnapshot, record: &RunRecord) -> Option<Known> {
    for var in [ENV_OAUTH, ENV_API_KEY] {
        if let Some((_, s)) = env.secrets.iter().find(|(n, s)| n == var && !s.is_empty()) {
            return Some(Known {
                var: Some(var),
                value: Secret::new(s.expose().to_vec()),
            });
        }
    }
    [ENV_TOKEN_FILE, ENV_API_KEY_FILE].iter().find_map(|var| {
        let path = env.get(var)?;
        let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path);
        let (value, _) = crate::secretfile::read(Path::new(path), &record.child.user, true).ok()?;
        Some(Known { var: None, value })
    })
}

fn resolve(target: &ProbeTarget) -> Option<SocketAddr> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, target.port));
    }
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .ok()?
        .next()
}

/// Starts the probe as the child user exactly as `exec` starts a command (the record's
/// recipe, own session), its stdout and stderr a pipe to us and its stdin /dev/null, and
/// reads its report.
fn run_probe(record: &RunRecord, plain: &[(Vec<u8>, Vec<u8>)], probe: &str) -> Observed {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return Observed::failed(format!("cannot find this program: {e}")),
    };
    let argv: Vec<OsString> = vec![
        exe.into(),
        "check".into(),
        "--child".into(),
        record.child.egress.as_str().into(),
        probe.into(),
    ];
    let mut prepared = match record
        .child
        .prepare(&argv, plain, ChildTerminal::Session, None)
    {
        Ok(p) => p,
        Err(e) => return Observed::failed(e.to_string()),
    };
    let (r, w) = match sys::pipe_cloexec() {
        Ok(p) => p,
        Err(e) => return Observed::failed(format!("pipe: {e}")),
    };
    let null = std::fs::File::open("/dev/null");
    // The child inherits fds 0 to 2: point them at /dev/null and the pipe for the spawn, then
    // put ours back (nothing is printed before the report).
    let saved = [0, 1, 2].map(|fd| sys::dup_cloexec(fd).ok());
    if let Ok(n) = &null {
        let _ = sys::dup2(n.as_raw_fd(), 0);
    }
    let _ = sys::dup2(w, 1);
    let _ = sys::dup2(w, 2);
    let spawned = child::spawn(&prepared);
    for (fd, s) in saved.iter().enumerate() {
        match *s {
            Some(s) => {
                let _ = sys::dup2(s, fd as i32);
                sys::close(s);
            }
            // Closed before (or not copyable): close it, or our copy of the pipe would keep
            // the report from ending.
            None => sys::close(fd as i32),
        }
    }
    sys::close(w);
    prepared.wipe_env();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            sys::close(r);
            return Observed::failed(spawn_error(&e));
        }
    };
    let got = read_all(r, PROBE_TIMEOUT);
    sys::close(r);
    match got {
        Ok(out) => {
            let pid = child.release();
            let _ = sys::waitpid_blocking(pid);
            Observed::parse(&out)
        }
        // Dropping the guard kills and reaps the probe.
        Err(why) => Observed::failed(why),
    }
}

fn spawn_error(e: &SpawnError) -> String {
    match e {
        SpawnError::Pipe(e) => format!("pipe: {e}"),
        SpawnError::Fork(e) => format!("fork: {e}"),
        SpawnError::Child { step, errno } => format!("{} failed: {errno}", step.describe()),
    }
}

/// Reads `fd` to EOF within `timeout`.
fn read_all(fd: i32, timeout: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no report within {}s", timeout.as_secs()));
        }
        let mut fds = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        match sys::poll(&mut fds, Some(left)) {
            Ok(0) | Err(Errno(libc::EINTR)) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        match sys::read(fd, &mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) if out.len() + n <= MAX_REPORT => out.extend_from_slice(&buf[..n]),
            Ok(_) => return Err("the report is too large".into()),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Every process but PID 1 and this one: its status, and its environment as root could read
/// it or else as the probe (the child user) did.
fn scan(observed: &Observed) -> Vec<Proc> {
    let me = sys::getpid();
    let mut procs = Vec::new();
    for pid in probe::pids() {
        if pid == 1 || pid == me {
            continue;
        }
        let Some(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| ProcStatus::parse(&s))
        else {
            continue; // gone
        };
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .ok()
            .or_else(|| {
                observed
                    .environs
                    .iter()
                    .find(|(p, _)| *p == pid)
                    .map(|(_, e)| e.clone())
            });
        procs.push(Proc {
            pid,
            status,
            environ,
        });
    }
    procs.sort_by_key(|p| p.pid);
    procs
}

/// One request to the proxy; the whole answer (it closes: `Connection: close`).
fn ask(addr: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect_timeout(&addr, PROXY_TIMEOUT).map_err(|e| io_name(&e))?;
    s.set_read_timeout(Some(PROXY_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(PROXY_TIMEOUT)))
        .and_then(|()| s.write_all(request))
        .map_err(|e| io_name(&e))?;
    let mut resp = Vec::new();
    match s.take(1 << 16).read_to_end(&mut resp) {
        Ok(_) => Ok(resp),
        // An answer followed by a reset still answered.
        Err(_) if !resp.is_empty() => Ok(resp),
        Err(e) => Err(io_name(&e)),
    }
}

fn io_name(e: &std::io::Error) -> String {
    e.raw_os_error()
        .map_or_else(|| e.to_string(), |n| Errno(n).name())
}
