//! The event loop: one thread, one `mio::Poll`, all connection state owned here.
//!
//! Shape (after the rustls mio examples, without their shortcuts):
//! - tokens: the listener and the DNS waker have fixed tokens; client `id` uses `2*id` for its
//!   socket and `2*id+1` for the upstream connection it is using; a pooled upstream connection
//!   gets a fresh id and `2*id+1`;
//! - every event on a client or its upstream runs `Ctx::pump` (exchange.rs), which moves bytes in both
//!   directions until nothing moves (edge-triggered: always drain to WouldBlock or to a full
//!   buffer); buffers are bounded, and a side whose peer buffer is full is simply not read,
//!   which is the backpressure;
//! - interest is recomputed from state after every pump;
//! - errors only change a client's phase; [`Server::finish`] is the one teardown point;
//! - timeouts are checked by a sweep a few times a second (no timer wheel needed at 1024
//!   connections).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

use super::conn::{Client, Phase};
use super::dns::Resolver;
use super::exchange::{Ctx, Fault, Turn};
use super::stream::{ClientStream, Listener};
use super::upstream::UpConn;
use super::{Limits, Settings, Stats};
use crate::http::{self, Rejection};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const UNIX_LISTENER: Token = Token(usize::MAX - 2);
/// How often timeouts are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// Connections beyond `max_connections` that still get a 503 (beyond this: dropped).
const OVERFLOW_ANSWERED: usize = 64;

pub(super) fn client_token(id: u64) -> Token {
    Token((id as usize) << 1)
}

pub(super) fn upstream_token(id: u64) -> Token {
    Token(((id as usize) << 1) | 1)
}

pub(crate) struct Server {
    poll: Poll,
    listener: Listener,
    /// The `api-only` Unix socket, served exactly like the TCP listener.
    unix_listener: Option<Listener>,
    clients: HashMap<u64, Client>,
    /// Clients whose pump stopped at its budget; pumped again after the next poll. Needed
    /// because edge-triggered readiness will not be reported again for bytes already there.
    again: Vec<u64>,
    ctx: Ctx,
}

