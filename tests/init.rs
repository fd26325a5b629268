//! Black-box tests of the init half: the real binary, as PID 1 in
//! `unshare --pid --fork --mount-proc --net` or as a subreaper, run as root.
//! Under CI=true a missing requirement (root, unshare, strace...) fails instead of skipping.

mod init_support;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use init_support::*;

/// The child reports who it is, its environment, what it can read of bottle-init and which
/// sockets are listening; then becomes `cat /proc/self/status` (same credentials, signal
/// state inherited across exec).
const REPORT: &str = r#"
env | sed 's/^/env: /'
for f in environ mem; do
  if head -c1 /proc/$PPID/$f >/dev/null 2>&1; then echo "$f: readable";
  else echo "$f: denied: $(head -c1 /proc/$PPID/$f 2>&1 >/dev/null)"; fi
done
sed 's/^/tcp: /' /proc/net/tcp
echo "ppid: $PPID"
exec cat /proc/self/status
"#;

fn env_of(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("env: "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn check_report(o: &Outcome, tok: &str, world: &World, session_var: &str) {
    o.assert_code(0);
    o.assert_no_secret(tok);
    let out = o.out();
    // Identity and privileges.
    assert_eq!(status_field(&out, "Uid"), Some("1000\t1000\t1000\t1000"), "{}", o.describe());
    assert_eq!(status_field(&out, "Gid"), Some("1000\t1000\t1000\t1000"), "{}", o.describe());
    let mut groups: Vec<&str> = status_field(&out, "Groups").unwrap().split_whitespace().collect();
    groups.sort();
    assert_eq!(groups, vec!["1000", "2345"], "{}", o.describe());
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&out, cap), Some("0000000000000000"), "{cap}\n{}", o.describe());
    }
    assert_eq!(status_field(&out, "NoNewPrivs"), Some("1"), "{}", o.describe());
    assert_eq!(status_field(&out, "SigBlk"), Some("0000000000000000"), "{}", o.describe());
    assert_eq!(status_field(&out, "SigIgn"), Some("0000000000000000"), "{}", o.describe());
    // bottle-init is unreadable to the child.
    for f in ["environ", "mem"] {
        let line = out.lines().find(|l| l.starts_with(&format!("{f}: "))).unwrap();
        assert!(line.contains("denied") && line.contains("Permission denied"), "{line}\n{}", o.describe());
    }
    // Environment.
    let env = env_of(&out);
    let session = get(&env, session_var).unwrap_or_else(|| panic!("no {session_var}\n{}", o.describe()));
    assert!(session.starts_with("bottle-") && session.len() >= 7 + 32, "{session}");
    for k in ["CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"] {
        if k != session_var {
            assert_eq!(get(&env, k), None, "{k}\n{}", o.describe());
        }
    }
    assert!(env.iter().all(|(k, _)| !k.starts_with("BOTTLE_")), "{}", o.describe());
    assert_eq!(get(&env, "HOME"), Some(world.home().to_str().unwrap()));
    assert_eq!(get(&env, "USER"), Some("tester"));
    assert_eq!(get(&env, "LOGNAME"), Some("tester"));
    assert_eq!(get(&env, "SHELL"), Some("/bin/sh"));
    assert_eq!(get(&env, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"), Some("1"));
    assert_eq!(get(&env, "ENABLE_TOOL_SEARCH"), Some("auto"));
    assert_eq!(get(&env, "MARKER"), Some("kept"));
    // The base URL is the proxy's real, listening port.
    let url = get(&env, "ANTHROPIC_BASE_URL").unwrap();
    let port: u16 = url.strip_prefix("http://127.0.0.1:").unwrap().parse().unwrap();
    assert_ne!(port, 0);
    let listen = format!("0100007F:{port:04X} 00000000:0000 0A");
    assert!(out.lines().any(|l| l.starts_with("tcp: ") && l.contains(&listen)), "port {port} not listening\n{}", o.describe());
}

#[test]
fn child_runs_dropped_with_clean_env_as_pid1() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let o = run(
        &w,
        Opts::new(true, &["sh", "-c", REPORT]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok).env("MARKER", "kept").env("BOTTLE_USER", "tester"),
    );
    check_report(&o, &tok, &w, "CLAUDE_CODE_OAUTH_TOKEN");
    assert!(o.out().contains("ppid: 1\n"), "bottle-init is not PID 1\n{}", o.describe());
}

