//! What `bottle-init check` concludes from what it saw: each function turns observations
//! (the `/proc` files read, the probe's report, the proxy's answers) into one [`Check`].
//! Pure: the observations are gathered by `check` (as root) and `check::probe` (as the child
//! user); nothing here makes a system call, so every verdict is tested on bytes.
//!
//! The probe reports on its stdout, one `key value` line each ([`Observed::parse`]); byte
//! strings (environments, `/proc/self/status`) are hex, so the report is plain ASCII whatever
//! they hold.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::report::{Check, printable};
use crate::egress::mode::EgressMode;

pub const CREDENTIAL: &str = "credential out of reach";
pub const CHILD_USER: &str = "child user";
pub const CHILD_PROCESSES: &str = "child processes";
pub const PROXY: &str = "proxy";
pub const EGRESS: &str = "egress";

// -------------------------------------------------------------------------------------------
// Byte helpers

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// -------------------------------------------------------------------------------------------
// /proc/PID/status

/// The fields of `/proc/PID/status` the checks read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStatus {
    pub name: String,
    /// Real, effective, saved, filesystem.
    pub uids: [u32; 4],
    /// CapInh, CapPrm, CapEff, CapBnd, CapAmb.
    pub caps: [u64; 5],
    pub no_new_privs: Option<bool>,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: Option<u32>,
    pub zombie: bool,
}

const CAP_FIELDS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

impl ProcStatus {
    pub fn parse(text: &str) -> Option<ProcStatus> {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .map(str::trim)
        };
        let mut uids = [0u32; 4];
        let mut it = field("Uid")?.split_whitespace();
        for u in &mut uids {
            *u = it.next()?.parse().ok()?;
        }
        let mut caps = [0u64; 5];
        for (c, k) in caps.iter_mut().zip(CAP_FIELDS) {
            *c = u64::from_str_radix(field(k)?, 16).ok()?;
        }
        Some(ProcStatus {
            name: field("Name").unwrap_or("").to_string(),
            uids,
            caps,
            no_new_privs: field("NoNewPrivs").map(|v| v == "1"),
            seccomp: field("Seccomp").and_then(|v| v.parse().ok()),
            zombie: field("State").is_some_and(|s| s.starts_with('Z')),
        })
    }

    /// Any of its ids is `uid`.
    pub fn runs_as(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }

    /// What is wrong with it as a process of the child user: capabilities, no_new_privs, and
    /// (in a locked egress mode) the seccomp filter.
    pub fn child_faults(&self, locked: bool) -> Vec<String> {
        let mut out: Vec<String> = CAP_FIELDS
            .iter()
            .zip(self.caps)
            .filter(|(_, v)| *v != 0)
            .map(|(k, v)| format!("{k} {v:016x}"))
            .collect();
        if self.no_new_privs != Some(true) {
            out.push("NoNewPrivs 0".into());
        }
        if locked && self.seccomp != Some(2) {
            out.push(format!(
                "no seccomp filter (Seccomp {})",
                self.seccomp.map_or("?".into(), |s| s.to_string())
            ));
        }
        out
    }
}

/// A process seen in the scan.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: i32,
    pub status: ProcStatus,
    /// Its environment, if either the check (root) or the probe (child user) could read it.
    pub environ: Option<Vec<u8>>,
}

impl Proc {
    fn label(&self) -> String {
        format!(
            "pid {} ({}, uid {})",
            self.pid,
            printable(&self.status.name),
            self.status.uids[0]
        )
    }
}

// -------------------------------------------------------------------------------------------
// The probe's report

/// What the probe (the child user) reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub values: BTreeMap<String, String>,
    /// `env PID HEX`: the environments the child user could read.
    pub environs: Vec<(i32, Vec<u8>)>,
    /// Why there is no report (the probe could not be started, timed out).
    pub failed: Option<String>,
}

