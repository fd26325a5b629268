//! The arm64 image (what Docker Desktop on Apple Silicon builds and runs), built on this amd64
//! machine as the README says (`docker build --platform linux/arm64 -t claude-bottle .`: the
//! Rust stage cross-compiles on the build platform, Claude Code's linux-arm64 package is
//! fetched and checked against its own pinned integrity) and run under emulation (the kernel's
//! binfmt_misc handler for qemu-aarch64-static, flag F). Default capabilities and seccomp
//! profile, `--network none`. Inputs as tests/docker.rs.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use support::e2e::docker::*;
use support::e2e::*;
use support::git_head;

/// dockerd 20.10 keeps one platform per tag, so the arm64 build gets its own.
const IMAGE: &str = "claude-bottle:arm64";

fn image() -> Option<&'static str> {
    static IMG: OnceLock<Result<String, String>> = OnceLock::new();
    let r = IMG.get_or_init(|| {
        arm64_emulation()?;
        build_readme(Some("linux/arm64"), IMAGE, &[])
    });
    match r {
        Ok(s) => Some(s.as_str()),
        Err(e) => {
            require(false, e);
            None
        }
    }
}

/// Everything in the image that runs is aarch64: the platform, `uname -m` inside, the static
/// bottle-init and the claude binary; both answer `--version` under emulation (bottle-init
/// naming the commit, claude the pinned release); the trust store is Debian's.
#[test]
fn arm64_image_is_aarch64_throughout() {
    let _g = heavy();
    let Some(img) = image() else { return };
    assert_eq!(platform_of(img), "linux/arm64");
    let (machine, is_static) = elf_info(&file_from_image(img, "/bottle-init")).unwrap();
    assert_eq!(machine, EM_AARCH64, "/bottle-init is not aarch64");
    assert!(is_static, "/bottle-init is not static");
    let (machine, _) = elf_info(&file_from_image(img, "/usr/local/bin/claude")).unwrap();
    assert_eq!(machine, EM_AARCH64, "claude is not the linux-arm64 package");
    let o = sh(img, "uname -m; /bottle-init --version; claude --version");
    let out = stdout(&o);
    assert!(o.status.success(), "{}", text(&o));
    let want = std::env::var("BOTTLE_TEST_CLAUDE_VERSION")
        .expect("BOTTLE_TEST_CLAUDE_VERSION (scripts/test reads scripts/claude-code.env)");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"aarch64"), "{out}");
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with(&format!("bottle-init {} (", env!("CARGO_PKG_VERSION")))),
        "{out}"
    );
    assert!(
        lines
            .get(2)
            .is_some_and(|l| l.starts_with(&format!("{want} (Claude Code)"))),
        "{out}"
    );
    assert_debian_trust_store(img);
}

/// Under emulation as natively: bottle-init is PID 1; the command runs as uid 1000 with no
/// capabilities, `NoNewPrivs`, only the placeholder credential, and cannot read
/// `/proc/1/environ` or `/proc/1/mem`.
#[test]
fn arm64_pid1_drops_to_uid_1000_with_the_placeholder_only() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-arm64-");
    let (all, out) = pid1_probe(img, &token);
    assert!(out.contains("CLAUDE_CODE_OAUTH_TOKEN=bottle-"), "{all}");
    assert_absent(&all, &token, "the arm64 container's output and log");
}

/// The real claude (linux-arm64, emulated) answers through bottle-init's proxy: the mock
/// listens inside the container's network namespace and gets the real token; the output never
/// shows it.
#[test]
fn arm64_real_claude_answers_through_the_proxy() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-arm64-claude-");
    let reply = "arm64 reply from the mock";
    let m = Mocked::start(img, &token, reply, &[]);
    let o = m.run_sharing(img, &[], &["claude", "-p", "arm64 prompt in container"]);
    let all = text(&o);
    assert!(o.status.success(), "{all}\nlogs: {}", m.c.logs());
    assert!(stdout(&o).contains(reply), "{all}");
    assert_absent(&all, &token, "emulated claude's output");
    m.assert_prompt_arrived("arm64 prompt in container", &token);
    assert_absent(&m.c.logs(), &token, "docker logs");
    // Root in the container (default capabilities) is refused PID 1's environment under
    // emulation too: qemu-user passes PR_SET_DUMPABLE through.
    let o = m.c.exec(&["sh", "-c", "head -c1 /proc/1/environ"]);
    assert!(
        !o.status.success(),
        "root read /proc/1/environ: {}",
        text(&o)
    );
    assert!(text(&o).contains("Permission denied"), "{}", text(&o));
    // `docker exec C /bottle-init exec` joins PID 1 under emulation too (PID 1 reads its own
    // identity through a /proc path qemu-user does not answer itself; it exited 69 before):
    // the command runs as uid 1000 with the placeholder, though `docker exec` handed the token.
    let o = m.c.exec(&[
        "/bottle-init",
        "exec",
        "--",
        "sh",
        "-c",
        "id -u; printf '%.7s\\n' \"$CLAUDE_CODE_OAUTH_TOKEN\"",
    ]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert_eq!(stdout(&o), "1000\nbottle-", "{all}");
    assert_absent(&all, &token, "bottle-init exec under emulation");
}

