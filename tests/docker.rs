//! Real container tests: the top-level Dockerfile, built with local base images, run by a real
//! Docker engine with its default capabilities and seccomp profile and `--network none`.
//!
//! Inputs (set by scripts/test): DOCKER_HOST (a private dockerd), BOTTLE_TEST_BASE_IMAGE (a
//! debootstrapped bookworm, used for both the Rust and the runtime stage), BOTTLE_TEST_MUSL_BIN
//! (the static bottle-init just built; the Dockerfile's BOTTLE_INIT_BIN takes it instead of
//! running cargo, since the base image has no Rust), BOTTLE_TEST_CLAUDE_TARBALL (the npm
//! tarball of the native Claude Code package; its integrity is checked by the Dockerfile
//! against the pinned value). The build uses the legacy builder (dockerd 20.10, no buildx) and
//! `--network host` only for the Debian mirror.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e_support::mock::{Expect, Mock, MockConfig, MockIdentity};
use e2e_support::*;

const IMAGE: &str = "bottle-init:test";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run the docker CLI")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn env_path(var: &str, hint: &str) -> Result<PathBuf, String> {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .ok_or(format!("{var} is unset ({hint})"))?;
    if !p.exists() {
        return Err(format!("{var}={} does not exist ({hint})", p.display()));
    }
    Ok(p)
}

/// Builds the image once per test binary; every test gets the same result.
fn build_image() -> Result<String, String> {
    if !is_root() {
        return Err("root is needed to talk to the private dockerd".into());
    }
    if std::env::var_os("DOCKER_HOST").is_none() {
        return Err(
            "DOCKER_HOST is unset: scripts/test starts a private dockerd and sets it".into(),
        );
    }
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Err(format!(
                "no Docker engine answers on DOCKER_HOST: {}",
                text(&o)
            ));
        }
        Err(e) => {
            return Err(format!(
                "the docker CLI cannot run ({e}): apt-get install docker.io"
            ));
        }
    }
    let base = std::env::var("BOTTLE_TEST_BASE_IMAGE").map_err(|_| {
        "BOTTLE_TEST_BASE_IMAGE is unset (scripts/test imports a debootstrapped bookworm)"
            .to_string()
    })?;
    let o = docker(&["image", "inspect", &base]);
    if !o.status.success() {
        return Err(format!("base image {base} is missing: {}", text(&o)));
    }
    let bin = env_path(
        "BOTTLE_TEST_MUSL_BIN",
        "cargo build --release --target x86_64-unknown-linux-musl",
    )?;
    let tgz = env_path(
        "BOTTLE_TEST_CLAUDE_TARBALL",
        ".ci/run packs it into .cache/claude-pack",
    )?;

    // The build context a user would send (sources), plus the two prebuilt inputs.
    let ctx = tempfile::Builder::new()
        .prefix("bottle-docker-ctx-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["Dockerfile", ".dockerignore", "Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root.join(f), ctx.path().join(f)).map_err(|e| format!("copy {f}: {e}"))?;
    }
    copy_dir(&root.join("src"), &ctx.path().join("src")).map_err(|e| format!("copy src: {e}"))?;
    let pre = ctx.path().join("prebuilt");
    std::fs::create_dir(&pre).map_err(|e| e.to_string())?;
    std::fs::copy(&bin, pre.join("bottle-init")).map_err(|e| format!("copy bottle-init: {e}"))?;
    if std::fs::hard_link(&tgz, pre.join("claude-code.tgz")).is_err() {
        std::fs::copy(&tgz, pre.join("claude-code.tgz"))
            .map_err(|e| format!("copy tarball: {e}"))?;
    }
    let t0 = Instant::now();
    let ctx_str = ctx.path().to_str().unwrap();
    let o = docker(&[
        "build",
        "--network",
        "host",
        "-t",
        IMAGE,
        "--build-arg",
        &format!("RUST_IMAGE={base}"),
        "--build-arg",
        &format!("BASE_IMAGE={base}"),
        "--build-arg",
        "BOTTLE_INIT_BIN=prebuilt/bottle-init",
        "--build-arg",
        "CLAUDE_CODE_TARBALL=prebuilt/claude-code.tgz",
        ctx_str,
    ]);
    if !o.status.success() {
        return Err(format!("docker build failed: {}", text(&o)));
    }
    eprintln!("docker build of {IMAGE} took {:?}", t0.elapsed());
    Ok(IMAGE.to_string())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), dst)?;
        }
    }
    Ok(())
}

