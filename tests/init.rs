//! Black-box tests of the init half: the real binary, as PID 1 in
//! `unshare --pid --fork --mount-proc --net` or as a subreaper, run as root.
//! Under CI=true a missing requirement (root, unshare, strace...) fails instead of skipping.

mod support;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::init::*;

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

fn check_report(o: &Finished, tok: &str, world: &World, session_var: &str) {
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

/// Sets a file's POSIX access ACL (`system.posix_acl_access`, little-endian version 2 and
/// (tag, perm, id) entries), as `setfacl` would, without needing the acl package.
fn set_acl(path: &std::path::Path, entries: &[(u16, u16, u32)]) {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path and name; the value buffer is live for the call.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

const ANY: u32 = u32::MAX;

/// BOTTLE_TOKEN_FILE / BOTTLE_API_KEY_FILE fail closed: a file the child user can read (mode
/// bits, group membership, an ACL) or owns refuses to start with 78, naming the file and the
/// fix, and the command never runs; BOTTLE_INSECURE_SECRET_FILE=1 is the explicit way out.
#[test]
fn secret_files_the_child_could_read_or_own_are_refused() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let f = w.path().join("token");
    let ran = w.path().join("command-ran");
    // The command shows what uid 1000 can do with the file, and leaves a mark if it ran.
    let probe = format!(
        "touch {r}; cat {f} >/dev/null 2>&1 && echo child-can-read || echo child-cannot-read",
        r = ran.display(),
        f = f.display()
    );
    let start = |var: &str, extra: &[(&str, &str)]| {
        let mut o = Opts::new(false, &["sh", "-c", &probe]).env(var, f.to_str().unwrap());
        for (k, v) in extra {
            o = o.env(k, v);
        }
        let _ = std::fs::remove_file(&ran);
        let out = run(&w, o);
        out.assert_no_secret(&tok);
        out
    };
    let set = |uid: u32, gid: u32, mode: u32| {
        let _ = std::fs::remove_file(&f);
        std::fs::write(&f, format!("{tok}\n")).unwrap();
        chown(&f, uid, gid);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let refused = |o: &Finished, var: &str, why: &str| {
        o.assert_code(78);
        let err = o.err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{}", o.describe());
        for needle in [
            "bottle-init: error: ",
            var,
            f.to_str().unwrap(),
            why,
            "chown root:root",
            "chmod 0400",
            "defaultMode: 0400",
            "BOTTLE_INSECURE_SECRET_FILE=1",
        ] {
            assert!(lines[0].contains(needle), "{needle}\n{}", o.describe());
        }
        assert!(!ran.exists(), "the command ran\n{}", o.describe());
    };

    // Root-only: accepted, and the child really cannot read it.
    set(0, 0, 0o600);
    let o = start("BOTTLE_TOKEN_FILE", &[]);
    o.assert_code(0);
    assert!(o.out().contains("child-cannot-read"), "{}", o.describe());
    assert!(!o.err().contains("BOTTLE_TOKEN_FILE"), "{}", o.describe());
    // Group read for a group the child is not in: fine too.
    set(0, 0, 0o640);
    start("BOTTLE_TOKEN_FILE", &[]).assert_code(0);

    let cases: [(u32, u32, u32, &str); 5] = [
        (0, 0, 0o644, "readable by everyone"),
        (0, 0, 0o444, "readable by everyone"),
        (0, TEST_UID, 0o640, "readable by its group 1000"),
        (0, 2345, 0o440, "readable by its group 2345"), // a supplementary group of tester
        (TEST_UID, 0, 0o400, "owned by the child user"),
    ];
    for (uid, gid, mode, why) in cases {
        set(uid, gid, mode);
        refused(&start("BOTTLE_TOKEN_FILE", &[]), "BOTTLE_TOKEN_FILE", why);
    }
    // A POSIX ACL granting uid 1000 read on a 0600-looking root file (mode shows the mask).
    set(0, 0, 0o600);
    set_acl(
        &f,
        &[
            (0x01, 6, ANY),
            (0x02, 4, TEST_UID),
            (0x04, 0, ANY),
            (0x10, 4, ANY),
            (0x20, 0, ANY),
        ],
    );
    refused(
        &start("BOTTLE_TOKEN_FILE", &[]),
        "BOTTLE_TOKEN_FILE",
        "POSIX ACL",
    );
    // Control: the kernel agrees the ACL lets the child read it (with the opt-in it runs).
    let o = start("BOTTLE_TOKEN_FILE", &[("BOTTLE_INSECURE_SECRET_FILE", "1")]);
    o.assert_code(0);
    assert!(o.out().contains("child-can-read"), "{}", o.describe());
    // ... and an ACL entry masked off grants nothing: accepted.
    set_acl(
        &f,
        &[
            (0x01, 6, ANY),
            (0x02, 4, TEST_UID),
            (0x04, 0, ANY),
            (0x10, 0, ANY),
            (0x20, 0, ANY),
        ],
    );
    let o = start("BOTTLE_TOKEN_FILE", &[]);
    o.assert_code(0);
    assert!(o.out().contains("child-cannot-read"), "{}", o.describe());

    // Kubernetes-style symlink: the check is on the file opened, not the link.
    let real = w.path().join("..data-token");
    set(0, 0, 0o644);
    std::fs::rename(&f, &real).unwrap();
    std::os::unix::fs::symlink(&real, &f).unwrap();
    refused(
        &start("BOTTLE_TOKEN_FILE", &[]),
        "BOTTLE_TOKEN_FILE",
        "readable by everyone",
    );
    std::fs::remove_file(&f).unwrap();
    std::fs::remove_file(&real).unwrap();

    // The opt-in: runs, with a warning naming the file, and the child can read it (that is
    // the risk accepted).
    set(0, 0, 0o644);
    let o = start("BOTTLE_TOKEN_FILE", &[("BOTTLE_INSECURE_SECRET_FILE", "1")]);
    o.assert_code(0);
    assert!(o.out().contains("child-can-read"), "{}", o.describe());
    assert!(
        o.err().contains("BOTTLE_TOKEN_FILE") && o.err().contains("BOTTLE_INSECURE_SECRET_FILE=1"),
        "{}",
        o.describe()
    );
    let o = start(
        "BOTTLE_TOKEN_FILE",
        &[("BOTTLE_INSECURE_SECRET_FILE", "yes")],
    );
    o.assert_code(78);
    assert!(
        o.err().contains("BOTTLE_INSECURE_SECRET_FILE"),
        "{}",
        o.describe()
    );

    // Not a regular file (a FIFO would block a plain open): refused at once.
    let _ = std::fs::remove_file(&f);
    let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = start("BOTTLE_TOKEN_FILE", &[]);
    o.assert_code(78);
    assert!(o.err().contains("not a regular file"), "{}", o.describe());
    assert!(o.elapsed < Duration::from_secs(5), "{}", o.describe());
    std::fs::remove_file(&f).unwrap();

    // BOTTLE_API_KEY_FILE: the same rules; accepted, it is an API key (the child gets the
    // API-key placeholder variable).
    set(0, 0, 0o644);
    refused(
        &start("BOTTLE_API_KEY_FILE", &[]),
        "BOTTLE_API_KEY_FILE",
        "readable by everyone",
    );
    set(0, 0, 0o400);
    let o = run(
        &w,
        Opts::new(false, &["sh", "-c", REPORT])
            .env("BOTTLE_API_KEY_FILE", f.to_str().unwrap())
            .env("MARKER", "kept"),
    );
    check_report(&o, &tok, &w, "ANTHROPIC_AUTH_TOKEN");
}

/// BOTTLE_LISTEN must be loopback unless BOTTLE_INSECURE_LISTEN=1: elsewhere the session
/// secret would work from the network. In `allowlist` it is refused even then.
#[test]
fn non_loopback_listen_is_refused_unless_explicitly_allowed() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    for addr in ["0.0.0.0:0", "[::]:0"] {
        for egress in ["open", "api-only"] {
            let o = run(
                &w,
                Opts::new(true, &["sh", "-c", "echo command-ran"])
                    .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                    .env("BOTTLE_EGRESS", egress)
                    .env("BOTTLE_LISTEN", addr),
            );
            o.assert_code(78);
            let err = o.err();
            assert_eq!(err.lines().count(), 1, "{}", o.describe());
            for needle in [
                "BOTTLE_LISTEN",
                "not a loopback",
                "network",
                "BOTTLE_INSECURE_LISTEN=1",
            ] {
                assert!(err.contains(needle), "{needle}\n{}", o.describe());
            }
            assert!(!o.out().contains("command-ran"), "{}", o.describe());
        }
    }
    // Allowed explicitly: it listens on the wildcard address and says so.
    let o = run(
        &w,
        Opts::new(true, &["sh", "-c", "cat /proc/net/tcp"])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
            .env("BOTTLE_LISTEN", "0.0.0.0:0")
            .env("BOTTLE_INSECURE_LISTEN", "1"),
    );
    o.assert_code(0);
    assert!(
        o.out()
            .lines()
            .any(|l| l.contains(" 00000000:") && l.contains(" 0A ")),
        "no wildcard listener\n{}",
        o.describe()
    );
    assert!(
        o.err().contains("not a loopback address"),
        "{}",
        o.describe()
    );
    // allowlist: never, whatever the switch says (CONNECT would serve the whole network).
    let o = run(
        &w,
        Opts::new(true, &["sh", "-c", "echo command-ran"])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
            .env("BOTTLE_EGRESS", "allowlist")
            .env("BOTTLE_ALLOW_HOSTS", "example.com")
            .env("BOTTLE_LISTEN", "0.0.0.0:0")
            .env("BOTTLE_INSECURE_LISTEN", "1"),
    );
    o.assert_code(78);
    assert!(!o.out().contains("command-ran"), "{}", o.describe());
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
        if sig == libc::SIGTSTP {
            // It goes to the command's whole group: the shell's `sleep` stops like a job on
            // Ctrl-Z, and the shell runs its trap once that child is continued. (Not at once:
            // a SIGCONT discards stop signals still pending.)
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: as above.
            assert_eq!(unsafe { libc::kill(init as i32, libc::SIGCONT) }, 0);
        }
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
    support::skipped("strace missing (apt-get install strace)");
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
    // The child leads its own process group (no terminal here), before its execve.
    let child_exec = t.must(Some(child), "execve(");
    let pgid = t.must(Some(child), "setpgid(0, 0)");
    assert!(pgid < child_exec, "{}", t.dump());
    // 4b. PID 1 leaves its start directory once the child has exec'd (it started there), and
    //     before any thread exists.
    let chdir = t.must(Some(main), "chdir(\"/\"");
    assert!(
        child_exec < chdir,
        "chdir before the child's execve:\n{}",
        t.dump()
    );
    if let Some(thread) = t
        .lines
        .iter()
        .position(|(p, l)| *p == main && l.contains("CLONE_THREAD"))
    {
        assert!(chdir < thread, "{}", t.dump());
    }
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
    // The permission checks are made on the opened descriptor (fstat + the ACL xattr), never
    // on the path before or after opening it (no check-then-open race).
    let fd: String = t.lines[open]
        .1
        .rsplit("= ")
        .next()
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    assert!(!fd.is_empty(), "{}", t.lines[open].1);
    let on_fd = |prefixes: &[String]| {
        (open..t.lines.len())
            .find(|&i| t.lines[i].0 == main && prefixes.iter().any(|p| t.lines[i].1.starts_with(p)))
            .unwrap_or_else(|| panic!("no {prefixes:?} after the open:\n{}", t.dump()))
    };
    let stat = on_fd(&[
        format!("statx({fd}, \"\""),
        format!("fstat({fd},"),
        format!("newfstatat({fd}, \"\""),
    ]);
    let acl = on_fd(&[format!("fgetxattr({fd}, \"system.posix_acl_access\"")]);
    let read = on_fd(&[format!("read({fd},")]);
    assert!(stat < read && acl < read, "{}", t.dump());
    let path = format!("\"{}\"", f.display());
    let by_path: Vec<&str> = t
        .lines
        .iter()
        .map(|(_, l)| l.as_str())
        .filter(|l| l.contains(&path) && !l.starts_with("open"))
        .collect();
    assert!(
        by_path.is_empty(),
        "the token file was looked at by path: {by_path:?}"
    );
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
) -> Finished {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    bottle_init_into(w, r, tok, &all, strace)
}

/// `docker exec CONTAINER /bottle-init ARGS...` analogue (`exec`, `status`).
fn bottle_init_into(
    w: &World,
    r: &Running,
    tok: &str,
    args: &[&str],
    strace: Option<&std::path::Path>,
) -> Finished {
    let mut c = std::process::Command::new("nsenter");
    c.arg("-t")
        .arg(r.init.to_string())
        .args(["-p", "-m", "-n", "--"]);
    if let Some(out) = strace {
        c.args(["strace", "-f", "-v", "-s", "4096", "-o"]).arg(out);
    }
    c.arg(bin()).args(args);
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
    Finished {
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
        // One fork: the command (the pid that drops) is a child of the supervisor, which
        // stays root and keeps only CAP_KILL after the fork, then leaves its directory.
        let forks: Vec<&str> = t
            .lines
            .iter()
            .filter(|(p, l)| *p == main && (l.starts_with("clone(") || l.starts_with("clone3(")))
            .map(|(_, l)| l.as_str())
            .collect();
        assert_eq!(forks.len(), 1, "exec forks exactly once: {forks:?}");
        assert!(!forks[0].contains("CLONE_THREAD"), "{}", forks[0]);
        let child = t.lines[t.must(None, "setgroups(")].0;
        assert_ne!(child, main);
        assert_child_drop_order(&t, child, &tok);
        assert_eq!(
            t.find(Some(main), "setresuid("),
            None,
            "the supervisor changed uid"
        );
        assert!(t.find(Some(child), "setsid(").is_some(), "{}", t.dump());
        let fork = t.must(Some(main), forks[0]);
        let capset = (fork..t.lines.len())
            .find(|&i| t.lines[i].0 == main && t.lines[i].1.starts_with("capset("))
            .unwrap_or_else(|| panic!("no capset by the supervisor:\n{}", t.dump()));
        assert!(
            t.lines[capset].1.contains("CAP_KILL, CAP_KILL")
                || t.lines[capset].1.contains("1<<CAP_KILL"),
            "{}",
            t.lines[capset].1
        );
        let chdir = t.must(Some(main), "chdir(\"/\""); // may be "<unfinished ...>"
        assert!(fork < chdir, "{}", t.dump());
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

// ------------------------------------------------------------------------------------------
// Process groups, the bounded stop, the start directory
// ------------------------------------------------------------------------------------------

/// Without a terminal the command still leads its own process group, and a signal sent to
/// PID 1 reaches the whole group (the tools it started), never bottle-init's own group.
#[test]
fn command_leads_its_own_group_and_forwarded_signals_reach_the_group() {
    if !require_root() {
        return;
    }
    let script = r#"
set -- $(sed 's/.*) //' /proc/$$/stat)
echo "pid=$$ pgrp=$3"
(trap 'echo helper-got-USR1; exit 0' USR1; while :; do sleep 0.05; done) &
trap 'echo main-got-USR1' USR1
echo ready
wait
wait
echo main-done
"#;
    for pid1 in [true, false] {
        let w = World::new();
        let tok = token();
        let opts = Opts::new(pid1, &["sh", "-c", script]).env("CLAUDE_CODE_OAUTH_TOKEN", &tok);
        let mut child = command(&w, &opts)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Lines::new(child.stdout.take().unwrap());
        let err = reader(child.stderr.take().unwrap());
        let l = lines.expect("pid=", Duration::from_secs(10));
        let f: Vec<&str> = l
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap().1)
            .collect();
        assert_eq!(f[0], f[1], "the command leads its own process group: {l}");
        lines.expect("ready", Duration::from_secs(5));
        // opts.pid1, not pid1: scripts/test-aarch64 runs every case as PID 1.
        let init = if opts.pid1 {
            wait_for_child(child.id(), "bottle-init", Duration::from_secs(5))
        } else {
            child.id()
        };
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: our descendant's pid.
        assert_eq!(unsafe { libc::kill(init as i32, libc::SIGUSR1) }, 0);
        lines.expect("helper-got-USR1", Duration::from_secs(5));
        lines.expect("main-done", Duration::from_secs(5));
        // bottle-init (and, as a subreaper, the unshare wrapper in its group) was not hit.
        let st = wait_timeout(&mut child, Duration::from_secs(10), "group signal");
        let err = err.join().unwrap();
        assert_eq!(
            st.code(),
            Some(0),
            "pid1={pid1} {:?}\n{}",
            lines.seen,
            String::from_utf8_lossy(&err)
        );
        assert!(lines.seen.iter().any(|l| l.contains("main-got-USR1")));
        assert!(!contains(&err, tok.as_bytes()));
    }
}

/// A command that ignores SIGTERM: BOTTLE_GRACE after the first SIGTERM it (and everything
/// left) gets SIGKILL, so the stop is bounded without an outside SIGKILL. SIGINT (claude's
/// "interrupt") does not start that clock.
#[test]
fn sigterm_ignored_by_the_command_ends_in_sigkill_after_the_grace() {
    if !require_root() {
        return;
    }
    let script = "trap '' TERM INT; echo ready; while :; do sleep 0.05; done";
    for pid1 in [true, false] {
        let w = World::new();
        let tok = token();
        let opts = Opts::new(pid1, &["sh", "-c", script])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
            .env("BOTTLE_GRACE", "1");
        let mut child = command(&w, &opts)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Lines::new(child.stdout.take().unwrap());
        let err = reader(child.stderr.take().unwrap());
        lines.expect("ready", Duration::from_secs(10));
        // opts.pid1, not pid1: scripts/test-aarch64 runs every case as PID 1.
        let init = if opts.pid1 {
            wait_for_child(child.id(), "bottle-init", Duration::from_secs(5))
        } else {
            child.id()
        };
        // SIGINT twice, then more than the grace: still running.
        for _ in 0..2 {
            // SAFETY: our descendant's pid.
            assert_eq!(unsafe { libc::kill(init as i32, libc::SIGINT) }, 0);
            std::thread::sleep(Duration::from_millis(900));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGINT must not start the SIGKILL clock (pid1={pid1})"
        );
        let t0 = Instant::now();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(init as i32, libc::SIGTERM) }, 0);
        std::thread::sleep(Duration::from_millis(400));
        // A second SIGTERM does not restart the clock.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(init as i32, libc::SIGTERM) }, 0);
        let st = wait_timeout(&mut child, Duration::from_secs(8), "ignored SIGTERM");
        let took = t0.elapsed();
        let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
        assert_eq!(st.code(), Some(137), "pid1={pid1}\n{err}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "SIGKILL {took:?} after the first SIGTERM (grace 1 s), pid1={pid1}\n{err}"
        );
        assert!(err.contains("SIGKILL"), "{err}");
        assert!(!err.contains(&tok));
    }
    // The clock runs from the first SIGTERM, not from the command's exit: the command takes
    // 1 s to stop, a leftover ignores SIGTERM; grace 2 s: all over about 2 s after SIGTERM
    // (3 s if the leftovers got a fresh grace period when the command exited).
    let script = r#"
(trap '' TERM; while :; do sleep 0.05; done) &
trap 'sleep 1; exit 3' TERM
echo ready
while :; do sleep 0.05; done
"#;
    let w = World::new();
    let tok = token();
    let opts = Opts::new(true, &["sh", "-c", script])
        .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
        .env("BOTTLE_GRACE", "2");
    let mut child = command(&w, &opts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    lines.expect("ready", Duration::from_secs(10));
    let init = wait_for_child(child.id(), "bottle-init", Duration::from_secs(5));
    let t0 = Instant::now();
    // SAFETY: our descendant's pid.
    assert_eq!(unsafe { libc::kill(init as i32, libc::SIGTERM) }, 0);
    let st = wait_timeout(&mut child, Duration::from_secs(8), "bounded stop");
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert_eq!(st.code(), Some(3), "{err}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(2700),
        "stopped {took:?} after SIGTERM with BOTTLE_GRACE=2\n{err}"
    );
}

/// PID 1 (and `exec`'s supervisor) leave their start directory once the command runs, so
/// they do not hold the /workspace bind mount; the command itself starts there.
#[test]
fn pid1_and_the_exec_supervisor_leave_the_start_directory() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let r = start_pid1(&w, &tok);
    let cwd = |pid: u32| std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    // PID 1 and the supervisor leave right after starting the command: allow them that moment
    // (a loaded machine may show the start directory for a few milliseconds).
    let left = |pid: u32| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while cwd(pid) != std::path::Path::new("/") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        cwd(pid)
    };
    assert_eq!(left(r.init), std::path::PathBuf::from("/"), "PID 1's cwd");
    let child = wait_for_child(r.init, "sh", Duration::from_secs(5));
    assert_eq!(
        cwd(child),
        w.path(),
        "the command starts in the caller's directory"
    );
    // exec: the supervisor left too, the command did not.
    let mut c = docker_exec(
        &w,
        &r,
        &tok,
        &[bin(), "exec", "--", "sh", "-c", "pwd; read x; true"],
    );
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut ex = c.spawn().unwrap();
    let mut lines = Lines::new(ex.stdout.take().unwrap());
    let pwd = lines.expect("/", Duration::from_secs(10));
    assert_eq!(pwd.trim(), w.path().to_str().unwrap());
    let sup = wait_for_child(ex.id(), "bottle-init", Duration::from_secs(5));
    assert_eq!(
        left(sup),
        std::path::PathBuf::from("/"),
        "exec supervisor's cwd"
    );
    let cmd = wait_for_child(sup, "sh", Duration::from_secs(5));
    assert_eq!(cwd(cmd), w.path());
    drop(ex.stdin.take());
    let st = wait_timeout(&mut ex, Duration::from_secs(10), "exec");
    assert_eq!(st.code(), Some(0));
    r.stop();
}

