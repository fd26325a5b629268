//! End to end with the real Claude Code client (BOTTLE_TEST_CLAUDE, pinned in scripts/claude-code.env).
//!
//! Layout of every test: a fresh network namespace with only `lo` up; the Messages API mock
//! listens inside it (the listening socket is created by a thread that joined the namespace);
//! `unshare --pid --fork --mount-proc` starts, inside the same namespace, a tiny shell that
//! bind-mounts a test /etc/passwd (uid 1000 = `claude`, HOME = a fresh temp dir) and a tmpfs on
//! /run, then execs bottle-init as PID 1 with the real token, `BOTTLE_UPSTREAM=https://localhost:PORT`
//! and the mock's CA in `BOTTLE_UPSTREAM_CA`. bottle-init runs claude as uid 1000.
//!
//! Needs root, util-linux (unshare, nsenter), iproute2, strace and tmux. Under CI=true missing
//! prerequisites fail; otherwise the tests skip with a loud message.

mod support;

use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::e2e::mock::{Expect, Mock, MockConfig};
use support::e2e::*;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Runs as PID 1 of the new namespaces before bottle-init replaces it.
const NS_WRAPPER: &str = r#"#!/bin/sh
set -e
d="$1"; shift
mount --bind "$d/passwd" /etc/passwd
mount --bind "$d/group" /etc/group
# A private /run: bottle-init publishes its state for `bottle-init exec` under /run/bottle-init.
mount -t tmpfs -o mode=0755,size=16m bottle-test-run /run
# The sandbox's own /home when a test made one (private homes for passwd-less uids).
if [ -d "$d/homes" ]; then mount --bind "$d/homes" /home; fi
exec "$@"
"#;

/// The credential handed to bottle-init.
#[derive(Clone)]
enum Cred {
    OAuth(String),
    ApiKey(String),
}

impl Cred {
    fn secret(&self) -> &str {
        match self {
            Cred::OAuth(s) | Cred::ApiKey(s) => s,
        }
    }
    fn var(&self) -> &'static str {
        match self {
            Cred::OAuth(_) => "CLAUDE_CODE_OAUTH_TOKEN",
            Cred::ApiKey(_) => "ANTHROPIC_API_KEY",
        }
    }
    fn expect(&self) -> Expect {
        match self {
            Cred::OAuth(s) => Expect::Bearer(s.clone()),
            Cred::ApiKey(s) => Expect::ApiKey(s.clone()),
        }
    }
}

struct Sandbox {
    dir: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
    ns: NetNs,
    mock: Mock,
    claude: PathBuf,
    cred: Cred,
}

/// Checks prerequisites (fail under CI, skip otherwise) and builds the sandbox.
fn sandbox(cred: Cred, reply: &str, tweak: impl FnOnce(&mut MockConfig)) -> Option<Sandbox> {
    if !require(
        is_root(),
        "root (these tests use namespaces and read /proc/PID/mem)",
    ) {
        return None;
    }
    for tool in ["unshare", "nsenter", "ip", "mount", "grep"] {
        if !require(
            have_tool(tool),
            &format!("`{tool}` on PATH (apt-get install util-linux iproute2)"),
        ) {
            return None;
        }
    }
    let claude = match claude_binary() {
        Ok(p) => p,
        Err(e) => {
            require(false, &e);
            return None;
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("bottle-e2e-")
        .tempdir()
        .expect("tempdir");
    // uid 1000 must reach its home and workspace through this directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    let work = dir.path().join("work");
    for d in [&home, &work] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(1000), Some(1000)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    support::write_identity_files(dir.path(), &home);
    std::fs::write(dir.path().join("ns-wrapper.sh"), NS_WRAPPER).unwrap();

    let ns = NetNs::new_loopback().expect("create a loopback-only network namespace");
    let mut cfg = MockConfig::new(cred.expect(), reply);
    tweak(&mut cfg);
    let listeners = ns
        .listen_localhost(0)
        .expect("bind the mock inside the namespace");
    let mock = Mock::start_on(listeners, cfg).expect("start the mock");
    Some(Sandbox {
        dir,
        home,
        work,
        ns,
        mock,
        claude,
        cred,
    })
}

impl Sandbox {
    /// `unshare ... bottle-init [init_args...]`, environment as `docker run -e` would give it.
    fn init_command(&self, init_args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "--",
            "sh",
        ])
        .arg(self.dir.path().join("ns-wrapper.sh"))
        .arg(self.dir.path())
        .arg(support::bin())
        .args(init_args)
        .env_clear()
        .env("PATH", PATH)
        .env(self.cred.var(), self.cred.secret())
        .env("BOTTLE_UPSTREAM", self.mock.url())
        .env("BOTTLE_UPSTREAM_CA", self.mock.ca_pem())
        .env("BOTTLE_LOG", "debug")
        .current_dir(&self.work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    }

    /// bottle-init running `claude ARGS...` as its child.
    fn claude_command(&self, claude_args: &[&str]) -> Command {
        let claude = self.claude.to_str().unwrap();
        let mut args = vec!["--", claude];
        args.extend_from_slice(claude_args);
        self.init_command(&args)
    }

    fn spawn(&self, mut cmd: Command) -> Child {
        self.ns
            .run(move || cmd.spawn())
            .expect("spawn inside the test namespace")
    }

    /// Asserts the secret is in none of the home directory's files.
    fn assert_home_clean(&self) {
        let hits = files_containing(&self.home, self.cred.secret().as_bytes());
        assert!(hits.is_empty(), "the real secret was written to {hits:?}");
    }
}

/// Waits until the mock holds a gated stream, failing early if `child` exits first.
fn wait_gate(mock: &Mock, child: &mut Child, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if mock.wait_gate(Duration::from_millis(200)) {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!(
                "bottle-init exited ({st}) before claude's request reached the mock\nstderr:\n{err}"
            );
        }
    }
    panic!(
        "no streamed request reached the mock within {limit:?}; requests: {:?}",
        mock.requests()
    );
}

/// uid-1000 descendants of `root` running the claude binary.
fn claude_pids(root: u32, claude: &Path) -> Vec<u32> {
    let want = std::fs::canonicalize(claude).unwrap();
    descendants(root)
        .into_iter()
        .filter(|p| real_uid(*p) == Some(1000))
        .filter(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == want))
        .collect()
}

