//! A two-namespace network lab for the egress tests, and probes a forked child runs in it.
//!
//! `Lab::new()` creates a "client" namespace (where the sandboxed child runs) and an "outside
//! host" namespace joined by a veth pair, using documentation addresses only (192.0.2.0/24,
//! 2001:db8::/64) inside namespaces the test owns. The outside host runs TCP and UDP echo
//! servers and a DNS responder that answers every A/AAAA query with its own address. Dropping
//! the lab stops the servers and deletes both namespaces, also when a test fails.
//!
//! Probes run in a child forked from the (multi-threaded) test process, so everything the child
//! does is raw syscalls on data prepared before the fork: no allocation, no locks.

#![allow(dead_code)]

pub mod connect;

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bottle_init::egress::seccomp::Filter;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const ECHO_PORT: u16 = 7;
pub const DNS_PORT: u16 = 53;
/// The name the DNS responder is asked about in the probes.
pub const QUERY_NAME: &str = "outside.egress.test";
/// The child's uid in every test.
pub const CHILD_UID: u32 = 1000;

/// True when the tests may run (the one gate: tests/support).
pub fn root_or_fail(test: &str) -> bool {
    crate::support::require_root_with(
        &[],
        &format!("{test}: network namespaces, nftables, setresuid"),
    )
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
    file: File,
}

