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
//! Layout: `event_loop` (poll, accept, dispatch, DNS answers, timeouts, teardown), `exchange`
//! (the request policy and the exchange state machine), `conn` (client
//! state), `upstream` (TCP connect + rustls), `buf` (bounded buffers), `dns` (resolver
//! thread), `stream` (client socket kinds), `tls` (the shared rustls config).

mod buf;
mod conn;
mod dns;
mod event_loop;
mod exchange;
mod stream;
mod tickets;
mod tls;
mod tunnel;
mod upstream;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::secret::{Credential, Secret};

/// Test builds only (feature `test-hooks`, never in release builds): an authenticated request
/// to this path panics the proxy thread, so tests can check what PID 1 does when it dies.
#[cfg(feature = "test-hooks")]
pub const TEST_PANIC_PATH: &str = "/v1/bottle-init-test-hooks/panic";

pub use crate::config::Upstream;

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

/// Tunables of the proxy. [`Limits::default`] is what bottle-init runs with; tests shorten
/// the timeouts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Client connections served at once; beyond it a connection is answered 503.
    pub max_connections: usize,
    /// Connections past `max_connections` being answered 503 at once (each holds its
    /// descriptor until the client has read the answer, or briefly). Beyond this the proxy
    /// stops accepting: new connections wait in the kernel's backlog, never reset.
    pub max_overflow: usize,
    /// The RLIMIT_NOFILE soft limit these limits were fitted to ([`Limits::fit_to_fds`]).
    pub fd_limit: Option<u64>,
    /// Descriptors left for connections under that limit: the proxy accepts only while the
    /// worst case (two per served client, one per pooled upstream and per overflow answer)
    /// stays within it, so accept never meets EMFILE. Overflow answers may then use what the
    /// pool does not (more than `max_overflow` at a time).
    pub fd_budget: Option<usize>,
    /// Request head size, header count and body size (431 / 431 / 413).
    pub request: crate::http::RequestLimits,
    /// Bytes buffered per direction per connection (backpressure beyond it).
    pub buffer_size: usize,
    /// A request head must be complete this long after its first byte (slowloris): 408.
    pub head_timeout: Duration,
    /// An idle keep-alive client connection is closed after this long.
    pub idle_timeout: Duration,
    /// DNS + TCP connect + TLS handshake to the upstream: 504 beyond it.
    pub connect_timeout: Duration,
    /// Longest silence (no byte either way) inside one exchange. At least claude's own 600 s.
    pub stream_idle_timeout: Duration,
    /// Idle upstream connections kept for reuse: as many as there are concurrent clients,
    /// so that steady use at that concurrency costs no handshakes.
    pub pool_max_idle: usize,
    /// An idle pooled upstream connection is closed after this long.
    pub pool_idle_timeout: Duration,
    /// A keep-alive client connection idle this long gives its buffers back (wiped); they
    /// are kept across back-to-back requests, so that busy connections do not reallocate.
    pub buffer_release_after: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_overflow: 256,
            fd_limit: None,
            fd_budget: None,
            request: crate::http::RequestLimits::default(),
            buffer_size: 64 * 1024,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(610),
            pool_max_idle: 256,
            pool_idle_timeout: Duration::from_secs(30),
            buffer_release_after: Duration::from_secs(3),
        }
    }
}

/// Descriptors the proxy keeps free for everything that is not a connection: the DNS
/// helper's lookups, files rustls or the resolver open, a second socket while a connect moves
/// on to the next address.
const FD_MARGIN: usize = 16;
/// Descriptors of the proxy itself beyond those open when it is fitted: the poller, its
/// waker and the reserve descriptor (kept to answer one connection when accept hits EMFILE).
const FD_OWN: usize = 3;

impl Limits {
    /// Sizes the connection cap, the overflow answers and the upstream pool so that they fit
    /// in `soft` descriptors with `in_use` already open: each served client can hold its socket
    /// and an upstream connection (or a tunnel's), each overflow connection its socket, each
    /// pooled upstream one; `tunnels` reserves two per concurrent CONNECT lookup. Never raises
    /// a configured limit.
    pub fn fit_to_fds(mut self, soft: u64, in_use: usize, tunnels: bool) -> Limits {
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        let lookups = if tunnels { 2 * tunnel::MAX_LOOKUPS } else { 0 };
        let avail = soft.saturating_sub(in_use + FD_OWN + FD_MARGIN + lookups);
        self.max_overflow = (avail / 8).clamp(1, self.max_overflow.max(1));
        self.pool_max_idle = (avail / 4).min(self.pool_max_idle);
        let for_clients = avail.saturating_sub(self.max_overflow + self.pool_max_idle);
        self.max_connections = (for_clients / 2).clamp(1, self.max_connections.max(1));
        self.fd_limit = Some(soft as u64);
        self.fd_budget = Some(avail);
        self
    }
}

/// Counters the event loop publishes; read by tests and diagnostics. Never holds request data.
#[derive(Debug, Default)]
pub struct Stats {
    /// TCP connections opened to the upstream (each one costs a TLS handshake).
    pub upstream_connects: AtomicU64,
    /// TLS handshakes with the upstream that completed.
    pub upstream_handshakes: AtomicU64,
    /// Requests that reused a pooled upstream connection.
    pub upstream_reused: AtomicU64,
    /// Requests answered (forwarded or refused), as logged.
    pub requests: AtomicU64,
    /// Client connections currently open.
    pub open_clients: AtomicUsize,
    /// Upstream connections currently open (in use or pooled).
    pub open_upstreams: AtomicUsize,
    /// Largest number of bytes one connection ever held in its proxy buffers.
    pub peak_connection_buffered: AtomicUsize,
    /// Bytes allocated right now for the client connections' buffers (both directions, all
    /// connections): grows with the data actually relayed, not with the buffer cap.
    pub buffer_capacity: AtomicUsize,
    /// Idle client connections whose buffers were released.
    pub buffers_released: AtomicU64,
    /// Connections answered 503 because the cap was reached.
    pub overflow_answered: AtomicU64,
    /// Of those, answered through the reserve descriptor after accept failed with EMFILE.
    pub reserve_answered: AtomicU64,
}

