//! The event loop: one thread, one `mio::Poll`, all connection state owned here. It
//! dispatches; what happens on a connection is the phase handlers' (`exchange`, `tunnel`,
//! and the client-generic steps in `conn`), what they share is `ctx`.
//!
//! Shape (after the rustls mio examples, without their shortcuts):
//! - tokens: the listeners and the waker have fixed tokens; a client and the upstream socket
//!   it uses have tokens derived from its id (`conn::client_token`, `conn::upstream_token`);
//! - every event on a client or its upstream runs [`Server::pump`], which moves bytes in both
//!   directions until nothing moves (edge-triggered: always drain to WouldBlock or to a full
//!   buffer, `pump`); buffers are bounded, and a side whose peer buffer is full is simply not
//!   read, which is the backpressure;
//! - interest is recomputed from state after every pump;
//! - errors only change a client's phase; [`Server::finish`] is the one teardown point;
//! - resolver answers arrive through the waker;
//! - timeouts are checked by a sweep a few times a second (no timer wheel needed at 1024
//!   connections), and only while some connection or pooled upstream exists: an idle proxy
//!   sleeps in `epoll_wait` until something happens.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

use super::conn::{Client, Phase, client_token, token_owner};
use super::ctx::{Ctx, Settings};
use super::exchange;
use super::limits::Limits;
use super::resolver::{Answer, Resolver};
use super::stats::Stats;
use super::stream::{ClientStream, Listener};
use super::tunnel;
use crate::egress::mode::AllowList;
use crate::http::{self, Form, Rejection};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const UNIX_LISTENER: Token = Token(usize::MAX - 2);
/// How often timeouts are checked (and a stalled accept retried).
const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// Rounds of a pump before other connections get their turn (each moves up to one buffer).
const PUMP_BUDGET: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Nothing more can move until the next readiness event.
    Done,
    /// Stopped at the budget with bytes still moving.
    Unfinished,
}

pub(crate) struct Server {
    poll: Poll,
    listener: Listener,
    /// The `api-only` Unix socket, served exactly like the TCP listener.
    unix_listener: Option<Listener>,
    clients: HashMap<u64, Client>,
    /// Of `clients`, those accepted past the cap (only answered 503).
    overflow_open: usize,
    /// Clients whose pump stopped at its budget; pumped again after the next poll. Needed
    /// because edge-triggered readiness will not be reported again for bytes already there.
    again: Vec<u64>,
    /// A listener (TCP, Unix) left connections in its backlog: accept stopped at the limit or
    /// failed. Edge-triggered readiness does not report them again, so accept is retried
    /// when a connection closes and at every sweep.
    accept_stalled: [bool; 2],
    /// Held open to answer one connection with a 503 when accept fails with EMFILE: close it,
    /// accept, answer, reopen (the connection then is not left in the backlog to time out).
    reserve: Option<std::fs::File>,
    /// Connections answered through the reserve since the last log line about it.
    reserve_unlogged: u64,
    ctx: Ctx,
}