impl Netns {
    fn create(name: String) -> Netns {
        run("ip", &["netns", "add", &name]);
        let file = File::open(format!("/var/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("open netns {name}: {e}"));
        Netns { name, file }
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// A second handle on the namespace (for a thread that will setns).
    pub fn file_clone(&self) -> File {
        self.file.try_clone().expect("dup netns fd")
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Run `f` on a fresh thread that has joined this namespace (setns is per thread).
    pub fn run_in<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let fd = self.file.try_clone().expect("dup netns fd");
        std::thread::spawn(move || {
            nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

static LAB_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Stops and joins server threads on drop (before the namespaces go).
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub struct Lab {
    // Field order is drop order: servers first, then the namespaces.
    servers: Servers,
    pub client: Netns,
    pub outside: Netns,
}

impl Lab {
    pub fn new() -> Lab {
        let n = LAB_SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let client = Netns::create(format!("egc-{pid}-{n}"));
        let outside = Netns::create(format!("ego-{pid}-{n}"));
        client.ip(&["link", "set", "lo", "up"]);
        outside.ip(&["link", "set", "lo", "up"]);
        client.ip(&[
            "link",
            "add",
            "eg0",
            "type",
            "veth",
            "peer",
            "name",
            "eg1",
            "netns",
            &outside.name,
        ]);
        for (ns, dev, v4, v6) in [
            (&client, "eg0", CLIENT_V4, CLIENT_V6),
            (&outside, "eg1", OUTSIDE_V4, OUTSIDE_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        let mut servers = Servers {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let (tcp, udp, dns) = outside.run_in(|| {
            let tcp = [
                TcpListener::bind((OUTSIDE_V4, ECHO_PORT)).expect("bind tcp v4"),
                TcpListener::bind((OUTSIDE_V6, ECHO_PORT)).expect("bind tcp v6"),
            ];
            let udp = [
                UdpSocket::bind((OUTSIDE_V4, ECHO_PORT)).expect("bind udp v4"),
                UdpSocket::bind((OUTSIDE_V6, ECHO_PORT)).expect("bind udp v6"),
            ];
            let dns = [
                UdpSocket::bind((OUTSIDE_V4, DNS_PORT)).expect("bind dns v4"),
                UdpSocket::bind((OUTSIDE_V6, DNS_PORT)).expect("bind dns v6"),
            ];
            (tcp, udp, dns)
        });
        for l in tcp {
            servers.tcp_echo(l);
        }
        for s in udp {
            servers.udp_echo(s);
        }
        for s in dns {
            servers.dns(s);
        }
        // Ping sockets (SOCK_DGRAM + IPPROTO_ICMP) for every gid, so ICMP is testable as
        // uid 1000 without CAP_NET_RAW. The sysctl is per network namespace.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &client.name,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ping_group_range=0 2147483647",
            ],
        );
        // Resolve neighbours now (IPv6 neighbour discovery can eat a resolver's whole timeout
        // on the first packet), so later probes measure the lockdown, not the lab warming up.
        client.run_in(|| {
            for ip in [IpAddr::V4(OUTSIDE_V4), IpAddr::V6(OUTSIDE_V6)] {
                let any: IpAddr = if ip.is_ipv4() {
                    Ipv4Addr::UNSPECIFIED.into()
                } else {
                    Ipv6Addr::UNSPECIFIED.into()
                };
                let s = UdpSocket::bind((any, 0)).expect("bind warm-up");
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.send_to(b"warm-up", (ip, ECHO_PORT))
                    .expect("warm-up send");
                let mut buf = [0u8; 16];
                s.recv_from(&mut buf).expect("warm-up echo");
            }
        });
        Lab {
            servers,
            client,
            outside,
        }
    }

    /// Start servers bound in the client namespace (stand-ins for the proxy, Docker's resolver).
    pub fn client_tcp_echo(&mut self, addr: SocketAddr) {
        let l = self
            .client
            .run_in(move || TcpListener::bind(addr).expect("bind client tcp"));
        self.servers.tcp_echo(l);
    }

    pub fn client_dns(&mut self, addr: SocketAddr) {
        let s = self
            .client
            .run_in(move || UdpSocket::bind(addr).expect("bind client dns"));
        self.servers.dns(s);
    }

    pub fn run_child(&self, spec: &ChildSpec, probe: impl FnOnce(&Report)) -> ChildRun {
        run_child(&self.client, spec, probe)
    }
}

impl Servers {
    fn tcp_echo(&mut self, l: TcpListener) {
        let stop = self.stop.clone();
        l.set_nonblocking(true).expect("nonblocking");
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                            let mut buf = [0u8; 1024];
                            while let Ok(n @ 1..) = s.read(&mut buf) {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }

    fn udp_echo(&mut self, s: UdpSocket) {
        self.udp_loop(s, |q| Some(q.to_vec()));
    }

    fn dns(&mut self, s: UdpSocket) {
        self.udp_loop(s, |q| dns_answer(q, OUTSIDE_V4, OUTSIDE_V6));
    }

    fn udp_loop(&mut self, s: UdpSocket, reply: fn(&[u8]) -> Option<Vec<u8>>) {
        let stop = self.stop.clone();
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = s.recv_from(&mut buf)
                    && let Some(r) = reply(&buf[..n])
                {
                    let _ = s.send_to(&r, from);
                }
            }
        }));
    }
}

/// Names whose A record points somewhere a CONNECT proxy must refuse (never contacted).
pub const INTERNAL_NAME: &str = "internal.egress.test";
pub const INTERNAL_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
pub const METADATA_NAME: &str = "metadata.egress.test";
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Answer an A or AAAA query: `v4`/`v6` for every name except the two above, which get
/// A records in private and metadata space. Other types get an empty answer.
pub fn dns_answer(q: &[u8], v4: Ipv4Addr, v6: Ipv6Addr) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut name = Vec::new();
    while *q.get(i)? != 0 {
        let len = q[i] as usize;
        name.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).to_ascii_lowercase());
        i += 1 + len;
    }
    let name = name.join(".");
    let qend = i + 5;
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    q.get(qend - 1)?;
    let rdata: Vec<u8> = match (qtype, name.as_str()) {
        (1, INTERNAL_NAME) => INTERNAL_V4.octets().to_vec(),
        (1, METADATA_NAME) => METADATA_V4.octets().to_vec(),
        (28, INTERNAL_NAME | METADATA_NAME) => Vec::new(),
        (1, _) => v4.octets().to_vec(),
        (28, _) => v6.octets().to_vec(),
        _ => Vec::new(),
    };
    let mut r = Vec::with_capacity(qend + 32);
    r.extend_from_slice(&q[0..2]);
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(!rdata.is_empty()), 0, 0, 0, 0]);
    r.extend_from_slice(&q[12..qend]);
    if !rdata.is_empty() {
        r.extend_from_slice(&[0xc0, 0x0c]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
    }
    Some(r)
}

/// Build a DNS query for `name` with the given type (1 = A, 28 = AAAA).
pub fn dns_query_for(name: &str, qtype: u16, id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// Resolve `name` (A and AAAA) through the lab's DNS server, as the stand-in proxy does.
/// Runs on the calling thread, which must be in the client namespace.
pub fn lab_resolve(name: &str) -> io::Result<Vec<IpAddr>> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = Vec::new();
    for (qtype, id) in [(1u16, 0x1001u16), (28, 0x1002)] {
        s.send_to(&dns_query_for(name, qtype, id), (OUTSIDE_V4, DNS_PORT))?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        let r = &buf[..n];
        if n < 12 || r[..2] != id.to_be_bytes() || r[7] == 0 {
            continue;
        }
        // One answer, at the end: the address is the last 4 or 16 bytes.
        match qtype {
            1 => out.push(IpAddr::from(<[u8; 4]>::try_from(&r[n - 4..]).unwrap())),
            _ => out.push(IpAddr::from(<[u8; 16]>::try_from(&r[n - 16..]).unwrap())),
        }
    }
    Ok(out)
}

/// A DNS query for QUERY_NAME, type A, id 0x4242.
pub fn dns_query_bytes() -> Vec<u8> {
    dns_query_for(QUERY_NAME, 1, 0x4242)
}

// ---------------------------------------------------------------------------------------------
// The forked child.

/// How the child is set up before its probe runs.
#[derive(Default)]
pub struct ChildSpec {
    /// Switch to this uid/gid (no supplementary groups) after joining the namespace.
    pub uid: Option<u32>,
    /// Install this seccomp filter after the switch.
    pub filter: Option<Filter>,
    /// Bind-mount this file over /etc/resolv.conf in a private mount namespace.
    pub resolv_conf: Option<CString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(Signal),
}

#[derive(Debug)]
pub struct ChildRun {
    pub outcome: Outcome,
    /// One value per `Report::put`: 0 success, > 0 errno, < 0 a probe-specific failure.
    pub results: Vec<i32>,
    /// What the child (or the program it exec'd) wrote on stdout.
    pub stdout: String,
}

/// The child's channel for results: raw writes of i32s on a pipe.
pub struct Report(RawFd);

impl Report {
    pub fn put(&self, v: i32) {
        let b = v.to_ne_bytes();
        // SAFETY: writing 4 bytes from a live stack buffer to a pipe fd this child owns.
        unsafe { libc::write(self.0, b.as_ptr().cast(), 4) };
    }
}

/// Exit code of the child when its set-up step failed (the step is reported first).
pub const SETUP_FAILED: i32 = 90;

fn pipe_cloexec() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2")
}