#[test]
fn child_runs_dropped_with_clean_env_as_subreaper_api_key_mode() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = format!("sk-ant-api03-TESTTOKEN-{}", random_hex(12));
    // Default user (uid 1000), an ANTHROPIC_AUTH_TOKEN in the parent that must not pass.
    let o = run(
        &w,
        Opts::new(false, &["--", "sh", "-c", REPORT])
            .env("ANTHROPIC_API_KEY", &tok)
            .env("ANTHROPIC_AUTH_TOKEN", &tok)
            .env("MARKER", "kept"),
    );
    check_report(&o, &tok, &w, "ANTHROPIC_AUTH_TOKEN");
}

#[test]
fn token_file_is_read_and_warned_about_when_child_readable() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let f = w.path().join("token");
    std::fs::write(&f, format!("{tok}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let opts = |w: &World| {
        Opts::new(true, &["sh", "-c", REPORT])
            .env("BOTTLE_TOKEN_FILE", f.to_str().unwrap())
            .env("MARKER", "kept")
    };
    let o = run(&w, opts(&w));
    check_report(&o, &tok, &w, "CLAUDE_CODE_OAUTH_TOKEN");
    assert!(!o.err().contains("readable by the child"), "{}", o.describe());
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&w, opts(&w));
    check_report(&o, &tok, &w, "CLAUDE_CODE_OAUTH_TOKEN");
    assert!(o.err().contains("readable by the child user"), "{}", o.describe());
}