/// What the real client sent for the prompt, checked against what the API expects.
fn assert_prompt_request(mock: &Mock, prompt: &str, cred: &Cred, placeholder: Option<&str>) {
    let all = mock.requests();
    let msgs = mock.messages();
    let req = msgs
        .iter()
        .find(|r| String::from_utf8_lossy(&r.body).contains(prompt))
        .unwrap_or_else(|| panic!("no POST /v1/messages carried the prompt; saw {all:#?}"));
    match cred {
        Cred::OAuth(t) => {
            assert_eq!(
                req.header_all("authorization"),
                [format!("Bearer {t}")],
                "the real token, once"
            );
            assert!(
                req.header("x-api-key").is_none(),
                "no x-api-key in OAuth mode"
            );
            let beta = req.header_all("anthropic-beta").join(",");
            assert!(
                beta.split(',').any(|b| b.trim() == "oauth-2025-04-20"),
                "oauth beta missing: {beta:?}"
            );
        }
        Cred::ApiKey(k) => {
            assert_eq!(
                req.header_all("x-api-key"),
                std::slice::from_ref(k),
                "the real API key, once"
            );
            assert!(
                req.header("authorization").is_none(),
                "no Authorization in API-key mode"
            );
        }
    }
    assert_eq!(
        req.header("anthropic-version").as_deref(),
        Some("2023-06-01")
    );
    let session = req.header("x-claude-code-session-id").unwrap_or_default();
    assert!(
        session.len() >= 32,
        "X-Claude-Code-Session-Id missing or short: {session:?}"
    );
    if let Some(cl) = req.header("content-length") {
        assert_eq!(
            cl.parse::<usize>().ok(),
            Some(req.body.len()),
            "Content-Length vs body"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&req.body).expect("the forwarded body is JSON");
    assert!(
        json.get("messages").is_some_and(|m| m.is_array()),
        "body has messages[]"
    );
    assert_eq!(
        json.get("stream").and_then(|s| s.as_bool()),
        Some(true),
        "claude streams"
    );
    // The proxy answers the warm-up or forwards it; either way only loopback ever saw traffic.
    for r in &all {
        let line = format!("{:?}", r.headers);
        assert!(
            !line.contains(placeholder.unwrap_or("\u{0}never")),
            "the placeholder reached upstream: {r:?}"
        );
        if r.method == "POST" {
            let auth_ok = match cred {
                Cred::OAuth(t) => r.header_all("authorization") == [format!("Bearer {t}")],
                Cred::ApiKey(k) => r.header_all("x-api-key") == [k.clone()],
            };
            assert!(
                auth_ok,
                "a forwarded request without the real credential: {r:?}"
            );
        }
    }
}

/// The child's session placeholder, read from its environment.
fn placeholder_of(env: &[String], cred: &Cred) -> Option<String> {
    let var = match cred {
        Cred::OAuth(_) => "CLAUDE_CODE_OAUTH_TOKEN=",
        Cred::ApiKey(_) => "ANTHROPIC_AUTH_TOKEN=",
    };
    env.iter()
        .find_map(|e| e.strip_prefix(var).map(str::to_string))
}

/// Claude's environment and memory, read as root while its request is held open.
fn inspect_claude(sb: &Sandbox, root: u32) -> String {
    let pids = claude_pids(root, &sb.claude);
    assert!(
        !pids.is_empty(),
        "no uid-1000 claude process under pid {root}: {:?}",
        descendants(root)
    );
    let secret = sb.cred.secret();
    // Every uid-1000 process of the tree (claude's helpers too: it runs its own binary as
    // `rg`, git, sh): no secret in any environment. Short-lived ones may be gone already.
    for pid in descendants(root)
        .into_iter()
        .filter(|p| real_uid(*p) == Some(1000))
    {
        if let Ok(env) = environ(pid) {
            assert_absent(
                &env.join("\n"),
                secret,
                &format!("the environment of uid-1000 pid {pid} ({})", comm(pid)),
            );
        }
    }
    // The claude processes themselves, strictly: the top ones (not children of another
    // claude-binary process), which live until the held stream is released.
    let top: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| !ppid(*p).is_some_and(|pp| pids.contains(&pp)))
        .collect();
    let mut placeholder = None;
    for pid in &top {
        let env = environ(*pid).expect("read claude's environ as root");
        let joined = env.join("\n");
        assert_absent(
            &joined,
            secret,
            &format!("claude's environment (pid {pid})"),
        );
        let base = env
            .iter()
            .find_map(|e| e.strip_prefix("ANTHROPIC_BASE_URL="))
            .unwrap_or("");
        assert!(
            base.starts_with("http://127.0.0.1:"),
            "ANTHROPIC_BASE_URL={base:?}"
        );
        let ph = placeholder_of(&env, &sb.cred).expect("a placeholder credential in claude's env");
        assert!(
            ph.len() >= 22 && ph != secret,
            "placeholder too short or equal to the secret"
        );
        for v in [
            "CLAUDE_CODE_OAUTH_TOKEN",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
        ] {
            for e in env.iter().filter(|e| e.starts_with(&format!("{v}="))) {
                assert!(!e.contains(secret), "{v} carries the secret");
            }
        }
        assert!(
            !env.iter().any(|e| e.starts_with("BOTTLE_")),
            "BOTTLE_* leaked into claude's env"
        );
        let t0 = Instant::now();
        let (scanned, found) = memory_contains(*pid, secret).expect("scan claude's memory as root");
        eprintln!(
            "scanned {} MiB of pid {pid} in {:?}",
            scanned >> 20,
            t0.elapsed()
        );
        assert!(
            scanned > 1 << 20,
            "scanned only {scanned} bytes of pid {pid}"
        );
        assert!(
            !found,
            "the secret is in claude's memory (pid {pid}, {scanned} bytes scanned)"
        );
        // Positive control: the same scan does find the placeholder claude really holds.
        let (_, ph_found) = memory_contains(*pid, &ph).expect("scan for the placeholder");
        assert!(
            ph_found,
            "memory scan control: the placeholder was not found in pid {pid}"
        );
        placeholder = Some(ph);
    }
    placeholder.unwrap()
}