/// Fork a child that joins the client namespace, applies `spec`, runs `probe`, exits 0.
pub fn run_child(netns: &Netns, spec: &ChildSpec, probe: impl FnOnce(&Report)) -> ChildRun {
    let (res_r, res_w) = pipe_cloexec();
    let (out_r, out_w) = pipe_cloexec();
    let ns_fd = netns.fd();
    let root = c"/";
    let resolv_target = c"/etc/resolv.conf";
    // SAFETY: the child runs only raw syscalls on data prepared before the fork (see the
    // module docs) and leaves with _exit, so the other threads' locks do not matter.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        ForkResult::Child => {
            let rep = Report(res_w.as_raw_fd());
            // SAFETY: async-signal-safe syscalls only, on fds and C strings owned above.
            unsafe {
                libc::alarm(20); // a hung probe dies instead of hanging the test
                libc::dup2(out_w.as_raw_fd(), 1);
                let fail = |step: i32| child_fail(&rep, step);
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    fail(1);
                }
                if let Some(resolv) = &spec.resolv_conf {
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        fail(2);
                    }
                    let private = libc::MS_REC | libc::MS_PRIVATE;
                    if libc::mount(
                        c"none".as_ptr(),
                        root.as_ptr(),
                        std::ptr::null(),
                        private,
                        std::ptr::null(),
                    ) != 0
                    {
                        fail(3);
                    }
                    if libc::mount(
                        resolv.as_ptr(),
                        resolv_target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    {
                        fail(4);
                    }
                }
                if let Some(uid) = spec.uid {
                    if libc::setgroups(0, std::ptr::null()) != 0 {
                        fail(5);
                    }
                    if libc::setresgid(uid, uid, uid) != 0 {
                        fail(6);
                    }
                    if libc::setresuid(uid, uid, uid) != 0 {
                        fail(7);
                    }
                }
                if let Some(filter) = &spec.filter
                    && bottle_init::egress::seccomp::install(filter).is_err()
                {
                    fail(8);
                }
            }
            probe(&rep);
            // SAFETY: leave without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(res_w);
            drop(out_w);
            let mut raw = Vec::new();
            File::from(res_r)
                .read_to_end(&mut raw)
                .expect("read results");
            let mut stdout = String::new();
            File::from(out_r)
                .read_to_string(&mut stdout)
                .expect("read stdout");
            let outcome = match waitpid(child, None).expect("waitpid") {
                WaitStatus::Exited(_, c) => Outcome::Exited(c),
                WaitStatus::Signaled(_, s, _) => Outcome::Signaled(s),
                other => panic!("unexpected wait status {other:?}"),
            };
            let results: Vec<i32> = raw
                .chunks_exact(4)
                .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
                .collect();
            if outcome == Outcome::Exited(SETUP_FAILED) {
                panic!("child set-up failed: step/errno {results:?}");
            }
            ChildRun {
                outcome,
                results,
                stdout,
            }
        }
    }
}