/// Each start-up error: one line `bottle-init: error: ...; ...`, the documented code, no secret.
#[test]
fn startup_errors_are_one_clear_line_with_sysexits_codes() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let missing = w.path().join("no-such-token");
    let cases: Vec<(Opts, i32, &str)> = vec![
        (Opts::new(false, &["--frobnicate"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok), 64, "--frobnicate"),
        (Opts::new(false, &["true"]), 78, "CLAUDE_CODE_OAUTH_TOKEN"),
        (Opts::new(false, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok).env("ANTHROPIC_API_KEY", &tok), 78, "more than one"),
        (Opts::new(false, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok).env("BOTTLE_TOKEN_FILE", "/x"), 78, "more than one"),
        (Opts::new(false, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok).env("BOTTLE_USER", "nosuchuser"), 78, "BOTTLE_USER"),
        (Opts::new(false, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok).env("BOTTLE_USER", "root"), 78, "BOTTLE_USER"),
        (Opts::new(false, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok).env("BOTTLE_UPSTREAM", "http://x"), 78, "BOTTLE_UPSTREAM"),
        (Opts::new(false, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok).env("BOTTLE_LISTEN", "nope"), 78, "BOTTLE_LISTEN"),
        (Opts::new(false, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok).env("BOTTLE_GRACE", "forever"), 78, "BOTTLE_GRACE"),
        (Opts::new(false, &["true"]).env("BOTTLE_TOKEN_FILE", missing.to_str().unwrap()), 78, "BOTTLE_TOKEN_FILE"),
        (Opts::new(false, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok).env("BOTTLE_UPSTREAM_CA", missing.to_str().unwrap()), 78, "BOTTLE_UPSTREAM_CA"),
        (Opts::new(false, &["no-such-command-xyz"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok), 127, "no-such-command-xyz"),
        (Opts::new(false, &["/etc/passwd"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok), 126, "/etc/passwd"),
        (Opts::new(false, &["exec", "true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok), 69, "no running bottle-init"),
    ];
    for (opts, code, needle) in cases {
        let o = run(&w, opts);
        o.assert_code(code);
        o.assert_no_secret(&tok);
        let err = o.err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{}", o.describe());
        assert!(lines[0].starts_with("bottle-init: error: ") && lines[0].contains("; "), "{}", o.describe());
        assert!(lines[0].contains(needle), "{needle}\n{}", o.describe());
    }
}

#[test]
fn not_root_and_missing_capability_exit_77() {
    if !require_root() {
        return;
    }
    assert!(which("setpriv").is_some() || std::env::var("CI").as_deref() != Ok("true"), "setpriv missing");
    let tok = token();
    let cases: [(&[&str], &str); 2] = [
        (&["--reuid=1000", "--regid=1000", "--clear-groups"], "must start as root"),
        (&["--bounding-set=-kill", "--inh-caps=-all"], "CAP_KILL"),
    ];
    for (setpriv_args, needle) in cases {
        let o = std::process::Command::new("setpriv")
            .args(setpriv_args)
            .args([BIN, "true"])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(77), "{err}");
        assert!(err.starts_with("bottle-init: error: ") && err.contains(needle), "{err}");
        assert!(!err.contains(&tok) && !String::from_utf8_lossy(&o.stdout).contains(&tok));
    }
}

#[test]
fn help_and_version() {
    let o = std::process::Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    for word in ["CLAUDE_CODE_OAUTH_TOKEN", "BOTTLE_TOKEN_FILE", "BOTTLE_GRACE", "exec", "Exit status"] {
        assert!(help.contains(word), "{word}: {help}");
    }
    let o = std::process::Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("bottle-init {}", env!("CARGO_PKG_VERSION")));
}

/// Root's view while it runs: bottle-init's /proc/PID/environ no longer holds the token, nor
/// does the child's memory; bottle-init kept only CAP_KILL.
#[test]
fn root_cannot_find_the_token_in_environ_or_child_memory() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let opts = Opts::new(true, &["sh", "-c", "echo ready; read x; echo bye"])
        .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
        .env("MARKER", "present");
    let mut c = command(&w, &opts);
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    lines.expect("ready", Duration::from_secs(10));
    let init = wait_for_child(child.id(), "bottle-init", Duration::from_secs(5));
    let sh = wait_for_child(init, "sh", Duration::from_secs(5));

    let environ = std::fs::read(format!("/proc/{init}/environ")).unwrap();
    assert!(contains(&environ, b"MARKER=present"), "positive control: environ readable as root");
    assert!(contains(&environ, b"CLAUDE_CODE_OAUTH_TOKEN="), "the name stays, the value is wiped");
    assert!(!contains(&environ, tok.as_bytes()), "token in bottle-init's /proc/PID/environ");
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert_eq!(status_field(&status, "CapEff"), Some("0000000000000020"), "only CAP_KILL");
    assert_eq!(status_field(&status, "CapPrm"), Some("0000000000000020"));
    assert_eq!(status_field(&status, "CapBnd"), Some("0000000000000000"));
    assert_eq!(status_field(&status, "NoNewPrivs"), Some("1"));
    assert_eq!(std::fs::metadata(format!("/proc/{init}")).unwrap().uid(), 0);

    let child_environ = std::fs::read(format!("/proc/{sh}/environ")).unwrap();
    assert!(contains(&child_environ, b"CLAUDE_CODE_OAUTH_TOKEN=bottle-"));
    assert!(!contains(&child_environ, tok.as_bytes()));
    let mem = read_memory(sh);
    assert!(contains(&mem, b"CLAUDE_CODE_OAUTH_TOKEN=bottle-"), "positive control: the child's env is in its memory");
    assert!(!contains(&mem, tok.as_bytes()), "token in the child's memory");

    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    lines.expect("bye", Duration::from_secs(5));
    let st = wait_timeout(&mut child, Duration::from_secs(10), "root-side run");
    let err = err.join().unwrap();
    assert_eq!(st.code(), Some(0), "{}", String::from_utf8_lossy(&err));
    assert!(!contains(&err, tok.as_bytes()));
    assert!(lines.seen.iter().all(|l| !l.contains(&tok)));
}

#[test]
fn all_256_exit_codes_pass_through() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    // Subreaper mode keeps 256 runs fast; PID-1 mode is covered for a sample below.
    for code in 0..=255 {
        let o = run(&w, Opts::new(false, &["sh", "-c", &format!("exit {code}")]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok));
        o.assert_code(code);
        o.assert_no_secret(&tok);
        assert!(o.stderr.is_empty(), "{}", o.describe());
    }
    for code in [0, 1, 2, 42, 126, 127, 128, 255] {
        let o = run(&w, Opts::new(true, &["sh", "-c", &format!("exit {code}")]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok));
        o.assert_code(code);
    }
}

#[test]
fn death_by_signal_n_exits_128_plus_n() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    for (name, n) in [("HUP", 1), ("INT", 2), ("QUIT", 3), ("KILL", 9), ("USR1", 10), ("SEGV", 11), ("TERM", 15)] {
        for pid1 in [false, true] {
            let o = run(&w, Opts::new(pid1, &["sh", "-c", &format!("kill -{name} $$")]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok));
            o.assert_code(128 + n);
        }
    }
}

