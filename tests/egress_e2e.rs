//! BOTTLE_EGRESS end to end: the real bottle-init binary as PID 1 (`unshare --pid`) inside the
//! egress lab's client namespace (tests/support/egress: a veth pair to an "outside host" with
//! TCP/UDP echo and DNS, TEST-NET addresses only, in namespaces the test owns), its upstream a
//! TLS mock of the Messages API listening on the client namespace's loopback.
//!
//! The child bottle-init starts is this test binary again, running the `probe_child` helper
//! (ignored in normal runs; selected with `--ignored --exact`), which tries everything an
//! attacker in claude's place would and prints one `PROBE key=value` line per attempt. Every
//! locked-mode test has an `open`-mode control run of the same probes that must succeed, so a
//! broken lab cannot pass for a working lockdown.
//!
//! The root proxy resolves names through the lab DNS: `ip netns exec` bind-mounts
//! `/etc/netns/<ns>/resolv.conf` (written by the test) over /etc/resolv.conf. The child sees
//! the same file and must still fail to resolve.
//!
//! Needs root, iproute2, util-linux (unshare, setpriv), nftables. Fails under CI=true otherwise.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::e2e::mock::{Expect, Mock, MockConfig};
use support::egress::{
    DNS_PORT, ECHO_PORT, INTERNAL_NAME, Lab, METADATA_NAME, OUTSIDE_V4, OUTSIDE_V6, QUERY_NAME,
    dns_query_for, root_or_fail,
};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DOCKER_DNS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// Another loopback service in the child's namespace (a local dev server, say).
const LOCAL_PORT: u16 = 7;
/// Bytes pushed through an allowed tunnel and expected back unchanged.
const TUNNEL_PAYLOAD: usize = 200_000;

// ---------------------------------------------------------------------------------------------
// The probe program (runs as bottle-init's child, uid 1000).

#[test]
#[ignore = "helper: the program bottle-init runs as its child in these tests"]
fn probe_child() {
    let Ok(which) = std::env::var("EGRESS_PROBE") else {
        panic!("probe_child is a helper: run by the egress_e2e tests with EGRESS_PROBE set");
    };
    if which == "hold" {
        // The `check` tests: only a running child, no probes of its own.
        say("done", 1);
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        return;
    }
    probes(&which);
}

fn say(k: &str, v: impl std::fmt::Display) {
    println!("PROBE {k}={v}");
}

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("errno{n}"),
            None => format!("err:{}", e.kind()),
        },
    }
}

fn errno_of(rc: i32) -> String {
    if rc >= 0 {
        // SAFETY: closing a descriptor socket() just returned to us.
        unsafe { libc::close(rc) };
        "ok".into()
    } else {
        format!(
            "errno{}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        )
    }
}

/// Runs `f` in a forked child (it may be killed by the filter): `exit0` when it returned
/// true, `exit1` when false, `signalN` when it died.
fn in_subprocess(f: fn() -> bool) -> String {
    // SAFETY: the child only makes the raw system call inside `f`, then _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let ok = f();
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => format!("exit{c}"),
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                    format!("signal{}", sig as i32)
                }
                other => format!("{other:?}"),
            }
        }
        Err(e) => format!("fork-failed:{e}"),
    }
}

fn socket(domain: i32, ty: i32, proto: i32) -> String {
    // SAFETY: socket(2) takes no pointers.
    errno_of(unsafe { libc::socket(domain, ty, proto) })
}

fn tcp(addr: SocketAddr) -> String {
    outcome(TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
}

fn udp_roundtrip(to: SocketAddr, payload: &[u8]) -> String {
    let any: IpAddr = if to.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    outcome((|| {
        let s = UdpSocket::bind((any, 0))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(payload, to)?;
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("empty reply"));
        }
        Ok(())
    })())
}

fn ping(to: IpAddr) -> String {
    let (domain, proto, kind) = match to {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8),
    };
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM, proto) };
    if fd < 0 {
        return errno_of(fd);
    }
    let pkt = [kind, 0, 0, 0, 0, 1, 0, 1];
    let sa = socket2_addr(SocketAddr::new(to, 0));
    // SAFETY: fd is ours; pkt and sa live across the call with the lengths given.
    let rc = unsafe {
        libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            sa.0.as_ptr().cast(),
            sa.1,
        )
    };
    let out = if rc < 0 {
        errno_of(-1)
    } else {
        support::set_fd_timeout(fd, libc::SO_RCVTIMEO, Duration::from_secs(2));
        let mut buf = [0u8; 256];
        // SAFETY: recv into a live buffer of the size given.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 { "ok".into() } else { errno_of(-1) }
    };
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
    out
}

/// A sockaddr for `sendto`, as bytes and length.
fn socket2_addr(a: SocketAddr) -> (Vec<u8>, libc::socklen_t) {
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: viewing a plain C struct as bytes.
            let b = unsafe {
                std::slice::from_raw_parts(
                    (&sin as *const libc::sockaddr_in).cast::<u8>(),
                    std::mem::size_of::<libc::sockaddr_in>(),
                )
            };
            (b.to_vec(), b.len() as u32)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: viewing a plain C struct as bytes.
            let b = unsafe {
                std::slice::from_raw_parts(
                    (&sin6 as *const libc::sockaddr_in6).cast::<u8>(),
                    std::mem::size_of::<libc::sockaddr_in6>(),
                )
            };
            (b.to_vec(), b.len() as u32)
        }
    }
}

fn resolve(name: &str) -> String {
    use std::net::ToSocketAddrs;
    outcome((name, 443).to_socket_addrs().and_then(|mut a| {
        a.next()
            .map(|_| ())
            .ok_or_else(|| std::io::Error::other("no address"))
    }))
}

fn session_secret() -> String {
    std::env::var("CLAUDE_CODE_OAUTH_TOKEN")
        .or_else(|_| std::env::var("ANTHROPIC_AUTH_TOKEN"))
        .unwrap_or_default()
}

/// One API request; returns the status code (or an error word).
fn api_request(mut s: impl Read + Write) -> String {
    let body =
        r#"{"model":"claude-test","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        session_secret(),
        body.len()
    );
    if s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body.as_bytes()))
        .is_err()
    {
        return "write-failed".into();
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    status_of(&resp)
}

fn status_of(resp: &[u8]) -> String {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace()
        .nth(1)
        .unwrap_or("no-response")
        .to_string()
}

fn proxy_addr() -> Option<SocketAddr> {
    let url = std::env::var("HTTPS_PROXY").ok()?;
    url.strip_prefix("http://")?
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// CONNECT through the proxy; on 200, push a payload through and expect it back unchanged.
fn connect(label: &str, target: &str) {
    let Some(proxy) = proxy_addr() else {
        say(&format!("connect_{label}"), "no-proxy");
        return;
    };
    let mut s = match TcpStream::connect_timeout(&proxy, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("connect_{label}"), outcome::<()>(Err(e)));
            return;
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let head = support::read_head(&mut s, 8192);
    let status = status_of(&head);
    say(&format!("connect_{label}"), &status);
    if status != "200" {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let body = String::from_utf8_lossy(&rest).replace('\n', " ");
        say(&format!("connect_{label}_body"), body);
        return;
    }
    // Every byte value, many times: the tunnel must not touch any of them.
    let payload: Vec<u8> = (0..TUNNEL_PAYLOAD).map(|i| (i * 7 % 256) as u8).collect();
    let mut w = s.try_clone().expect("clone tunnel socket");
    let sent = payload.clone();
    let writer = std::thread::spawn(move || {
        let ok = w.write_all(&sent).is_ok();
        // Half-close: the echo server sees EOF, finishes echoing and closes; we see EOF.
        let _ = w.shutdown(Shutdown::Write);
        ok
    });
    let mut back = Vec::new();
    let read = s.read_to_end(&mut back);
    let wrote = writer.join().unwrap_or(false);
    let same = wrote && read.is_ok() && back == payload;
    say(
        &format!("echo_{label}"),
        if same {
            "same".to_string()
        } else {
            format!("differs(wrote={wrote} got={} read={read:?})", back.len())
        },
    );
}

fn plain_http_via_proxy() -> String {
    let Some(proxy) = proxy_addr() else {
        return "no-proxy".into();
    };
    match TcpStream::connect_timeout(&proxy, Duration::from_secs(3)) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                s,
                "GET http://{QUERY_NAME}:{ECHO_PORT}/ HTTP/1.1\r\nHost: {QUERY_NAME}\r\n\r\n"
            );
            let mut resp = Vec::new();
            let _ = s.read_to_end(&mut resp);
            status_of(&resp)
        }
        Err(e) => outcome::<()>(Err(e)),
    }
}

