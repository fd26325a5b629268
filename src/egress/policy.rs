//! Decisions for the allowlist CONNECT proxy: pure functions, no I/O.
//!
//! The proxy calls them in this order for every tunnel:
//! 1. [`decide_connect`] on the CONNECT request-target: refuses malformed targets, names and
//!    IP literals that are not on the list, and returns a [`Grant`].
//! 2. It resolves the granted name itself, at this connection (no cached sets).
//! 3. [`check_resolved`] on every address it is about to connect to; it connects only to an
//!    address that passed, never re-resolving in between (DNS rebinding).
//!
//! Every refusal is a [`Deny`] whose `Display` is one line fit for the log and the 403 body;
//! untrusted text in it is quoted and escaped.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::addr::{AddrClass, classify};
use super::mode::{AllowEntry, AllowList, normalize_name, parse_port, printable};

/// The host a CONNECT asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    /// A normalised DNS name: the proxy resolves it itself.
    Name(String),
    /// An IP literal that is on the list (canonical form).
    Ip(IpAddr),
}

impl fmt::Display for TargetHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetHost::Name(n) => f.write_str(n),
            TargetHost::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            TargetHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// Permission for one tunnel, pending the check of the resolved addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub host: TargetHost,
    pub port: u16,
    /// Some matching entry carries `/private`.
    pub allow_private: bool,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why a tunnel is refused. `Display` gives the one-line message for the log and 403 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deny {
    /// The request-target is not `host:port`.
    BadTarget { target: String, why: &'static str },
    /// A name (and port) no entry matches.
    NotAllowlisted { host: String, port: u16 },
    /// An IP literal that is not itself listed.
    IpLiteralNotAllowlisted { ip: IpAddr, port: u16 },
    /// The name (or literal) is allowed but this address is not.
    ForbiddenAddress {
        host: String,
        addr: IpAddr,
        class: AddrClass,
        hint: &'static str,
    },
}

impl fmt::Display for Deny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deny::BadTarget { target, why } => {
                write!(f, "egress denied: bad CONNECT target {target}: {why}")
            }
            Deny::NotAllowlisted { host, port } => write!(
                f,
                "egress denied: {host}:{port} is not in BOTTLE_ALLOW_HOSTS"
            ),
            Deny::IpLiteralNotAllowlisted { ip, port } => write!(
                f,
                "egress denied: IP address {} port {port} is not in BOTTLE_ALLOW_HOSTS \
                 (IP literals must be listed themselves)",
                ip
            ),
            Deny::ForbiddenAddress {
                host,
                addr,
                class,
                hint,
            } => write!(
                f,
                "egress denied: {host} resolves to {addr}, {}; {hint}",
                class.describe()
            ),
        }
    }
}

impl std::error::Error for Deny {}

/// Longest CONNECT target we look at (a 253-byte name, brackets, colon, port).
const MAX_TARGET: usize = 270;

/// Decide a CONNECT request-target (`host:port`, `[v6]:port`; the port is required, as
/// RFC 9110 says for CONNECT).
pub fn decide_connect(target: &str, allow: &AllowList) -> Result<Grant, Deny> {
    let bad = |why| Deny::BadTarget {
        target: printable(target, 80),
        why,
    };
    if target.len() > MAX_TARGET {
        return Err(bad("too long"));
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("contains spaces, control or non-ASCII characters"));
    }
    if target.contains(['/', '@', '?', '#', '%']) {
        return Err(bad("expected host:port"));
    }
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(bad("unclosed '['"))?;
        let port = after.strip_prefix(':').ok_or(bad("expected ]:port"))?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| bad("bad IPv6 address"))?;
        (HostOrIp::Ip(IpAddr::V6(ip)), port)
    } else {
        let (h, p) = target.rsplit_once(':').ok_or(bad("missing :port"))?;
        if h.contains(':') {
            return Err(bad("IPv6 addresses must be in brackets"));
        }
        match h.parse::<Ipv4Addr>() {
            Ok(a) => (HostOrIp::Ip(IpAddr::V4(a)), p),
            Err(_) => (HostOrIp::Name(h), p),
        }
    };
    let port = parse_port(port).ok_or(bad("the port must be 1..65535"))?;

    match host {
        HostOrIp::Ip(ip) => {
            let ip = ip.to_canonical();
            let (listed, allow_private) = summarize(allow.matching_ip(ip, port));
            if !listed {
                return Err(Deny::IpLiteralNotAllowlisted { ip, port });
            }
            Ok(Grant {
                host: TargetHost::Ip(ip),
                port,
                allow_private,
            })
        }
        HostOrIp::Name(raw) => {
            let name = normalize_name(raw).map_err(|_| {
                bad("not a valid host name (numeric-looking names must be written as IP addresses)")
            })?;
            let (listed, allow_private) = summarize(allow.matching_name(&name, port));
            if !listed {
                return Err(Deny::NotAllowlisted { host: name, port });
            }
            Ok(Grant {
                host: TargetHost::Name(name),
                port,
                allow_private,
            })
        }
    }
}

