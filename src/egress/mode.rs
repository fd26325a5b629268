//! `BOTTLE_EGRESS` and `BOTTLE_ALLOW_HOSTS`: pure parsing, no syscalls.
//!
//! Allowlist grammar (one entry per token; tokens separated by commas and/or whitespace):
//!
//! ```text
//! entry   = target [ ":" port ] [ "/private" ]
//! target  = name | "*." name | ipv4 | "[" ipv6 "]" | ipv6      (bare ipv6 only without a port)
//! port    = 1..65535                                            (default 443)
//! ```
//!
//! - Names are matched case-insensitively, one trailing dot ignored. `*.example.com` matches
//!   names strictly below `example.com` (`a.example.com`, `a.b.example.com`), not
//!   `example.com` itself: list both when both are wanted.
//! - An IP literal is reachable only when it is listed itself; a CONNECT to an IP literal that
//!   is not listed is refused even when some listed name resolves to it.
//! - `/private` opts that one entry in to non-public destinations (loopback, RFC 1918, ULA,
//!   link-local, CGNAT, documentation/benchmark ranges). Without it the proxy refuses a name
//!   that resolves to such an address (DNS rebinding, internal services). Cloud metadata
//!   addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200, 168.63.129.16, ...) are
//!   reachable only through an entry that is that exact IP literal with `/private`; a name
//!   resolving to them is always refused. Unspecified, multicast and broadcast addresses are
//!   never reachable. A listed private IP literal without `/private` is a start-up error, so a
//!   mistake shows at once rather than as refusals later.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::addr::{AddrClass, classify};

/// The environment variable selecting the mode.
pub const EGRESS_ENV: &str = "BOTTLE_EGRESS";
/// The environment variable holding the allowlist.
pub const ALLOW_HOSTS_ENV: &str = "BOTTLE_ALLOW_HOSTS";
/// Port used when an allowlist entry names none.
pub const DEFAULT_PORT: u16 = 443;
/// The per-entry marker allowing non-public destinations.
pub const PRIVATE_MARKER: &str = "/private";
/// Explicit opt-in to `allowlist` in the host's own network namespace (`--network host`).
pub const HOST_NETWORK_ENV: &str = "BOTTLE_INSECURE_HOST_NETWORK";

/// What the child may reach on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressMode {
    /// No restriction (default).
    Open,
    /// No IP network in the child at all; the API over a Unix socket.
    ApiOnly,
    /// Only the proxy; the proxy tunnels to `BOTTLE_ALLOW_HOSTS`.
    Allowlist,
}

impl EgressMode {
    /// Parse the value of `BOTTLE_EGRESS`. Unset or empty means `open`; surrounding
    /// whitespace and letter case are ignored; anything else unknown is an error, so a typo
    /// never silently runs unlocked.
    pub fn parse(value: Option<&str>) -> Result<Self, ModeError> {
        let Some(raw) = value else {
            return Ok(EgressMode::Open);
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "open" => Ok(EgressMode::Open),
            "api-only" => Ok(EgressMode::ApiOnly),
            "allowlist" => Ok(EgressMode::Allowlist),
            _ => Err(ModeError::Unknown {
                value: printable(raw, 64),
            }),
        }
    }

    /// The spelling users write.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Open => "open",
            EgressMode::ApiOnly => "api-only",
            EgressMode::Allowlist => "allowlist",
        }
    }

    /// True for the modes that restrict egress.
    pub fn is_locked(self) -> bool {
        !matches!(self, EgressMode::Open)
    }
}

impl fmt::Display for EgressMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bad `BOTTLE_EGRESS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeError {
    Unknown { value: String },
    NotUtf8,
}

impl fmt::Display for ModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModeError::Unknown { value } => write!(
                f,
                "{EGRESS_ENV}={value} is not an egress mode: use open (the default), api-only or allowlist"
            ),
            ModeError::NotUtf8 => write!(
                f,
                "{EGRESS_ENV} is not valid UTF-8: use open (the default), api-only or allowlist"
            ),
        }
    }
}

impl std::error::Error for ModeError {}

/// The egress configuration: the mode and, for `allowlist`, the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    pub mode: EgressMode,
    /// Empty unless the mode is `allowlist`.
    pub allow: AllowList,
    /// `BOTTLE_INSECURE_HOST_NETWORK=1`: install the `allowlist` rules even in the host's
    /// network namespace, where they filter the child's uid on the whole host.
    pub host_network_ok: bool,
}

/// What an allowlist entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One name, lower-case, without a trailing dot.
    Exact(String),
    /// Names strictly below this suffix (stored without the `*.`).
    Suffix(String),
    /// One IP address (canonical: IPv4-mapped IPv6 is stored as IPv4).
    Ip(IpAddr),
}

impl HostPattern {
    /// Does this pattern match the (already normalised) name?
    pub fn matches_name(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(n) => n == name,
            HostPattern::Suffix(s) => {
                name.len() > s.len() + 1 && {
                    let (head, tail) = name.split_at(name.len() - s.len());
                    tail == s && head.ends_with('.')
                }
            }
            HostPattern::Ip(_) => false,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Suffix(s) => write!(f, "*.{s}"),
            HostPattern::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            HostPattern::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub pattern: HostPattern,
    pub port: u16,
    /// `/private`: non-public destinations are allowed for this entry.
    pub allow_private: bool,
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pattern, self.port)?;
        if self.allow_private {
            f.write_str(PRIVATE_MARKER)?;
        }
        Ok(())
    }
}

/// The parsed `BOTTLE_ALLOW_HOSTS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<AllowEntry>,
}