/// What the event loop keeps of a [`ProxyConfig`] once it is validated.
pub(crate) struct Settings {
    pub(crate) upstream: Upstream,
    pub(crate) session_secret: Secret,
    pub(crate) credential: CredentialSlot,
}

/// The real credential, shared by the proxy thread (which reads it once per request to build
/// the upstream head) and the init loop (which empties it, so the bytes are zeroed, before
/// PID 1 exits). A mutex rather than a plain shared reference: zeroing bytes that another
/// thread may be copying at that moment would be a data race. The lock is held only while
/// one request head is built.
#[derive(Clone, Debug)]
pub struct CredentialSlot(Arc<Mutex<Option<Credential>>>);

impl CredentialSlot {
    /// Runs `f` with the credential, or returns `None` once it has been wiped.
    pub fn with<R>(&self, f: impl FnOnce(&Credential) -> R) -> Option<R> {
        // A poisoned lock only means a panic elsewhere while it was held; the credential
        // itself is still intact (it is never mutated in place).
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(f)
    }

    /// Takes the credential out and drops it: [`Secret`]'s `Drop` zeroes its bytes. Every
    /// request after this is refused with 503.
    pub fn wipe(&self) {
        let taken = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(taken);
    }
}

/// A bound, validated proxy that has not started serving yet.
pub struct Proxy {
    listener: std::net::TcpListener,
    settings: Settings,
    tls: Arc<rustls::ClientConfig>,
    limits: Limits,
    stats: Arc<Stats>,
    egress: EgressOptions,
}

/// What the egress modes add to the proxy (issue 5); empty in `open` mode.
#[derive(Debug, Default)]
pub(crate) struct EgressOptions {
    /// `api-only`: the API Unix socket and the only uid that may connect to it.
    unix_listener: Option<(std::os::unix::net::UnixListener, u32)>,
    /// `allowlist`: serve HTTP CONNECT to these hosts.
    connect_allow: Option<crate::egress::AllowList>,
}

impl Proxy {
    /// Validates the configuration (upstream name usable for SNI, CA PEM, TLS config) and
    /// binds the listener. No upstream traffic, no DNS.
    pub fn bind(listen: SocketAddr, config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let tls = tls::client_config(config.extra_roots_pem.as_deref())?;
        tls::server_name(&config.upstream.host)?;
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
        Ok(Proxy {
            listener,
            settings: Settings {
                upstream,
                session_secret,
                credential: CredentialSlot(Arc::new(Mutex::new(Some(credential)))),
            },
            tls,
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

    /// Starts the event loop on its own thread (plus a small DNS helper thread). The calling
    /// thread's signal mask (all blocked) and capability sets are inherited by both.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        let Proxy {
            listener,
            settings,
            tls,
            limits,
            stats,
            egress,
        } = self;
        listener.set_nonblocking(true)?;
        let server = event_loop::Server::new(listener, settings, tls, limits, stats, egress)?;
        std::thread::Builder::new()
            .name("proxy".into())
            .spawn(move || {
                crate::sys::block_signals_in_thread();
                server.run()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::Limits;

    #[test]
    fn limits_fit_the_descriptors() {
        let d = Limits::default();
        // Docker's default soft limit with no higher hard limit: 10 fds already open.
        let l = d.clone().fit_to_fds(1024, 10, false);
        let avail = 1024 - 10 - 3 - 16;
        assert_eq!(l.max_overflow, avail / 8);
        assert_eq!(l.pool_max_idle, avail / 4);
        assert_eq!(l.max_connections, (avail - avail / 8 - avail / 4) / 2);
        assert_eq!(
            (l.max_connections, l.max_overflow, l.pool_max_idle),
            (311, 124, 248)
        );
        // Everything fits, counting two fds per served client.
        let worst = 10 + 3 + 16 + 2 * l.max_connections + l.max_overflow + l.pool_max_idle;
        assert!(worst <= 1024, "{worst}");
        assert_eq!((l.fd_limit, l.fd_budget), (Some(1024), Some(avail)));
        // CONNECT lookups take their share.
        let t = d.clone().fit_to_fds(1024, 10, true);
        assert!(t.max_connections < l.max_connections);
        let worst = 10 + 3 + 16 + 128 + 2 * t.max_connections + t.max_overflow + t.pool_max_idle;
        assert!(worst <= 1024, "{worst}");
        // A large limit keeps the configured values.
        let big = d.clone().fit_to_fds(1 << 20, 10, true);
        assert_eq!(
            (big.max_connections, big.max_overflow, big.pool_max_idle),
            (d.max_connections, d.max_overflow, d.pool_max_idle)
        );
        // Tiny or exhausted: still at least one connection and one overflow answer.
        let tiny = d.clone().fit_to_fds(20, 30, false);
        assert_eq!(
            (tiny.max_connections, tiny.max_overflow, tiny.pool_max_idle),
            (1, 1, 0)
        );
    }
}
