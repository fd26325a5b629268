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
    assert_eq!(
        status_field(&out, "Uid"),
        Some("1000\t1000\t1000\t1000"),
        "{}",
        o.describe()
    );
    assert_eq!(
        status_field(&out, "Gid"),
        Some("1000\t1000\t1000\t1000"),
        "{}",
        o.describe()
    );
    let mut groups: Vec<&str> = status_field(&out, "Groups")
        .unwrap()
        .split_whitespace()
        .collect();
    groups.sort();
    assert_eq!(groups, vec!["1000", "2345"], "{}", o.describe());
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(&out, cap),
            Some("0000000000000000"),
            "{cap}\n{}",
            o.describe()
        );
    }
    assert_eq!(
        status_field(&out, "NoNewPrivs"),
        Some("1"),
        "{}",
        o.describe()
    );
    assert_eq!(
        status_field(&out, "SigBlk"),
        Some("0000000000000000"),
        "{}",
        o.describe()
    );
    assert_eq!(
        status_field(&out, "SigIgn"),
        Some("0000000000000000"),
        "{}",
        o.describe()
    );
    // bottle-init is unreadable to the child.
    for f in ["environ", "mem"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{f}: ")))
            .unwrap();
        assert!(
            line.contains("denied") && line.contains("Permission denied"),
            "{line}\n{}",
            o.describe()
        );
    }
    // Environment.
    let env = env_of(&out);
    let session =
        get(&env, session_var).unwrap_or_else(|| panic!("no {session_var}\n{}", o.describe()));
    assert!(
        session.starts_with("bottle-") && session.len() >= 7 + 32,
        "{session}"
    );
    for k in [
        "CLAUDE_CODE_OAUTH_TOKEN",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_API_KEY",
    ] {
        if k != session_var {
            assert_eq!(get(&env, k), None, "{k}\n{}", o.describe());
        }
    }
    assert!(
        env.iter().all(|(k, _)| !k.starts_with("BOTTLE_")),
        "{}",
        o.describe()
    );
    assert_eq!(get(&env, "HOME"), Some(world.home().to_str().unwrap()));
    assert_eq!(get(&env, "USER"), Some("tester"));
    assert_eq!(get(&env, "LOGNAME"), Some("tester"));
    assert_eq!(get(&env, "SHELL"), Some("/bin/sh"));
    assert_eq!(
        get(&env, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"),
        Some("1")
    );
    assert_eq!(get(&env, "ENABLE_TOOL_SEARCH"), Some("auto"));
    assert_eq!(get(&env, "MARKER"), Some("kept"));
    // The base URL is the proxy's real, listening port.
    let url = get(&env, "ANTHROPIC_BASE_URL").unwrap();
    let port: u16 = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(port, 0);
    let listen = format!("0100007F:{port:04X} 00000000:0000 0A");
    assert!(
        out.lines()
            .any(|l| l.starts_with("tcp: ") && l.contains(&listen)),
        "port {port} not listening\n{}",
        o.describe()
    );
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
        Opts::new(true, &["sh", "-c", REPORT])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
            .env("MARKER", "kept")
            .env("BOTTLE_USER", "tester"),
    );
    check_report(&o, &tok, &w, "CLAUDE_CODE_OAUTH_TOKEN");
    assert!(
        o.out().contains("ppid: 1\n"),
        "bottle-init is not PID 1\n{}",
        o.describe()
    );
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
    let opts = || {
        Opts::new(true, &["sh", "-c", REPORT])
            .env("BOTTLE_TOKEN_FILE", f.to_str().unwrap())
            .env("MARKER", "kept")
    };
    let o = run(&w, opts());
    check_report(&o, &tok, &w, "CLAUDE_CODE_OAUTH_TOKEN");
    assert!(
        !o.err().contains("readable by the child"),
        "{}",
        o.describe()
    );
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&w, opts());
    check_report(&o, &tok, &w, "CLAUDE_CODE_OAUTH_TOKEN");
    assert!(
        o.err().contains("readable by the child user"),
        "{}",
        o.describe()
    );
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
    let empty = w.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cases: Vec<(Opts, i32, &str)> = vec![
        (
            Opts::new(false, &["--frobnicate"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
            64,
            "--frobnicate",
        ),
        (Opts::new(false, &["true"]), 78, "CLAUDE_CODE_OAUTH_TOKEN"),
        (
            Opts::new(false, &["true"])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("ANTHROPIC_API_KEY", &tok),
            78,
            "more than one",
        ),
        (
            Opts::new(false, &["true"])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("BOTTLE_TOKEN_FILE", "/x"),
            78,
            "more than one",
        ),
        (
            Opts::new(false, &["true"])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("BOTTLE_USER", "nosuchuser"),
            78,
            "BOTTLE_USER",
        ),
        (
            Opts::new(false, &["true"])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("BOTTLE_USER", "root"),
            78,
            "BOTTLE_USER",
        ),
        (
            Opts::new(false, &["true"])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("BOTTLE_UPSTREAM", "http://x"),
            78,
            "BOTTLE_UPSTREAM",
        ),
        (
            Opts::new(false, &["true"])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("BOTTLE_LISTEN", "nope"),
            78,
            "BOTTLE_LISTEN",
        ),
        (
            Opts::new(false, &["true"])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("BOTTLE_GRACE", "forever"),
            78,
            "BOTTLE_GRACE",
        ),
        (
            Opts::new(false, &["true"]).env("BOTTLE_TOKEN_FILE", missing.to_str().unwrap()),
            78,
            "BOTTLE_TOKEN_FILE",
        ),
        (
            Opts::new(false, &["true"])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("BOTTLE_UPSTREAM_CA", missing.to_str().unwrap()),
            78,
            "BOTTLE_UPSTREAM_CA",
        ),
        (
            // Not an address of this (namespaced) host: bind fails.
            Opts::new(false, &["true"])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("BOTTLE_LISTEN", "192.0.2.1:0"),
            78,
            "BOTTLE_LISTEN",
        ),
        (
            Opts::new(false, &["true"]).env("BOTTLE_TOKEN_FILE", empty.to_str().unwrap()),
            78,
            "is empty",
        ),
        (
            Opts::new(false, &["no-such-command-xyz"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
            127,
            "no-such-command-xyz",
        ),
        (
            Opts::new(false, &["/etc/passwd"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
            126,
            "/etc/passwd",
        ),
        (
            Opts::new(false, &["exec", "true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
            69,
            "no running bottle-init",
        ),
    ];
    for (opts, code, needle) in cases {
        let o = run(&w, opts);
        o.assert_code(code);
        o.assert_no_secret(&tok);
        let err = o.err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{}", o.describe());
        assert!(
            lines[0].starts_with("bottle-init: error: ") && lines[0].contains("; "),
            "{}",
            o.describe()
        );
        assert!(lines[0].contains(needle), "{needle}\n{}", o.describe());
    }
}

#[test]
fn not_root_and_missing_capability_exit_77() {
    if !require_root() {
        return;
    }
    assert!(
        which("setpriv").is_some() || std::env::var("CI").as_deref() != Ok("true"),
        "setpriv missing"
    );
    let tok = token();
    let cases: [(&[&str], &[&str], &str); 4] = [
        (
            &["--reuid=1000", "--regid=1000", "--clear-groups"],
            &["true"],
            "must start as root",
        ),
        (
            &["--reuid=1000", "--regid=1000", "--clear-groups"],
            &["exec", "true"],
            "docker exec",
        ),
        (
            &["--bounding-set=-kill", "--inh-caps=-all"],
            &["true"],
            "CAP_KILL",
        ),
        (
            &["--bounding-set=-setuid,-setgid", "--inh-caps=-all"],
            &["exec", "true"],
            "CAP_SETUID, CAP_SETGID",
        ),
    ];
    for (setpriv_args, args, needle) in cases {
        let o = std::process::Command::new("setpriv")
            .args(setpriv_args)
            .arg(bin())
            .args(args)
            .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(77), "{err}");
        assert!(
            err.starts_with("bottle-init: error: ") && err.contains(needle),
            "{err}"
        );
        assert!(!err.contains(&tok) && !String::from_utf8_lossy(&o.stdout).contains(&tok));
    }
}

#[test]
fn help_and_version() {
    let o = std::process::Command::new(bin())
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    for word in [
        "CLAUDE_CODE_OAUTH_TOKEN",
        "BOTTLE_TOKEN_FILE",
        "BOTTLE_GRACE",
        "exec",
        "Exit status",
    ] {
        assert!(help.contains(word), "{word}: {help}");
    }
    let o = std::process::Command::new(bin())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    // The version, then the commit when the build knew it (tests/version.rs pins that part).
    let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let want = format!("bottle-init {}", env!("CARGO_PKG_VERSION"));
    assert!(
        line == want || line.starts_with(&format!("{want} (")),
        "{line}"
    );
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
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    lines.expect("ready", Duration::from_secs(10));
    let init = wait_for_child(child.id(), "bottle-init", Duration::from_secs(5));
    let sh = wait_for_child(init, "sh", Duration::from_secs(5));

    let environ = std::fs::read(format!("/proc/{init}/environ")).unwrap();
    assert!(
        contains(&environ, b"MARKER=present"),
        "positive control: environ readable as root"
    );
    assert!(
        contains(&environ, b"CLAUDE_CODE_OAUTH_TOKEN="),
        "the name stays, the value is wiped"
    );
    assert!(
        !contains(&environ, tok.as_bytes()),
        "token in bottle-init's /proc/PID/environ"
    );
    // The child may print before the parent has dropped; the proxy thread is started right
    // after the drop, so once it exists the parent's final state must show.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
        if status_field(&status, "Threads") != Some("1") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        status_field(&status, "CapEff"),
        Some("0000000000000020"),
        "only CAP_KILL"
    );
    assert_eq!(status_field(&status, "CapPrm"), Some("0000000000000020"));
    assert_eq!(status_field(&status, "CapBnd"), Some("0000000000000000"));
    assert_eq!(status_field(&status, "NoNewPrivs"), Some("1"));
    assert_eq!(std::fs::metadata(format!("/proc/{init}")).unwrap().uid(), 0);

    let child_environ = std::fs::read(format!("/proc/{sh}/environ")).unwrap();
    assert!(contains(&child_environ, b"CLAUDE_CODE_OAUTH_TOKEN=bottle-"));
    assert!(!contains(&child_environ, tok.as_bytes()));
    let mem = read_memory(sh);
    assert!(
        contains(&mem, b"CLAUDE_CODE_OAUTH_TOKEN=bottle-"),
        "positive control: the child's env is in its memory"
    );
    assert!(
        !contains(&mem, tok.as_bytes()),
        "token in the child's memory"
    );

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
        let o = run(
            &w,
            Opts::new(false, &["sh", "-c", &format!("exit {code}")])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("BOTTLE_LOG", "warn"),
        );
        o.assert_code(code);
        o.assert_no_secret(&tok);
        // Nothing to warn about in a normal run (info lines are filtered out here).
        assert!(o.stderr.is_empty(), "{}", o.describe());
    }
    for code in [0, 1, 2, 42, 126, 127, 128, 255] {
        let o = run(
            &w,
            Opts::new(true, &["sh", "-c", &format!("exit {code}")])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
        );
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
    for (name, n) in [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("TERM", 15),
    ] {
        for pid1 in [false, true] {
            let o = run(
                &w,
                Opts::new(pid1, &["sh", "-c", &format!("kill -{name} $$")])
                    .env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
            );
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
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("XFSZ", libc::SIGXFSZ),
        ("SYS", libc::SIGSYS),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("ILL", libc::SIGILL),
        ("SEGV", libc::SIGSEGV),
        ("16", libc::SIGSTKFLT),
        ("TSTP", libc::SIGTSTP),
        ("34", 34),
        ("50", 50),
        ("64", 64),
        ("TERM", libc::SIGTERM),
    ];
    let traps: String = sigs
        .iter()
        .map(|(n, _)| format!("trap 'echo got {n}' {n}; "))
        .collect();
    let script = format!("{traps} echo ready; while :; do sleep 0.02; done");
    let w = World::new();
    let tok = token();
    let opts = Opts::new(true, &["sh", "-c", &script]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok);
    let mut child = command(&w, &opts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    lines.expect("ready", Duration::from_secs(10));
    let init = wait_for_child(child.id(), "bottle-init", Duration::from_secs(5));
    for (name, sig) in sigs {
        // SAFETY: kill with a pid we found as our own descendant.
        assert_eq!(unsafe { libc::kill(init as i32, sig) }, 0);
        lines.expect(&format!("got {name}"), Duration::from_secs(5));
    }
    // Signal 33 is one libc keeps for itself (the shell cannot trap it, so it dies of it):
    // bottle-init must have it blocked like any other and forward it; exit 128+33.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(init as i32, 33) }, 0);
    let st = wait_timeout(&mut child, Duration::from_secs(10), "signals");
    assert_eq!(st.code(), Some(128 + 33), "{:?}", lines.seen);
    assert!(!contains(&err.join().unwrap(), tok.as_bytes()));
    assert!(lines.seen.iter().all(|l| !l.contains(&tok)));
}

#[test]
fn sigterm_to_pid1_ends_with_143() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let opts = Opts::new(true, &["sh", "-c", "echo ready; sleep 100"])
        .env("CLAUDE_CODE_OAUTH_TOKEN", &tok);
    let mut child = command(&w, &opts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    lines.expect("ready", Duration::from_secs(10));
    let init = wait_for_child(child.id(), "bottle-init", Duration::from_secs(5));
    let start = Instant::now();
    // SAFETY: our descendant's pid.
    assert_eq!(unsafe { libc::kill(init as i32, libc::SIGTERM) }, 0);
    let st = wait_timeout(&mut child, Duration::from_secs(10), "sigterm");
    let err = err.join().unwrap();
    assert_eq!(st.code(), Some(143), "{}", String::from_utf8_lossy(&err));
    assert!(!contains(&err, tok.as_bytes()));
    assert!(lines.seen.iter().all(|l| !l.contains(&tok)));
    // The orphaned `sleep` got SIGTERM too and obeyed: no grace period was needed.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
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
    let o = run(
        &w,
        Opts::new(true, &["sh", "-c", script]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
    );
    o.assert_code(0);
    let out = o.out();
    let num = |k: &str| -> u32 {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{}", o.describe()))
            .parse()
            .unwrap()
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
            Opts::new(pid1, &["sh", "-c", script])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env("BOTTLE_GRACE", "1.5"),
        );
        o.assert_code(3);
        assert!(o.out().contains("polite-got-TERM"), "{}", o.describe());
        assert!(
            o.elapsed >= Duration::from_millis(1700),
            "SIGKILL before the grace ended\n{}",
            o.describe()
        );
        assert!(
            o.elapsed < Duration::from_secs(6),
            "no SIGKILL after the grace\n{}",
            o.describe()
        );
        assert!(o.err().contains("SIGKILL"), "{}", o.describe());
    }
    // Only polite leftovers: no waiting for the grace period.
    let o = run(
        &w,
        Opts::new(
            true,
            &[
                "sh",
                "-c",
                "(while :; do sleep 0.05; done) & sleep 0.2; exit 4",
            ],
        )
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
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact_compat(&mut data);
    for pid1 in [false, true] {
        let mut opts = Opts::new(pid1, &["cat"])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
            .env("BOTTLE_LOG", "warn");
        opts.stdin = Some(data.clone());
        let o = run(&w, opts);
        o.assert_code(0);
        assert!(
            o.stdout == data,
            "stdout differs ({} bytes)",
            o.stdout.len()
        );
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
    let o = run(
        &w,
        Opts::new(true, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
    );
    o.assert_code(0);
    let md = std::fs::symlink_metadata(&f).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o777),
        (TEST_UID, TEST_UID, 0o600)
    );
    let v = std::fs::read_to_string(&f).unwrap();
    assert_eq!(v.trim(), r#"{"hasCompletedOnboarding": true}"#);

    std::fs::write(&f, "{\"mine\": 1}").unwrap();
    let o = run(
        &w,
        Opts::new(true, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
    );
    o.assert_code(0);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "{\"mine\": 1}");

    std::fs::remove_file(&f).unwrap();
    let target = w.path().join("root-owned-target");
    std::fs::write(&target, "precious").unwrap();
    std::os::unix::fs::symlink(&target, &f).unwrap();
    let o = run(
        &w,
        Opts::new(true, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
    );
    o.assert_code(0);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    assert!(
        std::fs::symlink_metadata(&f)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A dangling link into a directory the child may write: still not followed.
    std::fs::remove_file(&f).unwrap();
    let dangling = w.home().join("created-through-link");
    std::os::unix::fs::symlink(&dangling, &f).unwrap();
    let o = run(
        &w,
        Opts::new(false, &["true"]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok),
    );
    o.assert_code(0);
    assert!(!dangling.exists(), "created through a symlink");
}

// ------------------------------------------------------------------------------------------
// strace: the order of the sequence, and where the token appears
// ------------------------------------------------------------------------------------------

/// One strace -f line: pid and the rest.
struct Trace {
    lines: Vec<(u32, String)>,
}

impl Trace {
    fn load(path: &std::path::Path) -> Trace {
        let text = std::fs::read_to_string(path).unwrap();
        let lines = text
            .lines()
            .filter_map(|l| {
                let (pid, rest) = l.split_once(' ')?;
                Some((pid.parse().ok()?, rest.trim_start().to_string()))
            })
            .collect();
        Trace { lines }
    }
    /// Index of the first line of `pid` (any pid if None) starting with `prefix`.
    fn find(&self, pid: Option<u32>, prefix: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|(p, l)| pid.is_none_or(|x| x == *p) && l.starts_with(prefix))
    }
    fn must(&self, pid: Option<u32>, prefix: &str) -> usize {
        self.find(pid, prefix)
            .unwrap_or_else(|| panic!("no {prefix} for {pid:?} in trace:\n{}", self.dump()))
    }
    /// First open of a path starting with `path` by `pid` (glibc uses openat, musl open).
    fn must_open(&self, pid: u32, path: &str) -> usize {
        let a = self.find(Some(pid), &format!("openat(AT_FDCWD, \"{path}"));
        let b = self.find(Some(pid), &format!("open(\"{path}"));
        match (a, b) {
            (Some(x), Some(y)) => x.min(y),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => panic!("no open of {path} by {pid}:\n{}", self.dump()),
        }
    }
    fn dump(&self) -> String {
        self.lines
            .iter()
            .map(|(p, l)| format!("{p} {l}\n"))
            .collect()
    }
    fn lines_with(&self, needle: &str) -> Vec<usize> {
        (0..self.lines.len())
            .filter(|&i| self.lines[i].1.contains(needle))
            .collect()
    }
}

fn require_strace() -> bool {
    if which("strace").is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "strace missing and CI=true"
    );
    eprintln!("SKIPPED: strace missing");
    false
}

/// The child's drop happens in order before its execve, which carries the session secret and
/// not the token.
fn assert_child_drop_order(t: &Trace, pid: u32, tok: &str) {
    let groups = t.must(Some(pid), "setgroups(");
    let gid = t.must(Some(pid), "setresgid(");
    let uid = t.must(Some(pid), "setresuid(");
    let nnp = t.must(Some(pid), "prctl(PR_SET_NO_NEW_PRIVS");
    // The first execve after bottle-init's own (line 0, in exec mode the same pid).
    let exec = (1..t.lines.len())
        .find(|&i| t.lines[i].0 == pid && t.lines[i].1.starts_with("execve("))
        .unwrap_or_else(|| panic!("no execve by {pid}:\n{}", t.dump()));
    assert!(
        groups < gid && gid < uid && uid < nnp && nnp < exec,
        "drop order wrong:\n{}",
        t.dump()
    );
    assert!(
        t.lines[groups].1.contains("[1000, 2345]") || t.lines[groups].1.contains("[1000,2345]"),
        "{}",
        t.lines[groups].1
    );
    assert!(
        t.lines[gid].1.starts_with("setresgid(1000, 1000, 1000)"),
        "{}",
        t.lines[gid].1
    );
    assert!(
        t.lines[uid].1.starts_with("setresuid(1000, 1000, 1000)"),
        "{}",
        t.lines[uid].1
    );
    let exec_line = &t.lines[exec].1;
    assert!(
        exec_line.contains("CLAUDE_CODE_OAUTH_TOKEN=bottle-"),
        "{exec_line}"
    );
    assert!(!exec_line.contains(tok));
}

#[test]
fn strace_order_and_token_only_in_the_first_execve() {
    if !require_root() || !require_strace() {
        return;
    }
    let w = World::new();
    let tok = token();
    let trace_path = w.path().join("trace");
    let mut opts = Opts::new(
        false,
        &["sh", "-c", "cat /proc/self/status >/dev/null; exit 0"],
    )
    .env("CLAUDE_CODE_OAUTH_TOKEN", &tok);
    opts.strace = Some(trace_path.clone());
    let o = run(&w, opts);
    o.assert_code(0);
    o.assert_no_secret(&tok);
    let t = Trace::load(&trace_path);
    assert!(t.lines.len() > 20, "{}", t.dump());
    let main = t.lines[0].0;
    assert!(
        t.lines[0].1.starts_with(&format!("execve(\"{}\"", bin())),
        "{}",
        t.lines[0].1
    );

    // Nothing contacts the upstream (or anything else) at start-up.
    assert_eq!(
        t.find(None, "connect("),
        None,
        "a connect() at start-up:\n{}",
        t.dump()
    );

    // The token: only in bottle-init's own execve (its envp).
    assert_eq!(
        t.lines_with(&tok),
        vec![0],
        "token in a traced syscall:\n{}",
        t.dump()
    );

    // Step 1: all signals blocked, then dumpable off, before anything meaningful.
    let block = t.must(Some(main), "rt_sigprocmask(SIG_SETMASK, ~[");
    let dumpable = t.must(Some(main), "prctl(PR_SET_DUMPABLE");
    assert!(
        t.lines[dumpable].1.contains("SUID_DUMP_DISABLE") || t.lines[dumpable].1.contains(", 0"),
        "{}",
        t.lines[dumpable].1
    );
    assert!(block < dumpable);
    for first in [
        "socket(",
        "clone(",
        "clone3(",
        "openat(AT_FDCWD, \"/etc/passwd\"",
        "open(\"/etc/passwd\"",
        "pipe2(",
    ] {
        if let Some(i) = t.find(Some(main), first) {
            assert!(
                dumpable < i,
                "{first} before PR_SET_DUMPABLE:\n{}",
                t.dump()
            );
        }
    }
    // Threads only after the signal mask: the proxy thread is a clone3/clone with CLONE_THREAD.
    if let Some(thread) = t
        .lines
        .iter()
        .position(|(p, l)| *p == main && l.contains("CLONE_THREAD"))
    {
        assert!(block < thread);
        // ... and after the parent dropped to CAP_KILL and set no_new_privs.
        let capset = t
            .lines
            .iter()
            .rposition(|(p, l)| *p == main && l.starts_with("capset("))
            .unwrap();
        let nnp = t.must(Some(main), "prctl(PR_SET_NO_NEW_PRIVS");
        assert!(
            capset < thread && nnp < thread,
            "proxy thread before the parent's drop:\n{}",
            t.dump()
        );
    } else {
        panic!("no proxy thread in trace:\n{}", t.dump());
    }

    // Step 4: the child (the pid that calls setgroups) drops in order before its execve,
    // and no pid other than bottle-init itself execs before its setresuid.
    let child = t.lines[t.must(None, "setgroups(")].0;
    assert_ne!(child, main);
    assert_child_drop_order(&t, child, &tok);
    for (i, (p, l)) in t.lines.iter().enumerate().skip(1) {
        if l.starts_with("execve(") {
            let setuid = t.find(Some(*p), "setresuid(1000").unwrap_or(usize::MAX);
            let forked_from_child = *p != child && *p != main;
            assert!(
                setuid < i || forked_from_child,
                "execve as uid 0 by {p}: {l}"
            );
        }
    }
}

#[test]
fn strace_token_file_read_only_after_dumpable_and_nowhere_else() {
    if !require_root() || !require_strace() {
        return;
    }
    let w = World::new();
    let tok = token();
    let f = w.path().join("token");
    std::fs::write(&f, &tok).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let trace_path = w.path().join("trace");
    let mut opts = Opts::new(false, &["true"]).env("BOTTLE_TOKEN_FILE", f.to_str().unwrap());
    opts.strace = Some(trace_path.clone());
    let o = run(&w, opts);
    o.assert_code(0);
    o.assert_no_secret(&tok);
    let t = Trace::load(&trace_path);
    let main = t.lines[0].0;
    let dumpable = t.must(Some(main), "prctl(PR_SET_DUMPABLE");
    let open = t.must_open(main, &format!("{}\"", f.display()));
    assert!(dumpable < open);
    let hits = t.lines_with(&tok);
    assert_eq!(hits.len(), 1, "{}", t.dump());
    assert!(
        t.lines[hits[0]].1.starts_with("read("),
        "{}",
        t.lines[hits[0]].1
    );
    assert!(!t.lines[0].1.contains(&tok));
}

// ------------------------------------------------------------------------------------------
// Terminal: foreground hand-off, input, Ctrl-C, job control
// ------------------------------------------------------------------------------------------

struct Pty {
    master: std::fs::File,
    lines: Lines,
    child: std::process::Child,
}

fn spawn_on_pty(w: &World, opts: &Opts) -> Pty {
    use std::os::fd::OwnedFd;
    use std::os::unix::process::CommandExt;
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let mut c = command(w, opts);
    c.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c.spawn().unwrap();
    drop(c); // close our copies of the slave so EOF/EIO arrives when the child side is done
    let master = std::fs::File::from(pty.master);
    let lines = Lines::new(master.try_clone().unwrap());
    Pty {
        master,
        lines,
        child,
    }
}

#[test]
fn pty_child_is_foreground_gets_input_and_ctrl_c_gives_130() {
    if !require_root() {
        return;
    }
    let script = r#"
set -- $(sed 's/.*) //' /proc/$$/stat)
echo "pid=$$ pgrp=$3 tpgid=$6"
read line; echo "got:$line"
sleep 100
"#;
    for pid1 in [false, true] {
        let w = World::new();
        let tok = token();
        let opts = Opts::new(pid1, &["sh", "-c", script]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok);
        let mut p = spawn_on_pty(&w, &opts);
        let l = p.lines.expect("pid=", Duration::from_secs(10));
        let f: Vec<&str> = l
            .trim()
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap().1)
            .collect();
        assert_eq!(f[0], f[1], "child leads its own process group: {l}");
        assert_eq!(
            f[1], f[2],
            "child's group is the terminal's foreground: {l}"
        );
        p.master.write_all(b"hello pty\n").unwrap();
        p.lines.expect("got:hello pty", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(200)); // let sh start `sleep`
        p.master.write_all(b"\x03").unwrap();
        let st = wait_timeout(&mut p.child, Duration::from_secs(10), "ctrl-c");
        assert_eq!(st.code(), Some(130), "{:?}", p.lines.seen);
        assert!(p.lines.seen.iter().all(|l| !l.contains(&tok)));
    }
}

#[test]
fn pty_job_control_works_in_an_interactive_shell() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let opts = Opts::new(true, &["sh", "-i"])
        .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
        .env("PS1", "prompt$ ");
    let mut p = spawn_on_pty(&w, &opts);
    let step = |p: &mut Pty, input: &[u8]| {
        std::thread::sleep(Duration::from_millis(300));
        p.master.write_all(input).unwrap();
    };
    step(&mut p, b"sleep 30\n");
    step(&mut p, b"\x1a"); // Ctrl-Z: SIGTSTP to the foreground job, the shell gets the terminal back
    step(&mut p, b"jobs; echo jobs-$((1+1))\n");
    p.lines.expect("jobs-2", Duration::from_secs(5));
    assert!(
        p.lines
            .seen
            .iter()
            .any(|l| l.contains("Stopped") && l.contains("sleep 30")),
        "{:?}",
        p.lines.seen
    );
    // Resume it in the foreground and interrupt it: the job is back on the terminal.
    step(&mut p, b"fg\n");
    step(&mut p, b"\x03");
    step(&mut p, b"echo after-fg-$((2+2))\n");
    p.lines.expect("after-fg-4", Duration::from_secs(5));
    step(&mut p, b"exit 5\n");
    let st = wait_timeout(
        &mut p.child,
        Duration::from_secs(10),
        &format!("job control: {:?}", p.lines.seen),
    );
    assert_eq!(st.code(), Some(5), "{:?}", p.lines.seen);
    assert!(p.lines.seen.iter().all(|l| !l.contains(&tok)));
}

// ------------------------------------------------------------------------------------------
// `bottle-init exec`
// ------------------------------------------------------------------------------------------

/// A PID-1 bottle-init whose child waits on stdin; returns (spawned unshare, init host pid,
/// the child's session secret and base URL lines).
struct Running {
    child: std::process::Child,
    lines: Lines,
    err: std::thread::JoinHandle<Vec<u8>>,
    token: String,
    init: u32,
    session: String,
    url: String,
}

fn start_pid1(w: &World, tok: &str) -> Running {
    let opts = Opts::new(
        true,
        &[
            "sh",
            "-c",
            "echo \"s=$CLAUDE_CODE_OAUTH_TOKEN u=$ANTHROPIC_BASE_URL\"; read x; true",
        ],
    )
    .env("CLAUDE_CODE_OAUTH_TOKEN", tok)
    .env("BOTTLE_USER", "tester");
    let mut child = command(w, &opts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let l = lines.expect("s=", Duration::from_secs(10));
    let (s, u) = l.split_once(' ').unwrap();
    let init = wait_for_child(child.id(), "bottle-init", Duration::from_secs(5));
    Running {
        child,
        lines,
        err,
        token: tok.to_string(),
        init,
        session: s[2..].to_string(),
        url: u[2..].to_string(),
    }
}

impl Running {
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let st = wait_timeout(&mut self.child, Duration::from_secs(10), "pid1 stop");
        assert_eq!(st.code(), Some(0));
        let err = self.err.join().unwrap();
        assert!(
            !contains(&err, self.token.as_bytes()),
            "token in PID 1's stderr"
        );
        assert!(self.lines.seen.iter().all(|l| !l.contains(&self.token)));
    }
}

/// `docker exec CONTAINER /bottle-init exec -- CMD` analogue: nsenter into PID 1's
/// namespaces with the container's configured environment (token included).
fn exec_into(
    w: &World,
    r: &Running,
    tok: &str,
    args: &[&str],
    strace: Option<&std::path::Path>,
) -> Outcome {
    let mut c = std::process::Command::new("nsenter");
    c.arg("-t")
        .arg(r.init.to_string())
        .args(["-p", "-m", "-n", "--"]);
    if let Some(out) = strace {
        c.args(["strace", "-f", "-v", "-s", "4096", "-o"]).arg(out);
    }
    c.arg(bin()).arg("exec").args(args);
    c.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CLAUDE_CODE_OAUTH_TOKEN", tok)
        .env("BOTTLE_RUN_DIR", w.run_dir())
        .env("MARKER", "kept")
        .env("PROBE", "1")
        .current_dir(w.path());
    let cmdline = format!("{c:?}");
    let start = Instant::now();
    let o = c.output().unwrap();
    Outcome {
        status: o.status,
        stdout: o.stdout,
        stderr: o.stderr,
        elapsed: start.elapsed(),
        cmdline,
    }
}

#[test]
fn exec_joins_the_running_bottle_init_with_the_same_drop() {
    if !require_root() {
        return;
    }
    assert!(which("nsenter").is_some() || std::env::var("CI").as_deref() != Ok("true"));
    let w = World::new();
    let tok = token();
    let r = start_pid1(&w, &tok);
    // The state file is root-only.
    let state = w.run_dir().join("state");
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o600);
    assert!(
        !contains(&std::fs::read(&state).unwrap(), tok.as_bytes()),
        "token in the state file"
    );

    let report = REPORT.replace("$PPID", "$PROBE");
    let o = exec_into(&w, &r, &tok, &["--", "sh", "-c", &report], None);
    check_report(&o, &tok, &w, "CLAUDE_CODE_OAUTH_TOKEN");
    let env = env_of(&o.out());
    assert_eq!(
        get(&env, "CLAUDE_CODE_OAUTH_TOKEN"),
        Some(r.session.as_str()),
        "same session secret as PID 1's child"
    );
    assert_eq!(
        get(&env, "ANTHROPIC_BASE_URL"),
        Some(r.url.as_str()),
        "same proxy, no second one"
    );
    assert!(get(&env, "PROBE").is_some());

    // strace: the token only in the first execve; drop order before the exec of sh.
    if which("strace").is_some() {
        let trace_path = w.path().join("exec-trace");
        let o = exec_into(
            &w,
            &r,
            &tok,
            &["--", "sh", "-c", "exit 0"],
            Some(&trace_path),
        );
        o.assert_code(0);
        o.assert_no_secret(&tok);
        let t = Trace::load(&trace_path);
        assert!(t.lines[0].1.contains("exec"), "{}", t.lines[0].1);
        assert_eq!(t.lines_with(&tok), vec![0], "{}", t.dump());
        let main = t.lines[0].0;
        let dumpable = t.must(Some(main), "prctl(PR_SET_DUMPABLE");
        let first_open_state = t.must_open(main, &w.run_dir().display().to_string());
        assert!(dumpable < first_open_state);
        assert_child_drop_order(&t, main, &tok);
        assert!(
            t.find(None, "clone(").is_none() && t.find(None, "clone3(").is_none(),
            "exec mode must not fork"
        );
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "strace missing"
        );
    }

    // A missing command: 127 with its name.
    let o = exec_into(&w, &r, &tok, &["--", "no-such-cmd-xyz"], None);
    o.assert_code(127);
    assert!(o.err().contains("no-such-cmd-xyz"), "{}", o.describe());
    o.assert_no_secret(&tok);
    r.stop();
    // After PID 1 ended, its state is gone and exec refuses clearly.
    assert!(!state.exists(), "state file left behind");
    let left: Vec<_> = std::fs::read_dir(w.run_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "PID 1 left files in its run dir: {left:?}");
}

#[test]
fn exec_refuses_when_no_bottle_init_is_running() {
    if !require_root() {
        return;
    }
    let tok = token();
    let run = |dir: &std::path::Path| {
        std::process::Command::new(bin())
            .args(["exec", "--", "true"])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
            .env("BOTTLE_RUN_DIR", dir)
            .output()
            .unwrap()
    };
    let w = World::new();
    let check = |o: std::process::Output, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(69), "{err}");
        assert!(
            err.starts_with("bottle-init: error: ") && err.contains(needle),
            "{err}"
        );
        assert!(!err.contains(&tok) && !String::from_utf8_lossy(&o.stdout).contains(&tok));
    };
    // No state at all.
    check(run(&w.run_dir()), "no running bottle-init");
    // State naming a live process that is not bottle-init (this test binary).
    let me = std::process::id();
    let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let write_state = |pid: u32, comm: &str, starttime: u64| {
        let p = w.run_dir().join("state");
        std::fs::write(
            &p,
            format!("pid={pid}\nstarttime={starttime}\ncomm={comm}\nbase_url=http://127.0.0.1:1\nkind=oauth\nuid=1000\ngid=1000\ngroups=1000\nsession=bottle-x\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write_state(me, "bottle-init", start);
    check(run(&w.run_dir()), "not running");
    // A dead pid.
    write_state(999_999_999, "bottle-init", 1);
    check(run(&w.run_dir()), "not running");
    // A state file others could read is refused.
    write_state(me, "bottle-init", start);
    std::fs::set_permissions(
        w.run_dir().join("state"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    check(run(&w.run_dir()), "0600");
}
