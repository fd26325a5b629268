//! `bottle-init check`'s report: the checks, their two output forms and the `--probe` argument.
//! Pure: no system call.
//!
//! Lines (the interface is fixed, issue 12): `✔ <name> — <detail>` or `✘ <name> — <detail>`,
//! one per check. `--json`: `{"ok": bool, "checks": [{"name": str, "ok": bool, "detail": str}]}`
//! on one line. A detail is one line of printable text: whatever a process could choose (its
//! command name) is escaped, and [`Report::redact`] removes any secret before printing.

use std::fmt::Write;

use crate::logging::json_str_into;

/// Where allowlist mode's direct-connection check aims when `--probe` is not given: TEST-NET-1
/// (RFC 5737), an address no host answers on. Under the lock the connection is refused at
/// once; without it, it would time out, which counts as not refused.
pub const DEFAULT_PROBE: &str = "192.0.2.1:443";

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: true,
            detail: detail.into(),
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Every check, in the order they ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True iff every check passed (and there is at least one).
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// The human form: one line per check.
    pub fn lines(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = if c.ok { '✔' } else { '✘' };
            let _ = writeln!(out, "{mark} {} — {}", c.name, one_line(&c.detail));
        }
        out
    }

    /// The `--json` form, one line.
    pub fn json(&self) -> String {
        let mut out = format!("{{\"ok\": {}, \"checks\": [", self.ok());
        for (i, c) in self.checks.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str("{\"name\": ");
            json_str_into(&mut out, c.name);
            let _ = write!(out, ", \"ok\": {}, \"detail\": ", c.ok);
            json_str_into(&mut out, &one_line(&c.detail));
            out.push('}');
        }
        out.push_str("]}\n");
        out
    }

    /// Replaces every occurrence of a secret in the details (a last line of defence: no
    /// detail is built from one).
    pub fn redact(&mut self, secrets: &[&[u8]]) {
        for c in &mut self.checks {
            for s in secrets.iter().filter(|s| !s.is_empty()) {
                if let Ok(s) = std::str::from_utf8(s)
                    && c.detail.contains(s)
                {
                    c.detail = c.detail.replace(s, "<redacted>");
                }
            }
        }
    }
}

/// A detail on one line: control characters (a newline in a process name) escaped.
fn one_line(s: &str) -> String {
    printable(s)
}

/// Text a process chose (its command name), made printable: control characters and the
/// backslash escaped as `\xNN`, so it cannot break a line or fake another one.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || c == '\\' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `--probe HOST:PORT`: an IPv4 address, a bracketed IPv6 address or a DNS name, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `--probe`'s value (`None`: the default). The error completes
/// `--probe <error>; <how to fix>` (crate::failure).
pub fn parse_probe(text: Option<&str>) -> Result<ProbeTarget, String> {
    let text = text.unwrap_or(DEFAULT_PROBE);
    let quoted = format!("{:?}", printable(text));
    if text.is_empty() {
        return Err("needs a value".into());
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{quoted} has no :PORT"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => return Err(format!("{quoted}: the port must be 1 to 65535")),
    };
    let host = if let Some(inner) = host.strip_prefix('[') {
        let Some(v6) = inner.strip_suffix(']') else {
            return Err(format!("{quoted}: an unclosed [ around the IPv6 address"));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{quoted}: {v6:?} is not an IPv6 address"));
        }
        v6.to_string()
    } else if host.contains(':') {
        return Err(format!("{quoted}: put an IPv6 address in brackets"));
    } else if host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_name(host) {
        host.to_string()
    } else {
        return Err(format!(
            "{quoted}: the host is not an address or a DNS name"
        ));
    };
    Ok(ProbeTarget { host, port })
}

