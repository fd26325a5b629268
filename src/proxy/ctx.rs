//! The event loop's shared services, apart from the client table (so a client can be
//! borrowed from the table while these are used mutably): the poll registry, the TLS client
//! configuration and upstream identity, the secrets, the limits and counters, the pool of idle
//! upstream connections, the resolver, the CONNECT allowlist, and the two things every phase
//! does the same way: refusing a request with a local answer, and the per-request log line.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mio::{Registry, Waker};
use rustls::pki_types::ServerName;

use super::conn::{Client, Exchange, upstream_token};
use super::limits::Limits;
use super::logline::{RequestLine, reported};
use super::quota::{Limited, Quota};
use super::resolver::Resolver;
use super::stats::Stats;
use super::upstream::{UpConn, UpError};
use crate::egress::mode::AllowList;
use crate::http::{self, Rejection, RequestHead};
use crate::secret::{Credential, Secret};

/// The real credential, shared by the proxy thread (which reads it once per request to build
/// the upstream head) and the init loop (which empties it, so the bytes are zeroed, before
/// PID 1 exits). A mutex rather than a plain shared reference: zeroing bytes that another
/// thread may be copying at that moment would be a data race. The lock is held only while
/// one request head is built.
#[derive(Clone, Debug)]
pub struct CredentialSlot(Arc<Mutex<Option<Credential>>>);