/// (any entry matched, some matching entry carries /private)
fn summarize<'a>(matches: impl Iterator<Item = &'a AllowEntry>) -> (bool, bool) {
    matches.fold((false, false), |(_, p), e| (true, p || e.allow_private))
}

enum HostOrIp<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

/// May the proxy connect to `addr` for this grant? Call it for each address the proxy
/// resolved (or the literal itself) and connect only to an address that passed.
pub fn check_resolved(addr: IpAddr, grant: &Grant) -> Result<(), Deny> {
    let class = classify(addr);
    let deny = |hint| {
        Err(Deny::ForbiddenAddress {
            host: grant.host.to_string(),
            addr,
            class,
            hint,
        })
    };
    match class {
        AddrClass::Public => Ok(()),
        AddrClass::Unspecified | AddrClass::Multicast | AddrClass::Broadcast => {
            deny("never allowed")
        }
        AddrClass::Metadata => {
            let exact = grant.host == TargetHost::Ip(addr.to_canonical());
            if exact && grant.allow_private {
                Ok(())
            } else {
                deny("metadata addresses are allowed only as a listed IP literal with /private")
            }
        }
        _ if grant.allow_private => Ok(()),
        _ => deny("add /private to the BOTTLE_ALLOW_HOSTS entry to allow it on purpose"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(s: &str) -> AllowList {
        AllowList::parse(s).unwrap()
    }

    #[test]
    fn connect_names() {
        let l = list("api.github.com *.npmjs.org:443 git.corp.example:22/private");
        let g = decide_connect("api.github.com:443", &l).unwrap();
        assert_eq!(g.host, TargetHost::Name("api.github.com".into()));
        assert_eq!((g.port, g.allow_private), (443, false));
        // Case and one trailing dot normalised.
        let g = decide_connect("API.GitHub.com.:443", &l).unwrap();
        assert_eq!(g.host, TargetHost::Name("api.github.com".into()));
        assert!(decide_connect("registry.npmjs.org:443", &l).is_ok());
        let g = decide_connect("git.corp.example:22", &l).unwrap();
        assert!(g.allow_private);
        assert_eq!(g.to_string(), "git.corp.example:22");

        for (t, want_host) in [
            ("api.github.com:80", "api.github.com"),
            ("npmjs.org:443", "npmjs.org"),
            ("evil.com:443", "evil.com"),
            ("api.github.com.evil.com:443", "api.github.com.evil.com"),
            ("git.corp.example:443", "git.corp.example"),
        ] {
            match decide_connect(t, &l) {
                Err(Deny::NotAllowlisted { host, .. }) => assert_eq!(host, want_host, "{t}"),
                other => panic!("{t}: {other:?}"),
            }
        }
    }

    #[test]
    fn connect_private_marker_is_union_of_matches() {
        let l = list("*.corp.example git.corp.example/private");
        assert!(
            decide_connect("git.corp.example:443", &l)
                .unwrap()
                .allow_private
        );
        assert!(
            !decide_connect("www.corp.example:443", &l)
                .unwrap()
                .allow_private
        );
    }

    #[test]
    fn connect_ip_literals() {
        let l = list("1.1.1.1 [2606:4700::1111]:853 10.0.0.5:8080/private example.com");
        let g = decide_connect("1.1.1.1:443", &l).unwrap();
        assert_eq!(g.host, TargetHost::Ip(ip("1.1.1.1")));
        assert!(decide_connect("[2606:4700::1111]:853", &l).is_ok());
        // The mapped form of a listed IPv4 literal is the same destination.
        let g = decide_connect("[::ffff:1.1.1.1]:443", &l).unwrap();
        assert_eq!(g.host, TargetHost::Ip(ip("1.1.1.1")));
        assert!(decide_connect("10.0.0.5:8080", &l).unwrap().allow_private);
        for t in [
            "1.1.1.2:443",
            "1.1.1.1:80",
            "[2606:4700::1111]:443",
            "93.184.216.34:443",
            "127.0.0.1:443",
            "[::1]:443",
            "169.254.169.254:80",
            "[::ffff:127.0.0.1]:443",
        ] {
            assert!(
                matches!(
                    decide_connect(t, &l),
                    Err(Deny::IpLiteralNotAllowlisted { .. })
                ),
                "{t}"
            );
        }
    }

    #[test]
    fn connect_bad_targets() {
        let l = list("example.com a.example.com:8080");
        for t in [
            "example.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:https",
            "example.com:443/",
            "user@example.com:443",
            "example.com :443",
            "example.com:443\r\n",
            "exa%6dple.com:443",
            "http://example.com:443",
            "[::1:443",
            "[::1]443",
            "::1:443",
            "[example.com]:443",
            "2130706433:443",
            "127.1:443",
            "0x7f.0.0.1:443",
            "example.com.:+443",
            ":443",
            "",
        ] {
            match decide_connect(t, &l) {
                Err(Deny::BadTarget { target, .. }) => {
                    assert!(!target.contains('\r') && !target.contains('\n'), "{target}");
                }
                other => panic!("{t:?}: {other:?}"),
            }
        }
        let long = format!("{}.com:443", "a".repeat(400));
        assert!(matches!(
            decide_connect(&long, &l),
            Err(Deny::BadTarget { .. })
        ));
    }

    fn grant(host: TargetHost, allow_private: bool) -> Grant {
        Grant {
            host,
            port: 443,
            allow_private,
        }
    }

    #[test]
    fn resolved_addresses_default() {
        let g = grant(TargetHost::Name("example.com".into()), false);
        for ok in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "::ffff:93.184.216.34",
        ] {
            assert_eq!(check_resolved(ip(ok), &g), Ok(()), "{ok}");
        }
        for no in [
            "127.0.0.1",
            "127.0.0.11",
            "::1",
            "10.1.2.3",
            "172.17.0.1",
            "192.168.0.1",
            "fd12::1",
            "169.254.1.1",
            "fe80::1",
            "169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
            "168.63.129.16",
            "100.64.0.1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "192.0.2.1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "64:ff9b:1::a00:1",
        ] {
            let e = check_resolved(ip(no), &g).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("example.com") && msg.contains(no), "{msg}");
            assert!(msg.starts_with("egress denied: "), "{msg}");
        }
    }

    #[test]
    fn resolved_addresses_with_private() {
        let g = grant(TargetHost::Name("git.corp.example".into()), true);
        for ok in [
            "10.1.2.3",
            "127.0.0.1",
            "::1",
            "fd12::1",
            "169.254.1.1",
            "100.64.0.1",
            "192.0.2.1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(check_resolved(ip(ok), &g), Ok(()), "{ok}");
        }
        // A name that resolves to metadata is refused even with /private.
        for no in [
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "0.0.0.0",
            "::",
            "ff02::1",
            "255.255.255.255",
            "239.1.1.1",
        ] {
            assert!(check_resolved(ip(no), &g).is_err(), "{no}");
        }
    }

    #[test]
    fn metadata_only_as_listed_literal() {
        let l = list("169.254.169.254:80/private");
        let g = decide_connect("169.254.169.254:80", &l).unwrap();
        assert_eq!(check_resolved(ip("169.254.169.254"), &g), Ok(()));
        assert_eq!(check_resolved(ip("::ffff:169.254.169.254"), &g), Ok(()));
        // The same grant does not open a different metadata address.
        assert!(check_resolved(ip("169.254.170.2"), &g).is_err());
    }

    #[test]
    fn literal_grants_check_their_own_class() {
        let l = list("1.1.1.1 10.0.0.5/private");
        let g = decide_connect("1.1.1.1:443", &l).unwrap();
        assert_eq!(check_resolved(ip("1.1.1.1"), &g), Ok(()));
        let g = decide_connect("10.0.0.5:443", &l).unwrap();
        assert_eq!(check_resolved(ip("10.0.0.5"), &g), Ok(()));
    }

    #[test]
    fn deny_messages_are_one_line_and_escaped() {
        let l = list("example.com");
        let e = decide_connect("ev\u{1b}il\n.com:443", &l)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
        let e = decide_connect("evil.com:443", &l).unwrap_err().to_string();
        assert_eq!(
            e,
            "egress denied: evil.com:443 is not in BOTTLE_ALLOW_HOSTS"
        );
        let e = decide_connect("1.2.3.4:443", &l).unwrap_err().to_string();
        assert!(e.contains("1.2.3.4") && e.contains("IP literals"), "{e}");
    }
}