impl Server {
    pub(crate) fn new(
        listener: std::net::TcpListener,
        upstream: (String, u16),
        settings: Settings,
        limits: Limits,
        stats: Arc<Stats>,
        unix_listener: Option<(std::os::unix::net::UnixListener, u32)>,
        connect_allow: Option<AllowList>,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = Listener::Tcp(mio::net::TcpListener::from_std(listener));
        poll.registry()
            .register(listener.source(), LISTENER, mio::Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut unix_listener = match unix_listener {
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
        let (host, port) = upstream;
        let resolver = Resolver::start(host, port, waker.clone(), connect_allow.is_some())?;
        let registry = poll.registry().try_clone()?;
        Ok(Server {
            poll,
            listener,
            unix_listener,
            clients: HashMap::new(),
            overflow_open: 0,
            again: Vec::new(),
            accept_stalled: [false; 2],
            reserve: open_reserve(),
            reserve_unlogged: 0,
            ctx: Ctx::new(
                registry,
                settings,
                limits,
                stats,
                resolver,
                connect_allow,
                waker,
            ),
        })
    }

    pub(crate) fn run(mut self) {
        log::info!(
            "proxy: forwarding to https://{} (session secret required)",
            self.ctx.settings.host_header
        );
        let l = &self.ctx.limits;
        if let Some(fds) = l.fd_limit {
            log::info!(
                "proxy: RLIMIT_NOFILE {fds}: up to {} connections served at once, {} more \
                 answered 503 at a time, {} idle upstream connections kept",
                l.max_connections,
                l.max_overflow,
                l.pool_max_idle
            );
        }
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        loop {
            // Connections that used up their turn still have bytes to move: no sleeping.
            // Nothing to time out (no connection, nothing pooled, no stalled accept): sleep
            // until an event.
            let timeout = if !self.again.is_empty() {
                Some(Duration::ZERO)
            } else if self.needs_sweep() {
                Some(SWEEP_EVERY.saturating_sub(last_sweep.elapsed()))
            } else {
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
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
                    WAKER => self.resolver_answers(),
                    t => self.dispatch(t, ev.is_read_closed() || ev.is_error()),
                }
            }
            for id in std::mem::take(&mut self.again) {
                self.pump(id);
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                self.sweep();
                last_sweep = Instant::now();
                if self.reserve_unlogged > 0 {
                    log::warn!(
                        "proxy: {} connections answered 503 through the reserve descriptor \
                         (out of file descriptors)",
                        self.reserve_unlogged
                    );
                    self.reserve_unlogged = 0;
                }
                // Also after a transient accept error (ENOBUFS, ...), not only at a close.
                self.retry_accept(true);
            } else {
                self.retry_accept(false);
            }
        }
    }

    /// Whether the sweep has anything to look at: a connection (deadlines, buffer release),
    /// a pooled upstream (idle timeout), a stalled accept or an unlogged reserve answer.
    fn needs_sweep(&self) -> bool {
        !self.clients.is_empty()
            || !self.ctx.pool.is_empty()
            || self.accept_stalled.contains(&true)
            || self.reserve_unlogged > 0
    }

    /// Accepts while there is room for one more connection (served or answered 503). At the
    /// limit, pending connections stay in the kernel's backlog (they wait; none is reset) and
    /// accept resumes when a connection closes.
    fn accept(&mut self, unix: bool) {
        let which = usize::from(unix);
        self.accept_stalled[which] = false;
        loop {
            if !self.has_room() {
                self.accept_stalled[which] = true;
                return;
            }
            let Some(listener) = self.listener_for(unix) else {
                return;
            };
            match listener.accept() {
                Ok(sock) => self.add_client(sock),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A client that reset before we accepted it: on to the next one.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors (something else in the process holds them): answer
                    // one connection through the reserve so it is not left waiting, then try
                    // again later.
                    let answered = self.answer_with_reserve(unix);
                    if !answered || self.reserve_unlogged == 0 {
                        log::warn!(
                            "proxy: accept failed ({e}); {}",
                            if answered {
                                "answering connections 503 through the reserve descriptor"
                            } else {
                                "will retry"
                            }
                        );
                    }
                    if answered {
                        self.reserve_unlogged += 1;
                    }
                    if !answered {
                        self.accept_stalled[which] = true;
                        return;
                    }
                }
                Err(e) => {
                    log::warn!("proxy: accept failed: {e}; will retry");
                    self.accept_stalled[which] = true;
                    return;
                }
            }
        }
    }

    /// Accepts again on listeners that stalled, if there is room now (`always`: also after
    /// a failure, at the sweep).
    fn retry_accept(&mut self, always: bool) {
        if !self.has_room() {
            return;
        }
        for unix in [false, true] {
            if self.accept_stalled[usize::from(unix)] || always {
                self.accept(unix);
            }
        }
    }

    fn listener_for(&self, unix: bool) -> Option<&Listener> {
        if unix {
            self.unix_listener.as_ref()
        } else {
            Some(&self.listener)
        }
    }

    /// Room for one more connection: under the fd budget, the worst case after accepting it
    /// (two descriptors per served client, one per pooled upstream and per overflow answer)
    /// must fit; without one, the configured counts decide.
    fn has_room(&self) -> bool {
        let l = &self.ctx.limits;
        let served = self.clients.len() - self.overflow_open;
        let next_is_served = served < l.max_connections;
        match l.fd_budget {
            Some(budget) => {
                let next = if next_is_served { 2 } else { 1 };
                2 * served + self.ctx.pool.len() + self.overflow_open + next <= budget
            }
            None => self.clients.len() < l.max_connections + l.max_overflow,
        }
    }