impl Observed {
    /// Parses the probe's output; lines that are not `key value` are ignored (a warning).
    pub fn parse(out: &[u8]) -> Observed {
        let mut o = Observed::default();
        for line in String::from_utf8_lossy(out).lines() {
            let Some((k, v)) = line.split_once(' ') else {
                continue;
            };
            if k == "env" {
                if let Some((pid, h)) = v.split_once(' ')
                    && let (Ok(pid), Some(bytes)) = (pid.parse(), unhex(h))
                {
                    o.environs.push((pid, bytes));
                }
            } else if k
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                o.values.insert(k.to_string(), v.to_string());
            }
        }
        if !o.values.contains_key("done") {
            o.failed = Some("the probe stopped before it finished".into());
        }
        o
    }

    pub fn failed(why: impl Into<String>) -> Observed {
        Observed {
            failed: Some(why.into()),
            ..Observed::default()
        }
    }

    pub fn get(&self, k: &str) -> &str {
        self.values.get(k).map_or("<missing>", String::as_str)
    }

    pub fn bytes(&self, k: &str) -> Option<Vec<u8>> {
        self.values.get(k).and_then(|v| unhex(v))
    }
}

/// An attempt the kernel must refuse: only a permission error counts (ENOENT or EFAULT would
/// mean the attempt was not even judged, or was allowed).
fn refused(outcome: &str) -> bool {
    matches!(outcome, "EACCES" | "EPERM")
}

/// A direct connection out that must not get through: refused by the rules (ECONNREFUSED for
/// TCP, EPERM for UDP), by seccomp (EACCES), or with no route at all.
fn blocked(outcome: &str) -> bool {
    matches!(
        outcome,
        "EACCES" | "EPERM" | "ECONNREFUSED" | "ENETUNREACH" | "EHOSTUNREACH"
    )
}

// -------------------------------------------------------------------------------------------
// The verdicts

/// No process but PID 1 (and the check itself, excluded from `procs`) has the credential in
/// its environment; PID 1's own environment holds it zeroed (or cannot be read at all).
/// `secret`: the variable the check found it in (None for a secret file) and its value.
/// `pid1`: `/proc/1/environ` as root could read it, or the errno name.
pub fn credential(
    secret: Option<(Option<&str>, &[u8])>,
    procs: &[Proc],
    pid1: Result<&[u8], &str>,
) -> Check {
    let Some((var, value)) = secret.filter(|(_, v)| !v.is_empty()) else {
        return Check::fail(
            CREDENTIAL,
            "no credential to look for: this check's environment has neither \
             CLAUDE_CODE_OAUTH_TOKEN, ANTHROPIC_API_KEY nor a readable secret file; run it as \
             `docker exec CONTAINER /bottle-init check`, which passes the container's environment",
        );
    };
    let mut faults = Vec::new();
    let mut root_holders = Vec::new();
    let (mut read, mut unreadable) = (0, Vec::new());
    for p in procs {
        match &p.environ {
            Some(env) => {
                read += 1;
                if contains(env, value) {
                    if p.status.uids.iter().all(|&u| u == 0) {
                        root_holders.push(p.label());
                    } else {
                        faults.push(p.label());
                    }
                }
            }
            None if !p.status.zombie => unreadable.push(p.label()),
            None => {}
        }
    }
    let pid1_note = match pid1 {
        Ok(env) if contains(env, value) => {
            faults.push("PID 1's own environment (not scrubbed)".into());
            String::new()
        }
        Ok(env) => match var {
            Some(v) if zeroed(env, v) => format!("PID 1's environ holds {v} zeroed"),
            _ => "PID 1's environ does not hold it".into(),
        },
        Err(e) => format!("PID 1's environ cannot be read even by root ({e})"),
    };
    if !faults.is_empty() {
        return Check::fail(
            CREDENTIAL,
            format!(
                "the real credential is in the environment of {}: uid 1000 can read it there; stop \
                 that process and start commands with `docker exec -it CONTAINER /bottle-init exec \
                 COMMAND`, never `docker exec -u`",
                faults.join(", ")
            ),
        );
    }
    let mut detail =
        format!("no other process has it in its environment ({read} read); {pid1_note}");
    if !root_holders.is_empty() {
        let _ = write!(
            detail,
            "; root processes have it from `docker exec` ({}), which the child user cannot read",
            root_holders.join(", ")
        );
    }
    if !unreadable.is_empty() {
        let _ = write!(detail, "; not readable here: {}", unreadable.join(", "));
    }
    Check::pass(CREDENTIAL, detail)
}