/// What the README says differs under emulation: with `--cap-add SYS_PTRACE` root finds the
/// token in `/proc/1/environ`, because qemu-user keeps its own copy of the environment that
/// bottle-init's scrub (of the guest's copy) cannot reach. Natively the same check finds it
/// zeroed (tests/docker.rs and the README's "Verify the isolation yourself").
#[test]
fn arm64_under_emulation_qemu_keeps_a_copy_of_the_environment() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-arm64-qemu-");
    let c = Container::sleeping(img, &token, &["--cap-add", "SYS_PTRACE"]);
    c.wait_for_process("sleep", Duration::from_secs(60));
    let o = c.exec(&[
        "sh",
        "-c",
        "tr '\\0' '\\n' </proc/1/environ | grep -c \"^CLAUDE_CODE_OAUTH_TOKEN=$CLAUDE_CODE_OAUTH_TOKEN$\"",
    ]);
    assert_eq!(
        stdout(&o),
        "1",
        "qemu-user no longer keeps the environment? Update the README's arm64 section: {}",
        text(&o)
    );
    assert_absent(&c.logs(), &token, "docker logs");
}

/// The native arm64 build gets its own tags (one platform per tag, and not the cross build's).
const NATIVE_IMAGE: &str = "claude-bottle:arm64-native";
const NATIVE_STAGE: &str = "claude-bottle:arm64-native-build";
/// The README's native command: the Rust stage runs on arm64 itself (as on a Mac; here under
/// qemu-user), on the arm64 `rust:1-bookworm` stand-in.
const NATIVE_ARGS: [&str; 2] = ["--build-arg", "RUST_PLATFORM=linux/arm64"];

/// The stand-in registry serves `rust:1-bookworm` for arm64 (scripts/test makes it), so the
/// native build cannot fail for want of its base image with a less clear message.
fn rust_standin_serves_arm64() -> Result<(), String> {
    let reg = std::env::var("BOTTLE_TEST_REGISTRY").map_err(|_| {
        "BOTTLE_TEST_REGISTRY is unset (scripts/test serves the stand-in images)".to_string()
    })?;
    let o = std::process::Command::new("curl")
        .args([
            "-fsS",
            "-H",
            "Accept: application/vnd.docker.distribution.manifest.list.v2+json",
            &format!("http://{reg}/v2/library/rust/manifests/1-bookworm"),
        ])
        .output()
        .map_err(|e| format!("curl cannot run ({e}): apt-get install curl"))?;
    let list = String::from_utf8_lossy(&o.stdout);
    let has_arm64 = list
        .split('"')
        .collect::<Vec<_>>()
        .windows(3)
        .any(|w| w[0] == "architecture" && w[2] == "arm64");
    if !o.status.success() || !has_arm64 {
        return Err(format!(
            "the stand-in registry {reg} serves no arm64 rust:1-bookworm; scripts/test makes it \
             (BOTTLE_STANDIN_RUST_ARCHS, default \"amd64 arm64\"): {}",
            text(&o)
        ));
    }
    Ok(())
}

/// The native path (issue 9: "a native arm64 build must work"): the README's
/// `docker build --platform linux/arm64 --build-arg RUST_PLATFORM=linux/arm64 .` builds the
/// full image with the Rust stage itself on arm64. The stage (rebuilt as its own target, every
/// layer cached) is arm64 with an aarch64 rustc host and took the native branch (musl-gcc, no
/// cross linker); the image's /bottle-init is that stage's binary, static aarch64, and under
/// qemu-user `--version` names the commit; `claude --version` is the pinned release; the
/// trust store is Debian's (the stand-in's CA stayed in the Rust stage).
#[test]
fn arm64_native_build_runs_the_rust_stage_on_arm64() {
    let _g = heavy();
    let built = arm64_emulation()
        .and_then(|()| rust_standin_serves_arm64())
        .and_then(|()| build_readme(Some("linux/arm64"), NATIVE_IMAGE, &NATIVE_ARGS));
    let img = match built {
        Ok(img) => img,
        Err(e) => {
            require(false, &e);
            return;
        }
    };
    assert_eq!(platform_of(&img), "linux/arm64");

    let mut stage_args = NATIVE_ARGS.to_vec();
    stage_args.extend_from_slice(&["--target", "build"]);
    let stage = build_readme(Some("linux/arm64"), NATIVE_STAGE, &stage_args).unwrap();
    assert_eq!(platform_of(&stage), "linux/arm64");
    let o = sh(
        &stage,
        "uname -m; dpkg --print-architecture; rustc -vV | sed -n 's/^host: //p'; cat /build.env",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        stdout(&o),
        "aarch64\narm64\naarch64-unknown-linux-gnu\n\
         TRIPLE=aarch64-unknown-linux-musl\n\
         export CC_aarch64_unknown_linux_musl=musl-gcc",
        "the Rust stage did not run natively on arm64: {}",
        text(&o)
    );

    let bin = file_from_image(&img, "/bottle-init");
    let built = file_from_image(&stage, "/out/bottle-init");
    assert!(
        bin == built,
        "the image's /bottle-init ({} bytes) is not the arm64 Rust stage's binary ({} bytes)",
        bin.len(),
        built.len()
    );
    let (machine, is_static) = elf_info(&bin).unwrap();
    assert_eq!(machine, EM_AARCH64, "/bottle-init is not aarch64");
    assert!(is_static, "/bottle-init is not static");
    let _ = docker(&["rmi", &stage]);

    let o = sh(&img, "uname -m; /bottle-init --version; claude --version");
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    let head = git_head().expect("the build context is a git clone");
    let want = std::env::var("BOTTLE_TEST_CLAUDE_VERSION")
        .expect("BOTTLE_TEST_CLAUDE_VERSION (scripts/test reads scripts/claude-code.env)");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"aarch64"), "{out}");
    assert_eq!(
        lines.get(1).copied(),
        Some(format!("bottle-init {} ({head})", env!("CARGO_PKG_VERSION")).as_str()),
        "--version should name {head}: {out}"
    );
    assert!(
        lines
            .get(2)
            .is_some_and(|l| l.starts_with(&format!("{want} (Claude Code)"))),
        "{out}"
    );
    assert_debian_trust_store(&img);
}