/// In the child: report the failed set-up step and its errno, then exit.
fn child_fail(rep: &Report, step: i32) -> ! {
    let e = errno();
    rep.put(-1000 - step);
    rep.put(e);
    // SAFETY: _exit is async-signal-safe and skips the parent's destructors.
    unsafe { libc::_exit(SETUP_FAILED) }
}

// ---------------------------------------------------------------------------------------------
// Probes: async-signal-safe, no allocation. 0 = success, > 0 = errno, < 0 = bad reply.

/// A sockaddr prepared before the fork.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
    pub family: libc::c_int,
}

impl RawAddr {
    pub fn new(sa: SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let (len, family) = match sa {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                (size_of::<libc::sockaddr_in>(), libc::AF_INET)
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                (size_of::<libc::sockaddr_in6>(), libc::AF_INET6)
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
            family,
        }
    }

    pub fn ptr(&self) -> *const libc::sockaddr {
        (&raw const self.storage).cast()
    }
}

pub fn errno() -> i32 {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn close(fd: i32) {
    // SAFETY: closes an fd this probe opened.
    unsafe { libc::close(fd) };
}

fn set_timeouts(fd: i32) {
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        crate::support::set_fd_timeout(fd, opt, Duration::from_millis(1500));
    }
}

/// socket(domain, type, proto): 0 if it was created (then closed), else errno.
pub fn try_socket(domain: i32, ty: i32, proto: i32) -> i32 {
    // SAFETY: plain syscall, no pointers.
    let fd = unsafe { libc::socket(domain, ty, proto) };
    if fd < 0 {
        return errno();
    }
    close(fd);
    0
}