// ------------------------------------------------------------------------------------------
// A second bottle-init, a dead proxy thread, a stopped terminal
// ------------------------------------------------------------------------------------------

/// `docker exec C /bottle-init CMD` (the word `exec` forgotten) in a running container: the
/// second init refuses at once, before any side effect, naming `bottle-init exec`; PID 1's
/// files are untouched and `bottle-init exec` still works.
#[test]
fn a_second_init_refuses_and_leaves_pid1_alone() {
    if !require_root() || !require_strace() {
        return;
    }
    let w = World::new();
    let tok = token();
    let r = start_pid1(&w, &tok);
    let state = w.run_dir().join("state");
    let egress = w.run_dir().join("egress");
    let snapshot = |p: &std::path::Path| {
        let md = std::fs::metadata(p).unwrap();
        (
            std::fs::read(p).unwrap(),
            md.ino(),
            md.mtime_nsec(),
            md.mode(),
        )
    };
    let before = (snapshot(&state), snapshot(&egress));
    let trace = w.path().join("second-init.trace");
    let trace_s = trace.to_str().unwrap();
    let argv = [
        "strace",
        "-f",
        "-o",
        trace_s,
        bin(),
        "sh",
        "-c",
        "echo second-command-ran",
    ];
    let mut c = docker_exec(&w, &r, &tok, &argv);
    let t0 = Instant::now();
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("bottle-init: error: ")
            && lines[0].contains("already running")
            && lines[0].contains("`bottle-init exec"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("second-command-ran"));
    assert!(!err.contains(&tok) && !String::from_utf8_lossy(&o.stdout).contains(&tok));
    // No side effect at all: no socket, bind, fork, directory or file created, renamed,
    // removed or written.
    let t = Trace::load(&trace);
    for call in [
        "socket(",
        "bind(",
        "listen(",
        "clone(",
        "clone3(",
        "fork(",
        "vfork(",
        "mkdir",
        "rename",
        "unlink",
        "rmdir",
        "write(3",
        "prctl(PR_SET_CHILD_SUBREAPER",
    ] {
        assert_eq!(
            t.find(None, call),
            None,
            "{call} by the refused init:\n{}",
            t.dump()
        );
    }
    assert_eq!(
        (snapshot(&state), snapshot(&egress)),
        before,
        "PID 1's state or egress record changed"
    );
    // exec still joins PID 1.
    let o = exec_into(&w, &r, &tok, &["--", "sh", "-c", "echo exec-works"], None);
    o.assert_code(0);
    assert!(o.out().contains("exec-works"), "{}", o.describe());
    r.stop();
}