    /// EMFILE: frees the reserve descriptor, accepts one connection, answers it 503 at once
    /// (its request, if already sent, is drained first so the kernel does not reset over the
    /// answer) and closes it, then takes the reserve again.
    fn answer_with_reserve(&mut self, unix: bool) -> bool {
        let Some(reserve) = self.reserve.take() else {
            self.reserve = open_reserve();
            return false;
        };
        drop(reserve);
        let Some(listener) = self.listener_for(unix) else {
            return false;
        };
        let answered = match listener.accept() {
            Ok(mut sock) => {
                let r = overload_rejection(self.ctx.limits.max_connections);
                let bytes = http::error_response(r.status, r.error_type, &r.message);
                sock.answer_and_close(&bytes);
                self.ctx.stats.count_request(Some(r.status), None);
                self.ctx
                    .stats
                    .overflow_answered
                    .fetch_add(1, Ordering::Relaxed);
                self.ctx
                    .stats
                    .reserve_answered
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        };
        self.reserve = open_reserve();
        answered
    }

    fn add_client(&mut self, sock: ClientStream) {
        let limits = self.ctx.limits.clone();
        let served = self.clients.len() - self.overflow_open;
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
        if let Err(e) = c.register(&self.ctx.registry, client_token(id)) {
            log::warn!("proxy: cannot register a connection with the poller: {e}");
            c.die();
        } else if served >= limits.max_connections {
            // Past the cap: a 503 claude retries, then a short linger (see OVERFLOW_LINGER).
            c.overflow = true;
            self.overflow_open += 1;
            self.ctx
                .stats
                .overflow_answered
                .fetch_add(1, Ordering::Relaxed);
            self.ctx
                .refuse(&mut c, None, overload_rejection(limits.max_connections));
        }
        self.clients.insert(id, c);
        self.pump(id);
    }

    /// An event on a client or upstream socket. `closed`: the peer ended its stream (or the
    /// socket failed), so reads go on to the end.
    fn dispatch(&mut self, token: Token, closed: bool) {
        let (id, is_upstream) = token_owner(token);
        if !is_upstream {
            if let Some(c) = self.clients.get_mut(&id) {
                // Any event may mean new bytes: the socket is no longer known to be drained.
                c.sock_readable = true;
                c.peer_closed |= closed;
                self.pump(id);
            }
            return;
        }
        if let Some(&owner) = self.ctx.owners.get(&id) {
            if let Some(up) = self.clients.get_mut(&owner).and_then(|c| c.up.as_mut()) {
                up.sock_readable = true;
                up.peer_closed |= closed;
            }
            self.pump(owner);
        } else if self.clients.contains_key(&id) {
            // A tunnel's target socket (under its client's id).
            self.pump(id);
        } else if let Some(i) = self.ctx.pool.iter().position(|up| up.id == id) {
            let up = &mut self.ctx.pool[i];
            up.sock_readable = true;
            up.peer_closed |= closed;
            if up.idle_is_broken(&self.ctx.registry)
                && let Some(up) = self.ctx.pool.remove(i)
            {
                self.ctx.drop_upstream(up);
            }
        }
    }

    fn pump(&mut self, id: u64) {
        if let Some(c) = self.clients.get_mut(&id)
            && turn(&mut self.ctx, id, c) == Turn::Unfinished
            && !self.again.contains(&id)
        {
            self.again.push(id);
        }
        self.finish(id);
    }

    /// The one teardown point.
    fn finish(&mut self, id: u64) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        self.ctx
            .stats
            .peak_connection_buffered
            .fetch_max(c.buffered(), Ordering::Relaxed);
        if !c.is_dead() {
            // Buffers are kept across back-to-back requests (freeing and re-faulting them per
            // request was ~15% of the CPU under musl's allocator); the sweep releases them
            // once the connection has been quiet for a while.
            if !c.is_quiet() {
                c.idle_since = None;
            } else if c.idle_since.is_none() {
                c.idle_since = Some(Instant::now());
            }
            return;
        }
        let Some(mut c) = self.clients.remove(&id) else {
            return;
        };
        c.deregister(&self.ctx.registry);
        if c.overflow {
            self.overflow_open -= 1;
        }
        // Log first: once the upstream is dropped, observers may already see its effects.
        if let Some(ex) = c.ended_exchange.take() {
            self.ctx
                .log_exchange(&ex, ex.status, "client closed the connection");
        }
        if let Some(up) = self.ctx.detach(&mut c) {
            self.ctx.drop_upstream(up);
        }
        self.ctx.stats.open_clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// Lookups that finished: each goes to the connection that still waits for it.
    fn resolver_answers(&mut self) {
        for answer in self.ctx.resolver.answers() {
            match answer {
                Answer::Upstream { waiting, result } => {
                    for id in waiting {
                        let Some(c) = self.clients.get_mut(&id) else {
                            continue;
                        };
                        if c.awaits_upstream() {
                            exchange::upstream_resolved(&mut self.ctx, id, c, &result);
                            self.pump(id);
                        }
                    }
                }
                Answer::Connect { id, result } => {
                    let Some(c) = self.clients.get_mut(&id) else {
                        continue;
                    };
                    if c.awaits_tunnel_lookup() {
                        tunnel::resolved(&mut self.ctx, id, c, result);
                        self.pump(id);
                    }
                }
            }
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        let (head_timeout, release_after) = (
            self.ctx.limits.head_timeout,
            self.ctx.limits.buffer_release_after,
        );
        let mut touched = Vec::new();
        for (id, c) in self.clients.iter_mut() {
            if c.idle_since
                .is_some_and(|t| now.duration_since(t) >= release_after)
                && c.release_buffers()
            {
                self.ctx
                    .stats
                    .buffers_released
                    .fetch_add(1, Ordering::Relaxed);
            }
            let changed = match &c.phase {
                Phase::Idle { head_started } => {
                    if now < c.deadline {
                        false
                    } else if *head_started {
                        let msg = format!(
                            "bottle-init proxy: the request head did not arrive within {} s",
                            head_timeout.as_secs()
                        );
                        self.ctx
                            .refuse(c, None, Rejection::new(408, "invalid_request_error", msg));
                        true
                    } else {
                        c.die();
                        true
                    }
                }
                Phase::Exchange(_) => exchange::sweep(&mut self.ctx, c, now),
                Phase::Closing { .. } => {
                    let expired = now >= c.deadline;
                    if expired {
                        c.die();
                    }
                    expired
                }
                Phase::Tunnel(_) => tunnel::sweep(&mut self.ctx, c, now),
                Phase::Dead => false,
            };
            if changed {
                touched.push(*id);
            }
        }
        for id in touched {
            self.pump(id);
        }
        // The pool is in the order connections went idle, so the stale ones lead it; taken
        // off in place (rebuilding the pool at every sweep reallocated it, a few hundred KiB
        // with a full pool, five times a second).
        let pool_idle = self.ctx.limits.pool_idle_timeout;
        let stale = self
            .ctx
            .pool
            .iter()
            .take_while(|up| now.duration_since(up.idle_since) >= pool_idle)
            .count();
        let stale: Vec<_> = self.ctx.pool.drain(..stale).collect();
        for up in stale {
            self.ctx.drop_upstream(up);
        }
    }
}

/// Moves bytes for one client and its upstream until nothing moves, or until its turn is
/// over (so one fast stream cannot starve the others): read what the client sent, let the
/// phase act, write what is queued for the client.
fn turn(ctx: &mut Ctx, id: u64, c: &mut Client) -> Turn {
    for _ in 0..PUMP_BUDGET {
        let mut progress = c.read_input();
        progress |= match c.phase {
            Phase::Idle { .. } => next_request(ctx, id, c),
            Phase::Exchange(_) => exchange::step(ctx, c),
            Phase::Closing { .. } => c.step_closing(),
            Phase::Tunnel(_) => tunnel::step(ctx, id, c),
            Phase::Dead => return Turn::Done,
        };
        progress |= c.flush();
        if let (true, Some(ex)) = (progress, c.exchange()) {
            ex.last_activity = Instant::now();
        }
        if !progress || c.is_dead() {
            return Turn::Done;
        }
    }
    Turn::Unfinished
}

/// Idle: the next request, once the previous answer is fully written. In `allowlist` mode a
/// CONNECT is a tunnel's and a plain `http://` request is refused; everything else is an
/// exchange's.
fn next_request(ctx: &mut Ctx, id: u64, c: &mut Client) -> bool {
    if !c.outbuf.is_empty() || c.inbuf.is_empty() {
        return false;
    }
    let form = match ctx.allow {
        Some(_) => http::request_form(c.inbuf.bytes()),
        None => None,
    };
    match form {
        Some(Form::Connect) => tunnel::next_request(ctx, id, c),
        // The client has ended its side: only a tunnel has a use for what it sent before.
        _ if c.read_eof => {
            c.die();
            true
        }
        Some(Form::AbsoluteHttp) => tunnel::refuse_plain_http(ctx, c),
        Some(Form::Other) | None => exchange::next_request(ctx, id, c),
    }
}

/// The answer past the connection cap: claude retries a 503 `overloaded_error`.
fn overload_rejection(cap: usize) -> Rejection {
    Rejection::new(
        503,
        "overloaded_error",
        format!("bottle-init proxy: too many open connections (limit {cap}); retry shortly"),
    )
}

fn open_reserve() -> Option<std::fs::File> {
    match std::fs::File::open("/dev/null") {
        Ok(f) => Some(f),
        Err(e) => {
            log::warn!("proxy: cannot open the reserve descriptor: {e}");
            None
        }
    }
}
