//! Egress lockdown (issue 5), tested as an attacker would try, in network namespaces these
//! tests create (see `support::egress`). Needs root; fails instead of skipping under CI=true.
//!
//! Every "blocked" assertion has a control in the same lab showing the same probe succeeds
//! without the mechanism, so a broken lab cannot pass for a working lockdown.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bottle_init::egress::nft::{self, Nft, NftError, Ruleset};
use bottle_init::egress::seccomp;
use nix::sys::signal::Signal;
use support::egress::*;

const EACCES: i32 = libc::EACCES;
const EPERM: i32 = libc::EPERM;
const REFUSED: i32 = libc::ECONNREFUSED;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn filtered(uid: Option<u32>) -> ChildSpec {
    ChildSpec {
        uid,
        filter: Some(seccomp::prepare()),
        ..ChildSpec::default()
    }
}

fn plain(uid: Option<u32>) -> ChildSpec {
    ChildSpec {
        uid,
        ..ChildSpec::default()
    }
}

fn outside_addrs() -> [RawAddr; 6] {
    [
        RawAddr::new(sa(OUTSIDE_V4, ECHO_PORT)),
        RawAddr::new(sa(OUTSIDE_V6, ECHO_PORT)),
        RawAddr::new(sa(OUTSIDE_V4, DNS_PORT)),
        RawAddr::new(sa(OUTSIDE_V6, DNS_PORT)),
        RawAddr::new(sa(OUTSIDE_V4, 0)),
        RawAddr::new(sa(OUTSIDE_V6, 0)),
    ]
}

/// TCP, UDP, DNS and ICMP to the outside host over IPv4 and IPv6, in this order.
const NET_PROBES: [&str; 8] = [
    "tcp v4", "tcp v6", "udp v4", "udp v6", "dns v4", "dns v6", "icmp v4", "icmp v6",
];

fn net_probes(rep: &Report, a: &[RawAddr; 6], query: &[u8]) {
    rep.put(tcp_echo(&a[0]));
    rep.put(tcp_echo(&a[1]));
    rep.put(udp_echo(&a[0]));
    rep.put(udp_echo(&a[1]));
    rep.put(dns_query(&a[2], query));
    rep.put(dns_query(&a[3], query));
    rep.put(ping(&a[4]));
    rep.put(ping(&a[5]));
}

fn show(names: &[&str], results: &[i32]) -> String {
    names
        .iter()
        .zip(results)
        .map(|(n, r)| format!("{n}: {}", if *r == 0 { "ok".into() } else { io_err(*r) }))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// api-only

#[test]
fn api_only_child_cannot_open_ip_or_packet_sockets() {
    if !root_or_fail("api_only_child_cannot_open_ip_or_packet_sockets") {
        return;
    }
    let lab = Lab::new();
    let a = outside_addrs();
    let q = dns_query_bytes();

    // Control: without the filter, uid 1000 reaches the outside host every way.
    let r = lab.run_child(&plain(Some(CHILD_UID)), |rep| net_probes(rep, &a, &q));
    assert_eq!(
        r.results,
        [0; 8],
        "control: {}",
        show(&NET_PROBES, &r.results)
    );

    // With the filter, not one IP socket can be created, so nothing is even attempted.
    let r = lab.run_child(&filtered(Some(CHILD_UID)), |rep| net_probes(rep, &a, &q));
    assert_eq!(r.outcome, Outcome::Exited(0));
    assert_eq!(r.results, [EACCES; 8], "{}", show(&NET_PROBES, &r.results));

    // Every socket family and type that carries IP or raw frames, as root too (root would have
    // CAP_NET_RAW for raw and packet sockets: the filter does not care who asks).
    let families: [(&str, i32, i32, i32); 12] = [
        ("inet stream", libc::AF_INET, libc::SOCK_STREAM, 0),
        ("inet dgram", libc::AF_INET, libc::SOCK_DGRAM, 0),
        (
            "inet raw icmp",
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_ICMP,
        ),
        ("inet raw", libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW),
        (
            "inet ping",
            libc::AF_INET,
            libc::SOCK_DGRAM,
            libc::IPPROTO_ICMP,
        ),
        ("inet6 stream", libc::AF_INET6, libc::SOCK_STREAM, 0),
        ("inet6 dgram", libc::AF_INET6, libc::SOCK_DGRAM, 0),
        (
            "inet6 raw",
            libc::AF_INET6,
            libc::SOCK_RAW,
            libc::IPPROTO_RAW,
        ),
        (
            "inet stream|nonblock|cloexec",
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ),
        (
            "packet raw",
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        ),
        (
            "packet dgram",
            libc::AF_PACKET,
            libc::SOCK_DGRAM,
            (libc::ETH_P_IP as u16).to_be() as i32,
        ),
        (
            "inet with high bits",
            libc::AF_INET | (1 << 16),
            libc::SOCK_STREAM,
            0,
        ),
    ];
    let names: Vec<&str> = families.iter().map(|f| f.0).collect();
    for uid in [None, Some(CHILD_UID)] {
        let r = lab.run_child(&plain(uid), |rep| {
            for (_, d, t, p) in families {
                rep.put(try_socket(d, t, p));
            }
        });
        if uid.is_none() {
            // Control: root without the filter gets all of these but the bogus family.
            assert_eq!(
                &r.results[..11],
                [0; 11],
                "root control: {}",
                show(&names, &r.results)
            );
        }
        let r = lab.run_child(&filtered(uid), |rep| {
            for (_, d, t, p) in families {
                rep.put(try_socket(d, t, p));
            }
            rep.put(try_socketpair(libc::AF_INET));
        });
        assert_eq!(r.outcome, Outcome::Exited(0));
        let mut want = vec![EACCES; 11];
        // The kernel itself rejects a family number this large; the filter compares only the
        // low 32 bits, which here are not AF_UNIX, so it refuses first.
        want.push(EACCES);
        want.push(EACCES);
        assert_eq!(r.results, want, "uid {uid:?}: {}", show(&names, &r.results));
    }
}

#[test]
fn api_only_child_keeps_unix_sockets_netlink_and_programs() {
    if !root_or_fail("api_only_child_keeps_unix_sockets_netlink_and_programs") {
        return;
    }
    let lab = Lab::new();
    let api = UnixEcho::start();
    let sh = c"/bin/sh";
    let dash_c = c"-c";
    let script = c"echo filtered-child-ran";
    let argv = [
        sh.as_ptr(),
        dash_c.as_ptr(),
        script.as_ptr(),
        std::ptr::null(),
    ];
    let r = lab.run_child(&filtered(Some(CHILD_UID)), |rep| {
        rep.put(unix_echo(&api.path));
        rep.put(try_socketpair(libc::AF_UNIX));
        rep.put(try_socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0));
        rep.put(try_socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_ROUTE,
        ));
        rep.put(exec(&argv));
    });
    assert_eq!(
        r.results,
        [0, 0, 0, 0],
        "unix, socketpair, unix dgram, netlink"
    );
    assert_eq!(r.outcome, Outcome::Exited(0));
    assert_eq!(r.stdout.trim(), "filtered-child-ran");
}

