//! The credential-injecting reverse proxy: one thread, one mio event loop.
//!
//! CONTRACT with the init half (src/main.rs and friends): the init half builds a
//! [`ProxyConfig`], calls [`Proxy::bind`] BEFORE forking the child (so the listener exists when
//! the child starts and its port can go in the child's ANTHROPIC_BASE_URL), then, after
//! dropping its own capabilities, calls [`Proxy::spawn`]. `bind` validates everything
//! (upstream URL, extra CA roots) and never contacts the upstream.
//!
//! Policy (what `event_loop` enforces; the HTTP rules themselves are in `crate::http`):
//! - `HEAD /` (claude's unauthenticated warm-up) is answered locally with 200;
//! - every other request must carry the session secret (`Authorization: Bearer` or
//!   `x-api-key`, compared in constant time), else 401 in the Anthropic error shape;
//! - only `GET`/`HEAD`/`POST`/`DELETE` with an RFC 3986 origin-form target and a valid Host
//!   are parsed at all (else 405 / 400, `crate::http::target`), and only paths under `/v1/`
//!   without empty, dot or encoded-separator segments are forwarded, else 404; absolute-form
//!   and Upgrade 400, HTTP/1.0 505;
//! - the destination is always the configured upstream, whatever the Host header says;
//! - bodies are relayed byte for byte in both directions, streamed through bounded buffers;
//! - one info log line per request: method, path (no query), status, body bytes each way,
//!   duration, whether the upstream connection was new or reused. Never a header value.
//!
//! Layout, in layers (a module imports only from layers below it; `scripts/import-graph
//! src/proxy src/http` checks there is no cycle):
//! 1. leaves: `buf` (bounded buffers), `pump` (the one buffer pump every byte moves through),
//!    `stats`, `limits`, `quota` (the `BOTTLE_MAX_*` policy), `logline` (the request line), `stream` (client socket kinds), `tls` + `tickets` (the shared rustls
//!    config), `upstream` (TCP connect + rustls), `resolver` (the one resolver: upstream and
//!    CONNECT lookups off the loop);
//! 2. `conn`: a client connection's state (its phase: between requests, an exchange, a
//!    tunnel, closing), the poll tokens, and the client-generic steps (read, flush, close);
//! 3. `ctx`: the loop's shared services (settings and secrets, limits, counters, the upstream
//!    pool, the resolver, the allowlist, refusals and the log line);
//! 4. the phase handlers, siblings that never import each other: `exchange` (the request
//!    policy and the exchange state machine) and `tunnel` (CONNECT, `allowlist` mode);
//! 5. `event_loop`: poll, accept, dispatch by phase, resolver answers, timeouts, teardown;
//! 6. this module: the public API.

mod buf;
mod conn;
mod ctx;
mod event_loop;
mod exchange;
mod limits;
mod logline;
mod pump;
mod quota;
mod resolver;
mod stats;
mod stream;
mod tickets;
mod tls;
mod tunnel;
mod upstream;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

pub use ctx::CredentialSlot;
#[cfg(feature = "test-hooks")]
pub use exchange::TEST_PANIC_PATH;
pub use limits::Limits;
pub use stats::{Stats, Tally, TokenCounts};

use crate::secret::{Credential, Secret};

pub use crate::config::{Upstream, UsageLimits};

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
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
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

fn setup_error(e: tls::SetupError) -> ProxyError {
    match e {
        tls::SetupError::BadCa(m) => ProxyError::BadCa(m),
        tls::SetupError::Config(m) => ProxyError::Tls(m),
    }
}

/// A bound, validated proxy that has not started serving yet.
pub struct Proxy {
    listener: std::net::TcpListener,
    upstream: Upstream,
    settings: ctx::Settings,
    limits: Limits,
    stats: Arc<Stats>,
    egress: EgressOptions,
}

/// What the egress modes add to the proxy (issue 5); empty in `open` mode.
#[derive(Debug, Default)]
struct EgressOptions {
    /// `api-only`: the API Unix socket and the only uid that may connect to it.
    unix_listener: Option<(std::os::unix::net::UnixListener, u32)>,
    /// `allowlist`: serve HTTP CONNECT to these hosts.
    connect_allow: Option<crate::egress::AllowList>,
}