fn host_pid1(unshare_pid: u32) -> u32 {
    let start = Instant::now();
    loop {
        // unshare --fork has exactly one child: the namespace's PID 1.
        if let Some(p) = descendants(unshare_pid)
            .into_iter()
            .find(|p| ppid(*p) == Some(unshare_pid))
        {
            return p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no PID 1 under unshare {unshare_pid}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Control: the mock speaks the real client's protocol (plain HTTP, no bottle-init). If this
/// fails, the mock is wrong, not bottle-init.
#[test]
fn control_mock_serves_the_real_client_directly() {
    let _g = heavy();
    let placeholder = fake_secret("placeholder-");
    let Some(sb) = sandbox(
        Cred::OAuth(placeholder.clone()),
        "control reply from the mock",
        |c| c.tls = false,
    ) else {
        return;
    };
    let mut c = Command::new(&sb.claude);
    c.args(["-p", "control prompt"])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", &sb.home)
        .env("ANTHROPIC_BASE_URL", sb.mock.url())
        .env("CLAUDE_CODE_OAUTH_TOKEN", &placeholder)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .current_dir(&sb.work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = wait_timeout(sb.spawn(c), RUN_LIMIT);
    assert!(
        run.status.success(),
        "claude against the plain mock: {}",
        run.describe()
    );
    assert!(
        run.out().contains("control reply from the mock"),
        "{}",
        run.describe()
    );
    assert_prompt_request(&sb.mock, "control prompt", &Cred::OAuth(placeholder), None);
}

/// Control for the TLS side: claude itself trusts the mock's CA (NODE_EXTRA_CA_CERTS) and talks
/// to `https://localhost:PORT`, proving the certificate, SNI name and SSE framing over TLS.
#[test]
fn control_mock_tls_certificate_is_valid_for_localhost() {
    let _g = heavy();
    let placeholder = fake_secret("placeholder-");
    let Some(sb) = sandbox(
        Cred::OAuth(placeholder.clone()),
        "tls control reply",
        |_| {},
    ) else {
        return;
    };
    let mut c = Command::new(&sb.claude);
    c.args(["-p", "tls control prompt"])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", &sb.home)
        .env("ANTHROPIC_BASE_URL", sb.mock.url())
        .env("NODE_EXTRA_CA_CERTS", sb.mock.ca_pem())
        .env("CLAUDE_CODE_OAUTH_TOKEN", &placeholder)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .current_dir(&sb.work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = wait_timeout(sb.spawn(c), RUN_LIMIT);
    assert!(
        run.status.success(),
        "claude against the TLS mock: {}",
        run.describe()
    );
    assert!(
        run.out().contains("tls control reply"),
        "{}",
        run.describe()
    );
    assert_prompt_request(
        &sb.mock,
        "tls control prompt",
        &Cred::OAuth(placeholder),
        None,
    );
}

/// `claude -p` through bottle-init: the reply arrives, upstream sees the real token and the
/// client's headers and body, and the token is in none of claude's environment, memory, output
/// or home.
#[test]
fn print_mode_oauth_token_reaches_upstream_only() {
    let _g = heavy();
    let token = fake_secret("sk-ant-oat01-e2e-");
    let reply = "the mock says hello through bottle-init";
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), reply, |c| c.gated = true) else {
        return;
    };
    let mut child = sb.spawn(sb.claude_command(&["-p", "e2e prompt one"]));
    let unshare_pid = child.id();
    let _guard_pid = unshare_pid;
    wait_gate(&sb.mock, &mut child, RUN_LIMIT);

    let pid1 = host_pid1(unshare_pid);
    assert_eq!(comm(pid1), "bottle-init", "PID 1 of the namespace");
    let init_env = environ(pid1).map(|e| e.join("\n")).unwrap_or_default();
    assert_absent(&init_env, &token, "bottle-init's /proc/PID/environ");
    let placeholder = inspect_claude(&sb, pid1);
    sb.mock.release();

    let run = wait_timeout(child, RUN_LIMIT);
    assert!(run.status.success(), "{}", run.describe());
    assert!(
        run.out().contains(reply),
        "claude did not print the mock's reply: {}",
        run.describe()
    );
    assert_absent(&run.out(), &token, "stdout");
    assert_absent(&run.err(), &token, "stderr (bottle-init's log included)");
    assert_absent(
        &run.err(),
        &placeholder,
        "stderr (bottle-init's log included)",
    );
    assert_prompt_request(&sb.mock, "e2e prompt one", &sb.cred, Some(&placeholder));
    sb.assert_home_clean();
}

/// The out-of-band traffic audit (claude-code#36998): under `strace -f`, no process of the
/// tree (bottle-init, its proxy thread, claude and everything claude starts) tries to reach a
/// non-loopback address, in -p mode.
#[test]
fn strace_no_connection_attempts_beyond_loopback() {
    let _g = heavy();
    if !require(have_tool("strace"), "strace (apt-get install strace)") {
        return;
    }
    let token = fake_secret("sk-ant-oat01-strace-");
    let reply = "traced reply";
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), reply, |_| {}) else {
        return;
    };
    let trace = sb.dir.path().join("connect.trace");
    let mut c = traced(&sb.claude_command(&["-p", "strace prompt"]), &trace);
    c.current_dir(&sb.work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = wait_timeout(sb.spawn(c), RUN_LIMIT);
    assert!(run.status.success(), "{}", run.describe());
    assert!(run.out().contains(reply), "{}", run.describe());
    let text = std::fs::read_to_string(&trace).expect("strace output");
    let (loopback, other) = audit_trace(&text);
    assert!(
        other.is_empty(),
        "non-loopback connection attempts:\n{}",
        other.join("\n")
    );
    // Control: the trace really saw claude reach the proxy and the proxy reach the mock.
    let port = format!("sin_port=htons({})", sb.mock.port());
    assert!(
        text.contains(&port),
        "strace saw no connect to the mock's port; trace:\n{text}"
    );
    assert!(
        loopback.len() >= 2,
        "strace saw too few loopback connects: {loopback:?}"
    );
    assert_absent(&run.err(), &token, "stderr");
}

/// `inner` (program, args, environment) run under `strace -f`, which writes to `out` every
/// connect/sendto/sendmsg of the whole process tree.
fn traced(inner: &Command, out: &Path) -> Command {
    let mut c = Command::new("strace");
    c.args([
        "-f",
        "-qq",
        "-s",
        "256",
        "-e",
        "trace=connect,sendto,sendmsg,sendmmsg,execve",
        "-e",
        "signal=none",
        "-o",
    ])
    .arg(out)
    .arg(inner.get_program())
    .args(inner.get_args())
    .env_clear()
    .envs(
        inner
            .get_envs()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
    );
    if let Some(d) = inner.get_current_dir() {
        c.current_dir(d);
    }
    c
}

/// (loopback addresses, lines naming any other address) of a strace log. Each offending line
/// is followed by the execve lines of its pid, to say which program it was (none: a thread or
/// an un-exec'd fork of its parent).
fn audit_trace(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut loopback, mut other) = (Vec::new(), Vec::new());
    let pid_of = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
    for line in text.lines() {
        for addr in inet_addresses(line) {
            if is_loopback(&addr) {
                loopback.push(addr);
            } else {
                other.push(line.to_string());
                let pid = pid_of(line);
                for ex in text
                    .lines()
                    .filter(|l| pid_of(l) == pid && l.contains("execve("))
                {
                    other.push(format!("    {}", ex.chars().take(300).collect::<String>()));
                }
            }
        }
    }
    (loopback, other)
}

/// The IPv4/IPv6 addresses in one strace line (`inet_addr("...")`, `inet_pton(AF_INET6, "...")`).
fn inet_addresses(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for marker in ["inet_addr(\"", "inet_pton(AF_INET6, \""] {
        let mut rest = line;
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    out
}

fn is_loopback(addr: &str) -> bool {
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_loopback(),
        Ok(std::net::IpAddr::V6(a)) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

#[test]
fn inet_address_parsing_of_strace_lines() {
    let l = r#"12 connect(3, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("160.79.104.10")}, 16) = -1 ENETUNREACH"#;
    assert_eq!(inet_addresses(l), ["160.79.104.10"]);
    assert!(!is_loopback("160.79.104.10"));
    let l6 = r#"connect(5, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0"#;
    assert_eq!(inet_addresses(l6), ["::ffff:127.0.0.1"]);
    assert!(is_loopback("::ffff:127.0.0.1") && is_loopback("::1") && is_loopback("127.0.0.53"));
}

/// Streaming: the mock sends one SSE event per second; claude's stream-json output shows the
/// text deltas arriving about a second apart, not all at once at the end.
#[test]
fn streaming_events_reach_the_client_paced() {
    let _g = heavy();
    let token = fake_secret("sk-ant-oat01-stream-");
    let reply = "alpha beta gamma delta";
    let pace = Duration::from_millis(1000);
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), reply, |c| c.pace = pace) else {
        return;
    };
    let cmd = sb.claude_command(&[
        "-p",
        "stream prompt",
        "--output-format",
        "stream-json",
        "--include-partial-messages",
        "--verbose",
    ]);
    let mut child = sb.spawn(cmd);
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|l| (Instant::now(), l))
            .collect::<Vec<_>>()
    });
    let run = wait_timeout(child, RUN_LIMIT);
    let lines = lines.join().unwrap();
    assert!(run.status.success(), "{}", run.describe());
    let deltas: Vec<(Instant, String)> = lines
        .iter()
        .filter(|(_, l)| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .is_some_and(|v| {
                    v["type"] == "stream_event"
                        && v["event"]["type"] == "content_block_delta"
                        && v["event"]["delta"]["type"] == "text_delta"
                })
        })
        .cloned()
        .collect();
    let all: Vec<&String> = lines.iter().map(|(_, l)| l).collect();
    assert_eq!(
        deltas.len(),
        4,
        "one stream_event per word; output:\n{all:#?}"
    );
    for w in deltas.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= pace.mul_f32(0.6),
            "deltas arrived {gap:?} apart (mock paced them {pace:?}): buffered somewhere"
        );
    }
    let result = lines.iter().rev().find_map(|(_, l)| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["type"] == "result").then(|| v["result"].as_str().unwrap_or("").to_string())
    });
    assert_eq!(result.as_deref(), Some(reply), "final result line");
    assert_absent(
        &all.iter().map(|s| s.as_str()).collect::<String>(),
        &token,
        "stream-json output",
    );
}

