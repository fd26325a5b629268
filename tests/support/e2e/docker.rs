//! Helpers for the tests that build the Dockerfile and run its images in a real Docker engine
//! (scripts/test starts a private dockerd whose Docker Hub mirror is a local registry of
//! stand-ins for `rust:1-bookworm` and `debian:bookworm-slim`, see scripts/lib/standins.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::mock::{Expect, Mock, MockConfig, MockIdentity};
use super::{NetNs, fake_secret, is_root};
use crate::support::append_line;

/// A mock with the certificate `identity` (whose CA the container already mounts) on
/// localhost:`port` of the running container `c`'s network namespace, expecting `token`.
pub fn mock_in_netns_of(
    c: &Container,
    port: u16,
    token: &str,
    reply: &str,
    identity: MockIdentity,
) -> Mock {
    let pid: u32 = c.inspect("{{.State.Pid}}").parse().expect("container pid");
    let ns = NetNs::of_pid(pid).expect("the container's network namespace");
    let listeners = ns
        .listen_localhost(port)
        .expect("listen inside the container's namespace");
    Mock::start_with(
        listeners,
        MockConfig::new(Expect::Bearer(token.to_string()), reply),
        Some(identity),
    )
    .expect("start the mock")
}

/// The repository: the build context of the README's `docker build ... .`.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The docker CLI: scripts/test sets DOCKER_CLI to Debian's 20.10 client, which drives the
/// daemon's built-in BuildKit (a newer client would need the buildx plugin).
pub fn cli() -> String {
    std::env::var("DOCKER_CLI")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "docker".into())
}

pub fn command() -> Command {
    let mut c = Command::new(cli());
    c.env("DOCKER_BUILDKIT", "1").stdin(Stdio::null());
    c
}

pub fn docker(args: &[&str]) -> Output {
    command().args(args).output().expect("run the docker CLI")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The private engine answers and mirrors Docker Hub (so the default FROM images resolve to
/// the stand-ins, never to the real Hub).
pub fn engine() -> Result<(), String> {
    if !is_root() {
        return Err("root is needed to talk to the private dockerd".into());
    }
    if std::env::var_os("DOCKER_HOST").is_none() {
        return Err(
            "DOCKER_HOST is unset: scripts/test starts a private dockerd and sets it".into(),
        );
    }
    let o = command()
        .args(["info", "--format", "{{.RegistryConfig.Mirrors}}"])
        .output()
        .map_err(|e| format!("the docker CLI cannot run ({e}): apt-get install docker.io"))?;
    if !o.status.success() {
        return Err(format!(
            "no Docker engine answers on DOCKER_HOST: {}",
            text(&o)
        ));
    }
    let mirrors = stdout(&o);
    let want = std::env::var("BOTTLE_TEST_REGISTRY").map_err(|_| {
        "BOTTLE_TEST_REGISTRY is unset (scripts/test serves the stand-in images)".to_string()
    })?;
    if !mirrors.contains(&want) {
        return Err(format!(
            "the engine's Docker Hub mirrors are {mirrors}, not the stand-in registry {want}"
        ));
    }
    Ok(())
}

/// `docker build [--platform P] -t TAG [EXTRA...] .` in the repository, the README's command.
/// The one addition is `--network host`: the private dockerd has no bridge, and RUN steps
/// reach the Debian mirror, crates.io, rustup and npm through the host's network.
///
/// A build silent for [`build_stall`] is killed and run once more (BuildKit cancels the
/// build when its client goes; the finished layers are cached). Under qemu-user a guest
/// that forks while another of its threads holds one of qemu's locks can hang for good: CI
/// saw cargo's child, forked to exec rustc, wait on a futex for 38 minutes (2026-12-03). A build
/// that hangs twice fails; a retry is logged to `BOTTLE_TEST_RETRY_LOG`, which scripts/test
/// prints at the end, so it is never silent.
pub fn build_readme(platform: Option<&str>, tag: &str, extra: &[&str]) -> Result<String, String> {
    engine()?;
    let mut args = vec!["build", "--network", "host"];
    if let Some(p) = platform {
        args.extend_from_slice(&["--platform", p]);
    }
    args.extend_from_slice(&["-t", tag]);
    args.extend_from_slice(extra);
    args.push(".");
    let line = format!("docker {}", args.join(" "));
    let stall = build_stall();
    for attempt in 1..=2 {
        let t0 = Instant::now();
        match build_watched(&args, stall)? {
            Watched::Done(o) if o.status.success() => {
                eprintln!("{line} took {:?}", t0.elapsed());
                return Ok(tag.to_string());
            }
            Watched::Done(o) => return Err(format!("{line} failed: {}", text(&o))),
            Watched::Stalled(o) => {
                let what = format!(
                    "{line}: no output for {stall:?} (attempt {attempt} of 2), killed; its last \
                     output:\n{}",
                    tail(&o.stderr, 2000)
                );
                if attempt == 2 {
                    return Err(format!("{what}\nit hung twice"));
                }
                eprintln!("{what}\nrunning it once more");
                if let Some(log) = std::env::var_os("BOTTLE_TEST_RETRY_LOG") {
                    // An unrecorded retry would be a silent one: fail instead.
                    let retried = format!("{line}: hung ({stall:?} silent), retried");
                    append_line(&log, &retried)
                        .map_err(|e| format!("cannot record the retry in {log:?}: {e}"))?;
                }
            }
        }
    }
    unreachable!("the loop returns")
}

/// How long a build may print nothing: 15 minutes (its longest quiet step, the final link of
/// the arm64 build under qemu with the other tests running, takes a few), or
/// `BOTTLE_TEST_BUILD_STALL_S` seconds.
fn build_stall() -> Duration {
    let secs = std::env::var("BOTTLE_TEST_BUILD_STALL_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15 * 60);
    Duration::from_secs(secs)
}

enum Watched {
    Done(Output),
    /// Killed after `stall` without output: what it had printed.
    Stalled(Output),
}

/// Runs the docker CLI with `args` in the repository, watching its output: killed (SIGKILL,
/// its pid) when it prints nothing for `stall`.
fn build_watched(args: &[&str], stall: Duration) -> Result<Watched, String> {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let mut child = command()
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("the docker CLI cannot run: {e}"))?;
    let last = Arc::new(Mutex::new(Instant::now()));
    let read_all = |mut r: Box<dyn Read + Send>| {
        let last = Arc::clone(&last);
        std::thread::spawn(move || {
            let (mut all, mut buf) = (Vec::new(), [0u8; 8192]);
            while let Ok(n @ 1..) = r.read(&mut buf) {
                all.extend_from_slice(&buf[..n]);
                *last.lock().unwrap() = Instant::now();
            }
            all
        })
    };
    let out = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let err = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let (status, stalled) = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break (st, false);
        }
        if last.lock().unwrap().elapsed() > stall {
            let _ = child.kill();
            break (child.wait().map_err(|e| e.to_string())?, true);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let o = Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    Ok(if stalled {
        Watched::Stalled(o)
    } else {
        Watched::Done(o)
    })
}

/// The last `max` bytes of `bytes`, as text.
fn tail(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(max)..]).into_owned()
}