/// `NAME=` is an entry of the environment block and its value is only zero bytes.
fn zeroed(env: &[u8], name: &str) -> bool {
    let key = format!("{name}=");
    let mut at = 0;
    for e in env.split(|&b| b == 0) {
        if e == key.as_bytes() {
            // The zeroed value shows up as NUL bytes right after the entry's own NUL.
            return env.get(at + e.len() + 1) == Some(&0);
        }
        at += e.len() + 1;
    }
    false
}

/// The probe, dropped exactly like `exec`'s command: refused on PID 1's environ, memory,
/// ptrace and process_vm_readv; no capability and no_new_privs; only the placeholder.
/// `real`: the real credential (None: unknown, the credential check says so); `session`: this
/// run's session secret from PID 1's record.
pub fn child_user(o: &Observed, real: Option<&[u8]>, session: &[u8], child_uid: u32) -> Check {
    if let Some(why) = &o.failed {
        return Check::fail(
            CHILD_USER,
            format!("the probe as uid {child_uid} did not run: {why}"),
        );
    }
    let mut faults = Vec::new();
    for (k, what) in [
        ("proc1_environ", "/proc/1/environ"),
        ("proc1_mem", "/proc/1/mem"),
        ("ptrace", "ptrace(PTRACE_ATTACH, 1)"),
        ("vm_readv", "process_vm_readv on PID 1"),
    ] {
        let v = o.get(k);
        if !refused(v) {
            faults.push(format!("{what} was not refused ({})", printable(v)));
        }
    }
    match o
        .bytes("status")
        .and_then(|s| ProcStatus::parse(&String::from_utf8_lossy(&s)))
    {
        Some(st) => {
            if st.uids != [child_uid; 4] {
                faults.push(format!("runs as uids {:?}, not {child_uid}", st.uids));
            }
            faults.extend(st.child_faults(false));
        }
        None => faults.push("no /proc/self/status".into()),
    }
    let placeholder = o.bytes("placeholder").unwrap_or_default();
    let own_env = o.bytes("selfenv").unwrap_or_default();
    if placeholder.is_empty() {
        faults.push("no placeholder credential in its environment".into());
    } else if placeholder != session {
        faults.push("its placeholder is not this run's session secret".into());
    }
    let compared = match real {
        Some(real) => {
            if contains(&placeholder, real) || contains(&own_env, real) {
                faults.push("its environment holds the real credential".into());
            }
            "holds only the placeholder"
        }
        None => "placeholder not compared (no credential known)",
    };
    if !faults.is_empty() {
        return Check::fail(
            CHILD_USER,
            format!("uid {child_uid}: {}", faults.join("; ")),
        );
    }
    Check::pass(
        CHILD_USER,
        format!(
            "uid {child_uid}: /proc/1/environ, /proc/1/mem, ptrace and process_vm_readv on PID 1 \
             refused; no capabilities, NoNewPrivs 1; {compared}"
        ),
    )
}

/// Every running process of the child's uid (PID 1's command, `exec`'d ones) has no
/// capability, no_new_privs, and in a locked egress mode the seccomp filter.
pub fn child_processes(procs: &[Proc], child_uid: u32, mode: EgressMode) -> Check {
    let locked = mode.is_locked();
    let mine: Vec<&Proc> = procs
        .iter()
        .filter(|p| p.status.runs_as(child_uid) && !p.status.zombie)
        .collect();
    let faults: Vec<String> = mine
        .iter()
        .filter_map(|p| {
            let f = p.status.child_faults(locked);
            (!f.is_empty()).then(|| format!("{}: {}", p.label(), f.join(", ")))
        })
        .collect();
    if !faults.is_empty() {
        return Check::fail(
            CHILD_PROCESSES,
            format!(
                "{}; a process of uid {child_uid} not started by bottle-init (`docker exec -u`?) \
                 can regain privileges or escape the egress lock: stop it, use `bottle-init exec`",
                faults.join("; ")
            ),
        );
    }
    let filter = if locked { ", a seccomp filter" } else { "" };
    Check::pass(
        CHILD_PROCESSES,
        format!(
            "{} process(es) of uid {child_uid}: no capabilities, NoNewPrivs 1{filter}",
            mine.len()
        ),
    )
}