/// API-key mode: `ANTHROPIC_API_KEY` goes upstream as `x-api-key`; claude works with its
/// placeholder and never sees the key.
#[test]
fn api_key_mode_end_to_end() {
    let _g = heavy();
    let key = fake_secret("sk-ant-api03-e2e-");
    let reply = "api key mode reply";
    let Some(sb) = sandbox(Cred::ApiKey(key.clone()), reply, |c| c.gated = true) else {
        return;
    };
    let mut child = sb.spawn(sb.claude_command(&["-p", "api key prompt"]));
    wait_gate(&sb.mock, &mut child, RUN_LIMIT);
    let pid1 = host_pid1(child.id());
    let placeholder = inspect_claude(&sb, pid1);
    sb.mock.release();
    let run = wait_timeout(child, RUN_LIMIT);
    assert!(run.status.success(), "{}", run.describe());
    assert!(run.out().contains(reply), "{}", run.describe());
    assert_absent(&run.out(), &key, "stdout");
    assert_absent(&run.err(), &key, "stderr");
    assert_prompt_request(&sb.mock, "api key prompt", &sb.cred, Some(&placeholder));
    sb.assert_home_clean();
}

/// `bottle-init exec` with the real claude while PID 1 runs something else: the exec'd claude
/// uses PID 1's proxy (real token upstream) although its own environment, like `docker exec`'s,
/// started with the token in it.
#[test]
fn exec_runs_real_claude_through_the_running_pid1() {
    let _g = heavy();
    let token = fake_secret("sk-ant-oat01-exec-");
    let reply = "exec mode reply";
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), reply, |c| c.gated = true) else {
        return;
    };
    let mut cmd = sb.init_command(&["--", "sleep", "300"]);
    cmd.stdout(Stdio::null());
    let pid1_child = sb.spawn(cmd);
    let unshare_pid = pid1_child.id();
    let mut pid1_guard = Guard(Some(pid1_child));
    let pid1 = host_pid1(unshare_pid);
    // PID 1 has published its state once its own child runs.
    let start = Instant::now();
    while !descendants(pid1)
        .iter()
        .any(|p| comm(*p) == "sleep" && real_uid(*p) == Some(1000))
    {
        if let Some(c) = pid1_guard.0.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("bottle-init (PID 1, running sleep) exited {st}: {err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "PID 1's sleep never started as uid 1000"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let claude = sb.claude.to_str().unwrap().to_string();
    let mut exec = Command::new("nsenter");
    exec.arg(format!("--target={pid1}"))
        .args([
            "--pid",
            "--mount",
            "--",
            support::bin(),
            "exec",
            "--",
            &claude,
            "-p",
            "exec prompt",
        ])
        .env_clear()
        .env("PATH", PATH)
        .env("CLAUDE_CODE_OAUTH_TOKEN", &token) // what `docker exec` hands every process
        .current_dir(&sb.work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = sb.spawn(exec);
    wait_gate(&sb.mock, &mut child, RUN_LIMIT);
    let placeholder = inspect_claude(&sb, child.id());
    sb.mock.release();
    let run = wait_timeout(child, RUN_LIMIT);
    assert!(run.status.success(), "{}", run.describe());
    assert!(run.out().contains(reply), "{}", run.describe());
    assert_absent(&run.out(), &token, "stdout");
    assert_absent(&run.err(), &token, "stderr");
    assert_prompt_request(&sb.mock, "exec prompt", &sb.cred, Some(&placeholder));
    sb.assert_home_clean();
    // Only PID 1's proxy served: one bottle-init in the namespace, none started by exec.
    let inits: Vec<u32> = descendants(unshare_pid)
        .into_iter()
        .filter(|p| comm(*p) == "bottle-init")
        .collect();
    assert_eq!(inits, [pid1], "exec left a second bottle-init running");
    drop(pid1_guard);
}

/// Interactive claude on a pty (tmux): with a fresh home it goes straight to its prompt (no
/// theme picker, no login method), and a typed prompt shows the mock's reply.
#[test]
fn interactive_on_a_pty_with_fresh_home() {
    let _g = heavy();
    if !require(have_tool("tmux"), "tmux (apt-get install tmux)") {
        return;
    }
    let token = fake_secret("sk-ant-oat01-pty-");
    let reply = "interactive reply 7f3a";
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), reply, |_| {}) else {
        return;
    };
    // Default BOTTLE_LOG, as a user gets it.
    interactive_session(&sb, &token, reply, None, None);
}