fn status_line(pid: &str, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(&format!("{key}:"))
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unreadable".into())
}

fn probes(which: &str) {
    let o4 = |p| SocketAddr::new(OUTSIDE_V4.into(), p);
    let o6 = |p| SocketAddr::new(OUTSIDE_V6.into(), p);
    for k in [
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_UNIX_SOCKET",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL",
    ] {
        say(
            &format!("env_{k}"),
            std::env::var(k).unwrap_or_else(|_| "<unset>".into()),
        );
    }
    say("uid", nix::unistd::getuid());
    say("seccomp", status_line("self", "Seccomp"));
    say("pid1_capeff", status_line("1", "CapEff"));
    say("pid1_capbnd", status_line("1", "CapBnd"));
    // Sockets of every IP-ish family (api-only refuses them at socket()).
    say(
        "sock_inet_stream",
        socket(libc::AF_INET, libc::SOCK_STREAM, 0),
    );
    say(
        "sock_inet6_dgram",
        socket(libc::AF_INET6, libc::SOCK_DGRAM, 0),
    );
    say("sock_packet", socket(libc::AF_PACKET, libc::SOCK_RAW, 0));
    say(
        "sock_raw",
        socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
    );
    say("sock_unix", socket(libc::AF_UNIX, libc::SOCK_STREAM, 0));
    // Families nftables never sees (allowlist refuses them at socket() too).
    say("sock_vsock", socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0));
    say("sock_alg", socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0));
    say(
        "sock_inet6_raw",
        socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW),
    );
    // The known bypasses of a socket() filter: io_uring (IORING_OP_SOCKET) and the i386 ABI.
    say(
        "io_uring",
        match support::egress::try_io_uring() {
            0 => "ok".to_string(),
            e => format!("errno{e}"),
        },
    );
    #[cfg(target_arch = "x86_64")]
    say(
        "i386_socket",
        in_subprocess(|| support::egress::i386_socket() >= 0),
    );
    // Direct traffic to the outside host, IPv4 and IPv6.
    say("tcp4", tcp(o4(ECHO_PORT)));
    say("tcp6", tcp(o6(ECHO_PORT)));
    say("udp4", udp_roundtrip(o4(ECHO_PORT), b"udp probe"));
    say("udp6", udp_roundtrip(o6(ECHO_PORT), b"udp probe"));
    say("ping4", ping(OUTSIDE_V4.into()));
    say("ping6", ping(OUTSIDE_V6.into()));
    let q = dns_query_for(QUERY_NAME, 1, 0x4242);
    say("dns4", udp_roundtrip(o4(DNS_PORT), &q));
    say("dns6", udp_roundtrip(o6(DNS_PORT), &q));
    say(
        "dns_docker",
        udp_roundtrip(SocketAddr::new(DOCKER_DNS.into(), DNS_PORT), &q),
    );
    say("resolve", resolve(QUERY_NAME));
    say(
        "tcp_local",
        tcp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), LOCAL_PORT)),
    );
    // The API, by whichever route this mode offers.
    if let Ok(path) = std::env::var("ANTHROPIC_UNIX_SOCKET") {
        say(
            "api_unix",
            match UnixStream::connect(&path) {
                Ok(s) => api_request(s),
                Err(e) => outcome::<()>(Err(e)),
            },
        );
    }
    if let Some(addr) = std::env::var("ANTHROPIC_BASE_URL")
        .ok()
        .and_then(|u| u.strip_prefix("http://").and_then(|a| a.parse().ok()))
    {
        say(
            "api_tcp",
            match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                Ok(s) => api_request(s),
                Err(e) => outcome::<()>(Err(e)),
            },
        );
    }
    if which.starts_with("allowlist") {
        connect("allowed", &format!("{QUERY_NAME}:{ECHO_PORT}"));
        connect("allowed_upper", &format!("OUTSIDE.Egress.Test:{ECHO_PORT}"));
        connect("unlisted", &format!("other.egress.test:{ECHO_PORT}"));
        connect("wrong_port", &format!("{QUERY_NAME}:{DNS_PORT}"));
        connect("ip4", &format!("{OUTSIDE_V4}:{ECHO_PORT}"));
        connect("ip6", &format!("[{OUTSIDE_V6}]:{ECHO_PORT}"));
        connect("internal", &format!("{INTERNAL_NAME}:{ECHO_PORT}"));
        connect("metadata", &format!("{METADATA_NAME}:{ECHO_PORT}"));
        connect("docker_dns", &format!("{DOCKER_DNS}:{DNS_PORT}"));
        say("plain_http", plain_http_via_proxy());
    }
    say("done", 1);
    // Hold until the test has looked at the running container (it closes our stdin).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

// ---------------------------------------------------------------------------------------------
// The parent side.

/// Removes `/etc/netns/<ns>` (the resolv.conf `ip netns exec` mounts) on drop.
struct NetnsEtc(PathBuf);

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Env {
    lab: Lab,
    mock: Mock,
    token: String,
    dir: tempfile::TempDir,
    _etc: NetnsEtc,
}

fn setup() -> Option<Env> {
    if !root_or_fail("egress_e2e") {
        return None;
    }
    let mut lab = Lab::new();
    lab.client_dns(SocketAddr::new(DOCKER_DNS.into(), DNS_PORT));
    lab.client_tcp_echo(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), LOCAL_PORT));
    let etc = PathBuf::from(format!("/etc/netns/{}", lab.client.name));
    std::fs::create_dir_all(&etc).expect("mkdir /etc/netns/NS");
    let etc = NetnsEtc(etc);
    std::fs::write(
        etc.0.join("resolv.conf"),
        format!("nameserver {OUTSIDE_V4}\n"),
    )
    .expect("write resolv.conf");
    let token = support::e2e::fake_secret("sk-ant-oat01-egress-");
    let listeners = lab.client.run_in(|| {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
        let port = v4.local_addr().unwrap().port();
        let mut all = vec![v4];
        if let Ok(v6) = std::net::TcpListener::bind(("::1", port)) {
            all.push(v6);
        }
        all
    });
    let mock = Mock::start_on(
        listeners,
        MockConfig::new(Expect::Bearer(token.clone()), "egress ok"),
    )
    .expect("start mock");
    let dir = tempfile::tempdir().expect("tempdir");
    // The child must traverse it to reach the API socket directory beside the run dir.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(Env {
        lab,
        mock,
        token,
        dir,
        _etc: etc,
    })
}

struct InitRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    probes: HashMap<String, String>,
}

impl InitRun {
    fn get(&self, k: &str) -> &str {
        self.probes
            .get(k)
            .map(String::as_str)
            .unwrap_or("<missing>")
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// A finished command without probes (`EGRESS_E2E_SHOW` prints it as `what`).
    fn finished(out: &std::process::Output, what: std::fmt::Arguments) -> InitRun {
        let run = InitRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            probes: HashMap::new(),
        };
        if std::env::var_os("EGRESS_E2E_SHOW").is_some() {
            eprintln!("=== {what}\n{}", run.describe());
        }
        run
    }

    fn assert_no_token(&self, token: &str) {
        assert!(!self.stdout.contains(token), "token in stdout");
        assert!(!self.stderr.contains(token), "token in stderr");
    }
}

fn run_dir(env: &Env) -> PathBuf {
    env.dir.path().join("run")
}

/// Runs bottle-init as PID 1 in the lab's client namespace with `mode` (and extra env), its
/// child the probe program. `prefix`: a wrapper command (setpriv, ...). `while_running` is
/// called once the probes are done and the container still runs.
fn run_init(
    env: &Env,
    mode: &str,
    extra: &[(&str, &str)],
    prefix: &[&str],
    while_running: impl FnOnce(u32),
) -> InitRun {
    run_init_with(env, mode, extra, prefix, None, while_running)
}