impl Server {
    pub(crate) fn new(
        listener: std::net::TcpListener,
        config: Settings,
        tls: Arc<rustls::ClientConfig>,
        limits: Limits,
        stats: Arc<Stats>,
        egress: super::EgressOptions,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = Listener::Tcp(mio::net::TcpListener::from_std(listener));
        poll.registry()
            .register(listener.source(), LISTENER, mio::Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut unix_listener = match egress.unix_listener {
            Some((l, uid)) => {
                l.set_nonblocking(true)?;
                Some(Listener::Unix(mio::net::UnixListener::from_std(l), uid))
            }
            None => None,
        };
        if let Some(l) = unix_listener.as_mut() {
            poll.registry()
                .register(l.source(), UNIX_LISTENER, mio::Interest::READABLE)?;
        }
        let tunnels = egress
            .connect_allow
            .map(|a| super::tunnel::Egress::new(a, waker.clone()));
        let resolver = Resolver::start(
            config.upstream.host.clone(),
            config.upstream.port,
            waker.clone(),
        )?;
        let server_name = super::tls::server_name(&config.upstream.host)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let host_header = http::rewrite::host_header(&config.upstream.host, config.upstream.port);
        let registry = poll.registry().try_clone()?;
        Ok(Server {
            poll,
            listener,
            unix_listener,
            clients: HashMap::new(),
            again: Vec::new(),
            ctx: Ctx {
                registry,
                config,
                tls,
                server_name,
                host_header,
                limits,
                stats,
                pool: Vec::new(),
                next_id: 1,
                resolver,
                dns_in_flight: false,
                dns_waiting: Vec::new(),
                _waker: waker,
                egress: tunnels,
            },
        })
    }

    pub(crate) fn run(mut self) {
        log::info!(
            "proxy: forwarding to https://{} (session secret required)",
            self.ctx.host_header
        );
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        loop {
            // Connections that used up their turn still have bytes to move: no sleeping.
            let timeout = if self.again.is_empty() {
                SWEEP_EVERY
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("proxy: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(false),
                    UNIX_LISTENER => self.accept(true),
                    WAKER => {
                        self.dns_answers();
                        self.tunnel_answers();
                    }
                    t => self.dispatch(t),
                }
            }
            for id in std::mem::take(&mut self.again) {
                self.pump(id);
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                self.sweep();
                last_sweep = Instant::now();
            }
        }
    }

    fn accept(&mut self, unix: bool) {
        loop {
            let listener = match (unix, self.unix_listener.as_ref()) {
                (true, Some(l)) => l,
                (true, None) => return,
                (false, _) => &self.listener,
            };
            match listener.accept() {
                Ok(sock) => self.add_client(sock),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the backlog keeps the connection; try again on the
                    // next event.
                    log::warn!("proxy: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_client(&mut self, sock: ClientStream) {
        let limits = self.ctx.limits.clone();
        let open = self.clients.len();
        if open >= limits.max_connections + OVERFLOW_ANSWERED {
            log::warn!("proxy: connection dropped: {open} connections open");
            return;
        }
        let id = self.ctx.next_id();
        let in_cap = limits.buffer_size.max(limits.request.max_head + 1);
        let out_cap = limits
            .buffer_size
            .max(http::response::MAX_RESPONSE_HEAD + 1);
        let mut c = Client::new(
            sock,
            in_cap,
            out_cap,
            Instant::now() + limits.head_timeout,
            self.ctx.stats.clone(),
        );
        self.ctx.stats.open_clients.fetch_add(1, Ordering::Relaxed);
        if open >= limits.max_connections {
            let msg = format!(
                "bottle-init proxy: too many open connections (limit {}); retry shortly",
                limits.max_connections
            );
            self.ctx
                .refuse(&mut c, None, Rejection::new(503, "overloaded_error", msg));
        }
        self.clients.insert(id, c);
        self.pump(id);
    }

    fn dispatch(&mut self, token: Token) {
        let id = (token.0 >> 1) as u64;
        let is_upstream = token.0 & 1 == 1;
        if let Some(c) = self.clients.get_mut(&id) {
            // Any event may mean new bytes: the socket is no longer known to be drained.
            if !is_upstream {
                c.sock_readable = true;
            } else if let Some(up) = c.up.as_mut() {
                up.sock_readable = true;
            }
            self.pump(id);
        } else if let Some(i) = self.ctx.pool.iter().position(|(pid, _)| *pid == id) {
            self.ctx.pool[i].1.sock_readable = true;
            let broken = self.ctx.pool[i].1.idle_is_broken(&self.ctx.registry);
            if broken {
                let (_, up) = self.ctx.pool.remove(i);
                self.ctx.drop_upstream(up);
            } else if let Err(e) = self.ctx.pool[i]
                .1
                .update_interest(&self.ctx.registry, token)
            {
                log::warn!("proxy: cannot re-register a pooled connection: {e}");
                let (_, up) = self.ctx.pool.remove(i);
                self.ctx.drop_upstream(up);
            }
        }
    }

    fn pump(&mut self, id: u64) {
        if let Some(c) = self.clients.get_mut(&id)
            && self.ctx.pump(id, c) == Turn::Unfinished
            && !self.again.contains(&id)
        {
            self.again.push(id);
        }
        self.finish(id);
    }

    /// The one teardown point, and where interest is derived from state.
    fn finish(&mut self, id: u64) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if !c.is_dead() {
            let registered = c
                .update_interest(&self.ctx.registry, client_token(id))
                .and_then(|()| match c.up.as_mut() {
                    Some(up) => up.update_interest(&self.ctx.registry, upstream_token(id)),
                    None => Ok(()),
                });
            match registered {
                Ok(()) => {
                    self.ctx
                        .stats
                        .peak_connection_buffered
                        .fetch_max(c.buffered(), Ordering::Relaxed);
                    // Buffers are kept across back-to-back requests (freeing and re-faulting
                    // them per request was ~15% of the CPU under musl's allocator); the sweep
                    // releases them once the connection has been quiet for a while.
                    if !c.is_quiet() {
                        c.idle_since = None;
                    } else if c.idle_since.is_none() {
                        c.idle_since = Some(Instant::now());
                    }
                    return;
                }
                Err(e) => {
                    log::warn!("proxy: cannot register a connection with the poller: {e}");
                    c.die();
                }
            }
        }
        let Some(mut c) = self.clients.remove(&id) else {
            return;
        };
        self.ctx
            .stats
            .peak_connection_buffered
            .fetch_max(c.buffered(), Ordering::Relaxed);
        c.deregister(&self.ctx.registry);
        // Log first: once the upstream is dropped, observers may already see its effects.
        if let Some(ex) = c.ended_exchange.take() {
            self.ctx
                .log_exchange(&ex, ex.status, "client closed the connection");
        }
        if let Some(up) = c.up.take() {
            self.ctx.drop_upstream(up);
        }
        self.ctx.stats.open_clients.fetch_sub(1, Ordering::Relaxed);
    }

    fn tunnel_answers(&mut self) {
        for id in super::tunnel::take_answers(&mut self.ctx, &mut self.clients) {
            self.pump(id);
        }
    }

    fn dns_answers(&mut self) {
        while self.ctx.dns_in_flight {
            let Some(answer) = self.ctx.resolver.try_answer() else {
                break;
            };
            self.ctx.dns_in_flight = false;
            for id in std::mem::take(&mut self.ctx.dns_waiting) {
                let Some(c) = self.clients.get_mut(&id) else {
                    continue;
                };
                if !c.waiting_dns {
                    continue;
                }
                c.waiting_dns = false;
                match &answer {
                    Ok(addrs) => {
                        match UpConn::connect(
                            addrs.clone(),
                            &self.ctx.tls,
                            &self.ctx.server_name,
                            self.ctx.limits.buffer_size,
                        ) {
                            Ok(up) => {
                                self.ctx
                                    .stats
                                    .upstream_connects
                                    .fetch_add(1, Ordering::Relaxed);
                                self.ctx
                                    .stats
                                    .open_upstreams
                                    .fetch_add(1, Ordering::Relaxed);
                                c.up = Some(up);
                            }
                            Err(e) => self.ctx.fail(c, Fault::Upstream(e)),
                        }
                    }
                    Err(m) => self.ctx.fail(c, Fault::Dns(m.clone())),
                }
                self.pump(id);
            }
        }
        if !self.ctx.dns_in_flight && !self.ctx.dns_waiting.is_empty() {
            self.ctx.request_dns();
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        let limits = self.ctx.limits.clone();
        let mut touched = Vec::new();
        for (id, c) in self.clients.iter_mut() {
            if c.idle_since
                .is_some_and(|t| now.duration_since(t) >= limits.buffer_release_after)
                && c.release_buffers()
            {
                self.ctx
                    .stats
                    .buffers_released
                    .fetch_add(1, Ordering::Relaxed);
            }
            let fault = match &mut c.phase {
                Phase::Idle { head_started } => {
                    if now < c.deadline {
                        continue;
                    }
                    if *head_started {
                        let msg = format!(
                            "bottle-init proxy: the request head did not arrive within {} s",
                            limits.head_timeout.as_secs()
                        );
                        self.ctx
                            .refuse(c, None, Rejection::new(408, "invalid_request_error", msg));
                    } else {
                        c.die();
                    }
                    touched.push(*id);
                    continue;
                }
                Phase::Exchange(ex) => {
                    let connected = c.up.as_ref().is_some_and(UpConn::is_ready);
                    if !connected && now.duration_since(ex.started) >= limits.connect_timeout {
                        Fault::Timeout(format!(
                            "connecting to the upstream {} (DNS, TCP and TLS) took longer than {} s",
                            self.ctx.host_header,
                            limits.connect_timeout.as_secs()
                        ))
                    } else if now.duration_since(ex.last_activity) >= limits.stream_idle_timeout {
                        Fault::Timeout(format!(
                            "no data moved for {} s on this request",
                            limits.stream_idle_timeout.as_secs()
                        ))
                    } else {
                        continue;
                    }
                }
                Phase::Closing { .. } => {
                    if now >= c.deadline {
                        c.die();
                        touched.push(*id);
                    }
                    continue;
                }
                Phase::Tunnel(_) => {
                    if super::tunnel::sweep(&mut self.ctx, c, now) {
                        touched.push(*id);
                    }
                    continue;
                }
                Phase::Dead => continue,
            };
            self.ctx.fail(c, fault);
            touched.push(*id);
        }
        for id in touched {
            self.pump(id);
        }
        let (stale, fresh): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ctx.pool)
            .into_iter()
            .partition(|(_, up)| now.duration_since(up.idle_since) >= limits.pool_idle_timeout);
        self.ctx.pool = fresh;
        for (_, up) in stale {
            self.ctx.drop_upstream(up);
        }
    }
}