/// `HEAD /` with `secret` (the session secret or a wrong one), as the proxy reads it.
pub fn head_request(path: &str, method: &str, secret: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ")
        .into_bytes();
    r.extend_from_slice(secret);
    r.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    r
}

/// The status code of an HTTP/1.x response.
pub fn status_of(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut f = line.split(' ');
    if !f.next()?.starts_with("HTTP/1.") {
        return None;
    }
    f.next()?.parse().ok()
}

/// The proxy answered `HEAD /` with the session secret (200) and refused an authenticated
/// request with a wrong secret (401, answered by the proxy itself: `x-bottle-proxy: local`).
/// `HEAD /` is claude's unauthenticated warm-up, answered without looking at the secret, so
/// the refusal is shown on `GET /v1/models`, which the proxy would forward.
pub fn proxy(at: &str, head: Result<&[u8], String>, wrong: Result<&[u8], String>) -> Check {
    let mut faults = Vec::new();
    match head {
        Ok(r) if status_of(r) == Some(200) => {}
        Ok(r) => faults.push(format!(
            "HEAD / with the session secret got {}",
            describe(r)
        )),
        Err(e) => faults.push(format!("HEAD / with the session secret: {e}")),
    }
    match wrong {
        Ok(r) if status_of(r) == Some(401) && is_local(r) => {}
        Ok(r) => faults.push(format!("a wrong session secret got {}", describe(r))),
        Err(e) => faults.push(format!("a wrong session secret: {e}")),
    }
    if faults.is_empty() {
        Check::pass(
            PROXY,
            format!("{at}: HEAD / with the session secret 200; a wrong secret 401"),
        )
    } else {
        Check::fail(PROXY, format!("{at}: {}", faults.join("; ")))
    }
}

fn is_local(resp: &[u8]) -> bool {
    let head = resp.split(|&b| b == b'\n').take_while(|l| l.len() > 1);
    head.into_iter()
        .any(|l| l.to_ascii_lowercase().starts_with(b"x-bottle-proxy: local"))
}

fn describe(resp: &[u8]) -> String {
    status_of(resp).map_or_else(|| "no HTTP answer".into(), |s| format!("{s}"))
}

/// What the allowlist table check found: `Ok`, or nft's error (one line).
pub type TableCheck = Result<(), String>;