/// socketpair(domain, SOCK_STREAM): 0 or errno.
pub fn try_socketpair(domain: i32) -> i32 {
    let mut fds = [-1i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let rc = unsafe { libc::socketpair(domain, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return errno();
    }
    close(fds[0]);
    close(fds[1]);
    0
}

/// Send `msg` and expect the same bytes back.
fn exchange(fd: i32, msg: &[u8], to: Option<&RawAddr>) -> i32 {
    let (dst, dlen) = match to {
        Some(a) => (a.ptr(), a.len),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: msg and the address are live for the call.
    let n = unsafe { libc::sendto(fd, msg.as_ptr().cast(), msg.len(), 0, dst, dlen) };
    if n < 0 {
        return errno();
    }
    let mut buf = [0u8; 512];
    // SAFETY: buf is live and writable for its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return errno();
    }
    if &buf[..n as usize] == msg { 0 } else { -1 }
}

/// TCP connect, send, read the echo.
pub fn tcp_echo(addr: &RawAddr) -> i32 {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(addr.family, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return errno();
    }
    set_timeouts(fd);
    // SAFETY: the address is live and its length is right.
    let rc = unsafe { libc::connect(fd, addr.ptr(), addr.len) };
    let r = if rc != 0 {
        errno()
    } else {
        exchange(fd, b"tcp-echo-probe", None)
    };
    close(fd);
    r
}

/// UDP datagram to `addr`; expect the echo, or (dns) an answer with the query's id.
fn udp_round_trip(addr: &RawAddr, msg: &[u8], dns: bool) -> i32 {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(addr.family, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return errno();
    }
    set_timeouts(fd);
    let r = if dns {
        // SAFETY: msg and addr are live for the call.
        let n =
            unsafe { libc::sendto(fd, msg.as_ptr().cast(), msg.len(), 0, addr.ptr(), addr.len) };
        if n < 0 {
            errno()
        } else {
            let mut buf = [0u8; 512];
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                errno()
            } else if n >= 12 && buf[..2] == msg[..2] && buf[2] & 0x80 != 0 && buf[7] == 1 {
                0
            } else {
                -2
            }
        }
    } else {
        exchange(fd, msg, Some(addr))
    };
    close(fd);
    r
}

pub fn udp_echo(addr: &RawAddr) -> i32 {
    udp_round_trip(addr, b"udp-echo-probe", false)
}

/// A DNS query (prepared bytes) to `addr`; 0 when an answer with one record comes back.
pub fn dns_query(addr: &RawAddr, query: &[u8]) -> i32 {
    udp_round_trip(addr, query, true)
}

/// ICMP echo through a ping socket (no CAP_NET_RAW needed); 0 when a reply arrives.
pub fn ping(addr: &RawAddr) -> i32 {
    let (proto, ty) = if addr.family == libc::AF_INET {
        (libc::IPPROTO_ICMP, 8u8)
    } else {
        (libc::IPPROTO_ICMPV6, 128u8)
    };
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(addr.family, libc::SOCK_DGRAM, proto) };
    if fd < 0 {
        return errno();
    }
    set_timeouts(fd);
    let req = [ty, 0, 0, 0, 0, 0, 0, 1, b'p', b'i', b'n', b'g'];
    // SAFETY: req and addr are live for the call.
    let n = unsafe { libc::sendto(fd, req.as_ptr().cast(), req.len(), 0, addr.ptr(), addr.len) };
    let r = if n < 0 {
        errno()
    } else {
        let mut buf = [0u8; 256];
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 { errno() } else { 0 }
    };
    close(fd);
    r
}

/// Connect to a Unix stream socket and exchange bytes with its echo server.
pub fn unix_echo(path: &CStr) -> i32 {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return errno();
    }
    set_timeouts(fd);
    // SAFETY: all-zero sockaddr_un is valid; the path is copied in below within bounds.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.to_bytes();
    if bytes.len() >= sun.sun_path.len() {
        close(fd);
        return -3;
    }
    for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: sun is a valid sockaddr_un of the given size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&raw const sun).cast(),
            size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    let r = if rc != 0 {
        errno()
    } else {
        exchange(fd, b"unix-echo-probe", None)
    };
    close(fd);
    r
}

/// io_uring_setup(8, params): 0 when a ring was created (then closed), else errno.
pub fn try_io_uring() -> i32 {
    let mut params = [0u8; 120]; // struct io_uring_params, zeroed
    // SAFETY: the kernel writes at most sizeof(io_uring_params) = 120 bytes into params.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) };
    if fd < 0 {
        return errno();
    }
    close(fd as i32);
    0
}

