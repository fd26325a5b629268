//! The drop-in for existing images: the Dockerfile's `bottle-init` stage (only /bottle-init,
//! for both architectures) and an existing devcontainer-style image (Debian's nodejs + npm,
//! `npm install -g @anthropic-ai/claude-code@<pin>`, user `node` uid 1000, its own
//! ENTRYPOINT) migrated as the README's "Add bottle-init to your own image" shows. The real
//! claude runs through it against the mock, as the container's command and through
//! `docker run -d` + `docker exec -it C /bottle-init exec claude` on a pty. Inputs as
//! tests/docker.rs.

mod support;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use support::e2e::docker::*;
use support::e2e::*;

/// `docker build --target bottle-init -t bottle-init .`, the README's command.
fn dropin() -> Option<&'static str> {
    static IMG: OnceLock<Result<String, String>> = OnceLock::new();
    match IMG.get_or_init(|| build_readme(None, "bottle-init", &["--target", "bottle-init"])) {
        Ok(s) => Some(s.as_str()),
        Err(e) => {
            require(false, e);
            None
        }
    }
}

/// The paths inside an image's only layer.
fn layer_paths(image: &str) -> Vec<String> {
    let layers = stdout(&docker(&[
        "image",
        "inspect",
        "-f",
        "{{len .RootFS.Layers}}",
        image,
    ]));
    assert_eq!(layers, "1", "{image} should have exactly one layer");
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    let o = docker(&["save", "-o", tar.to_str().unwrap(), image]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("sh")
        .arg("-c")
        .arg("tar -xOf \"$1\" --wildcards '*/layer.tar' | tar -t")
        .arg("sh")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    stdout(&o).lines().map(str::to_string).collect()
}

/// The drop-in image holds /bottle-init and nothing else, a static binary for the platform it
/// was built for, on amd64 and (cross-built, run under emulation) arm64; both print the
/// version naming the commit.
#[test]
fn dropin_stage_holds_only_the_static_binary_for_both_architectures() {
    let _g = heavy();
    let Some(amd64) = dropin() else { return };
    let arm64 = match arm64_emulation().and_then(|_| {
        build_readme(
            Some("linux/arm64"),
            "bottle-init:arm64",
            &["--target", "bottle-init"],
        )
    }) {
        Ok(s) => s,
        Err(e) => {
            require(false, &e);
            return;
        }
    };
    for (img, platform, machine) in [
        (amd64, "linux/amd64", EM_X86_64),
        (arm64.as_str(), "linux/arm64", EM_AARCH64),
    ] {
        assert_eq!(platform_of(img), platform);
        assert_eq!(layer_paths(img), ["bottle-init"], "{img}");
        let (m, is_static) = elf_info(&file_from_image(img, "/bottle-init")).unwrap();
        assert_eq!(m, machine, "{img}");
        assert!(is_static, "{img}: /bottle-init is not static");
        let o = docker(&["run", "--rm", "--network", "none", img, "--version"]);
        assert!(o.status.success(), "{img}: {}", text(&o));
        assert!(
            stdout(&o).starts_with(&format!("bottle-init {} (", env!("CARGO_PKG_VERSION"))),
            "{img}: {}",
            text(&o)
        );
    }
}

/// An existing image in the style of Anthropic's devcontainer, as a user has it.
const BEFORE: &str = r#"FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm ca-certificates git procps \
 && rm -rf /var/lib/apt/lists/*
ARG CLAUDE_CODE_VERSION
# This machine's registry access passes an intercepting CA: npm gets it as a BuildKit secret,
# which is mounted for this one step and never stored in a layer.
RUN --mount=type=secret,id=npm-ca \
    NODE_EXTRA_CA_CERTS=/run/secrets/npm-ca npm install -g --no-audit --no-fund \
        "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
 && npm cache clean --force
RUN useradd --create-home --uid 1000 --shell /bin/bash node \
 && mkdir /workspace && chown node:node /workspace
WORKDIR /workspace
USER node
ENTRYPOINT ["/bin/sh", "-c", "exec \"$@\"", "entrypoint"]
CMD ["sleep", "infinity"]
"#;

/// The README's migration, appended to the existing image (keep in step with README.md).
const MIGRATION: &str = r#"COPY --from=bottle-init /bottle-init /bottle-init
USER root
ENV BOTTLE_USER=node
ENTRYPOINT ["/bottle-init"]
CMD ["claude"]
"#;

/// The README shows the same migration lines the test builds.
#[test]
fn readme_shows_the_tested_migration() {
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(&format!("```dockerfile\n{MIGRATION}```")),
        "README.md's migration example differs from the one tests/docker_dropin.rs builds"
    );
}

fn devcontainer() -> Result<String, String> {
    engine()?;
    let version = std::env::var("BOTTLE_TEST_CLAUDE_VERSION")
        .map_err(|_| "BOTTLE_TEST_CLAUDE_VERSION is unset (scripts/test sets it)".to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ca = dir.path().join("npm-ca.pem");
    let mut pem = String::new();
    for e in std::fs::read_dir("/usr/local/share/ca-certificates")
        .into_iter()
        .flatten()
        .flatten()
    {
        pem += &std::fs::read_to_string(e.path()).unwrap_or_default();
    }
    std::fs::write(&ca, pem).map_err(|e| e.to_string())?;
    let migrated = format!("{BEFORE}\n# --- bottle-init ---\n{MIGRATION}");
    std::fs::write(dir.path().join("Dockerfile"), migrated).map_err(|e| e.to_string())?;
    let o = command()
        .args([
            "build",
            "--network",
            "host",
            "--secret",
            &format!("id=npm-ca,src={}", ca.display()),
            "--build-arg",
            &format!("CLAUDE_CODE_VERSION={version}"),
            "-t",
            "devcontainer-bottle",
            ".",
        ])
        .current_dir(dir.path())
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "building the migrated devcontainer failed: {}",
            text(&o)
        ));
    }
    Ok("devcontainer-bottle".into())
}

fn migrated() -> Option<&'static str> {
    static IMG: OnceLock<Result<String, String>> = OnceLock::new();
    dropin()?;
    match IMG.get_or_init(devcontainer) {
        Ok(s) => Some(s.as_str()),
        Err(e) => {
            require(false, e);
            None
        }
    }
}

/// The migrated image: bottle-init is the entrypoint, claude the command, and the CA that
/// npm needed at build time is nowhere in it.
#[test]
fn migrated_devcontainer_keeps_no_build_ca() {
    let _g = heavy();
    let Some(img) = migrated() else { return };
    let cfg = stdout(&docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}}",
        img,
    ]));
    assert_eq!(cfg, r#"["/bottle-init"] ["claude"]"#);
    assert_debian_trust_store(img);
    // The secret mount left no file behind, and npm's configuration does not name one.
    let o = sh(
        img,
        "ls -A /run/secrets 2>/dev/null | wc -l; npm config get cafile; \
         grep -rls 'BEGIN CERTIFICATE' /root /home/node 2>/dev/null | wc -l",
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["0", "null", "0"], "{}", text(&o));
}

/// The real claude through bottle-init in the migrated image: as the container's command,
/// and through `docker run -d` then `docker exec -it C /bottle-init exec claude` on a pty.
/// The user is `node` (uid 1000); the token never appears in any output or log.
#[test]
fn migrated_devcontainer_runs_claude_through_bottle_init() {
    let _g = heavy();
    let Some(img) = migrated() else { return };
    let token = fake_secret("sk-ant-oat01-devcontainer-");
    let reply = "devcontainer reply from the mock";
    let m = Mocked::start(img, &token, reply, &[]);

    let o = m.run_sharing(img, &[], &["claude", "-p", "devcontainer command prompt"]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(stdout(&o).contains(reply), "{all}");
    assert_absent(&all, &token, "claude's output as the container command");

    let o = m.c.exec(&["/bottle-init", "exec", "--", "id", "-un"]);
    assert_eq!(stdout(&o), "node", "{}", text(&o));

    let mut exec = command();
    exec.args([
        "exec",
        "-it",
        &m.c.0,
        "/bottle-init",
        "exec",
        "claude",
        "-p",
        "devcontainer exec prompt",
    ]);
    let (code, out) = run_on_pty(&mut exec, Duration::from_secs(120));
    assert_eq!(
        code,
        Some(0),
        "docker exec -it on a pty:\n{out}\nlogs: {}",
        m.c.logs()
    );
    assert!(out.contains(reply), "{out}");
    assert_absent(&out, &token, "the terminal of docker exec -it");
    for prompt in ["devcontainer command prompt", "devcontainer exec prompt"] {
        m.assert_prompt_arrived(prompt, &token);
    }
    assert_absent(&m.c.logs(), &token, "docker logs");
}
