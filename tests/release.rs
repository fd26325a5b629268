//! The release and pin scripts, run as a maintainer runs them:
//! - `scripts/release` (through the private dockerd, like tests/docker.rs) writes both static
//!   binaries and SHA256SUMS; the sums verify, each binary is a static ELF of its architecture,
//!   and each prints the version naming the commit (the aarch64 one under qemu-user);
//! - `scripts/update-claude-code` against the real npm registry: re-pinning the pinned release
//!   reproduces scripts/claude-code.env byte for byte (so its integrities are npm's), an unknown
//!   release is refused without touching the file, and no argument pins the registry's latest.

mod support;

use std::path::Path;
use std::process::Command;

use support::e2e::docker::*;
use support::e2e::*;
use support::git_head;

#[test]
fn release_script_builds_both_static_binaries_with_checksums() {
    let _g = heavy();
    if let Err(e) = engine().and_then(|_| arm64_emulation()) {
        require(false, &e);
        return;
    }
    let dist = tempfile::tempdir().unwrap();
    let o = Command::new(repo().join("scripts/release"))
        .args(["--network", "host"])
        .env("BOTTLE_DIST", dist.path())
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "scripts/release: {}", text(&o));
    let v = env!("CARGO_PKG_VERSION");
    let mut names: Vec<String> = std::fs::read_dir(dist.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let x86 = format!("bottle-init-{v}-x86_64-linux-musl");
    let arm = format!("bottle-init-{v}-aarch64-linux-musl");
    assert_eq!(names, ["SHA256SUMS".to_string(), arm.clone(), x86.clone()]);
    let o = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(dist.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "sha256sum -c: {}", text(&o));
    let sums = std::fs::read_to_string(dist.path().join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 2, "{sums}");
    let want = format!("bottle-init {v} ({})", git_head().expect("a git clone"));
    for (name, machine, runner) in [
        (&x86, EM_X86_64, None),
        (&arm, EM_AARCH64, Some("qemu-aarch64-static")),
    ] {
        let path = dist.path().join(name);
        let (m, is_static) = elf_info(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(m, machine, "{name}");
        assert!(is_static, "{name} is not static");
        let o = match runner {
            Some(r) => Command::new(r).arg(&path).arg("--version").output(),
            None => Command::new(&path).arg("--version").output(),
        }
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
        assert!(o.status.success(), "{name}: {}", text(&o));
        assert_eq!(stdout(&o), want, "{name}");
    }
}

/// A copy of scripts/update-claude-code and scripts/claude-code.env in a temp checkout, so the
/// tests never change the real pin.
fn pin_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    for f in ["update-claude-code", "claude-code.env"] {
        std::fs::copy(
            repo().join("scripts").join(f),
            dir.path().join("scripts").join(f),
        )
        .unwrap();
    }
    dir
}

fn update(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(dir.join("scripts/update-claude-code"))
        .args(args)
        .output()
        .expect("run scripts/update-claude-code")
}

fn npm_ok() -> bool {
    require(
        have_tool("npm"),
        "npm (apt-get install npm): scripts/update-claude-code uses it",
    )
}

#[test]
fn update_claude_code_reproduces_the_pin_from_the_registry() {
    if !npm_ok() {
        return;
    }
    let pinned = std::fs::read_to_string(repo().join("scripts/claude-code.env")).unwrap();
    let version = pinned
        .lines()
        .find_map(|l| l.strip_prefix("CLAUDE_CODE_VERSION="))
        .expect("CLAUDE_CODE_VERSION in scripts/claude-code.env")
        .to_string();
    let dir = pin_copy();
    // Scramble the copy's integrities first, so only the registry's answer can restore them.
    let env = dir.path().join("scripts/claude-code.env");
    let scrambled: String = pinned
        .lines()
        .map(|l| match l.split_once('=') {
            Some((k, _)) if k.starts_with("CLAUDE_CODE_INTEGRITY_") => format!("{k}=sha512-x\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&env, scrambled).unwrap();
    let o = update(dir.path(), &[&version]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        pinned,
        "the registry's integrities for {version} differ from scripts/claude-code.env"
    );
}

#[test]
fn update_claude_code_refuses_unknown_or_malformed_versions() {
    if !npm_ok() {
        return;
    }
    let dir = pin_copy();
    let env = dir.path().join("scripts/claude-code.env");
    let before = std::fs::read(&env).unwrap();
    for (arg, says) in [
        ("0.0.999999", "no sha512 integrity"),
        ("latest; rm -rf /", "not a release version"),
    ] {
        let o = update(dir.path(), &[arg]);
        assert_eq!(o.status.code(), Some(1), "{arg}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("update-claude-code: error: ") && err.contains(says),
            "{arg}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert_eq!(
            std::fs::read(&env).unwrap(),
            before,
            "{arg} changed the pin"
        );
    }
}

#[test]
fn update_claude_code_without_argument_pins_the_latest_release() {
    if !npm_ok() {
        return;
    }
    let o = Command::new("npm")
        .args([
            "view",
            "--silent",
            "@anthropic-ai/claude-code@latest",
            "version",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let latest = stdout(&o);
    let dir = pin_copy();
    let o = update(dir.path(), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let env = std::fs::read_to_string(dir.path().join("scripts/claude-code.env")).unwrap();
    assert!(
        env.contains(&format!("\nCLAUDE_CODE_VERSION={latest}\n")),
        "{env}"
    );
    for k in [
        "CLAUDE_CODE_INTEGRITY_X64=sha512-",
        "CLAUDE_CODE_INTEGRITY_ARM64=sha512-",
    ] {
        assert_eq!(env.matches(k).count(), 1, "{k}: {env}");
    }
}