/// Interactive claude through `bottle-init exec` on a pty (the `docker exec -it C /bottle-init
/// exec claude` path): exec gives claude its own pty and relays the tmux pane to it, so the
/// full-screen UI, typing and the reply work as on PID 1's own terminal; the pane's terminal
/// (the caller's) is never claude's.
#[test]
fn interactive_exec_on_a_pty_works_through_the_relay() {
    let _g = heavy();
    if !require(have_tool("tmux"), "tmux (apt-get install tmux)") {
        return;
    }
    let token = fake_secret("sk-ant-oat01-ptyexec-");
    let reply = "interactive exec reply 5c1d";
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), reply, |_| {}) else {
        return;
    };
    let mut cmd = sb.init_command(&["--", "sleep", "300"]);
    cmd.stdout(Stdio::null());
    let pid1_child = sb.spawn(cmd);
    let unshare_pid = pid1_child.id();
    let _pid1_guard = Guard(Some(pid1_child));
    let pid1 = host_pid1(unshare_pid);
    let start = Instant::now();
    while !descendants(pid1)
        .iter()
        .any(|p| comm(*p) == "sleep" && real_uid(*p) == Some(1000))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "PID 1's sleep never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut exec = Command::new("nsenter");
    exec.arg(format!("--target={pid1}"))
        .args(["--pid", "--mount"])
        .arg(format!("--wd={}", sb.work.display()))
        .args(["--", support::bin(), "exec", "--"])
        .arg(&sb.claude)
        .env_clear()
        .env("PATH", PATH)
        .env("CLAUDE_CODE_OAUTH_TOKEN", &token); // what `docker exec` hands every process
    let prompt = "please reply through exec";
    let (screen, _) = interactive_screen(&sb, exec, &token, None, None, prompt, reply, &|pane| {
        let tty = |p: u32| std::fs::read_link(format!("/proc/{p}/fd/0")).unwrap_or_default();
        let pane_tty = tty(pane);
        let claude = descendants(pane)
            .into_iter()
            .find(|p| real_uid(*p) == Some(1000))
            .expect("claude under the pane");
        let claude_tty = tty(claude);
        assert!(claude_tty.starts_with("/dev/pts/"), "{claude_tty:?}");
        assert_ne!(claude_tty, pane_tty, "claude runs on the caller's terminal");
    });
    eprintln!("interactive exec screen:\n{screen}");
    assert!(
        sb.mock.message_containing(prompt).is_some(),
        "the typed prompt never reached the mock"
    );
    sb.assert_home_clean();
}

/// The out-of-band traffic audit for interactive mode, which does more than -p on start-up
/// (marketplace, version checks; see the facts file): the same pty session under `strace -f`.
#[test]
fn strace_interactive_no_connection_attempts_beyond_loopback() {
    let _g = heavy();
    if !require(
        have_tool("tmux") && have_tool("strace"),
        "tmux and strace (apt-get install tmux strace)",
    ) {
        return;
    }
    let token = fake_secret("sk-ant-oat01-ptytrace-");
    let reply = "traced interactive reply";
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), reply, |_| {}) else {
        return;
    };
    let trace = sb.dir.path().join("interactive.trace");
    // Quiet log: this test is about the network, not the screen.
    interactive_session(&sb, &token, reply, Some(&trace), Some("warn"));
    let text = std::fs::read_to_string(&trace).expect("strace output");
    let (loopback, other) = audit_trace(&text);
    assert!(
        other.is_empty(),
        "non-loopback connection attempts in interactive mode:\n{}",
        other.join("\n")
    );
    assert!(
        loopback.len() >= 2,
        "strace saw too few loopback connects: {loopback:?}"
    );
}