impl AllowList {
    /// Parse the allowlist text (see the module docs for the grammar).
    pub fn parse(text: &str) -> Result<Self, AllowListError> {
        let entries = text
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|t| !t.is_empty())
            .map(parse_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { entries })
    }

    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries matching a normalised name and port.
    pub fn matching_name<'a>(
        &'a self,
        name: &'a str,
        port: u16,
    ) -> impl Iterator<Item = &'a AllowEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.port == port && e.pattern.matches_name(name))
    }

    /// Entries listing exactly this IP (compared canonically) and port.
    pub fn matching_ip(&self, ip: IpAddr, port: u16) -> impl Iterator<Item = &AllowEntry> + '_ {
        let ip = ip.to_canonical();
        self.entries
            .iter()
            .filter(move |e| e.port == port && e.pattern == HostPattern::Ip(ip))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A bad `BOTTLE_ALLOW_HOSTS` entry. Every message names the entry and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowListError {
    NotUtf8,
    BadEntry { entry: String, why: String },
}

impl fmt::Display for AllowListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowListError::NotUtf8 => write!(f, "{ALLOW_HOSTS_ENV} is not valid UTF-8"),
            AllowListError::BadEntry { entry, why } => {
                write!(f, "{ALLOW_HOSTS_ENV}: bad entry {entry}: {why}")
            }
        }
    }
}

impl std::error::Error for AllowListError {}

fn bad(entry: &str, why: impl Into<String>) -> AllowListError {
    AllowListError::BadEntry {
        entry: printable(entry, 80),
        why: why.into(),
    }
}

fn parse_entry(token: &str) -> Result<AllowEntry, AllowListError> {
    let (body, allow_private) = match token.rfind('/') {
        None => (token, false),
        Some(i) if token[i..].eq_ignore_ascii_case(PRIVATE_MARKER) => (&token[..i], true),
        Some(_) => {
            return Err(bad(
                token,
                "the only marker after '/' is /private (e.g. git.corp.example/private)",
            ));
        }
    };
    let (host, port) = split_host_port(body).map_err(|why| bad(token, why))?;
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => parse_port(p).ok_or_else(|| bad(token, "the port must be 1..65535"))?,
    };
    let pattern = parse_pattern(host).map_err(|why| bad(token, why))?;
    if let HostPattern::Ip(ip) = pattern {
        check_literal(ip, allow_private).map_err(|why| bad(token, why))?;
    }
    Ok(AllowEntry {
        pattern,
        port,
        allow_private,
    })
}

/// Split `host[:port]`, `[v6][:port]` or a bare IPv6 address.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), &'static str> {
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        return match after {
            "" => Ok((inside, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((inside, Some(p))),
                None => Err("expected ':port' after ']'"),
            },
        };
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Ok((s, None));
    }
    match s.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => {
            Err("write an IPv6 address with a port as [address]:port")
        }
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((s, None)),
    }
}

/// Strict decimal port, 1..=65535.
pub(crate) fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

fn parse_pattern(host: &str) -> Result<HostPattern, String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(HostPattern::Ip(ip.to_canonical()));
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        let name = normalize_name(suffix)?;
        return Ok(HostPattern::Suffix(name));
    }
    if host.contains('*') {
        return Err(
            "a wildcard is only allowed as a leading '*.' (e.g. *.example.com); \
             to allow every host use BOTTLE_EGRESS=open"
                .into(),
        );
    }
    Ok(HostPattern::Exact(normalize_name(host)?))
}