#[test]
fn api_only_child_cannot_use_io_uring() {
    if !root_or_fail("api_only_child_cannot_use_io_uring") {
        return;
    }
    let lab = Lab::new();
    // Control: io_uring works here without the filter (so IORING_OP_SOCKET would too).
    let r = lab.run_child(&plain(Some(CHILD_UID)), |rep| rep.put(try_io_uring()));
    assert_eq!(r.results, [0], "control: {}", io_err(r.results[0]));
    let r = lab.run_child(&filtered(Some(CHILD_UID)), |rep| {
        rep.put(try_io_uring());
        // SAFETY: io_uring_enter/register on a bad fd: the filter answers before the kernel.
        rep.put(unsafe { libc::syscall(libc::SYS_io_uring_enter, -1, 0, 0, 0, 0, 0) } as i32);
        rep.put(errno());
        // SAFETY: as above.
        rep.put(unsafe { libc::syscall(libc::SYS_io_uring_register, -1, 0, 0, 0) } as i32);
        rep.put(errno());
    });
    assert_eq!(
        r.results,
        [libc::ENOSYS, -1, libc::ENOSYS, -1, libc::ENOSYS]
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn api_only_child_dies_on_the_i386_abi() {
    if !root_or_fail("api_only_child_dies_on_the_i386_abi") {
        return;
    }
    let lab = Lab::new();
    // Control: this kernel runs 32-bit syscalls from a 64-bit process, and both the i386
    // socket() and socketcall(SYS_SOCKET) give an AF_INET socket.
    let r = lab.run_child(&plain(Some(CHILD_UID)), |rep| {
        rep.put(i386_socket());
        rep.put(i386_socketcall());
    });
    assert!(
        r.results.len() == 2 && r.results.iter().all(|&fd| fd >= 0),
        "control: expected two fds, got {:?}",
        r.results
    );
    for (name, probe) in [
        ("socket", i386_socket as fn() -> i32),
        ("socketcall", i386_socketcall as fn() -> i32),
    ] {
        let r = lab.run_child(&filtered(Some(CHILD_UID)), |rep| {
            rep.put(1); // reached the probe
            rep.put(probe()); // must never report
        });
        assert_eq!(r.results, [1], "i386 {name}");
        assert_eq!(r.outcome, Outcome::Signaled(Signal::SIGSYS), "i386 {name}");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn api_only_child_dies_on_the_x32_abi() {
    if !root_or_fail("api_only_child_dies_on_the_x32_abi") {
        return;
    }
    let lab = Lab::new();
    // Control: without the filter the call returns (a socket where x32 is built in, ENOSYS
    // here otherwise) and the child lives on.
    let r = lab.run_child(&plain(Some(CHILD_UID)), |rep| rep.put(x32_socket() as i32));
    assert_eq!(r.outcome, Outcome::Exited(0));
    assert!(
        r.results[0] >= 0 || r.results[0] == -libc::ENOSYS,
        "{:?}",
        r.results
    );
    let r = lab.run_child(&filtered(Some(CHILD_UID)), |rep| {
        rep.put(1);
        rep.put(x32_socket() as i32);
    });
    assert_eq!(r.results, [1]);
    assert_eq!(r.outcome, Outcome::Signaled(Signal::SIGSYS));
}

#[test]
fn api_only_child_cannot_resolve_names() {
    if !root_or_fail("api_only_child_cannot_resolve_names") {
        return;
    }
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let resolv = resolv_conf(dir.path(), &OUTSIDE_V4.to_string());
    let getent = c"/usr/bin/getent";
    let verb = c"ahostsv4";
    let name = std::ffi::CString::new(QUERY_NAME).unwrap();
    let argv = [
        getent.as_ptr(),
        verb.as_ptr(),
        name.as_ptr(),
        std::ptr::null(),
    ];

    let spec = ChildSpec {
        uid: Some(CHILD_UID),
        resolv_conf: Some(resolv.clone()),
        ..ChildSpec::default()
    };
    let r = lab.run_child(&spec, |rep| rep.put(exec(&argv)));
    assert_eq!(r.outcome, Outcome::Exited(0), "control getent: {r:?}");
    assert!(
        r.stdout.contains(&OUTSIDE_V4.to_string()),
        "control: {}",
        r.stdout
    );

    let spec = ChildSpec {
        filter: Some(seccomp::prepare()),
        ..spec
    };
    let r = lab.run_child(&spec, |rep| rep.put(exec(&argv)));
    // getent: exit 2 = "key not found".
    assert_eq!(r.outcome, Outcome::Exited(2), "filtered getent: {r:?}");
    assert!(!r.stdout.contains(&OUTSIDE_V4.to_string()), "{}", r.stdout);
}

// ---------------------------------------------------------------------------------------------
// allowlist

const PROXY_PORT: u16 = 4321;
const OTHER_PORT: u16 = 4322;
const DOCKER_DNS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

fn proxy_addrs() -> [SocketAddr; 2] {
    [
        sa(Ipv4Addr::LOCALHOST, PROXY_PORT),
        sa(Ipv6Addr::LOCALHOST, PROXY_PORT),
    ]
}

/// A lab whose client namespace has the allowlist rules for CHILD_UID, a proxy stand-in on
/// both loopback addresses, another loopback service, and a "Docker resolver" on 127.0.0.11.
fn allowlist_lab() -> Lab {
    let mut lab = Lab::new();
    for a in proxy_addrs() {
        lab.client_tcp_echo(a);
    }
    lab.client_tcp_echo(sa(Ipv4Addr::LOCALHOST, OTHER_PORT));
    lab.client_tcp_echo(sa(DOCKER_DNS, DNS_PORT));
    lab.client_dns(sa(DOCKER_DNS, DNS_PORT));
    lab
}

fn install_rules(lab: &Lab) {
    let rules = Ruleset::new(CHILD_UID, &proxy_addrs()).unwrap();
    lab.client
        .run_in(move || nft::install(&rules))
        .unwrap_or_else(|e| panic!("install: {e}"));
}

const LOCAL_PROBES: [&str; 6] = [
    "proxy 127.0.0.1",
    "proxy [::1]",
    "other loopback port",
    "docker dns udp",
    "docker dns tcp",
    "icmp loopback",
];

fn local_probes(rep: &Report, l: &[RawAddr; 6], query: &[u8]) {
    rep.put(tcp_echo(&l[0]));
    rep.put(tcp_echo(&l[1]));
    rep.put(tcp_echo(&l[2]));
    rep.put(dns_query(&l[3], query));
    rep.put(tcp_echo(&l[4]));
    rep.put(ping(&l[5]));
}

fn local_addrs() -> [RawAddr; 6] {
    [
        RawAddr::new(sa(Ipv4Addr::LOCALHOST, PROXY_PORT)),
        RawAddr::new(sa(Ipv6Addr::LOCALHOST, PROXY_PORT)),
        RawAddr::new(sa(Ipv4Addr::LOCALHOST, OTHER_PORT)),
        RawAddr::new(sa(DOCKER_DNS, DNS_PORT)),
        RawAddr::new(sa(DOCKER_DNS, DNS_PORT)),
        RawAddr::new(sa(Ipv4Addr::LOCALHOST, 0)),
    ]
}

#[test]
fn allowlist_child_reaches_only_the_proxy() {
    if !root_or_fail("allowlist_child_reaches_only_the_proxy") {
        return;
    }
    let lab = allowlist_lab();
    let a = outside_addrs();
    let l = local_addrs();
    let q = dns_query_bytes();
    let both = |rep: &Report| {
        net_probes(rep, &a, &q);
        local_probes(rep, &l, &q);
    };
    let names: Vec<&str> = NET_PROBES.iter().chain(&LOCAL_PROBES).copied().collect();

    // Control: before the rules, uid 1000 reaches everything.
    let r = lab.run_child(&plain(Some(CHILD_UID)), both);
    assert_eq!(r.results, [0; 14], "control: {}", show(&names, &r.results));

    install_rules(&lab);

    // uid 1000: only the proxy, on both loopback addresses. TCP elsewhere is reset
    // (ECONNREFUSED at once); UDP and ICMP are dropped, which sendto() reports as EPERM. An
    // ICMPv6 ping socket does not report the drop; its echo simply never comes (EAGAIN).
    let started = std::time::Instant::now();
    let r = lab.run_child(&plain(Some(CHILD_UID)), both);
    let want = [
        REFUSED,
        REFUSED,
        EPERM,
        EPERM,
        EPERM,
        EPERM,
        EPERM,
        libc::EAGAIN, // outside host
        0,
        0,
        REFUSED,
        EPERM,
        REFUSED,
        EPERM, // loopback
    ];
    assert_eq!(r.results, want, "uid 1000: {}", show(&names, &r.results));
    assert!(
        started.elapsed().as_secs() < 5,
        "refusals were slow: {:?}",
        started.elapsed()
    );

    // Root, standing in for the proxy, still reaches the outside host and everything local.
    let r = lab.run_child(&plain(None), both);
    assert_eq!(r.results, [0; 14], "root: {}", show(&names, &r.results));

    // Another uid is not the child's: the rules are about the child's uid only.
    let r = lab.run_child(&plain(Some(CHILD_UID + 1)), |rep| rep.put(tcp_echo(&a[0])));
    assert_eq!(r.results, [0], "uid 1001");
}

#[test]
fn allowlist_child_cannot_resolve_names() {
    if !root_or_fail("allowlist_child_cannot_resolve_names") {
        return;
    }
    let lab = allowlist_lab();
    install_rules(&lab);
    let dir = tempfile::tempdir().unwrap();
    let getent = c"/usr/bin/getent";
    let verb = c"ahostsv4";
    let name = std::ffi::CString::new(QUERY_NAME).unwrap();
    let argv = [
        getent.as_ptr(),
        verb.as_ptr(),
        name.as_ptr(),
        std::ptr::null(),
    ];
    for server in [
        OUTSIDE_V4.to_string(),
        OUTSIDE_V6.to_string(),
        DOCKER_DNS.to_string(),
    ] {
        let sub = dir.path().join(server.replace(':', "_"));
        std::fs::create_dir(&sub).unwrap();
        let resolv = resolv_conf(&sub, &server);
        for (uid, want_ok) in [(None, true), (Some(CHILD_UID), false)] {
            let spec = ChildSpec {
                uid,
                resolv_conf: Some(resolv.clone()),
                ..ChildSpec::default()
            };
            let r = lab.run_child(&spec, |rep| rep.put(exec(&argv)));
            let ok = r.outcome == Outcome::Exited(0) && r.stdout.contains(&OUTSIDE_V4.to_string());
            assert_eq!(ok, want_ok, "nameserver {server}, uid {uid:?}: {r:?}");
        }
    }
}

fn allowlist_filtered(uid: Option<u32>) -> ChildSpec {
    ChildSpec {
        uid,
        filter: Some(seccomp::prepare_allowlist()),
        ..ChildSpec::default()
    }
}

/// Socket kinds the allowlist filter refuses: families nftables never sees (vsock reaches the
/// host on VM-based runtimes), raw IP and packet sockets, and IP types other than stream and
/// datagram.
const NON_TCP_UDP: [(&str, i32, i32, i32); 11] = [
    ("vsock stream", libc::AF_VSOCK, libc::SOCK_STREAM, 0),
    ("vsock dgram", libc::AF_VSOCK, libc::SOCK_DGRAM, 0),
    ("alg seqpacket", libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
    ("packet raw", libc::AF_PACKET, libc::SOCK_RAW, 0x0300), // htons(ETH_P_ALL)
    ("packet dgram", libc::AF_PACKET, libc::SOCK_DGRAM, 0x0008), // htons(ETH_P_IP)
    (
        "inet raw icmp",
        libc::AF_INET,
        libc::SOCK_RAW,
        libc::IPPROTO_ICMP,
    ),
    ("inet raw", libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW),
    (
        "inet6 raw",
        libc::AF_INET6,
        libc::SOCK_RAW,
        libc::IPPROTO_RAW,
    ),
    (
        "inet seqpacket (sctp)",
        libc::AF_INET,
        libc::SOCK_SEQPACKET,
        132,
    ),
    ("xdp", libc::AF_XDP, libc::SOCK_RAW, 0),
    (
        "raw|nonblock|cloexec",
        libc::AF_INET,
        libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        libc::IPPROTO_RAW,
    ),
];

#[test]
fn allowlist_filter_leaves_only_tcp_udp_unix_and_netlink() {
    if !root_or_fail("allowlist_filter_leaves_only_tcp_udp_unix_and_netlink") {
        return;
    }
    let lab = allowlist_lab();
    install_rules(&lab);
    let l = local_addrs();
    let a = outside_addrs();
    let names: Vec<&str> = NON_TCP_UDP.iter().map(|f| f.0).collect();
    let refused_kinds = |rep: &Report| {
        for (_, d, t, p) in NON_TCP_UDP {
            rep.put(try_socket(d, t, p));
        }
    };

    // Control: root without the filter gets every kind this kernel has (vsock, packet, raw,
    // xdp here); the others fail with the kernel's own error, never EACCES.
    let control = lab.run_child(&plain(None), refused_kinds);
    assert!(
        control.results.iter().all(|&r| r != EACCES),
        "control: {}",
        show(&names, &control.results)
    );
    assert_eq!(
        control.results[0],
        0,
        "control: AF_VSOCK exists here: {}",
        show(&names, &control.results)
    );
    // With the filter, every one of them is refused by the filter (EACCES), for root too.
    for uid in [None, Some(CHILD_UID)] {
        let r = lab.run_child(&allowlist_filtered(uid), refused_kinds);
        assert_eq!(r.outcome, Outcome::Exited(0));
        assert_eq!(
            r.results,
            vec![EACCES; NON_TCP_UDP.len()],
            "uid {uid:?}: {}",
            show(&names, &r.results)
        );
    }

    // What stays: TCP to the proxy (both loopback addresses), TCP/UDP sockets of both
    // families (with flags), Unix sockets and netlink; nftables, not the filter, stops the
    // rest (EPERM for UDP, a reset for TCP: not EACCES).
    let r = lab.run_child(&allowlist_filtered(Some(CHILD_UID)), |rep| {
        rep.put(tcp_echo(&l[0]));
        rep.put(tcp_echo(&l[1]));
        for (d, t) in [
            (libc::AF_INET, libc::SOCK_STREAM),
            (libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK),
            (libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC),
            (libc::AF_INET6, libc::SOCK_DGRAM),
            (libc::AF_UNIX, libc::SOCK_STREAM),
            (libc::AF_NETLINK, libc::SOCK_RAW),
        ] {
            rep.put(try_socket(d, t, 0));
        }
        rep.put(try_socketpair(libc::AF_UNIX));
        rep.put(tcp_echo(&a[0]));
        rep.put(udp_echo(&a[0]));
    });
    assert_eq!(r.outcome, Outcome::Exited(0));
    assert_eq!(
        r.results,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, REFUSED, EPERM],
        "proxy v4, proxy v6, inet stream, inet dgram, inet6 stream, inet6 dgram, unix, netlink, \
         socketpair, tcp outside, udp outside"
    );

    // io_uring and the compat ABIs, exactly as in api-only.
    let r = lab.run_child(&allowlist_filtered(Some(CHILD_UID)), |rep| {
        rep.put(try_io_uring())
    });
    assert_eq!(r.results, [libc::ENOSYS]);
    #[cfg(target_arch = "x86_64")]
    for (name, probe) in [
        ("i386 socket", i386_socket as fn() -> i32),
        ("i386 socketcall", i386_socketcall as fn() -> i32),
        ("x32 socket", || x32_socket() as i32),
    ] {
        let r = lab.run_child(&allowlist_filtered(Some(CHILD_UID)), |rep| {
            rep.put(1);
            rep.put(probe());
        });
        assert_eq!(r.results, [1], "{name}");
        assert_eq!(r.outcome, Outcome::Signaled(Signal::SIGSYS), "{name}");
    }
}

/// The `--network host` check (issue 10 item 16) on real namespaces: a namespace the test
/// makes is never the initial one, whatever this machine is. (Whether the test's own namespace
/// is the initial one depends on the machine: a VM's is, a container's is not; the positive
/// case is covered by the unit test and by egress_e2e's simulated host namespace.)
#[test]
fn a_namespace_of_our_own_is_not_the_initial_one() {
    if !root_or_fail("a_namespace_of_our_own_is_not_the_initial_one") {
        return;
    }
    let lab = Lab::new();
    assert_eq!(lab.client.run_in(nft::in_initial_netns), Some(false));
    assert_eq!(lab.outside.run_in(nft::in_initial_netns), Some(false));
    let here = nft::in_initial_netns();
    assert!(here.is_some(), "/proc/sys/net/core is readable here");
    eprintln!("this test's own network namespace is the initial one: {here:?}");
}

#[test]
fn allowlist_rules_read_back_and_reinstall_atomically() {
    if !root_or_fail("allowlist_rules_read_back_and_reinstall_atomically") {
        return;
    }
    let lab = allowlist_lab();
    install_rules(&lab);
    let rules = Ruleset::new(CHILD_UID, &proxy_addrs()).unwrap();
    let (first, second) = lab.client.run_in(move || {
        let nft = Nft::locate().unwrap();
        let first = nft.list().unwrap();
        // A second install replaces the table in one transaction rather than failing or
        // doubling the rules.
        nft::install(&rules).unwrap();
        (first, nft.list().unwrap())
    });
    assert_eq!(first, second);
    assert_eq!(
        first.matches("table inet bottle_init").count(),
        1,
        "{first}"
    );
    assert!(
        first.contains("meta skuid 1000 jump child_egress"),
        "{first}"
    );
    assert!(first.contains("hook output priority raw"), "{first}");
    let verdicts: Vec<&str> = first
        .lines()
        .filter_map(|l| l.trim().split(" comment ").next())
        .filter_map(|l| l.rsplit_once(' ').map(|(_, v)| v).or(Some(l)))
        .filter(|v| ["accept", "drop", "reset", "child_egress"].contains(v))
        .collect();
    assert_eq!(
        verdicts,
        ["child_egress", "accept", "accept", "reset", "drop"],
        "{first}"
    );
}

/// The read-back check is on `nft -j`'s JSON, field by field, and accepts nothing but the
/// installed rules: a rule slipped in among them (which the old text check let through: it
/// only looked for bottle-init's own rules in order) or a rule changed by hand is refused.
#[test]
fn allowlist_read_back_refuses_rules_changed_after_install() {
    if !root_or_fail("allowlist_read_back_refuses_rules_changed_after_install") {
        return;
    }
    let lab = allowlist_lab();
    install_rules(&lab);
    let rules = Ruleset::new(CHILD_UID, &proxy_addrs()).unwrap();
    let checks = lab.client.run_in(move || {
        let nft = Nft::locate().unwrap();
        let program = nft::NFT_CANDIDATES
            .iter()
            .find(|p| std::path::Path::new(p).is_file())
            .unwrap();
        let run = |args: &[&str]| {
            let o = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "nft {args:?}: {err}");
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let fresh = nft.verify(&rules).map_err(|e| e.to_string());
        // An accept for everything, inserted at the top of the child's chain.
        run(&[
            "insert",
            "rule",
            "inet",
            "bottle_init",
            "child_egress",
            "accept",
        ]);
        let inserted = nft.verify(&rules).map_err(|e| e.to_string());
        nft::install(&rules).unwrap();
        let reinstalled = nft.verify(&rules).map_err(|e| e.to_string());
        // The final drop replaced by an accept that keeps its comment.
        let chain = run(&["-a", "list", "chain", "inet", "bottle_init", "child_egress"]);
        let handle = chain
            .lines()
            .find(|l| l.contains("may reach nothing else"))
            .and_then(|l| l.rsplit("# handle ").next())
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|| panic!("no handle for the drop rule in {chain}"));
        let comment = format!("\"bottle-init: uid {CHILD_UID} may reach nothing else\"");
        run(&[
            "replace",
            "rule",
            "inet",
            "bottle_init",
            "child_egress",
            "handle",
            &handle,
            "accept",
            "comment",
            &comment,
        ]);
        let replaced = nft.verify(&rules).map_err(|e| e.to_string());
        (fresh, inserted, reinstalled, replaced)
    });
    let (fresh, inserted, reinstalled, replaced) = checks;
    assert_eq!(fresh, Ok(()));
    for (what, r) in [("inserted accept", inserted), ("replaced drop", replaced)] {
        let e = r.expect_err(what);
        assert!(e.contains("did not read back as installed"), "{what}: {e}");
    }
    assert_eq!(
        reinstalled,
        Ok(()),
        "a fresh install replaces the tampered table"
    );
}

/// Drop CAP_NET_ADMIN from this thread's effective, permitted and bounding sets, as in a
/// Docker container started without `--cap-add NET_ADMIN`.
fn drop_net_admin() {
    use caps::{CapSet, Capability};
    caps::drop(None, CapSet::Bounding, Capability::CAP_NET_ADMIN).unwrap();
    caps::drop(None, CapSet::Effective, Capability::CAP_NET_ADMIN).unwrap();
    caps::drop(None, CapSet::Permitted, Capability::CAP_NET_ADMIN).unwrap();
}

fn table_exists(lab: &Lab) -> bool {
    lab.client.run_in(|| Nft::locate().unwrap().list().is_ok())
}

#[test]
fn allowlist_fails_closed_without_net_admin() {
    if !root_or_fail("allowlist_fails_closed_without_net_admin") {
        return;
    }
    let lab = allowlist_lab();
    let rules = Ruleset::new(CHILD_UID, &proxy_addrs()).unwrap();
    let err = lab.client.run_in(move || {
        drop_net_admin();
        nft::install(&rules).unwrap_err()
    });
    assert!(matches!(err, NftError::MissingNetAdmin), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("CAP_NET_ADMIN") && msg.contains("--cap-add NET_ADMIN"),
        "{msg}"
    );
    assert!(!table_exists(&lab), "nothing may be half-installed");

    // Past the capability check, nft itself is refused by the kernel: same clear fix.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("nft");
    let nft_path = nft::NFT_CANDIDATES
        .iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set=-net_admin --inh-caps=-all {nft_path} \"$@\"\n"
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let rules = Ruleset::new(CHILD_UID, &proxy_addrs()).unwrap();
    let err = lab
        .client
        .run_in(move || Nft::at(wrapper).install(&rules).unwrap_err());
    assert!(matches!(err, NftError::NftPermission { .. }), "{err:?}");
    assert!(err.to_string().contains("--cap-add NET_ADMIN"), "{err}");
    assert!(!table_exists(&lab), "nothing may be half-installed");

    // The child is then still unrestricted, which is why bottle-init must refuse to start:
    // shown here so the test fails if something else were filtering.
    let a = outside_addrs();
    let r = lab.run_child(&plain(Some(CHILD_UID)), |rep| rep.put(tcp_echo(&a[0])));
    assert_eq!(r.results, [0]);
}

#[test]
fn allowlist_fails_closed_without_nft() {
    if !root_or_fail("allowlist_fails_closed_without_nft") {
        return;
    }
    let lab = Lab::new();
    let rules = Ruleset::new(CHILD_UID, &proxy_addrs()).unwrap();
    let err = lab.client.run_in(move || {
        Nft::at("/nonexistent/bottle-test/nft")
            .install(&rules)
            .unwrap_err()
    });
    assert!(matches!(err, NftError::NftNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("nftables package"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// api-only: the API socket

#[test]
fn api_socket_is_root_owned_and_checks_the_peer_uid() {
    use bottle_init::egress::apisock::{SockError, bind_api_socket, check_peer};
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    if !root_or_fail("api_socket_is_root_owned_and_checks_the_peer_uid") {
        return;
    }
    let lab = Lab::new();
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = base.path().join("bottle-init");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("api.sock"), b"stale").unwrap();

    let (listener, path) = bind_api_socket(&dir, CHILD_UID).unwrap();
    let d = std::fs::symlink_metadata(&dir).unwrap();
    assert_eq!((d.uid(), d.mode() & 0o7777), (0, 0o755));
    let s = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!((s.uid(), s.gid(), s.mode() & 0o7777), (0, CHILD_UID, 0o660));

    // The proxy's side: accept, check the peer, echo only for the child's uid.
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (mut c, _) = listener.accept().unwrap();
            let verdict = check_peer(&c, CHILD_UID);
            if verdict.is_ok() {
                let mut buf = [0u8; 64];
                let n = c.read(&mut buf).unwrap();
                c.write_all(&buf[..n]).unwrap();
            }
            seen.push(verdict.map_err(|e| e.to_string()));
        }
        seen
    });
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let r = lab.run_child(&filtered(Some(CHILD_UID)), |rep| rep.put(unix_echo(&cpath)));
    assert_eq!(
        r.results,
        [0],
        "the child (api-only filter on) talks to the proxy"
    );
    let r = lab.run_child(&plain(Some(CHILD_UID + 1)), |rep| {
        rep.put(unix_echo(&cpath))
    });
    assert_eq!(
        r.results,
        [EACCES],
        "another uid cannot even connect (file mode)"
    );
    let r = lab.run_child(&plain(None), |rep| rep.put(unix_echo(&cpath)));
    assert_ne!(r.results, [0], "root connects but gets nothing back");
    let seen = server.join().unwrap();
    assert_eq!(seen[0], Ok(()));
    let refused = seen[1].as_ref().unwrap_err();
    assert!(
        refused.contains("uid 0") && refused.contains("only uid 1000"),
        "{refused}"
    );

    // Directories the child could replace are refused.
    let owned = base.path().join("owned");
    std::fs::create_dir(&owned).unwrap();
    std::os::unix::fs::chown(&owned, Some(CHILD_UID), Some(CHILD_UID)).unwrap();
    let world = base.path().join("world");
    std::fs::create_dir(&world).unwrap();
    std::fs::set_permissions(&world, std::fs::Permissions::from_mode(0o777)).unwrap();
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    for (d, why) in [
        (&owned, "not owned by root"),
        (&world, "writable by group or others"),
        (&link, "not a directory"),
        (&owned.join("sub"), "not owned by root"), // a parent the child owns
    ] {
        match bind_api_socket(d, CHILD_UID) {
            Err(e @ SockError::Unsafe { .. }) => assert!(e.to_string().contains(why), "{e}"),
            other => panic!("{}: {other:?}", d.display()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// allowlist: CONNECT decisions end to end (policy + lookup at connection time + kernel rules)

#[test]
fn allowlist_connect_tunnels_only_what_the_list_allows() {
    use bottle_init::egress::AllowList;
    use support::egress::connect::{ConnectProxy, connect_probe};

    if !root_or_fail("allowlist_connect_tunnels_only_what_the_list_allows") {
        return;
    }
    let lab = Lab::new();
    // The lab's outside host lives in documentation space (192.0.2.0/24), which the policy
    // treats as non-public: the entry needs /private, exactly as a user's internal host would.
    let allow = AllowList::parse(&format!(
        "{QUERY_NAME}:{ECHO_PORT}/private {INTERNAL_NAME}:{ECHO_PORT} \
         {METADATA_NAME}:{ECHO_PORT}/private"
    ))
    .unwrap();
    let proxy_addr = sa(Ipv4Addr::LOCALHOST, PROXY_PORT);
    let proxy = ConnectProxy::start(&lab.client, proxy_addr, allow);
    let rules = Ruleset::new(CHILD_UID, &[proxy_addr]).unwrap();
    lab.client
        .run_in(move || nft::install(&rules))
        .unwrap_or_else(|e| panic!("install: {e}"));

    let cases = [
        (format!("{QUERY_NAME}:{ECHO_PORT}"), 0),
        (format!("OUTSIDE.egress.test.:{ECHO_PORT}"), 0),
        (format!("other.egress.test:{ECHO_PORT}"), -403),
        (format!("{QUERY_NAME}:{}", ECHO_PORT + 1), -403),
        (format!("{OUTSIDE_V4}:{ECHO_PORT}"), -403),
        (format!("[{OUTSIDE_V6}]:{ECHO_PORT}"), -403),
        (format!("{INTERNAL_NAME}:{ECHO_PORT}"), -403),
        (format!("{METADATA_NAME}:{ECHO_PORT}"), -403),
    ];
    let requests: Vec<Vec<u8>> = cases
        .iter()
        .map(|(t, _)| format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").into_bytes())
        .collect();
    let payload: Vec<u8> = (0..=255u8).collect();
    let pa = RawAddr::new(proxy_addr);
    let direct = RawAddr::new(sa(OUTSIDE_V4, ECHO_PORT));
    let r = lab.run_child(&plain(Some(CHILD_UID)), |rep| {
        for req in &requests {
            rep.put(connect_probe(&pa, req, &payload));
        }
        // The tunnel is the only way: the same host directly is refused by the kernel.
        rep.put(tcp_echo(&direct));
    });
    let mut want: Vec<i32> = cases.iter().map(|c| c.1).collect();
    want.push(REFUSED);
    assert_eq!(
        r.results,
        want,
        "cases: {:?}",
        cases.iter().map(|c| &c.0).collect::<Vec<_>>()
    );

    let log = proxy.log.lock().unwrap().clone();
    let has = |needle: &str| log.iter().any(|l| l.contains(needle));
    assert_eq!(log.len(), cases.len(), "every decision is logged: {log:#?}");
    assert_eq!(
        log.iter().filter(|l| l.starts_with("allow ")).count(),
        2,
        "{log:#?}"
    );
    assert!(
        has(&format!("allow {QUERY_NAME}:{ECHO_PORT} -> {OUTSIDE_V4}")),
        "{log:#?}"
    );
    assert!(
        has("other.egress.test:7 is not in BOTTLE_ALLOW_HOSTS"),
        "{log:#?}"
    );
    assert!(has("IP literals must be listed"), "{log:#?}");
    assert!(
        has(&format!(
            "resolves to {INTERNAL_V4}, a private-network address"
        )),
        "{log:#?}"
    );
    assert!(
        has(&format!(
            "resolves to {METADATA_V4}, a cloud metadata address"
        )),
        "{log:#?}"
    );
}

/// nft runs with a cleared environment: whatever PID 1 still has in its environment (the
/// credential is scrubbed earlier, but defence in depth) never reaches the subprocess.
#[test]
fn nft_runs_with_a_clean_environment_and_failures_carry_its_stderr() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("env.txt");
    let fake = dir.path().join("nft");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nenv > {}\necho 'Error: Could not process rule: simulated failure' >&2\nexit 1\n",
            dump.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The test process has CARGO_* variables; none may reach nft.
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    let rules = Ruleset::new(CHILD_UID, &proxy_addrs()).unwrap();
    let err = Nft::at(&fake).install(&rules).unwrap_err();
    let env = std::fs::read_to_string(&dump).unwrap();
    let keys: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(k))
        .collect();
    assert_eq!(keys, ["PATH"], "nft saw: {env}");
    assert!(matches!(err, NftError::NftFailed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("load the ruleset") && msg.contains("simulated failure"),
        "{msg}"
    );
}