/// Drives interactive claude (through bottle-init, optionally under strace) in tmux: waits for
/// its prompt (failing on any login/onboarding screen), types a prompt, waits for the reply.
/// `log` sets BOTTLE_LOG (None: bottle-init's default). Fails as soon as an info/debug log
/// line of bottle-init shows on claude's screen: they are written to the same terminal and
/// corrupt claude's full-screen UI (seen: replies overwritten, the UI stalling until a key).
fn interactive_session(
    sb: &Sandbox,
    token: &str,
    reply: &str,
    strace: Option<&Path>,
    log: Option<&str>,
) {
    let (s, _) = interactive_screen(
        sb,
        sb.claude_command(&[]),
        token,
        strace,
        log,
        "please reply on the pty",
        reply,
        &|_| {},
    );
    eprintln!("interactive screen:\n{s}");
    let msgs = sb.mock.messages();
    assert!(
        msgs.iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("please reply on the pty")),
        "the typed prompt never reached the mock"
    );
    let onboarding = sb.home.join(".claude.json");
    let meta =
        std::fs::symlink_metadata(&onboarding).expect("~/.claude.json exists after the first run");
    assert_eq!(meta.uid(), 1000, "~/.claude.json belongs to the child user");
    sb.assert_home_clean();
    if strace.is_some() {
        // Give claude's background start-up work time to try the network before the session
        // (and the trace) ends.
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Runs `inner` (bottle-init with claude) in tmux, waits for claude's prompt (failing on any
/// login/onboarding screen or a leaked secret), types `prompt` and waits up to 60 s for
/// `want` on the screen. Returns that screen and how long after the Enter key it appeared.
#[allow(clippy::too_many_arguments)] // a test driver: every argument is one knob of the session
fn interactive_screen(
    sb: &Sandbox,
    mut inner: Command,
    token: &str,
    strace: Option<&Path>,
    log: Option<&str>,
    prompt: &str,
    want: &str,
    check: &dyn Fn(u32),
) -> (String, Duration) {
    let token = token.to_string();
    let sock = sb.dir.path().join("tmux.sock");
    // Keep a dead pane on screen so a failure shows bottle-init's or claude's last words.
    let conf = sb.dir.path().join("tmux.conf");
    std::fs::write(&conf, "set -g remain-on-exit on\n").unwrap();
    match log {
        Some(level) => inner.env("BOTTLE_LOG", level),
        None => inner.env_remove("BOTTLE_LOG"),
    };
    if let Some(out) = strace {
        inner = traced(&inner, out);
    }
    let tmux = |args: &[&str]| -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(args)
            .output()
            .expect("run tmux")
    };
    let mut start = Command::new("tmux");
    start
        .arg("-S")
        .arg(&sock)
        .arg("-f")
        .arg(&conf)
        .args(["new-session", "-d", "-s", "e2e", "-x", "180", "-y", "50"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_clear()
        .envs(
            inner
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .env("TERM", "xterm-256color")
        .current_dir(&sb.work);
    let st = sb.ns.run(move || start.status()).expect("start tmux");
    assert!(st.success(), "tmux new-session failed");
    /// Ends only the server on our private socket, then waits for the pane's process tree to
    /// be gone, so nothing writes into the sandbox after the test removes it.
    struct Kill(PathBuf, u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let tree: Vec<u32> = std::iter::once(self.1).chain(descendants(self.1)).collect();
            let _ = Command::new("tmux")
                .arg("-S")
                .arg(&self.0)
                .arg("kill-server")
                .status();
            let t0 = Instant::now();
            while tree
                .iter()
                .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
                && t0.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let pane_pid = String::from_utf8_lossy(
        &tmux(&["display-message", "-p", "-t", "e2e", "#{pane_pid}"]).stdout,
    )
    .trim()
    .parse::<u32>()
    .unwrap_or(0);
    let _kill = Kill(sock.clone(), pane_pid);
    let screen =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "e2e"]).stdout).into_owned();
    let forbidden = [
        "Select login method",
        "Choose the text style",
        "Log in with",
        "Unable to connect",
    ];
    let mut seen = Vec::new();
    let mut trust_dialogs = 0;
    let wait_for = |want: &dyn Fn(&str) -> bool,
                    limit: Duration,
                    seen: &mut Vec<String>,
                    trust: &mut i32|
     -> String {
        let t0 = Instant::now();
        loop {
            let s = screen();
            let dead = String::from_utf8_lossy(
                &tmux(&[
                    "display-message",
                    "-p",
                    "-t",
                    "e2e",
                    "#{pane_dead} #{pane_dead_status}",
                ])
                .stdout,
            )
            .into_owned();
            assert!(
                !dead.starts_with('1'),
                "the pane's process exited (status {dead:?}):\n{s}"
            );
            if let Some(l) = s
                .lines()
                .find(|l| l.contains("bottle-init: info") || l.contains("bottle-init: debug"))
            {
                panic!(
                    "bottle-init's log is written onto claude's terminal ({l:?}); with the default \
                     BOTTLE_LOG its per-request lines land inside claude's full-screen UI and corrupt \
                     it (in ~1 of 6 runs the UI stalled until a key was pressed). Screen:\n{s}"
                );
            }
            for f in forbidden {
                assert!(!s.contains(f), "interactive claude showed {f:?}:\n{s}");
            }
            assert_absent(&s, &token, "the terminal");
            if s.contains("Yes, I trust this folder")
                || s.contains("Do you trust the files in this folder")
            {
                // The per-folder trust dialog is not onboarding; accept it like a user would,
                // once, then give it time to go away.
                *trust += 1;
                assert!(
                    *trust <= 1,
                    "the trust dialog came back after being accepted:\n{s}"
                );
                // Let the dialog finish mounting its key handler before answering it.
                std::thread::sleep(Duration::from_millis(1000));
                // Claude Code 2.1.332 puts the cursor on "No, exit" (2.1.126 had "Yes" first):
                // move to "Yes, I trust this folder" as a user would, then confirm.
                let selected = |s: &str| {
                    s.lines()
                        .any(|l| l.contains('❯') && l.contains("Yes, I trust this folder"))
                };
                let t1 = Instant::now();
                let mut now = s.clone();
                while !selected(&now) && t1.elapsed() < Duration::from_secs(10) {
                    tmux(&["send-keys", "-t", "e2e", "Down"]);
                    std::thread::sleep(Duration::from_millis(500));
                    now = screen();
                }
                assert!(
                    selected(&now),
                    "cannot select \"Yes, I trust this folder\":\n{now}"
                );
                seen.push(format!("[trust dialog, Yes selected, Enter]\n{now}"));
                tmux(&["send-keys", "-t", "e2e", "Enter"]);
                let t1 = Instant::now();
                while screen().contains("Yes, I trust this folder")
                    && t1.elapsed() < Duration::from_secs(10)
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            if want(&s) {
                return s;
            }
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            if t0.elapsed() >= limit {
                // Say where things hang: the pane's process tree with states and wait channels.
                let pane = String::from_utf8_lossy(
                    &tmux(&["display-message", "-p", "-t", "e2e", "#{pane_pid}"]).stdout,
                )
                .trim()
                .parse::<u32>()
                .unwrap_or(0);
                let mut tree = String::new();
                for p in std::iter::once(pane).chain(descendants(pane)) {
                    let wchan =
                        std::fs::read_to_string(format!("/proc/{p}/wchan")).unwrap_or_default();
                    let state = status_field(p, "State").unwrap_or_default();
                    // pgrp, session and the terminal's foreground group (stat fields 5, 6, 8).
                    let stat =
                        std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    let f: Vec<&str> = stat
                        .rsplit(')')
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .collect();
                    let (pgrp, sid, tpgid) = (f.get(2), f.get(3), f.get(5));
                    let sig: Vec<String> = ["SigBlk", "SigIgn", "SigCgt"]
                        .iter()
                        .map(|k| format!("{k}={}", status_field(p, k).unwrap_or_default()))
                        .collect();
                    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{p}/fd"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| {
                            let target = std::fs::read_link(e.path()).unwrap_or_default();
                            format!("{}->{}", e.file_name().to_string_lossy(), target.display())
                        })
                        .take(12)
                        .collect();
                    tree += &format!(
                        "  {p} {} uid={:?} {state} wchan={wchan} pgrp={pgrp:?} sid={sid:?} tty_fg={tpgid:?}\n      {}\n      fds {}\n",
                        comm(p),
                        real_uid(p),
                        sig.join(" "),
                        fds.join(" ")
                    );
                }
                // Does a newline wake it (a terminal reply stuck in canonical-mode input)?
                tmux(&["send-keys", "-t", "e2e", "Enter"]);
                std::thread::sleep(Duration::from_secs(5));
                let after = screen();
                panic!(
                    "timed out after {limit:?}; process tree:\n{tree}screens seen:\n{}\n----- 5 s after an Enter key:\n{after}",
                    seen.join("\n-----\n")
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    // Claude's input box is ready when its footer hint shows.
    wait_for(
        &|s| s.contains("for shortcuts") || s.contains('❯'),
        Duration::from_secs(60),
        &mut seen,
        &mut trust_dialogs,
    );
    std::thread::sleep(Duration::from_millis(500));
    tmux(&["send-keys", "-t", "e2e", "-l", prompt]);
    std::thread::sleep(Duration::from_millis(300));
    tmux(&["send-keys", "-t", "e2e", "Enter"]);
    let sent = Instant::now();
    let s = wait_for(
        &|s| s.contains(want),
        Duration::from_secs(60),
        &mut seen,
        &mut trust_dialogs,
    );
    let took = sent.elapsed();
    check(pane_pid);
    eprintln!("{want:?} after {took:?} (trust dialogs accepted: {trust_dialogs})");
    (s, took)
}

/// A loopback port in the sandbox's namespace that nothing listens on.
fn closed_port(sb: &Sandbox) -> u16 {
    let l = sb.ns.listen(0).expect("bind in the namespace");
    l.local_addr().unwrap().port()
}

/// Upstream unreachable (issue 9): a closed port, and a name that cannot be resolved (the
/// namespace has only `lo`, so the resolver is unreachable and no query leaves the machine).
/// `claude -p` must print the proxy's reason and exit within seconds. Before the proxy said
/// `x-should-retry: false`, the pinned client retried 10 times and exited after ~183 s.
#[test]
fn unreachable_upstream_print_mode_says_why_within_seconds() {
    let _g = heavy();
    let token = fake_secret("sk-ant-oat01-down-");
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), "never sent", |_| {}) else {
        return;
    };
    let port = closed_port(&sb);
    for (upstream, why) in [
        (format!("https://localhost:{port}"), "cannot connect"),
        (
            "https://api.bottle-test.invalid".to_string(),
            "cannot resolve the upstream host api.bottle-test.invalid",
        ),
    ] {
        let mut cmd = sb.claude_command(&["-p", "is the upstream there"]);
        cmd.env("BOTTLE_UPSTREAM", &upstream);
        let run = wait_timeout(sb.spawn(cmd), Duration::from_secs(60));
        let out = format!("{}{}", run.out(), run.err());
        assert!(!run.status.success(), "{upstream}: {}", run.describe());
        assert!(
            run.out().contains(why) && run.out().contains("bottle-init proxy"),
            "{upstream}: claude did not show the proxy's reason {why:?}: {}",
            run.describe()
        );
        assert!(
            run.elapsed < Duration::from_secs(30),
            "{upstream}: the user waited {:?} to learn why: {}",
            run.elapsed,
            run.describe()
        );
        assert_absent(&out, &token, "claude's or bottle-init's output");
    }
    assert!(sb.mock.requests().is_empty(), "nothing reaches the mock");
    sb.assert_home_clean();
}

/// The same on a pty: interactive claude shows the proxy's reason within seconds of Enter.
#[test]
fn unreachable_upstream_interactive_says_why_within_seconds() {
    let _g = heavy();
    if !require(have_tool("tmux"), "tmux (apt-get install tmux)") {
        return;
    }
    let token = fake_secret("sk-ant-oat01-downpty-");
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), "never sent", |_| {}) else {
        return;
    };
    let port = closed_port(&sb);
    let mut inner = sb.claude_command(&[]);
    inner.env("BOTTLE_UPSTREAM", format!("https://localhost:{port}"));
    let (screen, took) = interactive_screen(
        &sb,
        inner,
        &token,
        None,
        None,
        "is the upstream there",
        // The final error, not the reason shown between retries ("... · attempt 3/10"),
        // which the client keeps retrying behind for ~3 minutes.
        "API Error: 502",
        &|_| {},
    );
    assert!(
        screen.contains("bottle-init proxy") && screen.contains("cannot connect"),
        "the reason is the proxy's:\n{screen}"
    );
    assert!(
        !screen.contains("retrying") && took < Duration::from_secs(20),
        "the user waited {took:?} (retrying) to learn why:\n{screen}"
    );
    assert!(sb.mock.requests().is_empty(), "nothing reaches the mock");
    sb.assert_home_clean();
}