/// The forwardable signals (not SIGCHLD, SIGTTIN, SIGTTOU; SIGKILL/SIGSTOP cannot be caught)
/// sent to PID 1 from outside the namespace reach the child.
#[test]
fn signals_sent_to_pid1_reach_the_child() {
    if !require_root() {
        return;
    }
    let sigs = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("WINCH", libc::SIGWINCH),
        ("URG", libc::SIGURG),
        ("CONT", libc::SIGCONT),
        ("PWR", libc::SIGPWR),
        ("XCPU", libc::SIGXCPU),
        ("TERM", libc::SIGTERM),
    ];
    let traps: String = sigs.iter().map(|(n, _)| format!("trap 'echo got {n}' {n}; ")).collect();
    let script = format!("{traps} echo ready; while :; do sleep 0.02; done");
    let w = World::new();
    let tok = token();
    let opts = Opts::new(true, &["sh", "-c", &script]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok);
    let mut child = command(&w, &opts).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    lines.expect("ready", Duration::from_secs(10));
    let init = wait_for_child(child.id(), "bottle-init", Duration::from_secs(5));
    for (name, sig) in sigs {
        // SAFETY: kill with a pid we found as our own descendant.
        assert_eq!(unsafe { libc::kill(init as i32, sig) }, 0);
        lines.expect(&format!("got {name}"), Duration::from_secs(5));
    }
    // SIGTERM was trapped; stop it for real.
    // SAFETY: as above.
    unsafe { libc::kill(init as i32, libc::SIGKILL) };
    wait_timeout(&mut child, Duration::from_secs(10), "signals");
}

#[test]
fn sigterm_to_pid1_ends_with_143() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let opts = Opts::new(true, &["sh", "-c", "echo ready; sleep 100"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok);
    let mut child = command(&w, &opts).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    lines.expect("ready", Duration::from_secs(10));
    let init = wait_for_child(child.id(), "bottle-init", Duration::from_secs(5));
    let start = Instant::now();
    // SAFETY: our descendant's pid.
    assert_eq!(unsafe { libc::kill(init as i32, libc::SIGTERM) }, 0);
    let st = wait_timeout(&mut child, Duration::from_secs(10), "sigterm");
    assert_eq!(st.code(), Some(143), "{}", String::from_utf8_lossy(&err.join().unwrap()));
    // The orphaned `sleep` got SIGTERM too and obeyed: no grace period was needed.
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
}