/// Platform of an image, as `os/arch`.
pub fn platform_of(image: &str) -> String {
    stdout(&docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Os}}/{{.Architecture}}",
        image,
    ]))
}

/// A detached container removed (`docker rm -f`) when dropped.
pub struct Container(pub String);

impl Container {
    pub fn run(args: &[&str]) -> Container {
        let name = format!("bottle-test-{}", &fake_secret("")[..12]);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        let o = docker(&all);
        assert!(o.status.success(), "docker run failed: {}", text(&o));
        Container(name)
    }
    /// `sleep 300` under the image's bottle-init, `--network none`, the token in the
    /// environment as `docker run -e` gives it, `extra` docker options first.
    pub fn sleeping(img: &str, token: &str, extra: &[&str]) -> Container {
        let env = format!("CLAUDE_CODE_OAUTH_TOKEN={token}");
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--network", "none", "-e", &env, img, "sleep", "300"]);
        Container::run(&args)
    }
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut all = vec!["exec", self.0.as_str()];
        all.extend_from_slice(cmd);
        docker(&all)
    }
    pub fn inspect(&self, fmt: &str) -> String {
        stdout(&docker(&["inspect", "-f", fmt, &self.0]))
    }
    pub fn logs(&self) -> String {
        text(&docker(&["logs", &self.0]))
    }
    /// Waits until a process named `name` runs in the container.
    pub fn wait_for_process(&self, name: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let o = self.exec(&["sh", "-c", "cat /proc/[0-9]*/comm"]);
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
                t0.elapsed() < limit,
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

/// `docker run --rm --network none -e CLAUDE_CODE_OAUTH_TOKEN=<token> EXTRA... IMG sh -c SCRIPT`:
/// the image's own entrypoint (bottle-init) runs the script with the token given as a user would.
pub fn sh_with_token(img: &str, token: &str, extra: &[&str], script: &str) -> Output {
    let env = format!("CLAUDE_CODE_OAUTH_TOKEN={token}");
    let mut args = vec!["run", "--rm", "--network", "none", "-e", &env];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[img, "sh", "-c", script]);
    docker(&args)
}