/// A workspace owned by a uid with no passwd entry (issue 9): `BOTTLE_USER=4242:4242` gets a
/// private home (/home/uid-4242, 0700, its own) and interactive claude its working first screen
/// and a reply. Before, HOME stayed /root (not writable) and claude showed a blank screen.
#[test]
fn interactive_as_a_uid_without_passwd_entry_gets_a_home_and_works() {
    let _g = heavy();
    if !require(have_tool("tmux"), "tmux (apt-get install tmux)") {
        return;
    }
    let token = fake_secret("sk-ant-oat01-nopw-");
    let reply = "reply for uid 4242";
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), reply, |_| {}) else {
        return;
    };
    let homes = sb.dir.path().join("homes");
    std::fs::create_dir(&homes).unwrap();
    std::fs::set_permissions(&homes, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&sb.work, Some(4242), Some(4242)).unwrap();
    let mut inner = sb.claude_command(&[]);
    inner.env("BOTTLE_USER", "4242:4242").env("HOME", "/root");
    let (screen, _) = interactive_screen(
        &sb,
        inner,
        &token,
        None,
        None,
        "please reply to uid 4242",
        reply,
        &|_| {},
    );
    eprintln!("screen:\n{screen}");
    let home = homes.join("uid-4242");
    let meta = std::fs::metadata(&home).expect("the private home exists");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (4242, 4242, 0o700)
    );
    let onboarding = std::fs::symlink_metadata(home.join(".claude.json"))
        .expect("claude's state is in the private home");
    assert_eq!(onboarding.uid(), 4242);
    assert!(
        home.join(".claude").is_dir(),
        "claude wrote its state directory into the private home"
    );
    let hits = files_containing(&homes, token.as_bytes());
    assert!(hits.is_empty(), "the real token was written to {hits:?}");
    assert!(
        sb.mock
            .message_containing("please reply to uid 4242")
            .is_some(),
        "the typed prompt never reached the mock"
    );
}