/// A 32-bit (i386 ABI) system call through `int 0x80` from this 64-bit process.
#[cfg(target_arch = "x86_64")]
pub fn int80(nr: u32, a: u32, b: u32, c: u32) -> i32 {
    let ret: u32;
    // SAFETY: `int 0x80` enters the kernel's compat entry; ebx is saved around it because LLVM
    // reserves rbx; r8-r11 are declared clobbered (the compat entry may zero them).
    unsafe {
        std::arch::asm!(
            "xchg {a:e}, ebx",
            "int 0x80",
            "xchg {a:e}, ebx",
            a = inout(reg) a => _,
            inlateout("eax") nr => ret,
            in("ecx") b,
            in("edx") c,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    ret as i32
}

/// i386 `socket(AF_INET, SOCK_STREAM, 0)` (syscall 359): fd or -errno.
#[cfg(target_arch = "x86_64")]
pub fn i386_socket() -> i32 {
    int80(359, libc::AF_INET as u32, libc::SOCK_STREAM as u32, 0)
}

/// i386 `socketcall(SYS_SOCKET, [AF_INET, SOCK_STREAM, 0])` (syscall 102): fd or -errno.
/// The argument block must be addressable with 32 bits, hence MAP_32BIT.
#[cfg(target_arch = "x86_64")]
pub fn i386_socketcall() -> i32 {
    // SAFETY: anonymous private mapping; checked for failure before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return -errno();
    }
    let args = p.cast::<u32>();
    // SAFETY: the mapping is 4096 writable bytes; we write three u32s.
    unsafe {
        *args = libc::AF_INET as u32;
        *args.add(1) = libc::SOCK_STREAM as u32;
        *args.add(2) = 0;
    }
    int80(102, 1, p as usize as u32, 0)
}

/// x32 ABI `socket(AF_INET, SOCK_STREAM, 0)`: fd, or -1 with errno.
#[cfg(target_arch = "x86_64")]
pub fn x32_socket() -> i64 {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe {
        libc::syscall(
            0x4000_0000 | libc::SYS_socket,
            libc::AF_INET,
            libc::SOCK_STREAM,
            0,
        )
    };
    if r < 0 { -(errno() as i64) } else { r }
}

/// execve a program with stdout on the report's stdout pipe; returns errno only on failure.
pub fn exec(argv: &[*const libc::c_char]) -> i32 {
    let envp: [*const libc::c_char; 2] = [c"PATH=/usr/bin:/bin".as_ptr(), std::ptr::null()];
    // SAFETY: argv is NULL-terminated C strings prepared before the fork; envp likewise.
    unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) };
    errno()
}

/// A Unix echo server in a temp directory uid 1000 can reach.
pub struct UnixEcho {
    pub path: CString,
    _dir: tempfile::TempDir,
    _servers: Servers,
}

impl UnixEcho {
    pub fn start() -> UnixEcho {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("api.sock");
        let l = UnixListener::bind(&path).expect("bind unix");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                        let mut buf = [0u8; 512];
                        while let Ok(n @ 1..) = s.read(&mut buf) {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        UnixEcho {
            path: CString::new(path.as_os_str().as_encoded_bytes()).unwrap(),
            _dir: dir,
            _servers: Servers {
                stop,
                threads: vec![t],
            },
        }
    }
}

/// A resolv.conf naming one server, readable by uid 1000.
pub fn resolv_conf(dir: &std::path::Path, server: &str) -> CString {
    let p = dir.join("resolv.conf");
    std::fs::write(
        &p,
        format!("nameserver {server}\noptions timeout:2 attempts:1\n"),
    )
    .unwrap();
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

pub fn io_err(e: i32) -> String {
    if e > 0 {
        io::Error::from_raw_os_error(e).to_string()
    } else {
        format!("probe failure {e}")
    }
}