/// Runs the PID-1 probe in `img` (no network, the token in the environment as `docker run -e`
/// gives it) and checks what every image must show: bottle-init is PID 1; the command runs as
/// uid/gid 1000 with no capabilities and no_new_privs, cannot read PID 1's environ or memory,
/// and is pointed at the proxy. Returns (stdout and stderr, stdout) for the caller's own checks.
pub fn pid1_probe(img: &str, token: &str) -> (String, String) {
    let script = "echo PID1=$(cat /proc/1/comm); \
                  grep -E '^(Uid|Gid|Groups|Cap...|NoNewPrivs):' /proc/self/status; \
                  echo ENV; env; echo ENDENV; \
                  for f in environ mem; do \
                    if head -c1 /proc/1/$f >/dev/null 2>&1; then echo PID1$f=readable; else echo PID1$f=denied; fi; \
                  done";
    let o = sh_with_token(img, token, &[], script);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let out = stdout(&o);
    assert!(out.contains("PID1=bottle-init"), "{all}");
    assert!(out.contains("Uid:\t1000\t1000\t1000\t1000"), "{all}");
    assert!(out.contains("Gid:\t1000\t1000\t1000\t1000"), "{all}");
    assert!(out.contains("NoNewPrivs:\t1"), "{all}");
    caps_zero(&out);
    assert!(out.contains("PID1environ=denied"), "{all}");
    assert!(out.contains("PID1mem=denied"), "{all}");
    assert!(
        out.contains("ANTHROPIC_BASE_URL=http://127.0.0.1:"),
        "{all}"
    );
    (all, out)
}

pub fn caps_zero(status: &str) {
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

/// The mock's fixed port inside a container's own network namespace (`--network none`).
pub const MOCK_PORT: u16 = 8443;

/// A running container (`--network none`, command `sleep 600`) with the Messages API mock
/// listening inside its network namespace on localhost:MOCK_PORT and bottle-init pointed at
/// it (BOTTLE_UPSTREAM, BOTTLE_UPSTREAM_CA mounted read-only, the OAuth token).
pub struct Mocked {
    pub c: Container,
    pub mock: Mock,
    /// `-e` and `-v` arguments for another container that joins this one's namespace.
    pub args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Mocked {
    pub fn start(image: &str, token: &str, reply: &str, extra: &[&str]) -> Mocked {
        let identity = MockIdentity::generate().expect("mock certificate");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("mock-ca.pem");
        std::fs::write(&ca, &identity.ca_pem).unwrap();
        let args = vec![
            "-v".to_string(),
            format!("{}:/etc/bottle-test/mock-ca.pem:ro", ca.display()),
            "-e".into(),
            format!("CLAUDE_CODE_OAUTH_TOKEN={token}"),
            "-e".into(),
            format!("BOTTLE_UPSTREAM=https://localhost:{MOCK_PORT}"),
            "-e".into(),
            "BOTTLE_UPSTREAM_CA=/etc/bottle-test/mock-ca.pem".into(),
        ];
        let mut run: Vec<&str> = vec!["--network", "none"];
        run.extend(args.iter().map(String::as_str));
        run.extend_from_slice(extra);
        run.extend_from_slice(&[image, "sleep", "600"]);
        let c = Container::run(&run);
        c.wait_for_process("sleep", Duration::from_secs(60));
        let mock = mock_in_netns_of(&c, MOCK_PORT, token, reply, identity);
        Mocked {
            c,
            mock,
            args,
            _dir: dir,
        }
    }

    /// `docker run --rm` of `image` with `cmd` as its command, in this container's network
    /// namespace (so the mock is on its localhost), with the same credential and upstream.
    pub fn run_sharing(&self, image: &str, extra: &[&str], cmd: &[&str]) -> Output {
        let net = format!("container:{}", self.c.0);
        let mut run: Vec<&str> = vec!["run", "--rm", "--network", &net];
        run.extend(self.args.iter().map(String::as_str));
        run.extend_from_slice(extra);
        run.push(image);
        run.extend_from_slice(cmd);
        docker(&run)
    }

    /// The request carrying `prompt` reached the mock with the real token (the proxy swapped
    /// the placeholder) and the OAuth beta.
    pub fn assert_prompt_arrived(&self, prompt: &str, token: &str) {
        let req = self.mock.message_containing(prompt).unwrap_or_else(|| {
            panic!(
                "{prompt:?} never reached the mock: {:?}",
                self.mock.requests()
            )
        });
        assert_eq!(req.header_all("authorization"), [format!("Bearer {token}")]);
        let beta = req.header_all("anthropic-beta").join(",");
        assert!(beta.contains("oauth-2025-04-20"), "{beta}");
    }
}

/// The machine's intercepting CA certificates (the registries' HTTPS passes them), each as a
/// line from the middle of its base64 body, which identifies it inside a bundle.
pub fn machine_ca_lines() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/usr/local/share/ca-certificates")
        .into_iter()
        .flatten()
        .flatten()
    {
        let pem = std::fs::read_to_string(e.path()).unwrap_or_default();
        let lines: Vec<&str> = pem
            .lines()
            .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
            .collect();
        if let Some(line) = lines.get(lines.len() / 2) {
            out.push((e.path(), line.to_string()));
        }
    }
    out
}

/// A shell one-liner's output in a throwaway container of `image` (`--network none`,
/// entrypoint replaced).
pub fn sh(image: &str, script: &str) -> Output {
    docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        image,
        "-c",
        script,
    ])
}