/// Letters, digits and hyphens in dot-separated labels of 1 to 63 bytes, 253 bytes at most,
/// not all digits (that would be a malformed IPv4 address).
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            checks: vec![
                Check::pass("proxy", "HEAD / answered 200"),
                Check::fail("egress", "AF_INET socket \"allowed\"\nsecond line"),
            ],
        }
    }

    #[test]
    fn lines_are_exact() {
        assert_eq!(
            report().lines(),
            "✔ proxy — HEAD / answered 200\n✘ egress — AF_INET socket \"allowed\"\\x0asecond line\n"
        );
    }

    #[test]
    fn json_is_exact() {
        assert_eq!(
            report().json(),
            "{\"ok\": false, \"checks\": [{\"name\": \"proxy\", \"ok\": true, \"detail\": \
             \"HEAD / answered 200\"}, {\"name\": \"egress\", \"ok\": false, \"detail\": \
             \"AF_INET socket \\\"allowed\\\"\\\\x0asecond line\"}]}\n"
        );
        let all_ok = Report {
            checks: vec![Check::pass("a", "b")],
        };
        assert_eq!(
            all_ok.json(),
            "{\"ok\": true, \"checks\": [{\"name\": \"a\", \"ok\": true, \"detail\": \"b\"}]}\n"
        );
    }

    #[test]
    fn ok_needs_every_check_and_at_least_one() {
        assert!(!report().ok());
        assert!(!Report::default().ok());
        let mut r = report();
        r.checks[1].ok = true;
        assert!(r.ok());
    }

    #[test]
    fn printable_escapes_what_could_break_a_line() {
        assert_eq!(printable("sleep"), "sleep");
        assert_eq!(printable("a\nb\r\x1b[2J\\"), "a\\x0ab\\x0d\\x1b[2J\\x5c");
        assert_eq!(printable("\u{85}é"), "\\xc2\\x85é");
    }

    #[test]
    fn redact_removes_secrets() {
        let mut r = Report {
            checks: vec![Check::fail(
                "x",
                "got sk-ant-oat01-abc and bottle-ff twice bottle-ff",
            )],
        };
        r.redact(&[b"sk-ant-oat01-abc", b"bottle-ff", b""]);
        assert_eq!(
            r.checks[0].detail,
            "got <redacted> and <redacted> twice <redacted>"
        );
    }

    #[test]
    fn probe_parses_addresses_and_names() {
        let t = |h: &str, port| ProbeTarget {
            host: h.into(),
            port,
        };
        assert_eq!(parse_probe(None), Ok(t("192.0.2.1", 443)));
        assert_eq!(parse_probe(Some("192.0.2.2:7")), Ok(t("192.0.2.2", 7)));
        assert_eq!(
            parse_probe(Some("[2001:db8::2]:53")),
            Ok(t("2001:db8::2", 53))
        );
        assert_eq!(
            parse_probe(Some("example.com:443")),
            Ok(t("example.com", 443))
        );
        assert_eq!(
            parse_probe(Some("[2001:db8::2]:53")).unwrap().to_string(),
            "[2001:db8::2]:53"
        );
        assert_eq!(parse_probe(None).unwrap().to_string(), DEFAULT_PROBE);
    }

    #[test]
    fn malformed_probes_are_refused_with_the_reason() {
        let e = |s: &str| parse_probe(Some(s)).unwrap_err();
        assert_eq!(e(""), "needs a value");
        assert_eq!(e("192.0.2.1"), "\"192.0.2.1\" has no :PORT");
        assert_eq!(
            e("192.0.2.1:0"),
            "\"192.0.2.1:0\": the port must be 1 to 65535"
        );
        assert_eq!(
            e("192.0.2.1:65536"),
            "\"192.0.2.1:65536\": the port must be 1 to 65535"
        );
        assert_eq!(
            e("192.0.2.1:+80"),
            "\"192.0.2.1:+80\": the port must be 1 to 65535"
        );
        assert_eq!(
            e("2001:db8::1:443"),
            "\"2001:db8::1:443\": put an IPv6 address in brackets"
        );
        assert_eq!(
            e("[2001:db8::1:443"),
            "\"[2001:db8::1:443\": an unclosed [ around the IPv6 address"
        );
        assert_eq!(
            e("[nope]:1"),
            "\"[nope]:1\": \"nope\" is not an IPv6 address"
        );
        assert_eq!(
            e("999.1.1.1:80"),
            "\"999.1.1.1:80\": the host is not an address or a DNS name"
        );
        assert_eq!(
            e("a b:80"),
            "\"a b:80\": the host is not an address or a DNS name"
        );
        assert_eq!(
            e(":80"),
            "\":80\": the host is not an address or a DNS name"
        );
        assert_eq!(
            e("x\n:1"),
            "\"x\\\\x0a:1\": the host is not an address or a DNS name"
        );
    }
}