/// Lower-case a DNS name, drop one trailing dot, and check its syntax. Rejects names whose
/// last label is numeric, which resolvers may read as an IPv4 address in a non-standard form
/// (`2130706433`, `127.1`, `0x7f.1`).
pub(crate) fn normalize_name(raw: &str) -> Result<String, String> {
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err("a host name must be 1..253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must be 1..63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a host name may contain only letters, digits, '-', '_' and '.'".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with '-'".into());
        }
    }
    let last = name.rsplit('.').next().unwrap_or("");
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(
            "this looks like an IP address in a non-standard form; write it as a.b.c.d".into(),
        );
    }
    Ok(name)
}

/// A listed IP literal must be usable: never unspecified/multicast/broadcast, and a
/// non-public one only with `/private`.
fn check_literal(ip: IpAddr, allow_private: bool) -> Result<(), String> {
    let class = classify(ip);
    if class == AddrClass::Public {
        return Ok(());
    }
    if !class.can_be_allowed() {
        return Err(format!(
            "{ip} is {}: it can never be allowed",
            class.describe()
        ));
    }
    if !allow_private {
        return Err(format!(
            "{ip} is {}; append {PRIVATE_MARKER} to allow it on purpose",
            class.describe()
        ));
    }
    Ok(())
}

/// Quote untrusted text for messages: escape control and non-ASCII bytes, cap the length.
pub(crate) fn printable(s: &str, max: usize) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if i >= max {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_default());
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_values() {
        assert_eq!(EgressMode::parse(None), Ok(EgressMode::Open));
        assert_eq!(EgressMode::parse(Some("")), Ok(EgressMode::Open));
        assert_eq!(EgressMode::parse(Some("open")), Ok(EgressMode::Open));
        assert_eq!(
            EgressMode::parse(Some(" API-Only ")),
            Ok(EgressMode::ApiOnly)
        );
        assert_eq!(
            EgressMode::parse(Some("allowlist")),
            Ok(EgressMode::Allowlist)
        );
        for m in [EgressMode::Open, EgressMode::ApiOnly, EgressMode::Allowlist] {
            assert_eq!(EgressMode::parse(Some(m.as_str())), Ok(m));
        }
        assert!(!EgressMode::Open.is_locked());
        assert!(EgressMode::ApiOnly.is_locked() && EgressMode::Allowlist.is_locked());
    }

    #[test]
    fn mode_errors_name_the_choices() {
        for bad in [
            "api_only",
            "allow",
            "closed",
            "apionly",
            "1",
            "open,api-only",
        ] {
            let e = EgressMode::parse(Some(bad)).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("BOTTLE_EGRESS"), "{msg}");
            assert!(
                msg.contains("api-only") && msg.contains("allowlist"),
                "{msg}"
            );
            assert!(msg.contains(bad), "{msg}");
        }
        let e = EgressMode::parse(Some("x\n\u{1b}[31m"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
    }

    fn one(s: &str) -> AllowEntry {
        let l = AllowList::parse(s).unwrap();
        assert_eq!(l.entries().len(), 1, "{s}");
        l.entries()[0].clone()
    }

    #[test]
    fn entries_and_defaults() {
        assert_eq!(
            one("api.github.com"),
            AllowEntry {
                pattern: HostPattern::Exact("api.github.com".into()),
                port: 443,
                allow_private: false
            }
        );
        assert_eq!(one("Registry.NPMJS.org.:8443").port, 8443);
        assert_eq!(
            one("Registry.NPMJS.org."),
            AllowEntry {
                pattern: HostPattern::Exact("registry.npmjs.org".into()),
                port: 443,
                allow_private: false
            }
        );
        assert_eq!(
            one("*.Example.com:80"),
            AllowEntry {
                pattern: HostPattern::Suffix("example.com".into()),
                port: 80,
                allow_private: false
            }
        );
        assert_eq!(
            one("git.corp.example:22/PRIVATE"),
            AllowEntry {
                pattern: HostPattern::Exact("git.corp.example".into()),
                port: 22,
                allow_private: true
            }
        );
        assert_eq!(
            one("1.1.1.1"),
            AllowEntry {
                pattern: HostPattern::Ip("1.1.1.1".parse().unwrap()),
                port: 443,
                allow_private: false
            }
        );
        assert_eq!(one("[2606:4700::1111]:853").port, 853);
        assert_eq!(
            one("2606:4700::1111").pattern,
            HostPattern::Ip("2606:4700::1111".parse().unwrap())
        );
        // IPv4-mapped IPv6 is stored as the IPv4 address it is.
        assert_eq!(
            one("[::ffff:1.1.1.1]").pattern,
            HostPattern::Ip("1.1.1.1".parse().unwrap())
        );
        assert!(one("10.1.2.3:8080/private").allow_private);
        assert_eq!(one("[fd00::5]/private").port, 443);
    }

    #[test]
    fn separators() {
        let l = AllowList::parse(" a.com,b.com  c.com:1\n\t*.d.com ,, ").unwrap();
        let shown: Vec<String> = l.entries().iter().map(|e| e.to_string()).collect();
        assert_eq!(shown, ["a.com:443", "b.com:443", "c.com:1", "*.d.com:443"]);
        assert!(AllowList::parse("").unwrap().is_empty());
        assert!(AllowList::parse(" , ").unwrap().is_empty());
    }

    #[test]
    fn bad_entries() {
        let cases = [
            ("*", "wildcard"),
            ("*.", "1..253"),
            ("a.*.com", "wildcard"),
            ("*foo.com", "wildcard"),
            ("a.com:0", "port"),
            ("a.com:65536", "port"),
            ("a.com:+1", "port"),
            ("a.com:", "port"),
            ("a.com:http", "port"),
            ("a.com/public", "/private"),
            ("-a.com", "'-'"),
            ("a..com", "label"),
            ("a b", "bad entry"), // split into two tokens: "b" is fine, "a" fine: see below
            ("ex ample", "bad entry"),
            ("héllo.com", "letters"),
            ("2130706433", "non-standard"),
            ("127.1", "non-standard"),
            ("0x7f.1", "non-standard"),
            ("a.b.0x10", "non-standard"),
            ("2606:4700::1111:https", "[address]:port"),
            ("[1::2", "']'"),
            ("[1::2]443", "':port'"),
            ("[zz::]:443", "letters"),
            ("10.0.0.1", "/private"),
            ("127.0.0.1:8080", "/private"),
            ("[::1]", "/private"),
            ("169.254.169.254", "/private"),
            ("0.0.0.0/private", "never"),
            ("[::]/private", "never"),
            ("224.0.0.1/private", "never"),
            ("255.255.255.255/private", "never"),
            ("[ff02::1]/private", "never"),
            (":443", "empty"),
        ];
        for (input, needle) in cases {
            match AllowList::parse(input) {
                Ok(l) if input.contains(' ') => {
                    // Whitespace separates entries; both halves are valid names.
                    assert_eq!(l.entries().len(), 2, "{input}");
                }
                Ok(l) => panic!("{input:?} parsed as {l}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains("BOTTLE_ALLOW_HOSTS"), "{msg}");
                    assert!(msg.contains(needle), "{input:?}: {msg}");
                }
            }
        }
    }

    #[test]
    fn suffix_matching() {
        let s = HostPattern::Suffix("example.com".into());
        assert!(s.matches_name("a.example.com"));
        assert!(s.matches_name("a.b.example.com"));
        assert!(!s.matches_name("example.com"));
        assert!(!s.matches_name("badexample.com"));
        assert!(!s.matches_name("example.com.evil"));
        assert!(!s.matches_name(".example.com"));
        let e = HostPattern::Exact("example.com".into());
        assert!(e.matches_name("example.com"));
        assert!(!e.matches_name("a.example.com"));
        assert!(!HostPattern::Ip("1.1.1.1".parse().unwrap()).matches_name("1.1.1.1"));
    }

    #[test]
    fn lookup_by_name_and_ip() {
        let l = AllowList::parse("a.com *.b.com:8443 1.1.1.1:53 [2606:4700::1111]").unwrap();
        assert_eq!(l.matching_name("a.com", 443).count(), 1);
        assert_eq!(l.matching_name("a.com", 80).count(), 0);
        assert_eq!(l.matching_name("x.b.com", 8443).count(), 1);
        assert_eq!(l.matching_name("x.b.com", 443).count(), 0);
        assert_eq!(l.matching_ip("1.1.1.1".parse().unwrap(), 53).count(), 1);
        assert_eq!(
            l.matching_ip("::ffff:1.1.1.1".parse().unwrap(), 53).count(),
            1
        );
        assert_eq!(l.matching_ip("1.1.1.1".parse().unwrap(), 443).count(), 0);
        assert_eq!(
            l.matching_ip("2606:4700::1111".parse().unwrap(), 443)
                .count(),
            1
        );
    }

    #[test]
    fn display_round_trips() {
        let text = "a.com:443, *.b.com:8443/private, 1.1.1.1:53, [2606:4700::1111]:443, 10.0.0.1:443/private";
        let l = AllowList::parse(text).unwrap();
        assert_eq!(l.to_string(), text);
        assert_eq!(AllowList::parse(&l.to_string()).unwrap(), l);
    }
}