impl Proxy {
    /// Validates the configuration (upstream name usable for SNI, CA PEM, TLS config) and
    /// binds the listener. No upstream traffic, no DNS.
    pub fn bind(listen: SocketAddr, config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let tls = tls::client_config(config.extra_roots_pem.as_deref()).map_err(setup_error)?;
        let server_name = tls::server_name(&config.upstream.host).map_err(setup_error)?;
        let listener = std::net::TcpListener::bind(listen).map_err(|source| ProxyError::Bind {
            addr: listen,
            source,
        })?;
        // The largest backlog the kernel allows (somaxconn): when the proxy is at its limit it
        // stops accepting, and connections wait there rather than retrying their SYN.
        if let Err(e) = crate::sys::listen_max_backlog(listener.as_raw_fd()) {
            log::debug!("proxy: cannot enlarge the listen backlog: {e}");
        }
        let ProxyConfig {
            upstream,
            extra_roots_pem: _,
            credential,
            session_secret,
        } = config;
        let host_header = crate::http::rewrite::host_header(&upstream.host, upstream.port);
        Ok(Proxy {
            listener,
            upstream,
            settings: ctx::Settings {
                session_secret,
                credential: CredentialSlot::new(credential),
                tls,
                server_name,
                host_header,
            },
            limits: Limits::default(),
            stats: Arc::default(),
            egress: EgressOptions::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Replaces the default [`Limits`] (before [`Proxy::spawn`]).
    pub fn with_limits(mut self, limits: Limits) -> Proxy {
        self.limits = limits;
        self
    }

    /// `BOTTLE_MAX_*`: requests past these limits get 429 (before [`Proxy::spawn`]).
    pub fn with_usage_limits(mut self, usage: UsageLimits) -> Proxy {
        self.limits.usage = usage;
        self
    }

    /// Fits the limits to an RLIMIT_NOFILE soft limit (see [`Limits::fit_to_fds`]), counting
    /// the descriptors open now. Call it last before [`Proxy::spawn`].
    pub fn fit_to_fd_limit(mut self, soft: u64) -> Proxy {
        // Unknown (no /proc): assume a few dozen.
        let in_use = crate::fdlimit::open_fds().unwrap_or(64);
        let tunnels = self.egress.connect_allow.is_some();
        self.limits = self.limits.clone().fit_to_fds(soft, in_use, tunnels);
        self
    }

    /// The limits the proxy will run with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `BOTTLE_EGRESS=api-only`: also serve the API on this Unix socket (from
    /// `egress::apisock::bind_api_socket`), to connections from `peer_uid` only (SO_PEERCRED,
    /// checked at every accept; others are closed and logged).
    pub fn with_unix_listener(
        mut self,
        listener: std::os::unix::net::UnixListener,
        peer_uid: u32,
    ) -> Proxy {
        self.egress.unix_listener = Some((listener, peer_uid));
        self
    }

    /// `BOTTLE_EGRESS=allowlist`: serve HTTP CONNECT to the hosts on `allow` (policy in
    /// `crate::egress::policy`), and refuse plain `http://` proxying with 403.
    pub fn with_connect_allowlist(mut self, allow: crate::egress::AllowList) -> Proxy {
        self.egress.connect_allow = Some(allow);
        self
    }

    /// A handle on the real credential, for wiping it when PID 1 exits
    /// ([`CredentialSlot::wipe`]). The proxy keeps a clone.
    pub fn credential_slot(&self) -> CredentialSlot {
        self.settings.credential.clone()
    }

    /// Live counters of the running proxy.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Starts the event loop on its own thread (plus the resolver's helper threads). The calling
    /// thread's signal mask (all blocked) and capability sets are inherited by both.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        let Proxy {
            listener,
            upstream,
            settings,
            limits,
            stats,
            egress,
        } = self;
        listener.set_nonblocking(true)?;
        let server = event_loop::Server::new(
            listener,
            (upstream.host, upstream.port),
            settings,
            limits,
            stats,
            egress.unix_listener,
            egress.connect_allow,
        )?;
        std::thread::Builder::new()
            .name("proxy".into())
            .spawn(move || {
                crate::sys::block_signals_in_thread();
                server.run()
            })
    }
}