/// [`run_init`] with a seccomp filter installed on the whole command (`ip`, `unshare`,
/// bottle-init) before it starts: how the tests take seccomp away, as qemu-user does.
fn run_init_with(
    env: &Env,
    mode: &str,
    extra: &[(&str, &str)],
    prefix: &[&str],
    outer_filter: Option<&'static [libc::sock_filter]>,
    while_running: impl FnOnce(u32),
) -> InitRun {
    let probe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &env.lab.client.name])
        .args(["unshare", "--pid", "--fork", "--mount-proc"])
        .args(prefix)
        .arg(support::bin())
        .arg("--")
        .arg(&probe)
        .args([
            "--exact",
            "probe_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env_clear()
        .env("PATH", PATH)
        .env("CLAUDE_CODE_OAUTH_TOKEN", &env.token)
        .env("BOTTLE_USER", "1000:1000")
        .env("BOTTLE_UPSTREAM", env.mock.url())
        .env("BOTTLE_UPSTREAM_CA", env.mock.ca_pem())
        .env("BOTTLE_RUN_DIR", run_dir(env))
        .env("BOTTLE_GRACE", "1")
        .env("BOTTLE_EGRESS", mode)
        .env("EGRESS_PROBE", mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    if let Some(prog) = outer_filter {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the forked child before exec and makes one system call on a static
        // program (async-signal-safe). As root (CAP_SYS_ADMIN) no no_new_privs is needed, so
        // the set-uid steps of what follows are unaffected.
        unsafe {
            cmd.pre_exec(move || {
                let fprog = libc::sock_fprog {
                    len: prog.len() as u16,
                    filter: prog.as_ptr() as *mut libc::sock_filter,
                };
                let rc = libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &fprog as *const libc::sock_fprog,
                );
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn bottle-init");
    let stdin = child.stdin.take();
    let mut err = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut stdout = String::new();
    let mut probes = HashMap::new();
    let mut line = String::new();
    let mut hook = Some(while_running);
    let mut stdin = stdin;
    loop {
        line.clear();
        match out.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        stdout.push_str(&line);
        if let Some(kv) = line.trim_end().strip_prefix("PROBE ")
            && let Some((k, v)) = kv.split_once('=')
        {
            probes.insert(k.to_string(), v.to_string());
            if k == "done" {
                if let Some(h) = hook.take() {
                    h(child.id());
                }
                stdin.take();
            }
        }
    }
    drop(stdin);
    let status = child.wait().expect("wait bottle-init");
    let stderr = err_thread.join().unwrap_or_default();
    let run = InitRun {
        code: status.code(),
        stdout,
        stderr,
        probes,
    };
    if std::env::var_os("EGRESS_E2E_SHOW").is_some() {
        eprintln!("=== BOTTLE_EGRESS={mode}\n{}", run.describe());
    }
    run
}

/// bottle-init's pid: the child `unshare --fork` started (the spawned process is `ip`, which
/// exec'd unshare).
fn init_pid(spawned: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{spawned}/task/{spawned}/children"))
        .expect("read children");
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("unshare has a child")
}

/// `docker exec CONTAINER bottle-init exec -- probe`, with the container's environment (the
/// token included), entering PID 1's namespaces as docker exec does.
fn exec_probe(env: &Env, pid1: u32, mode: &str) -> InitRun {
    let probe = std::env::current_exe().expect("current_exe");
    let out = Command::new("nsenter")
        .args(["-t", &pid1.to_string(), "-p", "-m", "-n"])
        .arg(support::bin())
        .args(["exec", "--"])
        .arg(&probe)
        .args([
            "--exact",
            "probe_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env_clear()
        .env("PATH", PATH)
        .env("CLAUDE_CODE_OAUTH_TOKEN", &env.token)
        .env("BOTTLE_RUN_DIR", run_dir(env))
        .env("BOTTLE_EGRESS", "open") // the container's own setting is PID 1's, not ours
        .env("EGRESS_PROBE", format!("{mode}-exec"))
        .stdin(Stdio::null())
        .output()
        .expect("run nsenter");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let probes = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PROBE "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    InitRun {
        code: out.status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        probes,
    }
}

#[test]
fn bottle_init_exec_joins_the_locked_mode() {
    let Some(env) = setup() else { return };
    for mode in ["api-only", "allowlist"] {
        let allow = format!("{QUERY_NAME}:{ECHO_PORT}/private");
        let mut exec_run = None;
        let r = run_init(
            &env,
            mode,
            &[("BOTTLE_ALLOW_HOSTS", allow.as_str())][..usize::from(mode == "allowlist")],
            &[],
            |spawned| {
                exec_run = Some(exec_probe(&env, init_pid(spawned), mode));
            },
        );
        assert_eq!(r.code, Some(0), "{}", r.describe());
        let e = exec_run.expect("exec ran");
        assert_eq!(e.code, Some(0), "exec in {mode}: {}", e.describe());
        assert_eq!(e.get("uid"), "1000", "{}", e.describe());
        for k in NET_PROBES {
            assert!(
                refused(e.get(k)),
                "exec in {mode}: {k} got through\n{}",
                e.describe()
            );
        }
        if mode == "api-only" {
            assert_eq!(e.get("seccomp"), "2", "{}", e.describe());
            assert_eq!(e.get("sock_inet_stream"), format!("errno{}", libc::EACCES));
            assert_eq!(e.get("api_unix"), "200", "{}", e.describe());
            assert_eq!(e.get("env_ANTHROPIC_BASE_URL"), "http://localhost");
        } else {
            // The allowlist filter too: no socket family nftables cannot see.
            assert_eq!(e.get("seccomp"), "2", "{}", e.describe());
            for k in ["sock_vsock", "sock_alg", "sock_packet", "sock_raw"] {
                assert_eq!(
                    e.get(k),
                    format!("errno{}", libc::EACCES),
                    "{k}\n{}",
                    e.describe()
                );
            }
            assert_eq!(e.get("sock_inet_stream"), "ok", "{}", e.describe());
            assert_eq!(e.get("api_tcp"), "200", "{}", e.describe());
            assert_eq!(e.get("connect_allowed"), "200", "{}", e.describe());
            assert_eq!(e.get("echo_allowed"), "same", "{}", e.describe());
            assert_eq!(e.get("connect_unlisted"), "403", "{}", e.describe());
            assert!(e.get("env_HTTPS_PROXY").starts_with("http://127.0.0.1:"));
        }
        r.assert_no_token(&env.token);
        e.assert_no_token(&env.token);
    }
}

#[test]
fn bottle_init_exec_refuses_without_the_egress_record() {
    let Some(env) = setup() else { return };
    let mut exec_run = None;
    let r = run_init(&env, "api-only", &[], &[], |spawned| {
        // Someone removed the record: exec must not fall back to an unlocked command.
        std::fs::remove_file(run_dir(&env).join("egress")).expect("remove egress record");
        exec_run = Some(exec_probe(&env, init_pid(spawned), "api-only"));
    });
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let e = exec_run.expect("exec ran");
    assert_eq!(e.code, Some(69), "{}", e.describe());
    assert!(e.probes.is_empty(), "the command ran: {}", e.describe());
    assert!(e.stderr.contains("egress"), "{}", e.describe());
    e.assert_no_token(&env.token);
}

fn refused(v: &str) -> bool {
    v != "ok" && v != "<missing>"
}

/// The direct-network probes: all succeed in `open`, all fail in a locked mode.
const NET_PROBES: [&str; 11] = [
    "tcp4",
    "tcp6",
    "udp4",
    "udp6",
    "ping4",
    "ping6",
    "dns4",
    "dns6",
    "dns_docker",
    "resolve",
    "tcp_local",
];

#[test]
fn open_mode_control_run_reaches_everything() {
    let Some(env) = setup() else { return };
    let r = run_init(&env, "open", &[], &[], |_| {});
    assert_eq!(r.code, Some(0), "{}", r.describe());
    for k in NET_PROBES {
        assert_eq!(
            r.get(k),
            "ok",
            "open mode: {k} should work\n{}",
            r.describe()
        );
    }
    assert_eq!(r.get("api_tcp"), "200", "{}", r.describe());
    assert_eq!(r.get("seccomp"), "0", "{}", r.describe());
    assert_eq!(r.get("io_uring"), "ok", "{}", r.describe());
    // Control for the filters: this kernel has AF_VSOCK; AF_ALG fails with its own errno.
    assert_eq!(r.get("sock_vsock"), "ok", "{}", r.describe());
    assert_ne!(r.get("sock_alg"), format!("errno{}", libc::EACCES));
    #[cfg(target_arch = "x86_64")]
    assert_eq!(r.get("i386_socket"), "exit0", "{}", r.describe());
    assert!(
        r.stderr.contains("egress is not restricted"),
        "open must say so\n{}",
        r.describe()
    );
    assert_eq!(r.get("env_HTTPS_PROXY"), "<unset>");
    r.assert_no_token(&env.token);
}

#[test]
fn api_only_child_has_no_ip_network_but_reaches_the_api_over_the_socket() {
    let Some(env) = setup() else { return };
    let sock_dir = env.dir.path().join("bottle-init-api");
    let sock = sock_dir.join("api.sock");
    let mut root_peer = String::new();
    let r = run_init(&env, "api-only", &[], &[], |_| {
        // As root (not the child uid): SO_PEERCRED refuses us, the connection just closes.
        root_peer = match UnixStream::connect(&sock) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.write_all(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n");
                let mut b = Vec::new();
                let _ = s.read_to_end(&mut b);
                format!("got {} bytes", b.len())
            }
            Err(e) => format!("connect failed: {e}"),
        };
    });
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.get("uid"), "1000");
    // SECCOMP_MODE_FILTER in the child.
    assert_eq!(r.get("seccomp"), "2", "{}", r.describe());
    for k in [
        "sock_inet_stream",
        "sock_inet6_dgram",
        "sock_packet",
        "sock_raw",
        "sock_vsock",
        "sock_alg",
        "sock_inet6_raw",
    ] {
        assert_eq!(
            r.get(k),
            format!("errno{}", libc::EACCES),
            "{k}\n{}",
            r.describe()
        );
    }
    assert_eq!(r.get("sock_unix"), "ok");
    assert_eq!(r.get("io_uring"), format!("errno{}", libc::ENOSYS));
    #[cfg(target_arch = "x86_64")]
    assert_eq!(r.get("i386_socket"), format!("signal{}", libc::SIGSYS));
    for k in NET_PROBES {
        assert!(
            refused(r.get(k)),
            "api-only: {k} got through\n{}",
            r.describe()
        );
    }
    assert_eq!(r.get("api_unix"), "200", "{}", r.describe());
    assert_eq!(
        env.mock.messages().len(),
        1,
        "the mock saw the API request once (with the real token, else it answers 401)"
    );
    assert_eq!(
        env.mock.messages()[0].header("authorization").as_deref(),
        Some(format!("Bearer {}", env.token).as_str())
    );
    assert_eq!(r.get("env_ANTHROPIC_UNIX_SOCKET"), sock.to_str().unwrap());
    assert_eq!(r.get("env_ANTHROPIC_BASE_URL"), "http://localhost");
    assert_eq!(r.get("env_HTTPS_PROXY"), "<unset>");
    assert_eq!(r.get("env_CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"), "1");
    assert_eq!(
        r.get("env_CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL"),
        "1"
    );
    assert_eq!(root_peer, "got 0 bytes", "a root peer must be refused");
    assert!(
        r.stderr
            .contains("API socket connection from uid 0 refused"),
        "{}",
        r.describe()
    );
    let md = std::fs::symlink_metadata(&sock_dir).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (0, 0o755));
    let md = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (0, 1000, 0o660));
    r.assert_no_token(&env.token);
}

#[test]
fn allowlist_child_reaches_only_the_proxy_and_the_listed_host() {
    let Some(env) = setup() else { return };
    // TEST-NET addresses are not public: the listed lab host needs /private, exactly like a
    // user's internal host would. The internal and metadata names are listed WITHOUT it.
    let allow = format!(
        "{QUERY_NAME}:{ECHO_PORT}/private, {INTERNAL_NAME}:{ECHO_PORT} {METADATA_NAME}:{ECHO_PORT}"
    );
    let r = run_init(
        &env,
        "allowlist",
        &[("BOTTLE_ALLOW_HOSTS", &allow)],
        &[],
        |_| {},
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.get("uid"), "1000");
    for k in NET_PROBES {
        assert!(
            refused(r.get(k)),
            "allowlist: {k} got through\n{}",
            r.describe()
        );
    }
    // The socket-family filter (issue 10 item 14): only TCP/UDP of IP, Unix and netlink.
    assert_eq!(r.get("seccomp"), "2", "{}", r.describe());
    for k in [
        "sock_vsock",
        "sock_alg",
        "sock_packet",
        "sock_raw",
        "sock_inet6_raw",
    ] {
        assert_eq!(
            r.get(k),
            format!("errno{}", libc::EACCES),
            "{k}\n{}",
            r.describe()
        );
    }
    for k in ["sock_inet_stream", "sock_inet6_dgram", "sock_unix"] {
        assert_eq!(r.get(k), "ok", "{k}\n{}", r.describe());
    }
    assert_eq!(r.get("io_uring"), format!("errno{}", libc::ENOSYS));
    #[cfg(target_arch = "x86_64")]
    assert_eq!(r.get("i386_socket"), format!("signal{}", libc::SIGSYS));
    // The API through the proxy, with the real credential injected.
    assert_eq!(r.get("api_tcp"), "200", "{}", r.describe());
    assert_eq!(
        env.mock.messages()[0].header("authorization").as_deref(),
        Some(format!("Bearer {}", env.token).as_str())
    );
    // The listed host: tunnel up, 200 KB both ways unchanged, case-insensitive name.
    for l in ["allowed", "allowed_upper"] {
        assert_eq!(r.get(&format!("connect_{l}")), "200", "{}", r.describe());
        assert_eq!(r.get(&format!("echo_{l}")), "same", "{}", r.describe());
    }
    for l in [
        "unlisted",
        "wrong_port",
        "ip4",
        "ip6",
        "internal",
        "metadata",
        "docker_dns",
    ] {
        assert_eq!(
            r.get(&format!("connect_{l}")),
            "403",
            "CONNECT {l} must be refused\n{}",
            r.describe()
        );
    }
    assert_eq!(r.get("plain_http"), "403", "{}", r.describe());
    // Every decision is logged.
    for needle in [
        format!("egress allowed: {QUERY_NAME}:{ECHO_PORT} -> "),
        format!("other.egress.test:{ECHO_PORT} is not in BOTTLE_ALLOW_HOSTS"),
        format!("IP address {OUTSIDE_V4} port {ECHO_PORT} is not in BOTTLE_ALLOW_HOSTS"),
        format!("{INTERNAL_NAME} resolves to 10.1.2.3"),
        format!("{METADATA_NAME} resolves to 169.254.169.254"),
        "plain http:// request".to_string(),
        "nftables rules installed and verified".to_string(),
    ] {
        assert!(
            r.stderr.contains(&needle),
            "log lacks {needle:?}\n{}",
            r.describe()
        );
    }
    // The child's environment points every client at the proxy.
    let proxy = r.get("env_HTTPS_PROXY").to_string();
    assert!(proxy.starts_with("http://127.0.0.1:"), "{proxy}");
    for k in ["https_proxy", "HTTP_PROXY", "http_proxy"] {
        assert_eq!(r.get(&format!("env_{k}")), proxy);
    }
    assert!(r.get("env_NO_PROXY").contains("127.0.0.1"));
    assert!(r.get("env_NO_PROXY").contains("localhost"));
    assert_eq!(r.get("env_CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"), "1");
    // PID 1 kept only CAP_KILL: CAP_NET_ADMIN is gone before the child ran.
    assert_eq!(r.get("pid1_capeff"), "0000000000000020", "{}", r.describe());
    assert_eq!(r.get("pid1_capbnd"), "0000000000000000", "{}", r.describe());
    r.assert_no_token(&env.token);
}

fn assert_refused_start(r: &InitRun, code: i32, needle: &str, token: &str) {
    assert_eq!(r.code, Some(code), "{}", r.describe());
    assert!(
        r.stderr.contains(needle),
        "message lacks {needle:?}\n{}",
        r.describe()
    );
    assert!(
        r.probes.is_empty() && !r.stdout.contains("PROBE"),
        "the child ran\n{}",
        r.describe()
    );
    r.assert_no_token(token);
}

#[test]
fn allowlist_without_net_admin_refuses_to_start() {
    let Some(env) = setup() else { return };
    let r = run_init(
        &env,
        "allowlist",
        &[],
        &[
            "setpriv",
            "--bounding-set",
            "-net_admin",
            "--inh-caps",
            "-all",
        ],
        |_| {},
    );
    assert_refused_start(&r, 77, "needs the CAP_NET_ADMIN capability", &env.token);
}

#[test]
fn allowlist_without_nft_refuses_to_start() {
    let Some(env) = setup() else { return };
    // Hide every nft candidate in the (private) mount namespace `ip netns exec` made.
    let script = "for p in /usr/sbin/nft /sbin/nft /usr/bin/nft /bin/nft; do \
                  [ -e \"$p\" ] && mount --bind /dev/null \"$p\"; done; exec \"$@\"";
    let r = run_init(&env, "allowlist", &[], &["sh", "-c", script, "sh"], |_| {});
    assert_refused_start(&r, 78, "nft", &env.token);
}

#[test]
fn api_only_with_a_replaceable_socket_directory_refuses_to_start() {
    let Some(env) = setup() else { return };
    // The socket directory's parent is world-writable without the sticky bit: the child
    // could swap the directory, so bottle-init must refuse rather than serve there.
    let open_parent = env.dir.path().join("open");
    std::fs::create_dir(&open_parent).unwrap();
    std::fs::set_permissions(&open_parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = open_parent.join("run");
    let r = run_init(
        &env,
        "api-only",
        &[("BOTTLE_RUN_DIR", run.to_str().unwrap())],
        &[],
        |_| {},
    );
    assert_refused_start(&r, 78, "refusing to put the API socket", &env.token);
}

#[test]
fn bad_egress_settings_refuse_to_start() {
    let Some(env) = setup() else { return };
    let r = run_init(&env, "alowlist", &[], &[], |_| {});
    assert_refused_start(
        &r,
        78,
        "BOTTLE_EGRESS=\"alowlist\" is not an egress mode",
        &env.token,
    );
    let r = run_init(
        &env,
        "api-only",
        &[("BOTTLE_ALLOW_HOSTS", "example.com")],
        &[],
        |_| {},
    );
    assert_refused_start(&r, 78, "BOTTLE_ALLOW_HOSTS is set but", &env.token);
}

/// Whether bottle-init's nftables table exists in the lab's client namespace.
fn bottle_table_installed(env: &Env) -> bool {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &env.lab.client.name,
            "nft",
            "list",
            "tables",
        ])
        .output()
        .expect("nft list tables");
    String::from_utf8_lossy(&out.stdout).contains("bottle_init")
}

/// seccomp(2) answers ENOSYS, everything else runs: what qemu-user does (it cannot install
/// guest filters), on a real kernel.
static NO_SECCOMP: [libc::sock_filter; 4] = [
    libc::sock_filter {
        code: 0x20, // ld [nr]
        jt: 0,
        jf: 0,
        k: 0,
    },
    libc::sock_filter {
        code: 0x15, // jeq SYS_seccomp
        jt: 0,
        jf: 1,
        k: libc::SYS_seccomp as u32,
    },
    libc::sock_filter {
        code: 0x06, // ret ERRNO(ENOSYS)
        jt: 0,
        jf: 0,
        k: 0x0005_0000 | libc::ENOSYS as u32,
    },
    libc::sock_filter {
        code: 0x06, // ret ALLOW
        jt: 0,
        jf: 0,
        k: 0x7fff_0000,
    },
];

/// Issue 9 item 4: where filters cannot be installed (qemu-user, a kernel without them), a
/// locked mode refuses up front with that reason, before binding or writing anything, and
/// `open` still starts.
#[test]
fn locked_modes_refuse_to_start_where_seccomp_is_missing() {
    let Some(env) = setup() else { return };
    let allow = format!("{QUERY_NAME}:{ECHO_PORT}/private");
    for (mode, extra) in [
        ("api-only", vec![]),
        ("allowlist", vec![("BOTTLE_ALLOW_HOSTS", allow.as_str())]),
    ] {
        let r = run_init_with(&env, mode, &extra, &[], Some(&NO_SECCOMP), |_| {});
        assert_refused_start(&r, 78, "seccomp is not available here", &env.token);
        let line = format!("bottle-init: error: BOTTLE_EGRESS={mode} needs a seccomp filter");
        assert!(r.stderr.starts_with(&line), "{}", r.describe());
        assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.describe());
        for needle in ["ENOSYS", "qemu-user"] {
            assert!(r.stderr.contains(needle), "{needle}: {}", r.describe());
        }
        assert!(
            !r.stderr
                .contains("Docker's default capabilities and seccomp profile"),
            "{}",
            r.describe()
        );
        // Before any side effect: no run dir, no API socket directory, no nftables table.
        assert!(!run_dir(&env).exists(), "{mode}: run dir created");
        assert!(
            !env.dir.path().join("bottle-init-api").exists(),
            "{mode}: socket dir created"
        );
        assert!(!bottle_table_installed(&env), "{mode}: nft table installed");
    }
    // Control: the same outer filter, egress open: starts and runs (the filter only hides
    // seccomp(2)).
    let r = run_init_with(&env, "open", &[], &[], Some(&NO_SECCOMP), |_| {});
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.get("api_tcp"), "200", "{}", r.describe());
    r.assert_no_token(&env.token);
}

