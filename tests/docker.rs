//! Real container tests: the top-level Dockerfile built the way the README says
//! (`docker build -t claude-bottle .`, cargo inside the Rust stage, Claude Code fetched by the
//! Dockerfile's own download step), run by a real Docker engine with its default capabilities
//! and seccomp profile and `--network none`.
//!
//! Inputs (set by scripts/test): DOCKER_HOST (a private dockerd whose Docker Hub mirror is a
//! local registry, BOTTLE_TEST_REGISTRY, serving stand-ins of `rust:1-bookworm` and
//! `debian:bookworm-slim`, so the Dockerfile's default FROM lines resolve to them), DOCKER_CLI
//! (Debian's 20.10 client, for BuildKit). The one difference from the README's command is
//! `--network host` (the private dockerd has no bridge for RUN steps).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::e2e::docker::*;
use support::e2e::mock::{Mock, MockIdentity};
use support::e2e::*;
use support::git_head;

/// The tag the README's Quick start builds.
const IMAGE: &str = "claude-bottle";

/// The image, or None when a prerequisite is missing and CI is unset (CI=true panics). Built
/// once per test binary.
fn image() -> Option<&'static str> {
    static IMG: OnceLock<Result<String, String>> = OnceLock::new();
    match IMG.get_or_init(|| build_readme(None, IMAGE, &[])) {
        Ok(s) => Some(s.as_str()),
        Err(e) => {
            require(false, e);
            None
        }
    }
}

trait WaitShort {
    fn wait_for(&self, name: &str);
}

impl WaitShort for Container {
    fn wait_for(&self, name: &str) {
        self.wait_for_process(name, Duration::from_secs(20));
    }
}

/// The image: bottle-init as entrypoint, claude as command, root as user, no tini, the pinned
/// claude, a uid-1000 user with a home, linux/amd64, and `--version` naming the commit the
/// build context holds.
#[test]
fn image_layout_version_and_platform() {
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
    assert_eq!(platform_of(img), "linux/amd64");
    let script = "claude --version; getent passwd claude; ls -ld /home/claude /workspace; \
                  command -v tini docker-init || echo no-tini; /bottle-init --version";
    let o = sh(img, script);
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
    let head = git_head().expect("the build context is a git clone");
    assert!(
        out.contains(&format!(
            "bottle-init {} ({head})",
            env!("CARGO_PKG_VERSION")
        )),
        "--version in the image should name {head}: {out}"
    );
}

/// The machine's intercepting CA reaches the build only through the rust stand-in's trust
/// store (as on a user's machine); the final image's trust store is exactly Debian's. The
/// positive control runs the same search on the rust stand-in and must find the CA there.
#[test]
fn final_image_trust_store_is_debians_and_the_control_finds_the_ca() {
    let _g = heavy();
    let Some(img) = image() else { return };
    assert_debian_trust_store(img);
    let cas = machine_ca_lines();
    if !require(
        !cas.is_empty(),
        "no CA under /usr/local/share/ca-certificates: the positive control needs one",
    ) {
        return;
    }
    let rust = "rust:1-bookworm";
    let o = docker(&["pull", "-q", rust]);
    assert!(o.status.success(), "{}", text(&o));
    let bundle = trust_bundle(rust);
    for (path, line) in &cas {
        assert!(
            bundle.contains(line.as_str()),
            "control: the rust stand-in should trust {} (else the search proves nothing)",
            path.display()
        );
    }
}

/// Steps of a `--progress plain` BuildKit log that ran (not taken from the cache) and whose
/// command contains `needle`.
fn ran_steps(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.starts_with('#') && l.contains(" [") && l.contains(needle))
        .filter(|l| {
            let id = l.split_whitespace().next().unwrap_or("");
            !log.lines().any(|m| m == format!("{id} CACHED"))
        })
        .map(|l| l.chars().take(100).collect())
        .collect()
}