/// The image, or None when a prerequisite is missing and CI is unset (CI=true panics).
fn image() -> Option<&'static str> {
    static IMG: OnceLock<Result<String, String>> = OnceLock::new();
    match IMG.get_or_init(build_image) {
        Ok(s) => Some(s.as_str()),
        Err(e) => {
            require(false, e);
            None
        }
    }
}

/// A detached container removed (`docker rm -f`) when dropped.
struct Container(String);

impl Container {
    fn run(args: &[&str]) -> Container {
        let name = format!("bottle-test-{}", &fake_secret("")[..12]);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        let o = docker(&all);
        assert!(o.status.success(), "docker run failed: {}", text(&o));
        Container(name)
    }
    fn exec(&self, cmd: &[&str]) -> Output {
        let mut all = vec!["exec", self.0.as_str()];
        all.extend_from_slice(cmd);
        docker(&all)
    }
    fn inspect(&self, fmt: &str) -> String {
        stdout(&docker(&["inspect", "-f", fmt, &self.0]))
    }
    fn logs(&self) -> String {
        text(&docker(&["logs", &self.0]))
    }
    /// Waits until a process named `name` runs in the container.
    fn wait_for_process(&self, name: &str) {
        let t0 = Instant::now();
        loop {
            let o = self.exec(&["ps", "-eo", "comm="]);
            if o.status.success() && stdout(&o).lines().any(|l| l.trim() == name) {
                return;
            }
            if self.inspect("{{.State.Running}}") == "false" {
                panic!(
                    "container {} exited ({}) before {name} ran; logs: {}",
                    self.0,
                    self.inspect("{{.State.ExitCode}}"),
                    self.logs()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{name} never ran in {}: {}\nlogs: {}",
                self.0,
                text(&o),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

fn caps_zero(status: &str) {
    for key in ["CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no {key} in:\n{status}"));
        assert!(
            line.ends_with("0000000000000000"),
            "{line} (want all capabilities gone)"
        );
    }
}

/// The image: bottle-init as entrypoint, claude as command, root as user, no tini, the pinned
/// claude, a uid-1000 user with a home, and none of this machine's intercepting CAs inside.
#[test]
fn image_layout_and_no_build_time_ca() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let cfg = stdout(&docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.User}}",
        img,
    ]));
    assert!(
        cfg.starts_with(r#"["/bottle-init"] ["claude"] "#),
        "entrypoint/cmd/user: {cfg}"
    );
    assert!(
        matches!(cfg.rsplit(' ').next(), Some("root") | Some("")),
        "user: {cfg}"
    );
    let script = "claude --version; getent passwd claude; ls -ld /home/claude /workspace; \
                  command -v tini docker-init || echo no-tini; ls -A /usr/local/share/ca-certificates";
    let o = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        img,
        "-c",
        script,
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", text(&o));
    let want = std::env::var("BOTTLE_TEST_CLAUDE_VERSION")
        .expect("BOTTLE_TEST_CLAUDE_VERSION (scripts/test reads scripts/claude-code.env)");
    assert!(out.starts_with(&format!("{want} (Claude Code)")), "{out}");
    assert!(
        out.contains("claude:x:1000:1000::/home/claude:/bin/bash"),
        "{out}"
    );
    assert!(out.contains("no-tini"), "{out}");
    let bundle = stdout(&docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "cat",
        img,
        "/etc/ssl/certs/ca-certificates.crt",
    ]));
    assert!(
        bundle.contains("BEGIN CERTIFICATE"),
        "the image trusts the public roots"
    );
    let mut checked = 0;
    for e in std::fs::read_dir("/usr/local/share/ca-certificates")
        .into_iter()
        .flatten()
        .flatten()
    {
        let pem = std::fs::read_to_string(e.path()).unwrap_or_default();
        // A line from the middle of the certificate body identifies it.
        let lines: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        if let Some(line) = lines.get(lines.len() / 2) {
            assert!(
                !bundle.contains(line),
                "the build machine's CA {} is inside the image",
                e.path().display()
            );
            checked += 1;
        }
    }
    eprintln!("checked {checked} local CA(s) are absent from the image");
}