/// Issue 10 item 16: with `docker run --network host` the allowlist rules would land in the
/// host's network namespace. bottle-init tells it from the sysctls Linux registers only for
/// the initial namespace; here the lab namespace is made to look like the host's by mounting
/// such a sysctl directory over /proc/sys/net/core (in `ip netns exec`'s private mount
/// namespace), so nothing real is at risk.
#[test]
fn allowlist_refuses_the_hosts_network_namespace_unless_opted_in() {
    let Some(env) = setup() else { return };
    let fake = env.dir.path().join("init-net-core");
    std::fs::create_dir(&fake).unwrap();
    for name in [
        "somaxconn",
        "netdev_max_backlog",
        "dev_weight",
        "message_burst",
    ] {
        std::fs::write(fake.join(name), "1\n").unwrap();
    }
    let fake_s = fake.to_str().unwrap();
    let prefix = [
        "sh",
        "-c",
        "mount --bind \"$0\" /proc/sys/net/core && exec \"$@\"",
        fake_s,
    ];
    let allow = format!("{QUERY_NAME}:{ECHO_PORT}/private");
    let r = run_init(
        &env,
        "allowlist",
        &[("BOTTLE_ALLOW_HOSTS", allow.as_str())],
        &prefix,
        |_| {},
    );
    assert_refused_start(&r, 78, "host's own network namespace", &env.token);
    assert!(r.stderr.contains("--network host"), "{}", r.describe());
    assert!(
        r.stderr.contains("BOTTLE_INSECURE_HOST_NETWORK=1"),
        "{}",
        r.describe()
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.describe());
    assert!(!bottle_table_installed(&env), "rules were installed");
    // The explicit opt-in: it starts, says what it does, and the lockdown works as usual.
    let r = run_init(
        &env,
        "allowlist",
        &[
            ("BOTTLE_ALLOW_HOSTS", allow.as_str()),
            ("BOTTLE_INSECURE_HOST_NETWORK", "1"),
        ],
        &prefix,
        |_| {},
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(
        r.stderr
            .contains("filter the child's uid on the whole host"),
        "{}",
        r.describe()
    );
    assert_eq!(r.get("api_tcp"), "200", "{}", r.describe());
    assert!(refused(r.get("tcp4")), "{}", r.describe());
    r.assert_no_token(&env.token);
}

#[test]
fn allowlist_refuses_a_non_loopback_proxy_listener() {
    let Some(env) = setup() else { return };
    // A wildcard listener would offer CONNECT to the whole network.
    let r = run_init(
        &env,
        "allowlist",
        &[("BOTTLE_LISTEN", "0.0.0.0:0")],
        &[],
        |_| {},
    );
    assert_refused_start(&r, 78, "not a loopback address", &env.token);
}

// ---------------------------------------------------------------------------------------------
// The real client (BOTTLE_TEST_CLAUDE), in both locked modes.

/// Runs `claude -p PROMPT` under bottle-init in `mode`, with a passwd entry making uid 1000
/// `claude` with a fresh HOME (bind-mounted in the private mount namespace of `ip netns exec`).
fn claude_run(env: &Env, claude: &std::path::Path, mode: &str, extra: &[(&str, &str)]) -> InitRun {
    let d = env.dir.path();
    let home = d.join("home");
    std::fs::create_dir_all(&home).unwrap();
    nix::unistd::chown(&home, Some(1000.into()), Some(1000.into())).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    support::write_identity_files(d, &home);
    let wrapper = "mount --bind \"$0/passwd\" /etc/passwd && \
                   mount --bind \"$0/group\" /etc/group && exec \"$@\"";
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "ip", "netns", "exec", &env.lab.client.name])
        .args([
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            wrapper,
        ])
        .arg(d)
        .arg(support::bin())
        .arg("--")
        .arg(claude)
        .args(["-p", "egress prompt"])
        .env_clear()
        .env("PATH", PATH)
        .env("CLAUDE_CODE_OAUTH_TOKEN", &env.token)
        .env("BOTTLE_UPSTREAM", env.mock.url())
        .env("BOTTLE_UPSTREAM_CA", env.mock.ca_pem())
        .env("BOTTLE_RUN_DIR", run_dir(env))
        .env("BOTTLE_EGRESS", mode)
        .env("DISABLE_AUTOUPDATER", "1")
        .current_dir(&home)
        .stdin(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run claude under bottle-init");
    InitRun::finished(&out, format_args!("claude, BOTTLE_EGRESS={mode}"))
}