/// Egress as PID 1's mode promises. `o`: the probe's attempts (in its own egress mode, PID
/// 1's); `table`: allowlist's nftables verification; `probe`: the `--probe` target.
pub fn egress(mode: EgressMode, o: &Observed, table: Option<&TableCheck>, probe: &str) -> Check {
    if mode == EgressMode::Open {
        return Check::pass(EGRESS, "not restricted");
    }
    if let Some(why) = &o.failed {
        return Check::fail(EGRESS, format!("{mode}: the probe did not run: {why}"));
    }
    let mut faults = Vec::new();
    let mut done = Vec::new();
    match mode {
        EgressMode::ApiOnly => {
            for (k, fam) in [("inet", "AF_INET"), ("inet6", "AF_INET6")] {
                let v = o.get(k);
                if refused(v) {
                    done.push(format!("{fam} socket refused ({v})"));
                } else {
                    faults.push(format!(
                        "an {fam} socket was not refused ({})",
                        printable(v)
                    ));
                }
            }
            match o.get("api_unix") {
                "200" => done.push("the API answers over the Unix socket".into()),
                v => faults.push(format!(
                    "the API does not answer over the Unix socket ({})",
                    printable(v)
                )),
            }
        }
        EgressMode::Allowlist => {
            match o.get("tcp_probe") {
                v if blocked(v) => done.push(format!("direct TCP to {probe} refused ({v})")),
                v => faults.push(format!(
                    "direct TCP to {probe} was not refused ({})",
                    printable(v)
                )),
            }
            match o.get("udp53") {
                v if blocked(v) => done.push(format!("UDP to port 53 refused ({v})")),
                v => faults.push(format!("UDP to port 53 was not refused ({})", printable(v))),
            }
            match table {
                Some(Ok(())) => done.push("the nftables table is present and matches".into()),
                Some(Err(e)) => faults.push(format!("the nftables table: {}", printable(e))),
                None => faults.push("the nftables table was not checked".into()),
            }
        }
        EgressMode::Open => {}
    }
    if faults.is_empty() {
        Check::pass(EGRESS, format!("{mode}: {}", done.join("; ")))
    } else {
        Check::fail(
            EGRESS,
            format!(
                "{mode}: {}; the lock PID 1's record promises does not hold (restart the \
                 container; do not edit {} files)",
                faults.join("; "),
                "BOTTLE_RUN_DIR"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_OK: &str = "Name:\tsleep\nState:\tS (sleeping)\nUid:\t1000\t1000\t1000\t1000\n\
        Gid:\t1000\t1000\t1000\t1000\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n\
        NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    fn st(text: &str) -> ProcStatus {
        ProcStatus::parse(text).unwrap()
    }

    fn proc_(pid: i32, status: &str, env: Option<&[u8]>) -> Proc {
        Proc {
            pid,
            status: st(status),
            environ: env.map(<[u8]>::to_vec),
        }
    }

    /// A `docker exec -u 1000` process: Docker's bounding set, no no_new_privs, no filter.
    fn docker_exec_status() -> String {
        STATUS_OK
            .replace("CapBnd:\t0000000000000000", "CapBnd:\t00000000a80425fb")
            .replace("NoNewPrivs:\t1", "NoNewPrivs:\t0")
            .replace("Seccomp:\t2", "Seccomp:\t0")
    }

    const ROOT_STATUS: &str = "Name:\tbash\nState:\tS\nUid:\t0\t0\t0\t0\nCapInh:\t0\nCapPrm:\t1ff\n\
        CapEff:\t1ff\nCapBnd:\t1ff\nCapAmb:\t0\nNoNewPrivs:\t0\nSeccomp:\t0\n";

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(b"\0A\xff"), "0041ff");
        assert_eq!(unhex("0041ff"), Some(b"\0A\xff".to_vec()));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn status_parses_the_fields() {
        let s = st(STATUS_OK);
        assert_eq!(s.name, "sleep");
        assert_eq!(s.uids, [1000; 4]);
        assert_eq!(s.caps, [0; 5]);
        assert_eq!(
            (s.no_new_privs, s.seccomp, s.zombie),
            (Some(true), Some(2), false)
        );
        assert!(s.child_faults(true).is_empty());
        let d = st(&docker_exec_status());
        assert_eq!(
            d.child_faults(true),
            vec![
                "CapBnd 00000000a80425fb",
                "NoNewPrivs 0",
                "no seccomp filter (Seccomp 0)"
            ]
        );
        assert_eq!(
            d.child_faults(false),
            vec!["CapBnd 00000000a80425fb", "NoNewPrivs 0"]
        );
        assert!(ProcStatus::parse("Name:\tx\n").is_none());
    }

    #[test]
    fn observed_parses_the_probe_report() {
        let out = b"proc1_environ EACCES\nenv 42 413d31\nnoise without value\nbottle-init: warning x\ndone 1\n";
        let o = Observed::parse(out);
        assert_eq!(o.get("proc1_environ"), "EACCES");
        assert_eq!(o.environs, vec![(42, b"A=1".to_vec())]);
        assert_eq!(o.failed, None);
        assert_eq!(o.get("nothing"), "<missing>");
        assert!(!o.values.contains_key("bottle-init:"));
        assert!(Observed::parse(b"proc1_environ EACCES\n").failed.is_some());
    }

    const TOKEN: &[u8] = b"sk-ant-oat01-real";

    #[test]
    fn credential_passes_when_only_pid1_holds_it_zeroed() {
        let pid1 =
            b"PATH=/bin\0CLAUDE_CODE_OAUTH_TOKEN=\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0HOME=/\0";
        let procs = [
            proc_(7, STATUS_OK, Some(b"CLAUDE_CODE_OAUTH_TOKEN=bottle-ab\0")),
            proc_(8, ROOT_STATUS, None),
        ];
        let c = credential(
            Some((Some("CLAUDE_CODE_OAUTH_TOKEN"), TOKEN)),
            &procs,
            Ok(pid1),
        );
        assert_eq!(
            c,
            Check::pass(
                CREDENTIAL,
                "no other process has it in its environment (1 read); PID 1's environ holds \
                 CLAUDE_CODE_OAUTH_TOKEN zeroed; not readable here: pid 8 (bash, uid 0)"
            )
        );
        let c = credential(Some((None, TOKEN)), &procs[..1], Err("EACCES"));
        assert!(c.ok, "{c:?}");
        assert!(
            c.detail
                .ends_with("PID 1's environ cannot be read even by root (EACCES)")
        );
    }

    #[test]
    fn credential_names_the_process_of_another_uid_that_holds_it() {
        let mut env = b"X=1\0CLAUDE_CODE_OAUTH_TOKEN=".to_vec();
        env.extend_from_slice(TOKEN);
        let procs = [proc_(57, &docker_exec_status(), Some(&env))];
        let c = credential(
            Some((Some("CLAUDE_CODE_OAUTH_TOKEN"), TOKEN)),
            &procs,
            Err("EACCES"),
        );
        assert!(!c.ok);
        assert!(
            c.detail.starts_with(
                "the real credential is in the environment of pid 57 (sleep, uid 1000): "
            ),
            "{}",
            c.detail
        );
        assert!(!c.detail.contains("sk-ant"));
        // The same value anywhere in the block (another variable's name) counts.
        let mut env = b"FOO=".to_vec();
        env.extend_from_slice(TOKEN);
        let c = credential(
            Some((None, TOKEN)),
            &[proc_(9, STATUS_OK, Some(&env))],
            Err("EPERM"),
        );
        assert!(!c.ok && c.detail.contains("pid 9 (sleep, uid 1000)"));
        // A root `docker exec` shell is noted, not a failure: uid 1000 cannot read it.
        let mut env = b"CLAUDE_CODE_OAUTH_TOKEN=".to_vec();
        env.extend_from_slice(TOKEN);
        let c = credential(
            Some((None, TOKEN)),
            &[proc_(3, ROOT_STATUS, Some(&env))],
            Err("EPERM"),
        );
        assert!(
            c.ok && c
                .detail
                .contains("root processes have it from `docker exec` (pid 3 (bash, uid 0))"),
            "{c:?}"
        );
        // PID 1 not scrubbed.
        let c = credential(Some((None, TOKEN)), &[], Ok(&env));
        assert!(!c.ok && c.detail.contains("PID 1's own environment"));
        // Nothing to look for.
        let c = credential(None, &[], Err("EPERM"));
        assert!(!c.ok && c.detail.starts_with("no credential to look for"));
        assert!(!credential(Some((None, b"")), &[], Err("EPERM")).ok);
    }

    #[test]
    fn zeroed_needs_the_entry_and_zero_bytes() {
        assert!(zeroed(b"A=\0\0\0B=1\0", "A"));
        assert!(!zeroed(b"A=x\0B=1\0", "A"));
        assert!(!zeroed(b"XA=\0\0\0", "A"));
        assert!(!zeroed(b"A=\0", "A"));
    }

    fn good_probe() -> Observed {
        let mut v = format!(
            "proc1_environ EACCES\nproc1_mem EACCES\nptrace EPERM\nvm_readv EPERM\nstatus {}\n\
             placeholder {}\nselfenv {}\ninet EACCES\ninet6 EACCES\napi_unix 200\n\
             tcp_probe ECONNREFUSED\nudp53 EPERM\n",
            hex(STATUS_OK.as_bytes()),
            hex(b"bottle-ab"),
            hex(b"CLAUDE_CODE_OAUTH_TOKEN=bottle-ab\0HOME=/home/claude\0"),
        );
        v.push_str("done 1\n");
        Observed::parse(v.as_bytes())
    }

    fn with(o: &Observed, k: &str, v: &str) -> Observed {
        let mut o = o.clone();
        o.values.insert(k.into(), v.into());
        o
    }

    #[test]
    fn child_user_passes_a_proper_drop() {
        let c = child_user(&good_probe(), Some(TOKEN), b"bottle-ab", 1000);
        assert_eq!(
            c,
            Check::pass(
                CHILD_USER,
                "uid 1000: /proc/1/environ, /proc/1/mem, ptrace and process_vm_readv on PID 1 \
                 refused; no capabilities, NoNewPrivs 1; holds only the placeholder"
            )
        );
    }

    #[test]
    fn child_user_fails_each_broken_piece() {
        let g = good_probe();
        let fails = |o: &Observed, needle: &str| {
            let c = child_user(o, Some(TOKEN), b"bottle-ab", 1000);
            assert!(!c.ok && c.detail.contains(needle), "{needle}: {c:?}");
        };
        fails(
            &with(&g, "proc1_environ", "ok"),
            "/proc/1/environ was not refused (ok)",
        );
        fails(
            &with(&g, "proc1_mem", "ENOENT"),
            "/proc/1/mem was not refused (ENOENT)",
        );
        fails(
            &with(&g, "ptrace", "ok"),
            "ptrace(PTRACE_ATTACH, 1) was not refused",
        );
        fails(
            &with(&g, "vm_readv", "EFAULT"),
            "process_vm_readv on PID 1 was not refused (EFAULT)",
        );
        let caps = hex(docker_exec_status().as_bytes());
        fails(
            &with(&g, "status", &caps),
            "CapBnd 00000000a80425fb; NoNewPrivs 0",
        );
        let root = hex(ROOT_STATUS.as_bytes());
        fails(&with(&g, "status", &root), "runs as uids [0, 0, 0, 0]");
        fails(
            &with(&g, "placeholder", &hex(TOKEN)),
            "not this run's session secret",
        );
        fails(
            &with(&g, "placeholder", &hex(TOKEN)),
            "holds the real credential",
        );
        let mut env = b"OTHER=".to_vec();
        env.extend_from_slice(TOKEN);
        fails(
            &with(&g, "selfenv", &hex(&env)),
            "holds the real credential",
        );
        fails(&with(&g, "placeholder", ""), "no placeholder");
        fails(&Observed::failed("cannot fork"), "did not run: cannot fork");
        let c = child_user(&g, None, b"bottle-ab", 1000);
        assert!(
            c.ok && c
                .detail
                .ends_with("placeholder not compared (no credential known)")
        );
    }

    #[test]
    fn child_processes_name_the_offender() {
        let procs = [
            proc_(5, STATUS_OK, None),
            proc_(57, &docker_exec_status(), None),
            proc_(1, ROOT_STATUS, None),
        ];
        let c = child_processes(&procs, 1000, EgressMode::Open);
        assert!(!c.ok);
        assert!(
            c.detail
                .starts_with("pid 57 (sleep, uid 1000): CapBnd 00000000a80425fb, NoNewPrivs 0; "),
            "{}",
            c.detail
        );
        let c = child_processes(&procs[..1], 1000, EgressMode::ApiOnly);
        assert_eq!(
            c,
            Check::pass(
                CHILD_PROCESSES,
                "1 process(es) of uid 1000: no capabilities, NoNewPrivs 1, a seccomp filter"
            )
        );
        // Open mode asks for no filter; a locked one does.
        let unfiltered = STATUS_OK.replace("Seccomp:\t2", "Seccomp:\t0");
        assert!(child_processes(&[proc_(5, &unfiltered, None)], 1000, EgressMode::Open).ok);
        let c = child_processes(&[proc_(5, &unfiltered, None)], 1000, EgressMode::ApiOnly);
        assert!(!c.ok && c.detail.contains("no seccomp filter (Seccomp 0)"));
        // An ambient capability left (the crafted process of the tests).
        let amb = STATUS_OK.replace("CapAmb:\t0000000000000000", "CapAmb:\t0000000000000400");
        let c = child_processes(&[proc_(6, &amb, None)], 1000, EgressMode::Open);
        assert!(
            !c.ok
                && c.detail
                    .contains("pid 6 (sleep, uid 1000): CapAmb 0000000000000400")
        );
    }

    #[test]
    fn requests_and_statuses() {
        assert_eq!(
            head_request("/", "HEAD", b"bottle-ab"),
            b"HEAD / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer bottle-ab\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 401 Unauthorized\r\n"), Some(401));
        assert_eq!(status_of(b"SSH-2.0-x\r\n"), None);
        assert_eq!(status_of(b""), None);
        assert!(is_local(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 3\r\nx-bottle-proxy: local\r\n\r\n"
        ));
        assert!(!is_local(
            b"HTTP/1.1 401 Unauthorized\r\n\r\nx-bottle-proxy: local\r\n"
        ));
    }

    #[test]
    fn proxy_needs_both_answers() {
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-bottle-proxy: local\r\n\r\n".as_slice();
        let denied = b"HTTP/1.1 401 Unauthorized\r\nx-bottle-proxy: local\r\n\r\n{}".as_slice();
        let c = proxy("127.0.0.1:4000", Ok(ok), Ok(denied));
        assert_eq!(
            c,
            Check::pass(
                PROXY,
                "127.0.0.1:4000: HEAD / with the session secret 200; a wrong secret 401"
            )
        );
        let c = proxy("a", Ok(ok), Ok(ok));
        assert_eq!(c, Check::fail(PROXY, "a: a wrong session secret got 200"));
        // A 401 from somewhere else (the upstream) means the wrong secret was forwarded.
        let c = proxy("a", Ok(ok), Ok(b"HTTP/1.1 401 Unauthorized\r\n\r\n"));
        assert!(!c.ok);
        let c = proxy("a", Err("ECONNREFUSED".into()), Ok(denied));
        assert_eq!(
            c,
            Check::fail(PROXY, "a: HEAD / with the session secret: ECONNREFUSED")
        );
    }

    #[test]
    fn egress_per_mode() {
        let g = good_probe();
        assert_eq!(
            egress(EgressMode::Open, &Observed::failed("x"), None, "p"),
            Check::pass(EGRESS, "not restricted")
        );
        assert_eq!(
            egress(EgressMode::ApiOnly, &g, None, "p"),
            Check::pass(
                EGRESS,
                "api-only: AF_INET socket refused (EACCES); AF_INET6 socket refused (EACCES); the \
                 API answers over the Unix socket"
            )
        );
        let c = egress(EgressMode::ApiOnly, &with(&g, "inet6", "ok"), None, "p");
        assert!(!c.ok && c.detail.contains("an AF_INET6 socket was not refused (ok)"));
        let c = egress(
            EgressMode::ApiOnly,
            &with(&g, "api_unix", "ENOENT"),
            None,
            "p",
        );
        assert!(
            !c.ok
                && c.detail
                    .contains("does not answer over the Unix socket (ENOENT)")
        );
        let table: TableCheck = Ok(());
        assert_eq!(
            egress(EgressMode::Allowlist, &g, Some(&table), "192.0.2.2:7"),
            Check::pass(
                EGRESS,
                "allowlist: direct TCP to 192.0.2.2:7 refused (ECONNREFUSED); UDP to port 53 \
                 refused (EPERM); the nftables table is present and matches"
            )
        );
        for (k, v, needle) in [
            (
                "tcp_probe",
                "connected",
                "direct TCP to p was not refused (connected)",
            ),
            ("tcp_probe", "timeout", "was not refused (timeout)"),
            ("udp53", "sent", "UDP to port 53 was not refused (sent)"),
        ] {
            let c = egress(EgressMode::Allowlist, &with(&g, k, v), Some(&table), "p");
            assert!(!c.ok && c.detail.contains(needle), "{c:?}");
        }
        let missing: TableCheck = Err("table inet bottle_init not found".into());
        let c = egress(EgressMode::Allowlist, &g, Some(&missing), "p");
        assert!(
            !c.ok
                && c.detail
                    .contains("the nftables table: table inet bottle_init not found")
        );
        let c = egress(
            EgressMode::ApiOnly,
            &Observed::failed("timed out"),
            None,
            "p",
        );
        assert!(!c.ok && c.detail.contains("did not run: timed out"));
    }
}