/// `docker run` with default caps and seccomp: bottle-init is PID 1; the command runs as uid
/// 1000 with no capabilities and no token in its environment, and cannot read PID 1's.
#[test]
fn pid1_runs_the_command_as_uid_1000_without_caps_or_token() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-docker-");
    let script = "echo PID1=$(cat /proc/1/comm); grep -E '^(Uid|Gid|Groups|Cap...|NoNewPrivs):' /proc/self/status; \
                  echo ENV; env; echo ENDENV; \
                  if cat /proc/1/environ >/dev/null 2>&1; then echo PID1ENV=readable; else echo PID1ENV=denied; fi";
    let env = format!("CLAUDE_CODE_OAUTH_TOKEN={token}");
    let o = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-e",
        &env,
        img,
        "sh",
        "-c",
        script,
    ]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let out = stdout(&o);
    assert!(out.contains("PID1=bottle-init"), "{all}");
    assert!(out.contains("Uid:\t1000\t1000\t1000\t1000"), "{all}");
    assert!(out.contains("Gid:\t1000\t1000\t1000\t1000"), "{all}");
    assert!(out.contains("NoNewPrivs:\t1"), "{all}");
    caps_zero(&out);
    assert!(out.contains("PID1ENV=denied"), "{all}");
    assert!(
        out.contains("ANTHROPIC_BASE_URL=http://127.0.0.1:"),
        "{all}"
    );
    assert!(out.contains("HOME=/home/claude"), "{all}");
    assert_absent(
        &all,
        &token,
        "the container's output (command and bottle-init log)",
    );
}

/// Docker gives `docker exec` processes the container's configured environment, token
/// included (Docker's behaviour, which the README documents); `bottle-init exec` strips it,
/// drops to uid 1000 and points the command at PID 1's proxy.
#[test]
fn docker_exec_sees_the_token_but_bottle_init_exec_does_not() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-exec-");
    let env = format!("CLAUDE_CODE_OAUTH_TOKEN={token}");
    let c = Container::run(&["--network", "none", "-e", &env, img, "sleep", "300"]);
    c.wait_for_process("sleep");
    let plain = c.exec(&["printenv", "CLAUDE_CODE_OAUTH_TOKEN"]);
    assert_eq!(
        stdout(&plain),
        token,
        "Docker's own behaviour changed? {}",
        text(&plain)
    );
    let o = c.exec(&[
        "/bottle-init",
        "exec",
        "--",
        "sh",
        "-c",
        "id -u; env; grep -E '^Cap(Eff|Prm|Bnd|Amb|Inh):' /proc/self/status",
    ]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert_absent(&all, &token, "`docker exec C /bottle-init exec ...` output");
    let out = stdout(&o);
    assert_eq!(out.lines().next(), Some("1000"), "{all}");
    assert!(
        out.contains("ANTHROPIC_BASE_URL=http://127.0.0.1:"),
        "{all}"
    );
    assert!(
        out.contains("CLAUDE_CODE_OAUTH_TOKEN="),
        "the placeholder is there: {all}"
    );
    caps_zero(&out);
    assert_absent(&c.logs(), &token, "docker logs");
}

/// `docker stop` sends SIGTERM to PID 1, which forwards it: the child's trap runs, and the
/// container exits with the child's status long before Docker's 10 s SIGKILL.
#[test]
fn docker_stop_delivers_sigterm_and_exits_with_the_childs_status() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-stop-");
    let env = format!("CLAUDE_CODE_OAUTH_TOKEN={token}");
    let script =
        "trap 'echo child got TERM; exit 42' TERM; echo ready; while :; do sleep 0.2; done";
    for (cmd, want) in [
        (vec!["sh", "-c", script], "42"),
        (vec!["sleep", "300"], "143"),
    ] {
        let mut args = vec!["--network", "none", "-e", &env, img];
        args.extend_from_slice(&cmd);
        let c = Container::run(&args);
        c.wait_for_process(cmd[0]);
        let t0 = Instant::now();
        let o = docker(&["stop", "-t", "10", &c.0]);
        let took = t0.elapsed();
        assert!(o.status.success(), "{}", text(&o));
        let code = c.inspect("{{.State.ExitCode}}");
        eprintln!(
            "docker stop of `{}` took {took:?}, exit code {code}",
            cmd.join(" ")
        );
        assert_eq!(
            code,
            want,
            "exit status of `{}`; logs: {}",
            cmd.join(" "),
            c.logs()
        );
        assert!(
            took < Duration::from_secs(5),
            "docker stop took {took:?} (Docker kills after 10 s)"
        );
        if want == "42" {
            assert!(c.logs().contains("child got TERM"), "{}", c.logs());
        }
        assert_absent(&c.logs(), &token, "docker logs");
    }
}