#[test]
fn real_claude_works_in_both_locked_modes() {
    let Some(env) = setup() else { return };
    let claude = match support::e2e::claude_binary() {
        Ok(p) => p,
        Err(why) => {
            support::e2e::require(false, &why);
            return;
        }
    };
    let _g = support::e2e::heavy();
    let allow = format!("{QUERY_NAME}:{ECHO_PORT}/private");
    for (mode, extra) in [
        ("api-only", vec![]),
        ("allowlist", vec![("BOTTLE_ALLOW_HOSTS", allow.as_str())]),
    ] {
        let before = env.mock.messages().len();
        let r = claude_run(&env, &claude, mode, &extra);
        assert_eq!(r.code, Some(0), "claude in {mode}: {}", r.describe());
        assert!(
            r.stdout.contains("egress ok"),
            "claude in {mode} did not print the mock's reply: {}",
            r.describe()
        );
        let msgs = env.mock.messages();
        assert!(msgs.len() > before, "no API request in {mode}");
        assert_eq!(
            msgs[before].header("authorization").as_deref(),
            Some(format!("Bearer {}", env.token).as_str()),
            "the real token reaches the upstream in {mode}"
        );
        // A locked claude starts quietly: no out-of-band attempt was refused.
        assert!(
            !r.stderr.contains("egress denied"),
            "claude in {mode} tried to get out: {}",
            r.describe()
        );
        r.assert_no_token(&env.token);
    }
}