/// Issue 12: with `BOTTLE_MAX_TOKENS` spent, the real claude shows the proxy's 429 message to
/// its user within seconds (no retries for minutes), the mock sees nothing of the refused
/// request, and the usage line of the allowed one carries the mock's figures.
#[test]
fn token_budget_spent_claude_shows_the_limit_within_seconds() {
    token_budget_run(false);
}

/// Issue 12, `BOTTLE_LOG_FORMAT=json`: the same run, and every line bottle-init writes is one
/// JSON object; the request lines carry their fields as keys (the usage of claude's request as
/// the mock reported it, the 429 of the refused one).
#[test]
fn json_log_format_every_line_parses_with_the_request_fields() {
    token_budget_run(true);
}

fn token_budget_run(json_logs: bool) {
    let _g = heavy();
    let token = fake_secret("sk-ant-oat01-limit-");
    let reply = "the first answer fits the budget";
    let Some(sb) = sandbox(Cred::OAuth(token.clone()), reply, |_| {}) else {
        return;
    };
    let claude = sb.claude.to_str().unwrap();
    // Two claude runs under one PID 1: the first spends the budget (the mock reports 12 input
    // and 7 output tokens), the second is refused.
    let script = format!(
        "\"{claude}\" -p 'first prompt'; echo \"first-exit=$?\"; \
         start=$(date +%s); \"{claude}\" -p 'second prompt'; echo \"second-exit=$? took=$(( $(date +%s) - start ))\""
    );
    let mut cmd = sb.init_command(&["--", "sh", "-c", &script]);
    cmd.env("BOTTLE_MAX_TOKENS", "19");
    // The same test checks the JSON log format: every line of bottle-init's stderr parses.
    cmd.env(
        "BOTTLE_LOG_FORMAT",
        if json_logs { "json" } else { "human" },
    );
    let run = wait_timeout(sb.spawn(cmd), Duration::from_secs(180));
    let out = run.out();
    assert!(out.contains(reply), "first run: {}", run.describe());
    assert!(out.contains("first-exit=0"), "{}", run.describe());
    assert!(
        out.contains("BOTTLE_MAX_TOKENS=19 reached (19 input and output tokens used"),
        "claude did not show the limit: {}",
        run.describe()
    );
    assert!(out.contains("second-exit=1"), "{}", run.describe());
    let took: u64 = out
        .split("took=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("the script printed took=");
    assert!(
        took < 30,
        "the user waited {took} s to see the limit: {}",
        run.describe()
    );
    // Only the first prompt reached the mock.
    let prompts: Vec<String> = sb
        .mock
        .messages()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(
        prompts.iter().any(|b| b.contains("first prompt")),
        "{prompts:?}"
    );
    assert!(
        !prompts.iter().any(|b| b.contains("second prompt")),
        "the refused request was forwarded"
    );
    let err = run.err();
    if json_logs {
        let lines: Vec<serde_json::Value> = err
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{err}")))
            .collect();
        assert!(lines.len() > 5, "{err}");
        let request = |status: u64, path: &str| {
            lines
                .iter()
                .find(|v| v["status"] == status && v["path"] == path && v["method"] == "POST")
                .unwrap_or_else(|| panic!("no POST {path} {status} line: {err}"))
        };
        let ok = request(200, "/v1/messages");
        for (k, want) in [
            ("tokens_in", 12),
            ("tokens_out", 7),
            ("cache_read", 0),
            ("cache_write", 0),
        ] {
            assert_eq!(ok[k], want, "{k}: {ok}");
        }
        assert!(
            ok["model"].is_string() && ok["in"].as_u64() > Some(0),
            "{ok}"
        );
        assert!(ok["out"].as_u64() > Some(0) && ok["ms"].is_u64(), "{ok}");
        assert!(
            ok["upstream"] == "new" || ok["upstream"] == "reused",
            "{ok}"
        );
        assert_eq!(ok["level"], "info");
        let refused = request(429, "/v1/messages");
        assert_eq!(refused["upstream"], "none");
        assert!(
            refused["note"]
                .as_str()
                .unwrap()
                .contains("BOTTLE_MAX_TOKENS=19"),
            "{refused}"
        );
        assert!(refused["tokens_in"].is_null(), "{refused}");
    } else {
        assert!(
            err.contains("tokens_in=12 tokens_out=7 cache_read=0 cache_write=0"),
            "no usage line with the mock's figures: {err}"
        );
        assert!(err.contains(" 429 ") && err.contains("limited: "), "{err}");
        assert!(err.lines().all(|l| l.starts_with("bottle-init: ")), "{err}");
    }
    assert_absent(
        &format!("{out}{err}"),
        &token,
        "claude's or bottle-init's output",
    );
    sb.assert_home_clean();
}