/// Hundreds of orphans re-parented to PID 1 are all reaped: none is left as a zombie.
#[test]
fn orphans_are_reaped_without_zombies() {
    if !require_root() {
        return;
    }
    let script = r#"
i=0; while [ $i -lt 300 ]; do (sleep 1 &); i=$((i+1)); done
n=0; for f in /proc/[0-9]*/stat; do read -r l < $f 2>/dev/null || continue; set -- ${l##*) }; [ "$2" = 1 ] && n=$((n+1)); done
echo "adopted=$n"
sleep 2.5
z=0; for f in /proc/[0-9]*/stat; do read -r l < $f 2>/dev/null || continue; set -- ${l##*) }; [ "$1" = Z ] && z=$((z+1)); done
echo "zombies=$z"
"#;
    let w = World::new();
    let tok = token();
    let o = run(&w, Opts::new(true, &["sh", "-c", script]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok));
    o.assert_code(0);
    let out = o.out();
    let num = |k: &str| -> u32 {
        out.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_else(|| panic!("{}", o.describe())).parse().unwrap()
    };
    // Positive control: the orphans really were PID 1's (sh itself counts as one).
    assert!(num("adopted=") > 100, "{}", o.describe());
    assert_eq!(num("zombies="), 0, "{}", o.describe());
}

/// After the main child exits: leftovers get SIGTERM; those ignoring it get SIGKILL after
/// BOTTLE_GRACE; the exit status is still the main child's.
#[test]
fn leftovers_get_sigterm_then_sigkill_after_grace() {
    if !require_root() {
        return;
    }
    let script = r#"
(trap 'echo polite-got-TERM; exit 0' TERM; while :; do sleep 0.05; done) &
(trap '' TERM; while :; do sleep 0.05; done) &
sleep 0.3; echo main-exits; exit 3
"#;
    let w = World::new();
    let tok = token();
    for pid1 in [true, false] {
        let o = run(
            &w,
            Opts::new(pid1, &["sh", "-c", script]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok).env("BOTTLE_GRACE", "1.5"),
        );
        o.assert_code(3);
        assert!(o.out().contains("polite-got-TERM"), "{}", o.describe());
        assert!(o.elapsed >= Duration::from_millis(1700), "SIGKILL before the grace ended\n{}", o.describe());
        assert!(o.elapsed < Duration::from_secs(6), "no SIGKILL after the grace\n{}", o.describe());
        assert!(o.err().contains("SIGKILL"), "{}", o.describe());
    }
    // Only polite leftovers: no waiting for the grace period.
    let o = run(
        &w,
        Opts::new(true, &["sh", "-c", "(while :; do sleep 0.05; done) & sleep 0.2; exit 4"])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
            .env("BOTTLE_GRACE", "8"),
    );
    o.assert_code(4);
    assert!(o.elapsed < Duration::from_secs(4), "{}", o.describe());
}

#[test]
fn stdin_and_stdout_bytes_pass_through_unchanged() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let mut data = vec![0u8; 1 << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact_compat(&mut data);
    for pid1 in [false, true] {
        let mut opts = Opts::new(pid1, &["cat"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok);
        opts.stdin = Some(data.clone());
        let o = run(&w, opts);
        o.assert_code(0);
        assert!(o.stdout == data, "stdout differs ({} bytes)", o.stdout.len());
        assert!(o.stderr.is_empty(), "{}", o.err());
    }
}

trait ReadExact {
    fn read_exact_compat(&mut self, buf: &mut [u8]);
}
impl ReadExact for std::fs::File {
    fn read_exact_compat(&mut self, buf: &mut [u8]) {
        std::io::Read::read_exact(self, buf).unwrap();
    }
}

/// First run: `~/.claude.json` is created (owned by the child, 0600); an existing file is
/// never modified; a planted symlink is never followed.
#[test]
fn onboarding_file_created_once_never_modified_never_through_symlink() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let f = w.home().join(".claude.json");
    let o = run(&w, Opts::new(true, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok));
    o.assert_code(0);
    let md = std::fs::symlink_metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (TEST_UID, TEST_UID, 0o600));
    let v = std::fs::read_to_string(&f).unwrap();
    assert_eq!(v.trim(), r#"{"hasCompletedOnboarding": true}"#);

    std::fs::write(&f, "{\"mine\": 1}").unwrap();
    let o = run(&w, Opts::new(true, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok));
    o.assert_code(0);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "{\"mine\": 1}");

    std::fs::remove_file(&f).unwrap();
    let target = w.path().join("root-owned-target");
    std::fs::write(&target, "precious").unwrap();
    std::os::unix::fs::symlink(&target, &f).unwrap();
    let o = run(&w, Opts::new(true, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok));
    o.assert_code(0);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(&f).unwrap().file_type().is_symlink());
}