/// The child's order under `strace -f`, in both locked modes: setresuid to the user,
/// no_new_privs, then the seccomp filter, then execve of the command, with nothing traced in
/// between; bottle-init itself (the proxy's process) never installs a filter.
#[test]
fn api_only_filter_is_the_last_step_before_execve() {
    let Some(env) = setup() else { return };
    if !support::e2e::require(
        support::e2e::have_tool("strace"),
        "strace (apt-get install strace)",
    ) {
        return;
    }
    let allow = format!("{QUERY_NAME}:{ECHO_PORT}/private");
    let allow_env = [("BOTTLE_ALLOW_HOSTS", allow.as_str())];
    for (mode, extra) in [("api-only", &[][..]), ("allowlist", &allow_env[..])] {
        let trace = env.dir.path().join(format!("strace-{mode}.out"));
        let trace_s = trace.to_str().unwrap().to_string();
        let prefix = [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=setresuid,prctl,seccomp,execve",
            "-o",
            trace_s.as_str(),
        ];
        let r = run_init(&env, mode, extra, &prefix, |_| {});
        assert_eq!(r.code, Some(0), "{}", r.describe());
        assert_eq!(r.get("seccomp"), "2", "{}", r.describe());
        let text = std::fs::read_to_string(&trace).expect("strace output");
        let lines: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(pid, rest)| (pid, rest.trim_start()))
            .collect();
        let filters: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, (_, c))| {
                c.starts_with("seccomp(SECCOMP_SET_MODE_FILTER") && c.ends_with("= 0")
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(filters.len(), 1, "one filter install expected:\n{text}");
        let at = filters[0];
        let child = lines[at].0;
        let mine: Vec<&str> = lines
            .iter()
            .filter(|(p, _)| *p == child)
            .map(|(_, c)| *c)
            .collect();
        let pos = |pred: &dyn Fn(&str) -> bool| mine.iter().position(|c| pred(c));
        let setuid = pos(&|c| c.starts_with("setresuid(1000, 1000, 1000)") && c.ends_with("= 0"))
            .unwrap_or_else(|| panic!("{mode}: no setresuid in the child:\n{text}"));
        let nnp = pos(&|c| c.starts_with("prctl(PR_SET_NO_NEW_PRIVS, 1") && c.ends_with("= 0"))
            .unwrap_or_else(|| panic!("no no_new_privs in the child:\n{text}"));
        let filter =
            pos(&|c| c.starts_with("seccomp(SECCOMP_SET_MODE_FILTER")).expect("the filter line");
        assert!(setuid < nnp && nnp < filter, "order:\n{}", mine.join("\n"));
        let next = mine.get(filter + 1).copied().unwrap_or("");
        assert!(
            next.starts_with("execve(") && next.contains("egress_e2e"),
            "the syscall after the filter must be the command's execve, got {next:?}:\n{}",
            mine.join("\n")
        );
        r.assert_no_token(&env.token);
        // strace abbreviates environments, so the token must not show anywhere in the trace.
        assert!(
            !text.contains(&env.token),
            "the token appears in a traced syscall"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// `bottle-init check` (issue 12): run as `docker exec C /bottle-init check` would be (nsenter
// into PID 1's namespaces, with the container's environment, the token included), against
// good set-ups in each mode and against broken ones made on purpose.

/// The lab's outside host: what `--probe` aims at (never an address outside the lab).
fn lab_probe() -> String {
    format!("{OUTSIDE_V4}:{ECHO_PORT}")
}

/// `docker exec CONTAINER /bottle-init check ARGS`.
fn check_run(env: &Env, pid1: u32, args: &[&str]) -> InitRun {
    check_run_with(env, pid1, &[], args)
}

/// Root that cannot open a uid-1000 process's environment (mode 0400, its owner's): without
/// CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE. Only the child-user probe can
/// read it then, so the credential check must rely on the probe's report.
const ROOT_BLIND: [&str; 3] = [
    "setpriv",
    "--bounding-set",
    "-sys_ptrace,-dac_override,-dac_read_search",
];

/// [`check_run`] with a wrapper command ([`ROOT_BLIND`]).
fn check_run_with(env: &Env, pid1: u32, prefix: &[&str], args: &[&str]) -> InitRun {
    let out = Command::new("nsenter")
        .args(["-t", &pid1.to_string(), "-p", "-m", "-n"])
        .args(prefix)
        .arg(support::bin())
        .arg("check")
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("CLAUDE_CODE_OAUTH_TOKEN", &env.token)
        .env("BOTTLE_RUN_DIR", run_dir(env))
        .stdin(Stdio::null())
        .output()
        .expect("run nsenter");
    InitRun::finished(&out, format_args!("bottle-init check {args:?}"))
}

/// This run's session secret, from PID 1's record (root reads it).
fn session_secret_of(env: &Env) -> String {
    let state = std::fs::read_to_string(run_dir(env).join("state")).expect("read state");
    let s = state
        .lines()
        .find_map(|l| l.strip_prefix("session="))
        .expect("session line")
        .to_string();
    assert!(s.starts_with("bottle-") && s.len() > 40, "{s}");
    s
}

/// The report's lines as `(ok, name, detail)`; every line must have the fixed format.
fn check_lines(r: &InitRun) -> Vec<(bool, String, String)> {
    r.stdout
        .lines()
        .map(|l| {
            let (ok, rest) = if let Some(rest) = l.strip_prefix("✔ ") {
                (true, rest)
            } else if let Some(rest) = l.strip_prefix("✘ ") {
                (false, rest)
            } else {
                panic!("not a check line: {l:?}\n{}", r.describe())
            };
            let (name, detail) = rest
                .split_once(" — ")
                .unwrap_or_else(|| panic!("no ` — ` in {l:?}"));
            (ok, name.to_string(), detail.to_string())
        })
        .collect()
}

const CHECK_NAMES: [&str; 5] = [
    "credential out of reach",
    "child user",
    "child processes",
    "proxy",
    "egress",
];

/// The line called `name`.
fn line<'a>(lines: &'a [(bool, String, String)], name: &str) -> &'a (bool, String, String) {
    lines
        .iter()
        .find(|(_, n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} line in {lines:?}"))
}

/// Neither the token nor the session secret in any output of the check.
fn assert_check_keeps_secrets(r: &InitRun, env: &Env, session: &str) {
    r.assert_no_token(&env.token);
    assert!(!r.stdout.contains(session), "session secret in stdout");
    assert!(!r.stderr.contains(session), "session secret in stderr");
}

/// The pid a host process has inside the PID namespace it runs in (`NSpid`'s last field).
fn ns_pid(host_pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last()?.parse().ok())
        .expect("NSpid")
}