/// `docker run --init` puts Docker's tini in front: bottle-init is then not PID 1 but still
/// drops, forwards and exits with the child's status.
#[test]
fn docker_run_init_stacking_still_works() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-stack-");
    let env = format!("CLAUDE_CODE_OAUTH_TOKEN={token}");
    let script = "echo PID1=$(cat /proc/1/comm); echo UID=$(id -u); env; exit 7";
    let o = docker(&[
        "run",
        "--rm",
        "--init",
        "--network",
        "none",
        "-e",
        &env,
        img,
        "sh",
        "-c",
        script,
    ]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(7), "{all}");
    assert!(stdout(&o).contains("PID1=docker-init"), "{all}");
    assert!(stdout(&o).contains("UID=1000"), "{all}");
    assert_absent(&all, &token, "output under --init");
    // And stop still reaches the child through both inits.
    let c = Container::run(&[
        "--init",
        "--network",
        "none",
        "-e",
        &env,
        img,
        "sleep",
        "300",
    ]);
    c.wait_for_process("sleep");
    let t0 = Instant::now();
    assert!(docker(&["stop", "-t", "10", &c.0]).status.success());
    let took = t0.elapsed();
    assert_eq!(
        c.inspect("{{.State.ExitCode}}"),
        "143",
        "logs: {}",
        c.logs()
    );
    assert!(
        took < Duration::from_secs(5),
        "docker stop with --init took {took:?}"
    );
}

/// The real claude inside the container, against the mock. With `--network none` nothing
/// outside can be reached, so the mock listens INSIDE the container's network namespace (the
/// test joins it with setns) on a fixed port; its CA is mounted read-only. Two paths:
/// `docker exec C /bottle-init exec -- claude -p ...` into a running container, and a second
/// container sharing that namespace whose main command is `claude -p ...`.
#[test]
fn real_claude_in_the_container_against_the_mock() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-incontainer-");
    let reply = "container reply from the mock";
    const PORT: u16 = 8443;
    let identity = MockIdentity::generate().expect("mock certificate");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("mock-ca.pem");
    std::fs::write(&ca, &identity.ca_pem).unwrap();
    let mount = format!("{}:/etc/bottle-test/mock-ca.pem:ro", ca.display());
    let envs = [
        format!("CLAUDE_CODE_OAUTH_TOKEN={token}"),
        format!("BOTTLE_UPSTREAM=https://localhost:{PORT}"),
        "BOTTLE_UPSTREAM_CA=/etc/bottle-test/mock-ca.pem".to_string(),
    ];
    let mut args: Vec<&str> = vec!["--network", "none", "-v", &mount];
    for e in &envs {
        args.extend_from_slice(&["-e", e]);
    }
    let mut first = args.clone();
    first.extend_from_slice(&[img, "sleep", "300"]);
    let c = Container::run(&first);
    c.wait_for_process("sleep");
    let pid: u32 = c.inspect("{{.State.Pid}}").parse().expect("container pid");
    let ns = NetNs::of_pid(pid).expect("the container's network namespace");
    let listeners = ns
        .listen_localhost(PORT)
        .expect("listen inside the container's namespace");
    let mock = Mock::start_with(
        listeners,
        MockConfig::new(Expect::Bearer(token.clone()), reply),
        Some(identity),
    )
    .expect("start the mock");

    let o = c.exec(&[
        "/bottle-init",
        "exec",
        "--",
        "claude",
        "-p",
        "exec prompt in container",
    ]);
    let all = text(&o);
    assert!(o.status.success(), "{all}\nlogs: {}", c.logs());
    assert!(stdout(&o).contains(reply), "{all}");
    assert_absent(&all, &token, "exec'd claude's output");

    // claude as the main command of a container that shares the namespace the mock is in.
    let net = format!("container:{}", c.0);
    let mut second: Vec<&str> = vec!["--rm", "--network", &net, "-v", &mount];
    for e in &envs {
        second.extend_from_slice(&["-e", e]);
    }
    second.extend_from_slice(&[img, "claude", "-p", "main prompt in container"]);
    let mut run = vec!["run"];
    run.extend_from_slice(&second);
    let o = docker(&run);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(stdout(&o).contains(reply), "{all}");
    assert_absent(&all, &token, "claude's output as the container command");

    for prompt in ["exec prompt in container", "main prompt in container"] {
        let req = mock
            .messages()
            .into_iter()
            .find(|r| String::from_utf8_lossy(&r.body).contains(prompt))
            .unwrap_or_else(|| panic!("{prompt:?} never reached the mock: {:?}", mock.requests()));
        assert_eq!(req.header_all("authorization"), [format!("Bearer {token}")]);
        let beta = req.header_all("anthropic-beta").join(",");
        assert!(beta.contains("oauth-2025-04-20"), "{beta}");
    }
}

