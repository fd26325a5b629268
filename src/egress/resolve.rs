//! Resolve a granted CONNECT target at connection time and keep only allowed addresses.
//!
//! [`filter_addrs`] is the pure part; [`resolve_grant`] adds the lookup (the system resolver,
//! via `getaddrinfo`, which blocks: call it off the event loop, e.g. on a short-lived thread
//! per CONNECT). The proxy must connect only to the returned addresses and never look the
//! name up again for this tunnel, so what was checked is what is reached.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use super::policy::{Deny, Grant, TargetHost, check_resolved};

/// The outcome of one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Addresses that passed [`check_resolved`], in resolver order, without duplicates.
    pub allowed: Vec<SocketAddr>,
    /// Addresses that did not (log them: a name that half-resolves to a private address is
    /// worth a warning even when a public one is used).
    pub denied: Vec<Deny>,
}

/// Why no tunnel can be opened.
#[derive(Debug)]
pub enum ResolveError {
    /// Every address the name resolved to is forbidden (the first reason is kept).
    Denied(Deny),
    /// The lookup failed.
    Lookup { host: String, source: io::Error },
    /// The lookup returned nothing.
    NoAddress { host: String },
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Denied(d) => d.fmt(f),
            ResolveError::Lookup { host, source } => {
                write!(f, "egress: cannot resolve {host}: {source}")
            }
            ResolveError::NoAddress { host } => write!(f, "egress: {host} has no address"),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Check each address against the grant.
pub fn filter_addrs(
    grant: &Grant,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> Result<Resolved, ResolveError> {
    let mut out = Resolved {
        allowed: Vec::new(),
        denied: Vec::new(),
    };
    for a in addrs {
        match check_resolved(a.ip(), grant) {
            Ok(()) if !out.allowed.contains(&a) => out.allowed.push(a),
            Ok(()) => {}
            Err(d) => out.denied.push(d),
        }
    }
    if out.allowed.is_empty() {
        return Err(match out.denied.into_iter().next() {
            Some(d) => ResolveError::Denied(d),
            None => ResolveError::NoAddress {
                host: grant.host.to_string(),
            },
        });
    }
    Ok(out)
}

/// Look the granted name up now (an IP literal is used as is) and filter the addresses.
pub fn resolve_grant(grant: &Grant) -> Result<Resolved, ResolveError> {
    match &grant.host {
        TargetHost::Ip(ip) => filter_addrs(grant, [SocketAddr::new(*ip, grant.port)]),
        TargetHost::Name(name) => {
            let addrs = (name.as_str(), grant.port)
                .to_socket_addrs()
                .map_err(|source| ResolveError::Lookup {
                    host: name.clone(),
                    source,
                })?;
            filter_addrs(grant, addrs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::mode::AllowList;
    use crate::egress::policy::decide_connect;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn grant(list: &str, target: &str) -> Grant {
        decide_connect(target, &AllowList::parse(list).unwrap()).unwrap()
    }

    #[test]
    fn keeps_allowed_and_reports_denied() {
        let g = grant("example.com", "example.com:443");
        let r = filter_addrs(
            &g,
            [
                sa("10.0.0.1:443"),
                sa("93.184.216.34:443"),
                sa("93.184.216.34:443"),
                sa("[2606:2800:220:1::1]:443"),
                sa("[::1]:443"),
            ],
        )
        .unwrap();
        assert_eq!(
            r.allowed,
            [sa("93.184.216.34:443"), sa("[2606:2800:220:1::1]:443")]
        );
        assert_eq!(r.denied.len(), 2);
    }

    #[test]
    fn all_denied_or_empty_is_an_error() {
        let g = grant("example.com", "example.com:443");
        let e = filter_addrs(&g, [sa("169.254.169.254:443"), sa("10.0.0.1:443")]).unwrap_err();
        assert!(e.to_string().contains("169.254.169.254"), "{e}");
        assert!(e.to_string().contains("metadata"), "{e}");
        let e = filter_addrs(&g, []).unwrap_err();
        assert!(matches!(e, ResolveError::NoAddress { .. }), "{e}");
    }

    #[test]
    fn literal_is_checked_without_lookup() {
        let g = grant("1.1.1.1", "1.1.1.1:443");
        assert_eq!(resolve_grant(&g).unwrap().allowed, [sa("1.1.1.1:443")]);
    }

    #[test]
    fn localhost_resolves_and_is_refused() {
        // "localhost" comes from /etc/hosts (no network): loopback, so refused without
        // /private, allowed with it.
        let g = grant("localhost", "localhost:443");
        match resolve_grant(&g) {
            Err(ResolveError::Denied(d)) => assert!(d.to_string().contains("loopback"), "{d}"),
            other => panic!("{other:?}"),
        }
        let g = grant("localhost/private", "localhost:443");
        let r = resolve_grant(&g).unwrap();
        assert!(r.allowed.iter().all(|a| a.ip().is_loopback()), "{r:?}");
    }
}