/// Starts `argv` in PID 1's namespaces as uid 1000 through setpriv (not through bottle-init:
/// what a bare `docker exec -u 1000` does), with `envs`; returns its host pid once it runs.
/// It dies with the namespace when PID 1 exits at the end of the test.
fn start_beside(pid1: u32, setpriv: &[&str], envs: &[(&str, &str)], argv: &[&str]) -> u32 {
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &pid1.to_string(), "-p", "-m", "-n", "setpriv"])
        .args(["--reuid", "1000", "--regid", "1000", "--clear-groups"])
        .args(setpriv)
        .arg("--")
        .args(argv)
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let nsenter = cmd.spawn().expect("spawn nsenter").id();
    // nsenter forks into the PID namespace; its child execs setpriv, which execs argv[0].
    for _ in 0..500 {
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{nsenter}/task/{nsenter}/children"))
            && let Some(pid) = c
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u32>().ok())
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == argv[0])
            && std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t1000\t")))
        {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{argv:?} did not start");
}

#[test]
fn check_passes_in_every_mode_and_prints_no_secret() {
    let Some(env) = setup() else { return };
    for mode in ["open", "api-only", "allowlist"] {
        let allow = format!("{QUERY_NAME}:{ECHO_PORT}/private");
        let mut extra = vec![("EGRESS_PROBE", "hold")];
        if mode == "allowlist" {
            extra.push(("BOTTLE_ALLOW_HOSTS", allow.as_str()));
        }
        let (mut human, mut json, mut session) = (None, None, String::new());
        let mut quiet = None;
        let probe = lab_probe();
        let r = run_init(&env, mode, &extra, &[], |spawned| {
            let pid1 = init_pid(spawned);
            session = session_secret_of(&env);
            human = Some(check_run(&env, pid1, &["--probe", &probe]));
            json = Some(check_run_with(
                &env,
                pid1,
                &ROOT_BLIND,
                &["--json", "--probe", &probe],
            ));
            // With stdout and stderr closed (the pipe then lands on fds 1 and 2): the report
            // still ends, at once, and every check passes.
            let closed = ["sh", "-c", "exec \"$@\" >&- 2>&-", "sh"];
            let t0 = std::time::Instant::now();
            let r = check_run_with(&env, pid1, &closed, &["--probe", &probe]);
            quiet = Some((r.code, t0.elapsed()));
        });
        assert_eq!(r.code, Some(0), "{}", r.describe());
        let (code, took) = quiet.expect("check ran without stdout");
        assert_eq!(code, Some(0), "{mode}: check with stdout closed");
        assert!(took < Duration::from_secs(10), "{mode}: {took:?}");
        let human = human.expect("check ran");
        assert_eq!(human.code, Some(0), "{mode}: {}", human.describe());
        let lines = check_lines(&human);
        let names: Vec<&str> = lines.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(names, CHECK_NAMES, "{}", human.describe());
        assert!(
            lines.iter().all(|(ok, _, _)| *ok),
            "{mode}: {}",
            human.describe()
        );
        assert!(human.stderr.is_empty(), "{}", human.describe());
        let egress = &line(&lines, "egress").2;
        match mode {
            "open" => assert_eq!(egress, "not restricted"),
            "api-only" => assert!(
                egress.contains("AF_INET socket refused (EACCES)")
                    && egress.contains("AF_INET6 socket refused (EACCES)")
                    && egress.contains("the API answers over the Unix socket"),
                "{egress}"
            ),
            _ => assert!(
                egress.contains(&format!("direct TCP to {probe} refused (ECONNREFUSED)"))
                    && egress.contains("UDP to port 53 refused (EPERM)")
                    && egress.contains("the nftables table is present and matches"),
                "{egress}"
            ),
        }
        let cred = &line(&lines, "credential out of reach").2;
        assert!(
            cred.contains("PID 1's environ holds CLAUDE_CODE_OAUTH_TOKEN zeroed"),
            "{cred}"
        );
        // --json, read by a real JSON parser: exactly the fixed shape, the same verdicts.
        let json = json.expect("check --json ran");
        assert_eq!(json.code, Some(0), "{}", json.describe());
        let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("valid JSON");
        let obj = v.as_object().expect("an object");
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["checks", "ok"]);
        assert_eq!(obj["ok"], serde_json::Value::Bool(true));
        let checks = obj["checks"].as_array().expect("checks is an array");
        assert_eq!(checks.len(), CHECK_NAMES.len());
        for (c, want) in checks.iter().zip(CHECK_NAMES) {
            let c = c.as_object().expect("a check object");
            assert_eq!(c.keys().collect::<Vec<_>>(), ["detail", "name", "ok"]);
            assert_eq!(c["name"].as_str(), Some(want));
            assert_eq!(c["ok"].as_bool(), Some(true));
            assert!(!c["detail"].as_str().expect("detail is a string").is_empty());
        }
        for run in [&human, &json] {
            assert_check_keeps_secrets(run, &env, &session);
        }
        r.assert_no_token(&env.token);
    }
}