/// Builds the image again from the repository with `file` temporarily changed by `edit`, and
/// returns the plain progress log.
fn rebuild_with_edit(img: &str, file: &str, edit: impl Fn(&mut Vec<u8>)) -> String {
    let path = repo().join(file);
    // A file that did not exist is removed again afterwards.
    let original = std::fs::read(&path).ok();
    struct Restore(std::path::PathBuf, Option<Vec<u8>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            match &self.1 {
                Some(b) => std::fs::write(&self.0, b).expect("restore the edited file"),
                None => std::fs::remove_file(&self.0).expect("remove the added file"),
            }
        }
    }
    let _restore = Restore(path.clone(), original.clone());
    let mut edited = original.unwrap_or_default();
    edit(&mut edited);
    std::fs::write(&path, edited).unwrap();
    let t0 = Instant::now();
    let o = command()
        .args([
            "build",
            "--network",
            "host",
            "--progress",
            "plain",
            "-t",
            img,
            ".",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    eprintln!("rebuild after editing {file} took {:?}", t0.elapsed());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A README edit reruns no step: every layer comes from the cache (no cargo build, no Claude
/// Code download, no apt) and the image is the same. Control: a new file under .git (as a
/// fetch or commit makes) must rerun the commit stage's `git log` (so the log check sees a
/// step that runs), and, its one-line result unchanged, still not the cargo build.
#[test]
fn readme_edit_rebuilds_nothing() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let id = || stdout(&docker(&["image", "inspect", "-f", "{{.Id}}", img]));
    let before = id();
    let log = rebuild_with_edit(img, "README.md", |b| {
        b.extend_from_slice(b"\n<!-- an edit by tests/docker.rs -->\n")
    });
    for step in [
        "cargo build",
        "curl -fsSL",
        "apt-get install",
        "claude --version",
    ] {
        let ran = ran_steps(&log, step);
        assert!(ran.is_empty(), "a README edit reran {ran:?}:\n{log}");
    }
    assert_eq!(before, id(), "a README edit changed the image");

    let marker = format!(".git/bottle-test-{}", &fake_secret("")[..12]);
    let log = rebuild_with_edit(img, &marker, |b| b.extend_from_slice(b"x\n"));
    assert!(
        !ran_steps(&log, "git -C /src log").is_empty(),
        "control: a change under .git should rerun the commit stage:\n{log}"
    );
    let ran = ran_steps(&log, "cargo build");
    assert!(ran.is_empty(), "the same commit reran {ran:?}:\n{log}");
    // Back to the committed files: the cache gives the first image again.
    let _ = rebuild_with_edit(img, "README.md", |_| {});
    assert_eq!(
        before,
        id(),
        "the rebuild from the unchanged context differs"
    );
}

/// `docker run` with default caps and seccomp: bottle-init is PID 1; the command runs as uid
/// 1000 with no capabilities and no token in its environment, and cannot read PID 1's.
#[test]
fn pid1_runs_the_command_as_uid_1000_without_caps_or_token() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-docker-");
    let (all, out) = pid1_probe(img, &token);
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
    let c = Container::sleeping(img, &token, &[]);
    c.wait_for("sleep");
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
        c.wait_for(cmd[0]);
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
    let script = "echo PID1=$(cat /proc/1/comm); echo UID=$(id -u); env; exit 7";
    let o = sh_with_token(img, &token, &["--init"], script);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(7), "{all}");
    assert!(stdout(&o).contains("PID1=docker-init"), "{all}");
    assert!(stdout(&o).contains("UID=1000"), "{all}");
    assert_absent(&all, &token, "output under --init");
    // And stop still reaches the child through both inits.
    let c = Container::sleeping(img, &token, &["--init"]);
    c.wait_for("sleep");
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
    let m = Mocked::start(img, &token, reply, &[]);
    let o = m.c.exec(&[
        "/bottle-init",
        "exec",
        "--",
        "claude",
        "-p",
        "exec prompt in container",
    ]);
    let all = text(&o);
    assert!(o.status.success(), "{all}\nlogs: {}", m.c.logs());
    assert!(stdout(&o).contains(reply), "{all}");
    assert_absent(&all, &token, "exec'd claude's output");
    check_status(&m, &token);

    let o = m.run_sharing(img, &[], &["claude", "-p", "main prompt in container"]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(stdout(&o).contains(reply), "{all}");
    assert_absent(&all, &token, "claude's output as the container command");
    for prompt in ["exec prompt in container", "main prompt in container"] {
        m.assert_prompt_arrived(prompt, &token);
    }
    assert_absent(&m.c.logs(), &token, "docker logs");
}

/// Issue 12 in the real image: `docker exec C /bottle-init status --json` (root, Docker's
/// default capabilities) reports the tokens the mock reported for claude's requests (12 input
/// and 7 output per `POST /v1/messages`), by model, and never the token; as uid 1000 it is
/// refused (77).
fn check_status(m: &Mocked, token: &str) {
    let o = m.c.exec(&["/bottle-init", "status", "--json"]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert_absent(&all, token, "`bottle-init status` output");
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("status --json");
    let n = m.mock.messages().len() as u64;
    assert!(n >= 1, "{all}");
    assert_eq!(v["tokens"]["input"], 12 * n, "{all}");
    assert_eq!(v["tokens"]["output"], 7 * n, "{all}");
    let by_model = v["by_model"].as_object().expect("by_model");
    let sum: u64 = by_model
        .values()
        .map(|m| m["input"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 12 * n, "{all}");
    assert!(v["by_status"]["200"].as_u64() >= Some(n), "{all}");
    assert!(v["requests"].as_u64() >= Some(n), "{all}");
    let o = m.c.exec(&["/bottle-init", "status"]);
    assert!(
        stdout(&o).contains(&format!("tokens: input {}", 12 * n)),
        "{}",
        text(&o)
    );
    let o = docker(&[
        "exec",
        "-u",
        "1000",
        &m.c.0,
        "/bottle-init",
        "status",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(77), "{}", text(&o));
    assert!(stdout(&o).is_empty(), "{}", text(&o));
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
    let o = sh_with_token(
        img,
        &token,
        &["-e", "BOTTLE_EGRESS=allowlist"],
        "echo CHILD-RAN",
    );
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
        c.wait_for("sleep");
        let mock = mock_in_netns_of(&c, PORT, &token, reply, identity);

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
            .message_containing("locked prompt")
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
        // `bottle-init check` proves the mode from inside (its direct attempt aims at the
        // mock's port in this container, which only the proxy may reach).
        let target = format!("127.0.0.1:{PORT}");
        let o = c.exec(&["/bottle-init", "check", "--probe", &target]);
        let all = text(&o);
        assert_absent(&all, &token, "check's output");
        eprintln!("check in the {mode} container:\n{all}");
        assert_eq!(o.status.code(), Some(0), "{mode}: {all}");
        let out = stdout(&o);
        assert_eq!(out.lines().count(), 5, "{mode}: {all}");
        assert!(out.lines().all(|l| l.starts_with("✔ ")), "{mode}: {all}");
        assert!(
            out.contains(&format!("✔ egress — {mode}: ")),
            "{mode}: {all}"
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

/// A `--network none` container holding a network namespace in which the Messages API mock
/// listens on localhost:8443; other containers join it with `--network container:NAME`.
struct MockSidecar {
    holder: Container,
    mock: Mock,
    _dir: tempfile::TempDir,
    /// `-v` value mounting the mock's CA at /etc/bottle-test/mock-ca.pem.
    ca_mount: String,
}

impl MockSidecar {
    const PORT: u16 = 8443;

    fn start(img: &str, token: &str, reply: &str) -> MockSidecar {
        let identity = MockIdentity::generate().expect("mock certificate");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("mock-ca.pem");
        std::fs::write(&ca, &identity.ca_pem).unwrap();
        // Only holds the namespace: no bottle-init, no credential.
        let holder = Container::run(&["--network", "none", "--entrypoint", "sleep", img, "600"]);
        holder.wait_for_process("sleep", Duration::from_secs(30));
        let mock = mock_in_netns_of(&holder, Self::PORT, token, reply, identity);
        MockSidecar {
            holder,
            mock,
            ca_mount: format!("{}:/etc/bottle-test/mock-ca.pem:ro", ca.display()),
            _dir: dir,
        }
    }

    fn network(&self) -> String {
        format!("container:{}", self.holder.0)
    }

    /// The request whose body carries `prompt`.
    fn request_with(&self, prompt: &str) -> support::e2e::mock::Recorded {
        self.mock
            .message_containing(prompt)
            .unwrap_or_else(|| panic!("{prompt:?} never reached the mock"))
    }
}

/// A named volume removed when dropped.
struct Volume(String);

impl Volume {
    fn new() -> Volume {
        let name = format!("bottle-test-home-{}", &fake_secret("")[..12]);
        let o = docker(&["volume", "create", &name]);
        assert!(o.status.success(), "{}", text(&o));
        Volume(name)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker(&["volume", "rm", "-f", &self.0]);
    }
}

/// Claude's state survives `--rm` runs with a named volume on /home/claude (issue 9): the
/// second run's `claude -p --continue` sends the first run's conversation, and the onboarding
/// file is still there. A control run without the volume has no conversation to continue.
#[test]
fn claude_state_survives_rm_runs_with_a_volume_on_home() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-volume-");
    let side = MockSidecar::start(img, &token, "volume reply");
    let vol = Volume::new();
    let net = side.network();
    let home = format!("{}:/home/claude", vol.0);
    let upstream = format!("BOTTLE_UPSTREAM=https://localhost:{}", MockSidecar::PORT);
    let cred = format!("CLAUDE_CODE_OAUTH_TOKEN={token}");
    let run = |volume: bool, cmd: &[&str]| -> Output {
        let mut a = vec!["run", "--rm", "--network", &net, "-v", &side.ca_mount];
        if volume {
            a.extend_from_slice(&["-v", &home]);
        }
        a.extend_from_slice(&["-e", &cred, "-e", &upstream]);
        a.extend_from_slice(&["-e", "BOTTLE_UPSTREAM_CA=/etc/bottle-test/mock-ca.pem", img]);
        a.extend_from_slice(cmd);
        let o = docker(&a);
        assert_absent(&text(&o), &token, "the run's output");
        o
    };
    let o = run(true, &["claude", "-p", "first run: the word is zebra-4711"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        true,
        &[
            "claude",
            "-p",
            "--continue",
            "second run: what was the word?",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let second = side.request_with("second run: what was the word?");
    assert!(
        String::from_utf8_lossy(&second.body).contains("zebra-4711"),
        "the second --rm run did not continue the first run's conversation"
    );
    assert_eq!(
        second.header_all("authorization"),
        [format!("Bearer {token}")]
    );
    let o = run(
        true,
        &[
            "sh",
            "-c",
            "stat -c '%U %a' ~/.claude.json; ls ~/.claude/projects",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).starts_with("claude 600\n"), "{}", text(&o));
    // Control: without the volume the next run starts from nothing.
    let o = run(
        false,
        &["claude", "-p", "--continue", "third run, no volume"],
    );
    let third = side.request_with("third run, no volume");
    assert!(
        !String::from_utf8_lossy(&third.body).contains("zebra-4711"),
        "a run without the volume saw the conversation: {}",
        text(&o)
    );
    // The token never landed in the volume (read on the host, where dockerd keeps it).
    let dir = stdout(&docker(&[
        "volume",
        "inspect",
        "-f",
        "{{.Mountpoint}}",
        &vol.0,
    ]));
    assert!(
        Path::new(&dir).join(".claude").is_dir(),
        "volume at {dir:?}"
    );
    let hits = files_containing(Path::new(&dir), token.as_bytes());
    assert!(hits.is_empty(), "the token was written to {hits:?}");
}

/// The shipped compose.yaml (issue 9): `docker-compose config` accepts it, and its
/// `claude-secret` service runs the real claude against the mock with the token from a root-only
/// file, which the child (uid 1000) cannot read. The test's override only adds what CI needs
/// (the mock's network and CA).
#[test]
fn compose_example_runs_claude_with_a_root_only_secret_file() {
    let _g = heavy();
    if !require(
        have_tool("docker-compose"),
        "docker-compose (apt-get install docker-compose)",
    ) {
        return;
    }
    let Some(img) = image() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = |dir: &Path, args: &[&str]| -> Output {
        Command::new("docker-compose")
            .args(args)
            .current_dir(dir)
            .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run docker-compose")
    };
    let o = compose(root, &["-f", "compose.yaml", "config"]);
    assert!(o.status.success(), "{}", text(&o));
    for service in ["claude:", "claude-secret:", "claude-home:"] {
        assert!(
            stdout(&o).contains(service),
            "{service} missing: {}",
            text(&o)
        );
    }

    let token = fake_secret("sk-ant-oat01-compose-");
    let side = MockSidecar::start(img, &token, "compose reply");
    let o = docker(&["tag", img, "claude-bottle"]);
    assert!(o.status.success(), "{}", text(&o));
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    std::fs::copy(root.join("compose.yaml"), dir.join("compose.yaml")).unwrap();
    // As the header says: sudo install -D -o root -g root -m 0400 /dev/stdin secrets/claude-token
    std::fs::create_dir(dir.join("secrets")).unwrap();
    let secret = dir.join("secrets/claude-token");
    std::fs::write(&secret, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
    let ca = side.ca_mount.clone();
    std::fs::write(
        dir.join("ci.yaml"),
        format!(
            "services:\n  claude-secret:\n    network_mode: \"{}\"\n    environment:\n      \
             - BOTTLE_UPSTREAM=https://localhost:{}\n      \
             - BOTTLE_UPSTREAM_CA=/etc/bottle-test/mock-ca.pem\n    volumes:\n      - {ca}\n",
            side.network(),
            MockSidecar::PORT
        ),
    )
    .unwrap();
    let name = format!("bottletest{}", &fake_secret("")[..8]);
    struct Down<'a>(&'a Path, String);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = Command::new("docker-compose")
                .args(["-p", &self.1, "-f", "compose.yaml", "down", "-v"])
                .current_dir(self.0)
                .output();
        }
    }
    let _down = Down(dir, name.clone());
    let run = |cmd: &[&str]| -> Output {
        let mut a = vec!["-p", &name, "-f", "compose.yaml", "-f", "ci.yaml"];
        a.extend_from_slice(&["run", "--rm", "-T", "claude-secret"]);
        a.extend_from_slice(cmd);
        let o = compose(dir, &a);
        assert_absent(&text(&o), &token, "docker-compose run's output");
        o
    };
    let o = run(&["claude", "-p", "compose prompt"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("compose reply"), "{}", text(&o));
    let req = side.request_with("compose prompt");
    assert_eq!(req.header_all("authorization"), [format!("Bearer {token}")]);
    // What a hijacked claude would try: the secret file is not readable by the child.
    let o = run(&["sh", "-c", "cat /run/secrets/claude-token; id -u"]);
    let out = text(&o);
    assert!(
        out.contains("Permission denied") && stdout(&o).ends_with("1000"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// What root, `docker exec -u claude` and `bottle-init exec` get in a container with Docker's
// default capabilities (issue 10 items 1 and 16). Each check takes the image tag, so it works
// with however the image is built.
// ---------------------------------------------------------------------------------------------

/// sha256 of `s` in hex, by the host's sha256sum (so a test can compare a secret it finds in
/// the container without ever printing it).
fn sha256_hex(s: &str) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// For each of PID 1's environ, maps and mem: whether root (`docker exec` without -u) can open
/// and read it, and whether the token's value is in environ.
const ROOT_VIEW: &str = r#"
for f in environ maps mem; do
  if err=$( (exec 3< /proc/1/$f) 2>&1 ); then echo "$f=open"; else echo "$f=denied: $err"; fi
done
if tr '\0' '\n' < /proc/1/environ 2>/dev/null | grep -q "CLAUDE_CODE_OAUTH_TOKEN"; then echo "environ-has-name"; fi
if tr '\0' '\n' < /proc/1/environ 2>/dev/null | grep -qF "$CLAUDE_CODE_OAUTH_TOKEN"; then echo "environ-has-token"; fi
head -c 64 /proc/1/maps >/dev/null 2>&1 && echo "maps-read"
"#;

/// Root in the container with Docker's default capabilities (no CAP_SYS_PTRACE) cannot open
/// PID 1's environ, maps or mem: PID 1 is not dumpable. With `--cap-add SYS_PTRACE` it can,
/// and finds the token's variable name in environ with the value zeroed.
fn check_root_view_of_pid1(img: &str) {
    let token = fake_secret("sk-ant-oat01-rootview-");
    let c = Container::sleeping(img, &token, &[]);
    c.wait_for_process("sleep", Duration::from_secs(30));
    let o = c.exec(&["sh", "-c", ROOT_VIEW]);
    let out = stdout(&o);
    eprintln!("root, default capabilities:\n{out}");
    for f in ["environ", "maps", "mem"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{f}=")))
            .unwrap_or_else(|| panic!("{f}: {}", text(&o)));
        assert!(
            line.starts_with(&format!("{f}=denied")) && line.contains("Permission denied"),
            "{line}: {}",
            text(&o)
        );
    }
    assert!(!out.contains("environ-has"), "{}", text(&o));
    assert!(!out.contains("maps-read"), "{}", text(&o));
    let status = stdout(&c.exec(&["grep", "CapEff", "/proc/self/status"]));
    assert!(
        status.ends_with("00000000a80425fb"),
        "not Docker's default set: {status}"
    );
    drop(c);

    let c = Container::sleeping(img, &token, &["--cap-add", "SYS_PTRACE"]);
    c.wait_for_process("sleep", Duration::from_secs(30));
    let o = c.exec(&["sh", "-c", ROOT_VIEW]);
    let out = stdout(&o);
    eprintln!("root with --cap-add SYS_PTRACE:\n{out}");
    for f in ["environ", "maps", "mem"] {
        assert!(out.contains(&format!("{f}=open")), "{f}: {}", text(&o));
    }
    assert!(
        out.contains("environ-has-name") && out.contains("maps-read"),
        "{}",
        text(&o)
    );
    assert!(
        !out.contains("environ-has-token"),
        "the token is readable in /proc/1/environ"
    );
    assert_absent(&text(&o), &token, "the probe's output");
    assert_absent(&c.logs(), &token, "docker logs");
}

/// The README's warning, proved as an attacker would: `docker exec -u claude` (or `-u 1000`)
/// runs with the container's environment, real token included, as claude's own uid, so
/// claude (here: a command started by `bottle-init exec`, uid 1000) reads the token from that
/// process's /proc/PID/environ and can open its memory (ptrace access).
fn check_docker_exec_as_claude_exposes_the_token(img: &str) {
    let token = fake_secret("sk-ant-oat01-asclaude-");
    let c = Container::sleeping(img, &token, &[]);
    c.wait_for_process("sleep", Duration::from_secs(30));
    // What "claude" runs: finds the real token in any process it can read; prints only a
    // hash of it, and whether it could open that process's memory.
    let attack = r#"
for p in /proc/[0-9]*; do
  v=$(tr '\0' '\n' < $p/environ 2>/dev/null | sed -n 's/^CLAUDE_CODE_OAUTH_TOKEN=\(sk-ant-.*\)/\1/p')
  [ -n "$v" ] || continue
  echo "found in $p uid=$(stat -c %u $p) hash=$(printf %s "$v" | sha256sum | cut -d' ' -f1)"
  if ( exec 3< $p/mem ) 2>/dev/null; then echo "mem-open $p"; fi
done
echo attack-done
"#;
    for user in ["claude", "1000"] {
        let o = docker(&["exec", "-d", "-u", user, &c.0, "sleep", "120"]);
        assert!(o.status.success(), "{}", text(&o));
        std::thread::sleep(Duration::from_millis(500));
        let o = c.exec(&["/bottle-init", "exec", "--", "sh", "-c", attack]);
        let all = text(&o);
        assert_absent(&all, &token, "the attacker's output");
        let out = stdout(&o);
        assert!(out.contains("attack-done"), "{all}");
        let want = sha256_hex(&token);
        let line = out
            .lines()
            .find(|l| l.starts_with("found in "))
            .unwrap_or_else(|| {
                panic!("-u {user}: the uid-1000 command did not find the token: {all}")
            });
        assert!(
            line.contains("uid=1000") && line.ends_with(&format!("hash={want}")),
            "{line}"
        );
        assert!(out.contains("mem-open"), "-u {user}: {all}");
        // Stop that process (not the container's own uid-1000 `sleep`) before the next round.
        let pid = line
            .strip_prefix("found in /proc/")
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .to_string();
        let o = c.exec(&["kill", &pid]);
        assert!(o.status.success(), "{}", text(&o));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Control: with only `bottle-init exec` processes, there is nothing to find.
    let o = c.exec(&["/bottle-init", "exec", "--", "sh", "-c", attack]);
    assert!(!stdout(&o).contains("found in "), "{}", text(&o));
}

/// `docker exec -t C /bottle-init exec ...` gives the command its own pty (not the exec's
/// terminal) and its own session.
fn check_exec_gets_its_own_terminal(img: &str) {
    let token = fake_secret("sk-ant-oat01-pty-");
    let c = Container::sleeping(img, &token, &[]);
    c.wait_for_process("sleep", Duration::from_secs(30));
    let o = docker(&[
        "exec",
        "-t",
        &c.0,
        "sh",
        "-c",
        "echo outer=$(tty); /bottle-init exec -- sh -c 'echo inner=$(tty) uid=$(id -u); set -- $(sed \"s/.*) //\" /proc/$$/stat); echo sid=$4 pid=$$'",
    ]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert_absent(&all, &token, "docker exec -t output");
    let out = stdout(&o);
    let get = |k: &str| {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {all}"))
            .trim()
            .to_string()
    };
    let (outer, inner) = (get("outer="), get("inner="));
    assert!(
        outer.starts_with("/dev/pts/") && inner.starts_with("/dev/pts/"),
        "{all}"
    );
    assert_ne!(outer, inner, "the command got the caller's terminal: {all}");
    assert_eq!(get("uid="), "1000");
    assert_eq!(get("sid="), get("pid="), "own session: {all}");
}

/// `docker exec C /bottle-init check` in the real image, with Docker's default capabilities
/// and seccomp profile (no CAP_SYS_PTRACE: PID 1's environ is closed even to root): every
/// line passes; a bare `docker exec -u claude -e
/// CLAUDE_CODE_OAUTH_TOKEN=... C sleep` turns the credential line ✘ naming its pid, exit 1.
#[test]
fn bottle_init_check_passes_and_names_a_docker_exec_as_claude() {
    let _g = heavy();
    let Some(img) = image() else { return };
    let token = fake_secret("sk-ant-oat01-check-");
    let env = format!("CLAUDE_CODE_OAUTH_TOKEN={token}");
    let c = Container::sleeping(img, &token, &[]);
    c.wait_for_process("sleep", Duration::from_secs(30));
    let session = stdout(&c.exec(&["sed", "-n", "s/^session=//p", "/run/bottle-init/state"]));
    assert!(session.starts_with("bottle-"), "no session secret read");
    let keeps_secrets = |o: &Output, what: &str| {
        let all = text(o);
        assert_absent(&all, &token, what);
        assert_absent(&all, &session, what);
    };
    let o = c.exec(&["/bottle-init", "check"]);
    keeps_secrets(&o, "check's output");
    let out = stdout(&o);
    eprintln!("check in the container:\n{out}");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(
        out.lines()
            .all(|l| l.starts_with("✔ ") && l.contains(" — ")),
        "{out}"
    );
    assert!(out.contains("✔ egress — not restricted"), "{out}");
    assert!(
        out.contains("PID 1's environ cannot be read even by root (EACCES)"),
        "{out}"
    );

    let o = docker(&[
        "exec", "-d", "-u", "claude", "-e", &env, &c.0, "sleep", "171",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let find = "for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $p/cmdline)\" = 'sleep 171 ' ] && echo ${p#/proc/}; done; true";
    let t0 = Instant::now();
    let pid = loop {
        let pid = stdout(&c.exec(&["sh", "-c", find]));
        if !pid.is_empty() {
            break pid;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the docker exec -u claude never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let o = c.exec(&["/bottle-init", "check"]);
    keeps_secrets(&o, "check's output");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = stdout(&o);
    eprintln!("check with a `docker exec -u claude` (pid {pid}) running:\n{out}");
    let cred = out
        .lines()
        .find(|l| l.starts_with("✘ credential out of reach — "))
        .unwrap_or_else(|| panic!("the credential line did not fail: {out}"));
    assert!(
        cred.contains(&format!("pid {pid} (sleep, uid 1000)")),
        "{cred}"
    );
    let o = c.exec(&["/bottle-init", "check", "--json"]);
    keeps_secrets(&o, "check --json's output");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("check --json is JSON");
    assert_eq!(v["ok"], serde_json::Value::Bool(false));
    let checks = v["checks"].as_array().expect("checks");
    let cred = checks
        .iter()
        .find(|c| c["name"] == "credential out of reach")
        .expect("the credential check");
    assert_eq!(cred["ok"], serde_json::Value::Bool(false));
    assert!(
        cred["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {pid} "))
    );
}

#[test]
fn root_in_the_container_cannot_read_pid1s_environ_maps_or_mem() {
    let _g = heavy();
    let Some(img) = image() else { return };
    check_root_view_of_pid1(img);
}

#[test]
fn docker_exec_as_claude_hands_claude_the_real_token() {
    let _g = heavy();
    let Some(img) = image() else { return };
    check_docker_exec_as_claude_exposes_the_token(img);
}

#[test]
fn bottle_init_exec_on_a_tty_in_the_container_gets_its_own_pty() {
    let _g = heavy();
    let Some(img) = image() else { return };
    check_exec_gets_its_own_terminal(img);
}

/// The Quick start's run command, as a user types it on a terminal:
/// `docker run -it --rm -e CLAUDE_CODE_OAUTH_TOKEN -v "$PWD:/workspace" claude-bottle`, the
/// token taken from the shell's environment (never on the command line). Interactive claude
/// starts in /workspace without login or onboarding screens, asks once whether to trust the
/// folder, and answers a typed prompt through the proxy. Added for the test only: `--name`
/// (to remove it), the mock's network namespace and upstream (`--network container:...`,
/// BOTTLE_UPSTREAM, BOTTLE_UPSTREAM_CA), and tmux as the terminal.
#[test]
fn quick_start_run_command_interactive_claude_on_a_terminal() {
    let _g = heavy();
    let Some(img) = image() else { return };
    if !require(have_tool("tmux"), "tmux (apt-get install tmux)") {
        return;
    }
    let token = fake_secret("sk-ant-oat01-quickstart-");
    let reply = "quick start reply from the mock";
    let m = Mocked::start(img, &token, reply, &[]);
    let work = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(work.path(), Some(1000), Some(1000)).unwrap();
    std::fs::write(work.path().join("hello.txt"), "hi\n").unwrap();
    let name = format!("bottle-quickstart-{}", &fake_secret("")[..8]);
    let upstream = &m.args[4..]; // -e BOTTLE_UPSTREAM=... -e BOTTLE_UPSTREAM_CA=... (not the token)
    let script = format!(
        "{cli} run -it --rm -e CLAUDE_CODE_OAUTH_TOKEN -v \"$PWD:/workspace\" claude-bottle",
        cli = cli()
    )
    .replace(
        " claude-bottle",
        &format!(
            " --name {name} --network container:{c} -v {ca} {up} {img}",
            c = m.c.0,
            ca = m.args[1],
            up = upstream.join(" "),
        ),
    );
    // tmux's socket and config in a root-owned directory (the workspace belongs to uid 1000).
    let tmuxdir = tempfile::tempdir().unwrap();
    let sock = tmuxdir.path().join("tmux.sock");
    // Keep a dead pane on screen, so a failure shows docker's or claude's last words.
    let conf = tmuxdir.path().join("tmux.conf");
    std::fs::write(&conf, "set -g remain-on-exit on\n").unwrap();
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(args)
            .output()
            .expect("tmux")
    };
    struct Cleanup(std::path::PathBuf, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = docker(&["rm", "-f", &self.1]);
            let _ = std::process::Command::new("tmux")
                .arg("-S")
                .arg(&self.0)
                .arg("kill-server")
                .status();
        }
    }
    let _cleanup = Cleanup(sock.clone(), name.clone());
    let st = std::process::Command::new("tmux")
        .arg("-S")
        .arg(&sock)
        .arg("-f")
        .arg(&conf)
        .args([
            "new-session",
            "-d",
            "-s",
            "qs",
            "-x",
            "160",
            "-y",
            "45",
            "sh",
            "-c",
            &script,
        ])
        .env("CLAUDE_CODE_OAUTH_TOKEN", &token)
        .env("TERM", "xterm-256color")
        .current_dir(work.path())
        .status()
        .unwrap();
    assert!(st.success(), "tmux new-session");
    let screen =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "qs"]).stdout).into_owned();
    let wait = |what: &str, ok: &dyn Fn(&str) -> bool| -> String {
        let t0 = Instant::now();
        loop {
            let s = screen();
            for f in [
                "Select login method",
                "Choose the text style",
                "Unable to connect",
            ] {
                assert!(!s.contains(f), "the Quick start showed {f:?}:\n{s}");
            }
            assert_absent(&s, &token, "the terminal");
            if ok(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "waiting for {what}; screen:\n{s}\nmock saw: {:?}",
                m.mock
                    .requests()
                    .iter()
                    .map(|r| r.path().to_string())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    // The per-folder trust dialog (asked once per folder, by design), then the input box.
    let dialog = |s: &str| s.contains("Accessing workspace") || s.contains("trust this folder");
    let s = wait("the trust dialog", &|s| {
        dialog(s) || s.lines().any(|l| l.starts_with('❯'))
    });
    if dialog(&s) {
        assert!(
            s.contains("/workspace"),
            "the trust dialog names /workspace:\n{s}"
        );
        // Answer like a user once its key handler is up; repeat if the first key came early.
        let t0 = Instant::now();
        // 2.1.332 preselects "No, exit": move to "Yes, I trust this folder" first.
        while dialog(&screen()) {
            let now = screen();
            assert!(
                !now.contains("didn't start"),
                "claude exited at the dialog:\n{now}"
            );
            if now.lines().any(|l| l.contains('❯') && l.contains("No")) {
                tmux(&["send-keys", "-t", "qs", "Down"]);
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the trust dialog stays:\n{}",
                screen()
            );
            std::thread::sleep(Duration::from_millis(1500));
            tmux(&["send-keys", "-t", "qs", "Enter"]);
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    wait("the input box", &|s| {
        !dialog(s) && s.lines().any(|l| l.starts_with('❯')) // 2.1.332: no "? for shortcuts" hint
    });
    std::thread::sleep(Duration::from_millis(500));
    tmux(&["send-keys", "-t", "qs", "-l", "quick start prompt"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux(&["send-keys", "-t", "qs", "Enter"]);
    wait("the reply", &|s| s.contains(reply));
    m.assert_prompt_arrived("quick start prompt", &token);
    let o = docker(&["logs", &name]);
    assert_absent(
        &text(&o),
        &token,
        "docker logs of the Quick start container",
    );
}