/// BOTTLE_EGRESS in a real container (issue 5): `api-only` under Docker's default capabilities
/// and seccomp profile, `allowlist` with `--cap-add NET_ADMIN` (and refusing to start without
/// it). The real claude reaches the mock through `bottle-init exec` in both; a uid-1000 shell
/// cannot open a TCP connection to the same mock port directly.
#[test]
fn egress_modes_in_the_container() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-egress-container-");
    let reply = "locked container reply";
    const PORT: u16 = 8443;

    // allowlist without NET_ADMIN: refuses to start, names what is missing, runs nothing.
    let o = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-e",
        &format!("CLAUDE_CODE_OAUTH_TOKEN={token}"),
        "-e",
        "BOTTLE_EGRESS=allowlist",
        img,
        "sh",
        "-c",
        "echo CHILD-RAN",
    ]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(77), "{all}");
    assert!(all.contains("CAP_NET_ADMIN"), "{all}");
    assert!(!all.contains("CHILD-RAN"), "{all}");
    assert_absent(&all, &token, "refused start");

    for (mode, caps) in [("api-only", None), ("allowlist", Some("NET_ADMIN"))] {
        let identity = MockIdentity::generate().expect("mock certificate");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("mock-ca.pem");
        std::fs::write(&ca, &identity.ca_pem).unwrap();
        let mount = format!("{}:/etc/bottle-test/mock-ca.pem:ro", ca.display());
        let envs = [
            format!("CLAUDE_CODE_OAUTH_TOKEN={token}"),
            format!("BOTTLE_UPSTREAM=https://localhost:{PORT}"),
            "BOTTLE_UPSTREAM_CA=/etc/bottle-test/mock-ca.pem".to_string(),
            format!("BOTTLE_EGRESS={mode}"),
        ];
        let mut args: Vec<&str> = vec!["--network", "none", "-v", &mount];
        if let Some(cap) = caps {
            args.extend_from_slice(&["--cap-add", cap]);
        }
        for e in &envs {
            args.extend_from_slice(&["-e", e]);
        }
        args.extend_from_slice(&[img, "sleep", "300"]);
        let c = Container::run(&args);
        c.wait_for_process("sleep");
        let pid: u32 = c.inspect("{{.State.Pid}}").parse().expect("container pid");
        let ns = NetNs::of_pid(pid).expect("the container's network namespace");
        let listeners = ns.listen_localhost(PORT).expect("listen in the container");
        let mock = Mock::start_with(
            listeners,
            MockConfig::new(Expect::Bearer(token.clone()), reply),
            Some(identity),
        )
        .expect("start the mock");

        let o = c.exec(&[
            "/bottle-init",
            "exec",
            "--",
            "claude",
            "-p",
            "locked prompt",
        ]);
        let all = text(&o);
        assert!(o.status.success(), "{mode}: {all}\nlogs: {}", c.logs());
        assert!(stdout(&o).contains(reply), "{mode}: {all}");
        assert_absent(&all, &token, "exec'd claude's output");
        let req = mock
            .messages()
            .into_iter()
            .find(|r| String::from_utf8_lossy(&r.body).contains("locked prompt"))
            .unwrap_or_else(|| panic!("{mode}: the prompt never reached the mock"));
        assert_eq!(req.header_all("authorization"), [format!("Bearer {token}")]);

        // The same mock port, directly from the child user: refused by seccomp (api-only:
        // no IP socket at all) or by the nftables rules (allowlist: only the proxy's port).
        let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{PORT} && echo DIRECT-OK");
        let o = c.exec(&["/bottle-init", "exec", "--", "bash", "-c", &probe]);
        let all = text(&o);
        assert!(
            !o.status.success() && !all.contains("DIRECT-OK"),
            "{mode}: {all}"
        );
        // Both locked modes put the child under a seccomp filter (allowlist: the socket-family
        // one), under Docker's own default profile.
        let o = c.exec(&[
            "/bottle-init",
            "exec",
            "--",
            "grep",
            "^Seccomp:",
            "/proc/self/status",
        ]);
        assert_eq!(
            stdout(&o).split_whitespace().last(),
            Some("2"),
            "{mode}: {}",
            text(&o)
        );
        let logs = c.logs();
        assert_absent(&logs, &token, "container logs");
        let want = match mode {
            "api-only" => "BOTTLE_EGRESS=api-only",
            _ => "nftables rules installed and verified",
        };
        assert!(logs.contains(want), "{mode}: {logs}");
    }
}