#[test]
fn check_names_a_child_uid_process_that_holds_the_token() {
    let Some(env) = setup() else { return };
    let (mut run, mut pid, mut session) = (None, 0, String::new());
    let mut root_blind = None;
    let r = run_init(
        &env,
        "api-only",
        &[("EGRESS_PROBE", "hold")],
        &[],
        |spawned| {
            let pid1 = init_pid(spawned);
            session = session_secret_of(&env);
            // A bare `docker exec -u 1000 -e CLAUDE_CODE_OAUTH_TOKEN=... C sleep`.
            let host = start_beside(
                pid1,
                &[],
                &[("CLAUDE_CODE_OAUTH_TOKEN", env.token.as_str())],
                &["sleep", "60"],
            );
            pid = ns_pid(host);
            run = Some(check_run(&env, pid1, &[]));
            root_blind = Some(check_run_with(&env, pid1, &ROOT_BLIND, &[]));
        },
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    // When root cannot open that environment, the probe (uid 1000) can: the check still finds
    // the token there.
    let root_blind = root_blind.expect("check ran");
    assert_eq!(root_blind.code, Some(1), "{}", root_blind.describe());
    let lines = check_lines(&root_blind);
    let (ok, _, detail) = line(&lines, "credential out of reach");
    assert!(
        !ok && detail.contains(&format!("pid {pid} (sleep, uid 1000)")),
        "{detail}"
    );
    assert_check_keeps_secrets(&root_blind, &env, &session);
    let run = run.expect("check ran");
    assert_eq!(run.code, Some(1), "{}", run.describe());
    let lines = check_lines(&run);
    let (ok, _, detail) = line(&lines, "credential out of reach");
    assert!(!ok, "{}", run.describe());
    assert!(
        detail.contains(&format!("pid {pid} (sleep, uid 1000)")),
        "{}",
        run.describe()
    );
    // It was started outside bottle-init: Docker-like capabilities, no no_new_privs, no filter.
    let (ok, _, detail) = line(&lines, "child processes");
    assert!(
        !ok && detail.contains(&format!("pid {pid} (sleep, uid 1000)")),
        "{detail}"
    );
    assert!(
        detail.contains("NoNewPrivs 0") && detail.contains("no seccomp filter"),
        "{detail}"
    );
    // The rest of the container is still fine.
    for name in ["child user", "proxy", "egress"] {
        assert!(line(&lines, name).0, "{name}: {}", run.describe());
    }
    assert_check_keeps_secrets(&run, &env, &session);
}

/// (b) of the brief: a process of the child's uid with a capability left. bottle-init's own
/// drop cannot leave one (it verifies every set and aborts), so the test crafts one with
/// setpriv: uid 1000 with CAP_NET_BIND_SERVICE in its inheritable, permitted, effective and
/// ambient sets, and with no_new_privs set, so only the capability is wrong.
#[test]
fn check_fails_a_child_uid_process_with_a_capability_left() {
    let Some(env) = setup() else { return };
    let (mut run, mut pid, mut session) = (None, 0, String::new());
    let r = run_init(&env, "open", &[("EGRESS_PROBE", "hold")], &[], |spawned| {
        let pid1 = init_pid(spawned);
        session = session_secret_of(&env);
        let host = start_beside(
            pid1,
            &[
                "--inh-caps",
                "+net_bind_service",
                "--ambient-caps",
                "+net_bind_service",
                "--bounding-set",
                "-all,+net_bind_service",
                "--no-new-privs",
            ],
            &[],
            &["sleep", "60"],
        );
        pid = ns_pid(host);
        run = Some(check_run(&env, pid1, &[]));
    });
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let run = run.expect("check ran");
    assert_eq!(run.code, Some(1), "{}", run.describe());
    let lines = check_lines(&run);
    let (ok, _, detail) = line(&lines, "child processes");
    assert!(!ok, "{}", run.describe());
    let cap = 1u64 << 10; // CAP_NET_BIND_SERVICE
    assert!(
        detail.contains(&format!("pid {pid} (sleep, uid 1000): CapInh {cap:016x}"))
            && detail.contains(&format!("CapAmb {cap:016x}")),
        "{detail}"
    );
    assert!(!detail.contains("NoNewPrivs 0"), "{detail}");
    for name in ["credential out of reach", "child user", "proxy", "egress"] {
        assert!(line(&lines, name).0, "{name}: {}", run.describe());
    }
    assert_check_keeps_secrets(&run, &env, &session);
}

/// (c): PID 1 runs `open`, but its egress record was rewritten to say `api-only`. The check's
/// own probe then gets the api-only filter from the record, so the proof must come from what
/// PID 1 really set up: its command has no filter and there is no API socket.
#[test]
fn check_fails_when_the_record_promises_a_lock_pid1_did_not_install() {
    let Some(env) = setup() else { return };
    let (mut run, mut session) = (None, String::new());
    let mut child_pid = 0;
    let r = run_init(&env, "open", &[("EGRESS_PROBE", "hold")], &[], |spawned| {
        let pid1 = init_pid(spawned);
        session = session_secret_of(&env);
        let record = run_dir(&env).join("egress");
        let text = std::fs::read_to_string(&record).expect("read egress record");
        assert!(text.contains("mode=open\n"), "{text}");
        let socket = env.dir.path().join("bottle-init-api").join("api.sock");
        let forged = text.replace(
            "mode=open\n",
            &format!("mode=api-only\nsocket={}\n", socket.display()),
        );
        std::fs::write(&record, forged).expect("rewrite egress record");
        let child = std::fs::read_to_string(format!("/proc/{pid1}/task/{pid1}/children"))
            .expect("children of PID 1");
        child_pid = ns_pid(child.split_whitespace().next().unwrap().parse().unwrap());
        run = Some(check_run(&env, pid1, &[]));
    });
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let run = run.expect("check ran");
    assert_eq!(run.code, Some(1), "{}", run.describe());
    let lines = check_lines(&run);
    let (ok, _, detail) = line(&lines, "egress");
    assert!(!ok, "{}", run.describe());
    assert!(
        detail.starts_with("api-only: ")
            && detail.contains("the API does not answer over the Unix socket (ENOENT)"),
        "{detail}"
    );
    let (ok, _, detail) = line(&lines, "child processes");
    assert!(!ok, "{}", run.describe());
    assert!(
        detail.contains(&format!("pid {child_pid} ("))
            && detail.contains("no seccomp filter (Seccomp 0)"),
        "{detail}"
    );
    assert_check_keeps_secrets(&run, &env, &session);
}

#[test]
fn check_without_a_running_bottle_init_exits_69_and_a_bad_probe_64() {
    if !root_or_fail("check_without_a_running_bottle_init") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = support::e2e::fake_secret("sk-ant-oat01-check-");
    let check = |args: &[&str], run_dir: &std::path::Path| {
        let out = Command::new(support::bin())
            .arg("check")
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("CLAUDE_CODE_OAUTH_TOKEN", &token)
            .env("BOTTLE_RUN_DIR", run_dir)
            .output()
            .expect("run check");
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            !o.contains(&token) && !e.contains(&token),
            "token in output"
        );
        (out.status.code(), o, e)
    };
    // No record at all.
    let (code, out, err) = check(&[], &dir.path().join("run"));
    assert_eq!(code, Some(69), "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("bottle-init: error: no running bottle-init found"),
        "{err}"
    );
    // A record left by a bottle-init that is gone (a pid that is not running).
    let run = dir.path().join("stale");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let state = format!(
        "pid={}\nstarttime=1\ncomm=bottle-init\nbase_url=http://127.0.0.1:9\nkind=oauth\nuid=1000\ngid=1000\ngroups=1000\nsession=bottle-00\n",
        i32::MAX
    );
    std::fs::write(run.join("state"), state).unwrap();
    std::fs::set_permissions(run.join("state"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = check(&["--json"], &run);
    assert_eq!(code, Some(69), "{out}{err}");
    assert!(out.is_empty() && err.lines().count() == 1, "{out}{err}");
    // A malformed --probe is refused first, with one line.
    for bad in ["nope", "192.0.2.1:0", "2001:db8::1:443", ""] {
        let (code, out, err) = check(&["--probe", bad], &run);
        assert_eq!(code, Some(64), "{bad}: {out}{err}");
        assert!(out.is_empty() && err.lines().count() == 1, "{bad}: {err}");
        assert!(err.starts_with("bottle-init: error: --probe "), "{err}");
    }
    let (code, _, err) = check(&["--probe"], &run);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--probe needs a value"), "{err}");
    // An unknown option too.
    let (code, _, err) = check(&["--verbose"], &run);
    assert_eq!(code, Some(64), "{err}");
    // Not root: 77 (the probe needs the drop's capabilities). The internal probe half refuses
    // root: its report would carry root's environment, the token included.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
            support::bin(),
            "check",
        ])
        .env_clear()
        .env("PATH", PATH)
        .env("BOTTLE_RUN_DIR", &run)
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.starts_with("bottle-init: error: bottle-init check must run as root"),
        "{err}"
    );
    let out = Command::new(support::bin())
        .args(["check", "--child", "open", "-"])
        .env_clear()
        .env("PATH", PATH)
        .env("CLAUDE_CODE_OAUTH_TOKEN", &token)
        .output()
        .expect("run check --child");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(64), "{o}{e}");
    assert!(o.is_empty(), "{o}");
    let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!o.contains(&hex) && !e.contains(&hex) && !e.contains(&token));
}

/// allowlist with its nftables table deleted after start: the direct connection to the lab's
/// outside host now gets through, UDP leaves, and the table check says what is missing.
#[test]
fn check_fails_allowlist_when_its_table_is_gone() {
    let Some(env) = setup() else { return };
    let (mut run, mut session) = (None, String::new());
    let allow = format!("{QUERY_NAME}:{ECHO_PORT}/private");
    let probe = lab_probe();
    let extra = [
        ("EGRESS_PROBE", "hold"),
        ("BOTTLE_ALLOW_HOSTS", allow.as_str()),
    ];
    let r = run_init(&env, "allowlist", &extra, &[], |spawned| {
        let pid1 = init_pid(spawned);
        session = session_secret_of(&env);
        let ns = &env.lab.client.name;
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "nft",
                "delete",
                "table",
                "inet",
                "bottle_init",
            ])
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        run = Some(check_run(&env, pid1, &["--probe", &probe]));
    });
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let run = run.expect("check ran");
    assert_eq!(run.code, Some(1), "{}", run.describe());
    let lines = check_lines(&run);
    let (ok, _, detail) = line(&lines, "egress");
    assert!(!ok, "{}", run.describe());
    for needle in [
        format!("direct TCP to {probe} was not refused (connected)"),
        "UDP to port 53 was not refused (sent)".to_string(),
        "the nftables table: ".to_string(),
    ] {
        assert!(detail.contains(&needle), "{needle}: {detail}");
    }
    // The seccomp filter of the command is still there: only the table is gone.
    assert!(line(&lines, "child processes").0, "{}", run.describe());
    assert_check_keeps_secrets(&run, &env, &session);
}
