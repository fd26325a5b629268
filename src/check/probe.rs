//! The probe half of `bottle-init check`: `bottle-init check --child MODE PROBE`, which the
//! check runs as the child user through the same recipe and spawn as `bottle-init exec`'s
//! command (so with the same drop and, in a locked mode, the same seccomp filter). It tries
//! what a hijacked claude would, and reports each outcome on stdout as a `key value` line
//! (`crate::check::verdict` reads them; the check, not the probe, decides).
//!
//! It never learns the real credential: it sends back what it sees (its own environment with
//! the placeholder, and every environment its uid can read), and the check compares. Anyone
//! can run it; it has no privilege to use.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::verdict::{head_request, hex, status_of};
use crate::recipe::session_var;
use crate::scrub::EnvSnapshot;
use crate::secret::CredentialKind;
use crate::sys::{self, Errno};

/// How long one network attempt may take. The locks refuse at once, so only an unlocked
/// setup (a black-holed address) waits this long.
const NET_TIMEOUT: Duration = Duration::from_secs(3);
/// Where process_vm_readv reads in PID 1: any address; the permission is checked first.
const SOME_ADDRESS: usize = 0x10000;

/// Runs every probe for `mode` and prints the report; `probe`: the resolved `--probe`
/// address (`-` when there is none). Exit status 0: the report says the rest.
pub fn run(env: &EnvSnapshot, mode: &str, probe: &str) -> u8 {
    // The report carries this process's own environment: as root (someone typing the
    // internal command in a `docker exec` shell) that would print the real credential.
    if sys::geteuid() == 0 {
        crate::logging::error_line(
            "`check --child` is the probe `bottle-init check` runs as the child user; it \
             refuses to run as root; run `bottle-init check`",
        );
        return crate::failure::EX_USAGE;
    }
    let mut out = String::new();
    let mut put = |k: &str, v: &str| {
        let _ = writeln!(out, "{k} {v}");
    };
    let placeholder = [CredentialKind::OAuth, CredentialKind::ApiKey]
        .iter()
        .find_map(|k| {
            env.secrets
                .iter()
                .find(|(n, _)| n == session_var(*k))
                .map(|(_, s)| s.expose().to_vec())
        })
        .unwrap_or_default();
    put("placeholder", &hex(&placeholder));
    let mut own = Vec::new();
    for (k, v) in &env.plain {
        own.extend_from_slice(&[k.as_slice(), b"=", v, b"\0"].concat());
    }
    for (k, v) in &env.secrets {
        own.extend_from_slice(&[k.as_bytes(), b"=", v.expose(), b"\0"].concat());
    }
    put("selfenv", &hex(&own));
    put(
        "status",
        &hex(&std::fs::read("/proc/self/status").unwrap_or_default()),
    );
    put("proc1_environ", &read_one("/proc/1/environ"));
    put(
        "proc1_mem",
        &outcome(std::fs::File::open("/proc/1/mem").map(drop)),
    );
    put("ptrace", &errno_outcome(sys::ptrace_attach_probe(1)));
    let mut buf = [0u8; 8];
    put(
        "vm_readv",
        &errno_outcome(sys::process_vm_read(1, SOME_ADDRESS, &mut buf).map(drop)),
    );
    match mode {
        "api-only" => {
            put(
                "inet",
                &errno_outcome(sys::try_socket(libc::AF_INET, libc::SOCK_STREAM)),
            );
            put(
                "inet6",
                &errno_outcome(sys::try_socket(libc::AF_INET6, libc::SOCK_STREAM)),
            );
            put("api_unix", &api_over_unix(env, &placeholder));
        }
        "allowlist" => match probe.parse::<SocketAddr>() {
            Ok(addr) => {
                put("tcp_probe", &direct_tcp(addr));
                put("udp53", &udp_53(SocketAddr::new(addr.ip(), 53)));
            }
            Err(_) => put("tcp_probe", "no-address"),
        },
        _ => {}
    }
    // Last and largest: every environment this uid can read (the check looks for the real
    // credential in them).
    let me = sys::getpid();
    for pid in pids().into_iter().filter(|&p| p != 1 && p != me) {
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            let _ = writeln!(out, "env {pid} {}", hex(&env));
        }
    }
    out.push_str("done 1\n");
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    0
}

/// The numeric entries of /proc.
pub fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Opens and reads a byte: `ok` if anything could be read.
fn read_one(path: &str) -> String {
    outcome(std::fs::File::open(path).and_then(|mut f| f.read(&mut [0u8; 1])))
}

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            "timeout".into()
        }
        Err(e) => e
            .raw_os_error()
            .map_or_else(|| "error".into(), |n| Errno(n).name()),
    }
}

fn errno_outcome(r: Result<(), Errno>) -> String {
    r.map_or_else(|e| e.name(), |()| "ok".into())
}

/// `HEAD /` with the placeholder over `ANTHROPIC_UNIX_SOCKET`: the status, or the error.
fn api_over_unix(env: &EnvSnapshot, placeholder: &[u8]) -> String {
    let Some(path) = env.get("ANTHROPIC_UNIX_SOCKET") else {
        return "no-ANTHROPIC_UNIX_SOCKET".into();
    };
    let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path);
    let asked = UnixStream::connect(path).and_then(|mut s| {
        s.set_read_timeout(Some(NET_TIMEOUT))?;
        s.set_write_timeout(Some(NET_TIMEOUT))?;
        s.write_all(&head_request("/", "HEAD", placeholder))?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        Ok(resp)
    });
    match asked {
        Ok(resp) => status_of(&resp).map_or_else(|| "no-http-answer".into(), |s| s.to_string()),
        Err(e) => outcome(Err::<(), _>(e)),
    }
}

fn direct_tcp(addr: SocketAddr) -> String {
    match TcpStream::connect_timeout(&addr, NET_TIMEOUT) {
        Ok(_) => "connected".into(),
        Err(e) => outcome(Err::<(), _>(e)),
    }
}

/// A DNS-shaped datagram to port 53 (a query for `check.invalid`, RFC 6761).
fn udp_53(to: SocketAddr) -> String {
    let any: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let query =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05check\x07invalid\x00\x00\x01\x00\x01";
    match UdpSocket::bind(any).and_then(|s| s.send_to(query, to)) {
        Ok(_) => "sent".into(),
        Err(e) => outcome(Err::<(), _>(e)),
    }
}