impl CredentialSlot {
    pub(crate) fn new(credential: Credential) -> CredentialSlot {
        CredentialSlot(Arc::new(Mutex::new(Some(credential))))
    }

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

/// Who the loop talks to and with what, from a validated `ProxyConfig`.
pub(crate) struct Settings {
    /// The per-run secret a client must present.
    pub(crate) session_secret: Secret,
    pub(crate) credential: CredentialSlot,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// The SNI name (or address) the upstream certificate must match.
    pub(crate) server_name: ServerName<'static>,
    /// The Host header value sent upstream (`host[:port]`).
    pub(crate) host_header: String,
}

pub(crate) struct Ctx {
    pub(crate) registry: Registry,
    pub(crate) settings: Settings,
    pub(crate) limits: Limits,
    pub(crate) stats: Arc<Stats>,
    /// Idle upstream connections, in the order they went idle (most recently used last).
    pub(crate) pool: VecDeque<UpConn>,
    /// Which client uses which upstream connection (by `UpConn::id`), so an event on an
    /// upstream token finds its client; kept by [`Ctx::attach`] and [`Ctx::detach`].
    pub(crate) owners: HashMap<u64, u64>,
    next_id: u64,
    pub(crate) resolver: Resolver,
    /// `allowlist` mode: CONNECT tunnels to these hosts; `None`: CONNECT stays refused (405).
    pub(crate) allow: Option<AllowList>,
    /// `BOTTLE_MAX_*`: what may still be forwarded.
    pub(crate) quota: Quota,
    /// Keeps the loop's waker alive (the resolver's threads hold clones).
    _waker: Arc<Waker>,
}

impl Ctx {
    pub(crate) fn new(
        registry: Registry,
        settings: Settings,
        limits: Limits,
        stats: Arc<Stats>,
        resolver: Resolver,
        allow: Option<AllowList>,
        waker: Arc<Waker>,
    ) -> Ctx {
        Ctx {
            quota: Quota::new(limits.usage),
            registry,
            settings,
            limits,
            stats,
            pool: VecDeque::new(),
            owners: HashMap::new(),
            next_id: 1,
            resolver,
            allow,
            _waker: waker,
        }
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Answers locally with an error and closes. `head`: what the log line names, if parsed.
    pub(crate) fn refuse(&mut self, c: &mut Client, head: Option<&RequestHead>, r: Rejection) {
        let (method, path) = head.map_or(("-", "-"), |h| (h.method.as_str(), log_path(h.path())));
        self.stats.count_request(Some(r.status), None);
        local_line(method, path, r.status, &format!("(refused: {})", r.message))
            .log(log::Level::Info);
        c.outbuf.clear();
        c.outbuf
            .push(&http::error_response(r.status, r.error_type, &r.message));
        c.close(true);
    }

    /// A request past a `BOTTLE_MAX_*` limit: 429 `rate_limit_error`, not forwarded, counted
    /// for `status`. `x-should-retry: false`: retrying cannot help within seconds, and without
    /// it claude retries a 429 for minutes before the user sees why.
    pub(crate) fn refuse_limited(&mut self, c: &mut Client, head: &RequestHead, l: Limited) {
        self.stats.count_request(Some(429), None);
        self.stats.with_tally(|t| t.limited += 1);
        let note = format!("(limited: {})", l.message);
        local_line(&head.method, log_path(head.path()), 429, &note).log(log::Level::Warn);
        c.outbuf.clear();
        c.outbuf
            .push(&http::local::limit_response(&l.message, l.retry_after));
        c.close(true);
    }

    /// The one log line of a forwarded request.
    pub(crate) fn log_exchange(&self, ex: &Exchange, status: Option<u16>, note: &str) {
        let usage = ex.usage.usage();
        self.stats.count_request(status, reported(&usage));
        RequestLine {
            method: &ex.method,
            path: &ex.path,
            status,
            bytes_in: ex.bytes_in,
            bytes_out: ex.bytes_out,
            ms: ex.started.elapsed().as_millis() as u64,
            upstream: if ex.reused { "reused" } else { "new" },
            usage: Some(&usage),
            note,
        }
        .log(log::Level::Info);
    }

    /// Starts a new upstream connection to the first address that takes a connect attempt.
    pub(crate) fn connect_upstream(
        &mut self,
        addrs: Vec<std::net::SocketAddr>,
    ) -> Result<UpConn, UpError> {
        let id = self.next_id();
        let s = &self.settings;
        let up = UpConn::connect(
            addrs,
            &s.tls,
            &s.server_name,
            self.limits.buffer_size,
            (id, upstream_token(id)),
            &self.registry,
        )?;
        self.stats.upstream_connects.fetch_add(1, Ordering::Relaxed);
        self.stats.open_upstreams.fetch_add(1, Ordering::Relaxed);
        Ok(up)
    }

    /// The most recently used pooled connection that is still healthy.
    pub(crate) fn take_pooled(&mut self) -> Option<UpConn> {
        while let Some(mut up) = self.pool.pop_back() {
            // Costs a read only if an event came since it was last drained (its token and
            // registration never change, so `sock_readable` is exact).
            if up.idle_is_broken(&self.registry) {
                self.drop_upstream(up);
                continue;
            }
            return Some(up);
        }
        None
    }

    /// Client `id` uses `up` from now on.
    pub(crate) fn attach(&mut self, id: u64, c: &mut Client, up: UpConn) {
        self.owners.insert(up.id, id);
        c.up = Some(up);
    }

    /// Takes the client's upstream connection away from it (to pool or drop it).
    pub(crate) fn detach(&mut self, c: &mut Client) -> Option<UpConn> {
        let up = c.up.take()?;
        self.owners.remove(&up.id);
        Some(up)
    }

    pub(crate) fn pool_upstream(&mut self, mut up: UpConn) {
        if self.limits.pool_max_idle == 0 {
            self.drop_upstream(up);
            return;
        }
        if self.pool.len() >= self.limits.pool_max_idle
            && let Some(oldest) = self.pool.pop_front()
        {
            self.drop_upstream(oldest);
        }
        up.idle_since = Instant::now();
        self.pool.push_back(up);
    }

    pub(crate) fn drop_upstream(&mut self, mut up: UpConn) {
        self.owners.remove(&up.id);
        up.deregister(&self.registry);
        self.stats.open_upstreams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The line of a request the proxy answered itself.
pub(crate) fn local_line<'a>(
    method: &'a str,
    path: &'a str,
    status: u16,
    note: &'a str,
) -> RequestLine<'a> {
    RequestLine {
        method,
        path,
        status: Some(status),
        bytes_in: 0,
        bytes_out: 0,
        ms: 0,
        upstream: "none",
        usage: None,
        note,
    }
}

/// The path as logged: without the query (already cut by the caller), at most 200 bytes so a
/// client cannot flood the log.
pub(crate) fn log_path(path: &str) -> &str {
    match path.char_indices().nth(200) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}