/// `image`'s CA bundle, /etc/ssl/certs/ca-certificates.crt.
pub fn trust_bundle(image: &str) -> String {
    stdout(&docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "cat",
        image,
        "/etc/ssl/certs/ca-certificates.crt",
    ]))
}

pub fn assert_debian_trust_store(image: &str) {
    let o = sh(
        image,
        "ls -A /usr/local/share/ca-certificates | wc -l; \
         cp /etc/ssl/certs/ca-certificates.crt /tmp/before.crt; \
         update-ca-certificates --fresh >/dev/null 2>&1; \
         cmp /tmp/before.crt /etc/ssl/certs/ca-certificates.crt && echo SAME-AS-DEBIAN; \
         grep -c 'BEGIN CERTIFICATE' /tmp/before.crt",
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{image}: {}", text(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"0"),
        "{image}: files in /usr/local/share/ca-certificates: {out}"
    );
    assert!(
        out.contains("SAME-AS-DEBIAN"),
        "{image}: the bundle is not what Debian's ca-certificates builds: {out}"
    );
    let n: usize = lines.last().and_then(|l| l.parse().ok()).unwrap_or(0);
    assert!(n > 100, "{image}: only {n} roots in the bundle");
    let bundle = trust_bundle(image);
    let cas = machine_ca_lines();
    for (path, line) in &cas {
        assert!(
            !bundle.contains(line.as_str()),
            "{image}: the build machine's CA {} is in the image's bundle",
            path.display()
        );
    }
    eprintln!(
        "{image}: trust store is Debian's ({n} roots), none of {} machine CA(s)",
        cas.len()
    );
}

/// What an ELF file is: its machine (62 x86-64, 183 AArch64) and whether it is static (no
/// PT_INTERP program header, i.e. no dynamic loader).
pub fn elf_info(bytes: &[u8]) -> Result<(u16, bool), String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let machine = u16_at(18);
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    let mut interp = false;
    for i in 0..phnum as usize {
        let o = phoff + i * phentsize;
        if o + 4 > bytes.len() {
            return Err("truncated program headers".into());
        }
        interp |= u32_at(o) == 3; // PT_INTERP
    }
    Ok((machine, !interp))
}

pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;

/// A file's bytes out of an image (`docker create` + `docker cp`).
pub fn file_from_image(image: &str, path: &str) -> Vec<u8> {
    let o = docker(&["create", image, "/none"]);
    assert!(o.status.success(), "{}", text(&o));
    let id = stdout(&o);
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("out");
    let o = docker(&["cp", &format!("{id}:{path}"), dst.to_str().unwrap()]);
    let _ = docker(&["rm", "-f", &id]);
    assert!(o.status.success(), "docker cp {path}: {}", text(&o));
    std::fs::read(&dst).unwrap()
}

/// The aarch64 binfmt_misc handler (qemu-user-static with flag F) is on, so arm64 images run.
pub fn arm64_emulation() -> Result<(), String> {
    let s = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").map_err(|e| {
        format!(
            "no binfmt_misc handler for aarch64 ({e}): apt-get install qemu-user-static \
             binfmt-support (scripts/test-aarch64 mounts binfmt_misc)"
        )
    })?;
    if !s.starts_with("enabled")
        || !s
            .lines()
            .any(|l| l.starts_with("flags:") && l.contains('F'))
    {
        return Err(format!(
            "the qemu-aarch64 handler is not enabled with flag F: {s}"
        ));
    }
    Ok(())
}

/// Runs `cmd` with a new pseudo-terminal as its stdin, stdout and stderr (so `docker exec -it`
/// gets the terminal it insists on) and returns its exit code and everything it wrote.
pub fn run_on_pty(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    let mut child = cmd.spawn().expect("spawn on the pty");
    // The parent's copies of the slave are gone (moved into Command, dropped with it below),
    // so the master reads EIO once the child's side closes.
    drop(std::mem::replace(cmd, Command::new("true")));
    let mut master = std::fs::File::from(pty.master);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(all);
    });
    let t0 = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    (code, String::from_utf8_lossy(&out).into_owned())
}