/// A plain HTTP/1.1 request to the proxy at `url` (`http://127.0.0.1:PORT`); the status line
/// and headers read back, or the I/O error.
fn http(url: &str, head: &str) -> std::io::Result<String> {
    use std::io::Read;
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(head.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if contains(&buf, b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A subreaper bottle-init whose command prints its proxy URL and session secret, then waits
/// (trapping TERM unless `ignore_term`). Returns (child, lines, stderr, url, session).
fn start_reporting(
    w: &World,
    tok: &str,
    binary: Option<&str>,
    ignore_term: bool,
) -> (
    std::process::Child,
    Lines,
    std::thread::JoinHandle<Vec<u8>>,
    String,
    String,
) {
    let trap = if ignore_term {
        "trap '' TERM"
    } else {
        "trap 'echo command-got-TERM; exit 7' TERM"
    };
    let script = format!(
        "{trap}; echo \"u=$ANTHROPIC_BASE_URL s=$CLAUDE_CODE_OAUTH_TOKEN\"; while :; do sleep 0.05; done"
    );
    let opts = Opts::new(false, &["sh", "-c", &script])
        .env("CLAUDE_CODE_OAUTH_TOKEN", tok)
        .env("BOTTLE_GRACE", "1")
        .env("BOTTLE_UPSTREAM", "https://127.0.0.1:1");
    let mut c = command(w, &opts);
    if let Some(b) = binary {
        // The same namespace set-up, another binary.
        let args: Vec<std::ffi::OsString> = c
            .get_args()
            .map(|a| if a == bin() { b.into() } else { a.to_owned() })
            .collect();
        let mut c2 = std::process::Command::new(c.get_program());
        c2.args(args)
            .env_clear()
            .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .current_dir(w.path());
        c = c2;
    }
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let l = lines.expect("u=", Duration::from_secs(10));
    let (u, s) = l.split_once(' ').unwrap();
    (child, lines, err, u[2..].to_string(), s[2..].to_string())
}

/// If the proxy thread dies, PID 1 does not carry on without an API: one error line saying
/// why, SIGTERM to the command's group (SIGKILL after BOTTLE_GRACE if ignored), exit 70. The
/// proxy is made to die by a request only test builds understand (feature `test-hooks`).
#[test]
fn a_dead_proxy_thread_stops_the_command_and_exits_70() {
    if !require_root() {
        return;
    }
    for ignore_term in [false, true] {
        let w = World::new();
        let tok = token();
        let (mut child, mut lines, err, url, session) =
            start_reporting(&w, &tok, None, ignore_term);
        let ok = http(&url, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let t0 = Instant::now();
        let _ = http(
            &url,
            &format!(
                "GET /v1/bottle-init-test-hooks/panic HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {session}\r\n\r\n"
            ),
        );
        let st = wait_timeout(&mut child, Duration::from_secs(10), "dead proxy");
        let took = t0.elapsed();
        let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
        assert_eq!(st.code(), Some(70), "ignore_term={ignore_term}\n{err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.contains(": error: ")).collect();
        assert_eq!(errors.len(), 1, "exactly one error line\n{err}");
        assert!(
            errors[0].contains("proxy thread stopped")
                && errors[0].contains("panic")
                && errors[0].contains("70"),
            "{err}"
        );
        assert!(!err.contains(&tok) && !err.contains(&session), "{err}");
        if ignore_term {
            // SIGKILL after the 1 s grace (plus at most the loop's 1 s tick to notice).
            assert!(took >= Duration::from_millis(900), "{took:?}\n{err}");
            assert!(took < Duration::from_secs(4), "{took:?}\n{err}");
        } else {
            lines.expect("command-got-TERM", Duration::from_secs(2));
            assert!(took < Duration::from_secs(3), "{took:?}\n{err}");
        }
        assert!(lines.seen.iter().all(|l| !l.contains(&tok)));
    }
}

/// The release binary (what the image ships) has no test hook: the same request is just a
/// request (forwarded, 502 here), and the proxy keeps serving.
#[test]
fn the_release_binary_has_no_test_hooks() {
    if !require_root() {
        return;
    }
    let Some(release) = std::env::var_os("BOTTLE_TEST_MUSL_BIN").filter(|p| !p.is_empty()) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "BOTTLE_TEST_MUSL_BIN (the release build; scripts/test sets it) is unset and CI=true"
        );
        eprintln!("SKIPPED: BOTTLE_TEST_MUSL_BIN unset");
        return;
    };
    let release = release.to_str().unwrap().to_string();
    let bytes = std::fs::read(&release).unwrap();
    assert!(
        !contains(&bytes, b"bottle-init-test-hooks"),
        "{release} contains the test hook's path"
    );
    // Positive control: the binary under test (a test build) has it.
    assert!(contains(
        &std::fs::read(bin()).unwrap(),
        b"bottle-init-test-hooks"
    ));
    let w = World::new();
    let tok = token();
    let (mut child, _lines, err, url, session) = start_reporting(&w, &tok, Some(&release), false);
    let answer = http(
        &url,
        &format!(
            "GET /v1/bottle-init-test-hooks/panic HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {session}\r\n\r\n"
        ),
    )
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    std::thread::sleep(Duration::from_millis(1500));
    let ok = http(&url, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the release bottle-init exited"
    );
    // SAFETY: our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_timeout(&mut child, Duration::from_secs(10), "release stop");
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert!(!err.contains(&tok) && !err.contains(&session), "{err}");
    assert_ne!(st.code(), Some(70), "{err}");
}

/// A process on a terminal the test owns (the "caller's terminal"): the master, a copy of the
/// slave (to act on the terminal as its other users could: tcflow, window size), and a line
/// reader over everything written to it.
struct Term {
    master: std::fs::File,
    slave: std::os::fd::OwnedFd,
    lines: Lines,
    child: std::process::Child,
}

fn spawn_on_term(mut c: std::process::Command, rows: u16, cols: u16) -> Term {
    use std::os::unix::process::CommandExt;
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave = pty.slave;
    c.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
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
    drop(c);
    let master = std::fs::File::from(pty.master);
    let lines = Lines::new(master.try_clone().unwrap());
    Term {
        master,
        slave,
        lines,
        child,
    }
}

impl Term {
    fn type_line(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
        self.master.write_all(b"\n").unwrap();
    }
    fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on our own master; the kernel sends SIGWINCH
        // to the terminal's foreground group.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0);
    }
    fn flow(&self, action: i32) {
        use std::os::fd::AsRawFd;
        // SAFETY: tcflow on our own copy of the slave.
        assert_eq!(unsafe { libc::tcflow(self.slave.as_raw_fd(), action) }, 0);
    }
}

/// On a terminal the child can stop (tcflow TCOOFF, i.e. Ctrl-S), every write to stderr
/// blocks. Log lines must never block the proxy or the init loop: requests that log are still
/// answered at once, signals are still forwarded, and once output resumes the number of
/// dropped lines is reported.
#[test]
fn a_stopped_terminal_never_blocks_the_proxy_or_the_init_loop() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let mark = w.home().join("winch");
    // SIGWINCH: its default action (ignore) lets the group's `sleep` live, so the shell has
    // nothing to report on the stopped terminal.
    let script = format!(
        "echo \"u=$ANTHROPIC_BASE_URL\"; trap 'touch {m}' WINCH; \
         while :; do (sleep 0.01 &); sleep 0.05; done",
        m = mark.display()
    );
    // Not PID 1, so the test shares the proxy's network namespace.
    let opts = Opts::new(false, &["sh", "-c", &script])
        .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
        .env("BOTTLE_LOG", "info");
    let mut t = spawn_on_term(command(&w, &opts), 24, 80);
    let l = t.lines.expect("u=", Duration::from_secs(10));
    let url = l.trim().strip_prefix("u=").unwrap().to_string();
    // The child's terminal (shared with bottle-init's stderr) stops its output.
    t.flow(libc::TCOOFF);
    std::thread::sleep(Duration::from_millis(200));
    let init = t.child.id();
    // Each HEAD / is answered locally and logged at info: 600 log lines onto a stopped
    // terminal, more than the queue holds.
    let t0 = Instant::now();
    for i in 0..600 {
        let t1 = Instant::now();
        let a = http(
            &url,
            "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap_or_else(|e| panic!("request {i} with the terminal stopped: {e}"));
        assert!(a.starts_with("HTTP/1.1 200"), "request {i}: {a}");
        assert!(
            t1.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            t1.elapsed()
        );
    }
    eprintln!("600 requests with stderr blocked: {:?}", t0.elapsed());
    // The init loop still forwards signals and reaps (the command leaves orphans).
    // SAFETY: our own child's pid.
    assert_eq!(unsafe { libc::kill(init as i32, libc::SIGWINCH) }, 0);
    let t1 = Instant::now();
    while !mark.exists() {
        if t1.elapsed() > Duration::from_secs(3) {
            let mut d = String::new();
            let mut all = vec![init];
            let mut i = 0;
            while i < all.len() {
                all.extend(children_of(all[i]));
                i += 1;
            }
            for pid in all {
                for e in std::fs::read_dir(format!("/proc/{pid}/task"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let p = e.path();
                    d += &format!(
                        "{pid}/{}: {} {} {}\n",
                        e.file_name().to_string_lossy(),
                        std::fs::read_to_string(p.join("comm"))
                            .unwrap_or_default()
                            .trim(),
                        std::fs::read_to_string(p.join("wchan")).unwrap_or_default(),
                        std::fs::read_to_string(p.join("stack")).unwrap_or_default(),
                    );
                }
            }
            panic!("SIGWINCH not forwarded\n{d}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let zombies: Vec<u32> = children_of(init)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|s| s[s.rfind(')').unwrap() + 1..].trim_start().starts_with('Z'))
        })
        .collect();
    assert!(zombies.len() <= 1, "orphans not reaped: {zombies:?}");
    // Output resumes: the writer catches up and says how many lines it dropped.
    t.flow(libc::TCOON);
    let l = t
        .lines
        .expect("log lines were dropped", Duration::from_secs(10));
    let n: u64 = l
        .split("bottle-init: warn: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{l}"));
    assert!(n > 0 && n <= 600, "{l}");
    // SAFETY: as above.
    unsafe { libc::kill(init as i32, libc::SIGTERM) };
    let st = wait_timeout(&mut t.child, Duration::from_secs(10), "stop");
    assert_eq!(st.code(), Some(143), "{:?}", t.lines.seen);
    assert!(t.lines.seen.iter().all(|l| !l.contains(&tok)));
}

// ------------------------------------------------------------------------------------------
// `bottle-init exec` on a terminal: its own session and pty, relayed by a root supervisor
// ------------------------------------------------------------------------------------------

/// `docker exec C ARGV...` analogue: ARGV inside PID 1's namespaces, in the caller's directory
/// (--wd: entering a mount namespace resets it), with the container's configured environment,
/// real token included.
fn docker_exec(w: &World, r: &Running, tok: &str, argv: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("nsenter");
    c.arg("-t")
        .arg(r.init.to_string())
        .args(["-p", "-m", "-n"])
        .arg(format!("--wd={}", w.path().display()))
        .arg("--")
        .args(argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CLAUDE_CODE_OAUTH_TOKEN", tok)
        .env("BOTTLE_RUN_DIR", w.run_dir())
        .current_dir(w.path());
    c
}

/// The root shell of `docker exec -it C bash`: inside PID 1's namespaces, with the
/// container's environment (real token included), on a terminal the test owns.
fn root_shell(w: &World, r: &Running, tok: &str, rows: u16, cols: u16) -> Term {
    let mut c = docker_exec(w, r, tok, &["sh", "-i"]);
    c.env("PS1", "root$ ")
        .env("HOME", "/root")
        .env("TERM", "dumb");
    let mut t = spawn_on_term(c, rows, cols);
    t.type_line("echo shell-up-$((20+1))");
    t.lines.expect("shell-up-21", Duration::from_secs(10));
    t
}

/// The line the root shell runs: `docker exec -it C /bottle-init exec ...` from inside.
fn exec_line(args: &str) -> String {
    format!("{} exec -- {args}", bin())
}

impl Term {
    /// Leaves the root shell; nothing it showed contained the token.
    fn exit_shell(mut self, tok: &str) {
        self.type_line("exit 0");
        wait_timeout(&mut self.child, Duration::from_secs(10), "root shell");
        assert!(self.lines.seen.iter().all(|l| !l.contains(tok)));
    }
}

/// Writes a script the uid-1000 command can read.
fn script(w: &World, name: &str, text: &str) -> std::path::PathBuf {
    let p = w.path().join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// The first attack of issue 10 item 1, from the uid-1000 command `exec` starts under a root
/// shell (whose environment holds the real token): keystrokes pushed with TIOCSTI into "its"
/// terminal must not reach the root shell, which would run them as root.
#[test]
fn exec_tiocsti_from_the_command_never_reaches_the_callers_shell() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let r = start_pid1(&w, &tok);
    let mut sh = root_shell(&w, &r, &tok, 24, 80);

    // TIOCSTI: `touch PWNED` typed into the terminal, as if root had typed it.
    let pwned = w.path().join("pwned-as-root");
    let sti = script(
        &w,
        "sti.pl",
        &format!(
            "for (split //, \"touch {}\\n\") {{ ioctl(STDIN, 0x5412, $_) or die \"TIOCSTI: $!\\n\" }}\nprint \"sti-ok\\n\";\n",
            pwned.display()
        ),
    );
    sh.type_line(&format!(
        "{}; echo exec-done-$((1+1))",
        exec_line(&format!("perl {}", sti.display()))
    ));
    sh.lines.expect("exec-done-2", Duration::from_secs(10));
    // The injection itself worked, on the command's own terminal.
    assert!(
        sh.lines.seen.iter().any(|l| l.contains("sti-ok")),
        "{:?}",
        sh.lines.seen
    );
    sh.type_line("echo after-$((2+3))");
    sh.lines.expect("after-5", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !pwned.exists(),
        "keystrokes injected by the uid-1000 command ran in the root shell: {:?}",
        sh.lines.seen
    );

    sh.exit_shell(&tok);
    r.stop();
}

/// The second attack of issue 10 item 1: a leftover background process of the command takes
/// the terminal's foreground (SIGTTOU ignored) once the command has exited, to read what root
/// types next. It only ever had the command's own pty, which is hung up by then.
#[test]
fn exec_leftover_cannot_take_the_callers_terminal() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let r = start_pid1(&w, &tok);
    let mut sh = root_shell(&w, &r, &tok, 24, 80);
    let stolen = w.home().join("stolen");
    let left = script(
        &w,
        "leftover.sh",
        &format!(
            "(trap '' HUP TTOU TTIN\n exec </dev/tty\n sleep 0.7\n perl -MPOSIX -e 'POSIX::tcsetpgrp(0, getpgrp()) ? print \"took-fg\\n\" : print \"tcsetpgrp-failed\\n\"'\n read line\n echo \"stolen:$line\" > {}) &\necho started-leftover\n",
            stolen.display()
        ),
    );
    sh.type_line(&format!(
        "{}; echo exec2-done",
        exec_line(&format!("sh {}", left.display()))
    ));
    sh.lines.expect("exec2-done", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    sh.type_line("echo typed-by-root-$((3+4))");
    sh.lines.expect("typed-by-root-7", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let got = std::fs::read_to_string(&stolen).unwrap_or_default();
    assert!(
        !got.contains("typed-by-root"),
        "the leftover read root's input: {got:?}"
    );
    assert!(
        sh.lines.seen.iter().all(|l| !l.contains("took-fg")),
        "{:?}",
        sh.lines.seen
    );
    sh.exit_shell(&tok);
    r.stop();
}

/// Through the relay the command is an ordinary terminal program: it reads what is typed,
/// sees the caller's window size and its changes, Ctrl-C interrupts it, its exit status is
/// `exec`'s, and the caller's terminal settings come back unchanged.
#[test]
fn exec_on_a_terminal_relays_input_output_resize_and_status() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let r = start_pid1(&w, &tok);
    let mut sh = root_shell(&w, &r, &tok, 30, 100);
    use std::os::fd::AsRawFd;
    let termios = |t: &Term| {
        let t = nix::sys::termios::tcgetattr(&t.slave).unwrap();
        (
            t.input_flags,
            t.output_flags,
            t.local_flags,
            t.control_flags,
        )
    };
    let before = termios(&sh);
    let rw = script(
        &w,
        "rw.sh",
        "stty size; tty; read l; echo \"got:$l\"; stty size; exit 7\n",
    );
    sh.type_line(&format!(
        "{}; echo rc=$?",
        exec_line(&format!("sh {}", rw.display()))
    ));
    sh.lines.expect("30 100", Duration::from_secs(10));
    let tty = sh.lines.expect("/dev/pts/", Duration::from_secs(5));
    let caller_tty = std::fs::read_link(format!("/proc/self/fd/{}", sh.slave.as_raw_fd())).unwrap();
    assert_ne!(
        tty.trim(),
        caller_tty.to_str().unwrap(),
        "the command runs on the caller's terminal"
    );
    std::thread::sleep(Duration::from_millis(300));
    sh.resize(40, 120);
    std::thread::sleep(Duration::from_millis(300));
    sh.type_line("hello pty");
    sh.lines.expect("got:hello pty", Duration::from_secs(5));
    sh.lines.expect("40 120", Duration::from_secs(5));
    sh.lines.expect("rc=7", Duration::from_secs(5));
    assert_eq!(termios(&sh), before, "terminal settings not restored");
    // Ctrl-C reaches the command through the pty: 128+SIGINT.
    sh.type_line(&format!("{}; echo rc=$?", exec_line("sleep 30")));
    std::thread::sleep(Duration::from_millis(800));
    sh.master.write_all(b"\x03").unwrap();
    sh.lines.expect("rc=130", Duration::from_secs(5));
    assert_eq!(
        termios(&sh),
        before,
        "terminal settings not restored after Ctrl-C"
    );
    sh.exit_shell(&tok);
    r.stop();
}

/// The process `exec` leaves behind is root (so uid 1000 can neither ptrace nor signal it),
/// not dumpable, with only CAP_KILL, no_new_privs, and no credential in its memory; the
/// command has its own session, and no descriptor of the caller's terminal.
#[test]
fn exec_supervisor_is_root_with_only_cap_kill_and_holds_no_credential() {
    if !require_root() {
        return;
    }
    use std::os::fd::AsRawFd;
    let w = World::new();
    let tok = token();
    let r = start_pid1(&w, &tok);
    let mut sh = root_shell(&w, &r, &tok, 24, 80);
    let probe = script(
        &w,
        "probe.sh",
        "head -c1 /proc/$PPID/mem >/dev/null 2>&1 && echo mem-readable || echo mem-denied\n\
         kill -0 $PPID 2>/dev/null && echo can-signal || echo cannot-signal\n\
         set -- $(sed 's/.*) //' /proc/$$/stat); echo \"ids pid=$$ pgrp=$3 sid=$4\"\n\
         echo probe-ready; sleep 4; echo probe-end\n",
    );
    sh.type_line(&format!(
        "{}; echo exec-returned",
        exec_line(&format!("sh {}", probe.display()))
    ));
    sh.lines.expect("probe-ready", Duration::from_secs(10));
    let seen = sh.lines.seen.join("\n");
    assert!(
        seen.contains("mem-denied") && seen.contains("cannot-signal"),
        "{seen}"
    );
    let ids = sh
        .lines
        .seen
        .iter()
        .find(|l| l.contains("ids pid="))
        .unwrap()
        .clone();
    let f: Vec<&str> = ids
        .trim()
        .split(' ')
        .skip(1)
        .map(|kv| kv.split_once('=').unwrap().1)
        .collect();
    assert!(
        f[0] == f[1] && f[1] == f[2],
        "the command leads its own session: {ids}"
    );
    // Find the supervisor (host view): the bottle-init under the root shell's nsenter.
    let mut tree = vec![sh.child.id()];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children_of(tree[i]));
        i += 1;
    }
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let sup = *tree
        .iter()
        .find(|p| comm(**p).trim() == "bottle-init")
        .expect("supervisor");
    let status = std::fs::read_to_string(format!("/proc/{sup}/status")).unwrap();
    assert_eq!(status_field(&status, "Uid"), Some("0\t0\t0\t0"), "{status}");
    assert_eq!(
        status_field(&status, "CapEff"),
        Some("0000000000000020"),
        "{status}"
    );
    assert_eq!(
        status_field(&status, "CapPrm"),
        Some("0000000000000020"),
        "{status}"
    );
    assert_eq!(
        status_field(&status, "CapBnd"),
        Some("0000000000000000"),
        "{status}"
    );
    assert_eq!(status_field(&status, "NoNewPrivs"), Some("1"), "{status}");
    // The command holds no descriptor of the caller's terminal.
    let caller_tty = std::fs::read_link(format!("/proc/self/fd/{}", sh.slave.as_raw_fd())).unwrap();
    let uid = |p: u32| {
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        status_field(&st, "Uid").map(|u| u.split('\t').next().unwrap_or("").to_string())
    };
    let commands: Vec<u32> = tree
        .iter()
        .copied()
        .filter(|p| uid(*p).as_deref() == Some("1000"))
        .collect();
    assert!(
        !commands.is_empty(),
        "no uid-1000 process under the root shell"
    );
    for p in &commands {
        for fd in std::fs::read_dir(format!("/proc/{p}/fd"))
            .unwrap()
            .flatten()
        {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert_ne!(target, caller_tty, "pid {p} holds the caller's terminal");
        }
    }
    // As root the test can read its memory: neither the real token (which `docker exec`
    // handed it) nor the session secret is left there.
    let mem = read_memory(sup);
    assert!(
        !contains(&mem, tok.as_bytes()),
        "the real token is in the supervisor's memory"
    );
    assert!(
        !contains(&mem, r.session.as_bytes()),
        "the session secret is in the supervisor's memory"
    );
    // (What is typed while the command runs is the command's input: wait for its end.)
    sh.lines.expect("exec-returned", Duration::from_secs(10));
    sh.type_line("echo back-$((4+4))");
    sh.lines.expect("back-8", Duration::from_secs(10));
    sh.exit_shell(&tok);
    // Without a terminal: its own session too.
    let o = exec_into(
        &w,
        &r,
        &tok,
        &[
            "--",
            "sh",
            "-c",
            "set -- $(sed 's/.*) //' /proc/$$/stat); echo \"pid=$$ pgrp=$3 sid=$4\"",
        ],
        None,
    );
    o.assert_code(0);
    let l = o.out();
    let f: Vec<&str> = l
        .trim()
        .split(' ')
        .map(|kv| kv.split_once('=').unwrap().1)
        .collect();
    assert!(
        f[0] == f[1] && f[1] == f[2],
        "own session without a terminal: {l}"
    );
    r.stop();
}

/// `exec`'s supervisor forwards signals to the command's group (SIGUSR1 reaches a helper the
/// command started) and exits with the command's status, 128+N for signal N.
#[test]
fn exec_supervisor_forwards_signals_and_exits_with_the_commands_status() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    let r = start_pid1(&w, &tok);
    let script = "(trap 'echo helper-got-USR1; exit 0' USR1; while :; do sleep 0.05; done) & \
                  trap 'echo got-USR1' USR1; echo ready; wait; wait; kill -TERM $$";
    let mut c = docker_exec(&w, &r, &tok, &[bin(), "exec", "--", "sh", "-c", script]);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut ex = c.spawn().unwrap();
    let mut lines = Lines::new(ex.stdout.take().unwrap());
    let err = reader(ex.stderr.take().unwrap());
    lines.expect("ready", Duration::from_secs(10));
    let sup = wait_for_child(ex.id(), "bottle-init", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: our descendant's pid.
    assert_eq!(unsafe { libc::kill(sup as i32, libc::SIGUSR1) }, 0);
    lines.expect("helper-got-USR1", Duration::from_secs(5));
    let st = wait_timeout(&mut ex, Duration::from_secs(10), "exec status");
    let err = err.join().unwrap();
    assert_eq!(
        st.code(),
        Some(143),
        "{:?} {}",
        lines.seen,
        String::from_utf8_lossy(&err)
    );
    assert!(lines.seen.iter().any(|l| l.contains("got-USR1")));
    assert!(!contains(&err, tok.as_bytes()));
    r.stop();
}

/// `curl ARGS` inside PID 1's network namespace (its proxy is on its loopback): the status
/// code it printed.
fn curl_in(r: &Running, args: &[&str]) -> String {
    let o = std::process::Command::new("nsenter")
        .arg("-t")
        .arg(r.init.to_string())
        .args([
            "-n",
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Issue 12: `bottle-init status [--json]`, run like `docker exec C /bottle-init status`,
/// reports what PID 1 answered (JSON with exactly the issue's keys), never a secret; the
/// child's uid is refused by the socket's directory and, were its modes loosened, by the
/// SO_PEERCRED check; once PID 1 is gone, 69.
#[test]
fn status_reports_what_pid1_served_and_only_to_root() {
    if !require_root() {
        return;
    }
    for tool in ["nsenter", "curl"] {
        assert!(
            which(tool).is_some() || std::env::var("CI").as_deref() != Ok("true"),
            "{tool} missing"
        );
    }
    let w = World::new();
    let tok = token();
    let r = start_pid1(&w, &tok);
    let base = r.url.clone();
    // Three requests the proxy answers itself: 200 (warm-up), 401, 404.
    assert_eq!(curl_in(&r, &["-I", &format!("{base}/")]), "200");
    let wrong = format!("Authorization: Bearer {}", random_hex(32));
    assert_eq!(
        curl_in(&r, &["-H", &wrong, &format!("{base}/v1/models")]),
        "401"
    );
    let right = format!("Authorization: Bearer {}", r.session);
    assert_eq!(curl_in(&r, &["-H", &right, &format!("{base}/nope")]), "404");

    let o = bottle_init_into(&w, &r, &tok, &["status", "--json"], None);
    o.assert_code(0);
    o.assert_no_secret(&tok);
    o.assert_no_secret(&r.session);
    let v: serde_json::Value = serde_json::from_str(o.out().trim()).expect("status --json parses");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "uptime_s",
        "requests",
        "by_status",
        "tokens",
        "by_model",
        "egress",
        "connections",
    ];
    let mut got = keys.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{}", o.out());
    assert_eq!(v["requests"], 3, "{}", o.out());
    for code in ["200", "401", "404"] {
        assert_eq!(v["by_status"][code], 1, "{code}: {}", o.out());
    }
    assert_eq!(v["by_status"].as_object().unwrap().len(), 3);
    for kind in ["input", "output", "cache_read", "cache_write"] {
        assert_eq!(v["tokens"][kind], 0, "{}", o.out());
    }
    assert_eq!(v["egress"]["allowed"], 0);
    assert_eq!(v["egress"]["denied"], 0);
    assert!(
        v["uptime_s"].is_u64() && v["connections"].is_u64(),
        "{}",
        o.out()
    );

    let o = bottle_init_into(&w, &r, &tok, &["status"], None);
    o.assert_code(0);
    assert!(
        o.out().contains("requests: 3 (200: 1, 401: 1, 404: 1)"),
        "{}",
        o.describe()
    );
    o.assert_no_secret(&tok);
    o.assert_no_secret(&r.session);

    // As the child's uid: `status` refuses (77), and the socket cannot even be reached. The
    // attacker's client is curl (HTTP/0.9 allowed, so any answer is printed), under strace
    // to see what connect(2) said.
    let sock = w.run_dir().join("status.sock");
    let sock_str = sock.display().to_string();
    let as_uid = |uid: u32| {
        use std::os::unix::process::CommandExt;
        let o = std::process::Command::new("strace")
            .args([
                "-e",
                "trace=connect",
                "curl",
                "-s",
                "--http0.9",
                "--max-time",
                "5",
            ])
            .args(["--unix-socket", &sock_str, "http://status/"])
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap();
        let connect = String::from_utf8_lossy(&o.stderr)
            .lines()
            .find(|l| l.contains(&sock_str))
            .unwrap_or_default()
            .to_string();
        (connect, String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (connect, out) = as_uid(TEST_UID);
    assert!(
        connect.ends_with("= -1 EACCES (Permission denied)"),
        "{connect}"
    );
    assert_eq!(out, "");
    let o = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(bin())
            .arg("status")
            .env("BOTTLE_RUN_DIR", w.run_dir())
            .uid(TEST_UID)
            .gid(TEST_UID)
            .output()
            .unwrap()
    };
    assert_eq!(o.status.code(), Some(77), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    // Loosen the modes as a careless admin might: the connection is made, but PID 1 answers
    // nothing to a peer that is not root. Root gets an answer (the control: the same client
    // reaches the server and prints what it sends).
    std::fs::set_permissions(w.run_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (connect, out) = as_uid(TEST_UID);
    assert!(connect.ends_with("= 0"), "{connect}");
    assert_eq!(out, "", "uid {TEST_UID} got an answer");
    let (connect, out) = as_uid(0);
    assert!(connect.ends_with("= 0"), "{connect}");
    assert!(out.contains("requests: 3"), "root got no answer: {out:?}");
    std::fs::set_permissions(w.run_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    r.stop();
    // PID 1 is gone: 69, and its socket went with it.
    let o = bottle_init_into_gone(&w, &tok);
    assert_eq!(o.status.code(), Some(69), "{o:?}");
    assert!(!sock.exists(), "status socket left behind");
}

/// `bottle-init status` with no PID 1 running (from outside any namespace).
fn bottle_init_into_gone(w: &World, tok: &str) -> std::process::Output {
    std::process::Command::new(bin())
        .arg("status")
        .env("CLAUDE_CODE_OAUTH_TOKEN", tok)
        .env("BOTTLE_RUN_DIR", w.run_dir())
        .output()
        .unwrap()
}

/// Issue 12: a bad `BOTTLE_MAX_*` or `BOTTLE_LOG_FORMAT` refuses at start-up with one line
/// naming the variable and exit 78, before the command runs; a good one starts.
#[test]
fn bad_usage_limits_and_log_format_refuse_with_78() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let tok = token();
    // The home belongs to the child's uid, so the command can leave its mark there.
    let ran = w.home().join("command-ran");
    let touch = format!("touch {}", ran.display());
    for (var, v) in [
        ("BOTTLE_MAX_TOKENS", "0"),
        ("BOTTLE_MAX_TOKENS", "1e6"),
        ("BOTTLE_MAX_REQUESTS_PER_MINUTE", "-1"),
        ("BOTTLE_MAX_REQUESTS_PER_MINUTE", "sixty"),
        ("BOTTLE_LOG_FORMAT", "xml"),
    ] {
        let o = run(
            &w,
            Opts::new(false, &["sh", "-c", &touch])
                .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
                .env(var, v),
        );
        o.assert_code(78);
        let err = o.err();
        assert_eq!(err.lines().count(), 1, "{}", o.describe());
        assert!(
            err.starts_with("bottle-init: error: ") && err.contains(&format!("{var}=\"{v}\"")),
            "{}",
            o.describe()
        );
        assert!(!ran.exists(), "{var}={v}: the command ran");
        o.assert_no_secret(&tok);
    }
    let o = run(
        &w,
        Opts::new(false, &["sh", "-c", &touch])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &tok)
            .env("BOTTLE_MAX_TOKENS", "1000")
            .env("BOTTLE_MAX_REQUESTS_PER_MINUTE", "5")
            .env("BOTTLE_LOG_FORMAT", "json")
            .env("BOTTLE_LOG", "info"),
    );
    o.assert_code(0);
    assert!(ran.exists(), "{}", o.describe());
    for l in o.err().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["msg"].is_string(), "{l}");
    }
    assert!(o.err().contains("BOTTLE_MAX_TOKENS"), "{}", o.describe());
}
