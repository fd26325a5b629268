//! HTTP CONNECT tunnels for `BOTTLE_EGRESS=allowlist` (issue 5).
//!
//! Only when the proxy was given an allowlist ([`super::Proxy::with_connect_allowlist`]);
//! otherwise CONNECT keeps its 405 from the request parser. Per tunnel:
//! 1. [`decide_connect`] on the request-target: a refusal is logged and answered 403;
//! 2. the name is resolved NOW, on a short-lived thread (`getaddrinfo` blocks, the loop must
//!    not), and every address is checked with `check_resolved` ([`resolve_grant`]);
//! 3. the proxy connects only to an address that passed, in resolver order, and never looks
//!    the name up again for this tunnel (what was checked is what is reached);
//! 4. `200 Connection established`, then bytes both ways unchanged, through the client's two
//!    bounded buffers (a full buffer stops reading its source: backpressure), with half-close
//!    passed on in each direction. No credential is ever written into a tunnel.
//!
//! Absolute-form requests (`GET http://host/...`, what `HTTP_PROXY` makes clients send) get
//! 403 "use https": plain HTTP is never proxied.
//!
//! Who may open tunnels: no session secret is asked for. In `allowlist` mode the proxy
//! listens on loopback only (init refuses anything else), and the child's uid can reach
//! nothing but this port; every other local process is outside the firewall anyway, so a
//! tunnel gives nobody a reach they lack. Asking for `Proxy-Authorization` would put the
//! session secret into `HTTPS_PROXY`, where many tools print it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Waker};

use super::conn::{Client, Phase};
use super::event_loop::upstream_token;
use super::exchange::Ctx;
use crate::egress::mode::AllowList;
use crate::egress::policy::{Grant, decide_connect};
use crate::egress::resolve::{ResolveError, Resolved, resolve_grant};
use crate::http::Rejection;

/// Lookups running at once; one more CONNECT is answered 503.
pub(crate) const MAX_LOOKUPS: usize = 64;
/// An open tunnel with no byte either way for this long is closed (>= 300 s, the issue's
/// floor; long-lived git/npm transfers stay well within it while bytes move).
pub(crate) const TUNNEL_IDLE: Duration = Duration::from_secs(600);
/// Headers in a CONNECT head we are willing to parse (we use none of them).
const MAX_HEADERS: usize = 64;

type Answer = (u64, Result<Resolved, ResolveError>);

/// The CONNECT side of the proxy: the list and the lookup plumbing.
pub(crate) struct Egress {
    allow: Arc<AllowList>,
    answers_tx: Sender<Answer>,
    answers: Receiver<Answer>,
    waker: Arc<Waker>,
    lookups: usize,
}

impl Egress {
    pub(crate) fn new(allow: AllowList, waker: Arc<Waker>) -> Egress {
        let (answers_tx, answers) = channel();
        Egress {
            allow: Arc::new(allow),
            answers_tx,
            answers,
            waker,
            lookups: 0,
        }
    }
}

enum State {
    Resolving,
    Connecting {
        sock: TcpStream,
        addr: SocketAddr,
        rest: Vec<SocketAddr>,
    },
    Open {
        sock: TcpStream,
    },
}

/// One tunnel, held in the client's [`Phase::Tunnel`].
pub(crate) struct Tunnel {
    grant: Grant,
    state: State,
    started: Instant,
    last_activity: Instant,
    client_eof: bool,
    target_eof: bool,
    shut_target: bool,
    shut_client: bool,
    bytes_up: u64,
    bytes_down: u64,
    addr: Option<SocketAddr>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(addr) = self.addr {
            log::info!(
                "proxy: egress tunnel {} -> {addr} closed: up={} down={} {}s",
                self.grant,
                self.bytes_up,
                self.bytes_down,
                self.started.elapsed().as_secs()
            );
        }
    }
}

/// Called by the request parser's caller before parsing a head: takes over CONNECT and
/// absolute-form requests when CONNECT is enabled. `None`: not ours, parse as usual.
pub(crate) fn intercept(ctx: &mut Ctx, id: u64, c: &mut Client) -> Option<bool> {
    ctx.egress.as_ref()?;
    let bytes = c.inbuf.bytes();
    let line_end = bytes.iter().position(|&b| b == b'\n')?;
    let line = &bytes[..line_end];
    let mut words = line.split(|&b| b == b' ');
    let method = words.next()?;
    let target = words.next()?;
    let is_connect = method == b"CONNECT";
    let absolute_http = target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://");
    if !is_connect && !absolute_http {
        return None;
    }
    let head_len = find_head_end(bytes)?;
    if head_len > ctx.limits.request.max_head {
        return None; // the parser answers 431
    }
    if absolute_http {
        let msg = "bottle-init proxy: plain http:// is not proxied; use https:// (HTTPS_PROXY tunnels to BOTTLE_ALLOW_HOSTS)";
        log::warn!("proxy: egress denied: a plain http:// request through the proxy");
        ctx.refuse(c, None, Rejection::new(403, "permission_error", msg));
        return Some(true);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let target = match req.parse(&bytes[..head_len]) {
        Ok(httparse::Status::Complete(_)) => req.path.unwrap_or("").to_string(),
        _ => {
            ctx.refuse(
                c,
                None,
                Rejection::bad_request("bottle-init proxy: malformed CONNECT request"),
            );
            return Some(true);
        }
    };
    c.inbuf.consume(head_len);
    start(ctx, id, c, &target);
    Some(true)
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn start(ctx: &mut Ctx, id: u64, c: &mut Client, target: &str) {
    let Some(eg) = ctx.egress.as_mut() else {
        return;
    };
    let grant = match decide_connect(target, &eg.allow) {
        Ok(g) => g,
        Err(d) => {
            log::warn!("proxy: {d}");
            ctx.refuse(
                c,
                None,
                Rejection::new(403, "permission_error", d.to_string()),
            );
            return;
        }
    };
    if eg.lookups >= MAX_LOOKUPS {
        let msg = "bottle-init proxy: too many CONNECT lookups at once; retry shortly";
        ctx.refuse(c, None, Rejection::new(503, "overloaded_error", msg));
        return;
    }
    let (tx, waker, g) = (eg.answers_tx.clone(), eg.waker.clone(), grant.clone());
    let spawned = std::thread::Builder::new()
        .name("proxy-connect-dns".into())
        .spawn(move || {
            crate::sys::block_signals_in_thread();
            let answer = resolve_grant(&g);
            if tx.send((id, answer)).is_ok()
                && let Err(e) = waker.wake()
            {
                log::error!("proxy: cannot wake the event loop after a CONNECT lookup: {e}");
            }
        });
    if let Err(e) = spawned {
        let msg = format!("bottle-init proxy: cannot start a lookup for {grant}: {e}");
        ctx.refuse(c, None, Rejection::new(503, "overloaded_error", msg));
        return;
    }
    eg.lookups += 1;
    let now = Instant::now();
    c.phase = Phase::Tunnel(Box::new(Tunnel {
        grant,
        state: State::Resolving,
        started: now,
        last_activity: now,
        client_eof: false,
        target_eof: false,
        shut_target: false,
        shut_client: false,
        bytes_up: 0,
        bytes_down: 0,
        addr: None,
    }));
}

/// Lookup answers that arrived: connect or refuse. Returns the clients to pump.
pub(crate) fn take_answers(ctx: &mut Ctx, clients: &mut HashMap<u64, Client>) -> Vec<u64> {
    let mut touched = Vec::new();
    loop {
        let Some(eg) = ctx.egress.as_mut() else {
            return touched;
        };
        let Ok((id, answer)) = eg.answers.try_recv() else {
            return touched;
        };
        eg.lookups = eg.lookups.saturating_sub(1);
        let Some(c) = clients.get_mut(&id) else {
            continue;
        };
        let Phase::Tunnel(t) = &mut c.phase else {
            continue;
        };
        if !matches!(t.state, State::Resolving) {
            continue;
        }
        touched.push(id);
        let refusal = match answer {
            Err(ResolveError::Denied(d)) => {
                log::warn!("proxy: {d}");
                Some(Rejection::new(403, "permission_error", d.to_string()))
            }
            Err(e) => {
                log::warn!("proxy: CONNECT {}: {e}", t.grant);
                let msg = format!("bottle-init proxy: {e}");
                Some(Rejection::new(502, "api_error", msg))
            }
            Ok(resolved) => {
                for d in &resolved.denied {
                    log::warn!("proxy: {d} (skipped; other addresses are allowed)");
                }
                let mut addrs = resolved.allowed;
                addrs.reverse(); // popped from the end: resolver order
                connect_next(ctx, id, t, addrs).map(|m| Rejection::new(502, "api_error", m))
            }
        };
        if let Some(r) = refusal {
            ctx.refuse(c, None, r);
        }
    }
}

/// Starts a connect to the next address; `Some(message)` when none is left.
fn connect_next(
    ctx: &mut Ctx,
    id: u64,
    t: &mut Tunnel,
    mut rest: Vec<SocketAddr>,
) -> Option<String> {
    let mut last = String::from("no address left");
    while let Some(addr) = rest.pop() {
        match TcpStream::connect(addr) {
            Ok(mut sock) => {
                let token = upstream_token(id);
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Err(e) = ctx.registry.register(&mut sock, token, interest) {
                    last = format!("cannot register with the poller: {e}");
                    continue;
                }
                t.state = State::Connecting { sock, addr, rest };
                return None;
            }
            Err(e) => {
                log::warn!("proxy: CONNECT {} -> {addr}: {e}", t.grant);
                last = format!("{addr}: {e}");
            }
        }
    }
    log::warn!("proxy: CONNECT {}: cannot connect ({last})", t.grant);
    Some(format!(
        "bottle-init proxy: cannot connect to {}: {last}",
        t.grant
    ))
}

enum Outcome {
    Progress(bool),
    Refuse(u16, &'static str, String),
    Die,
}

/// One step of a tunnel: finish connecting, or move bytes. Called from `Ctx::pump`.
pub(crate) fn step(ctx: &mut Ctx, id: u64, c: &mut Client) -> bool {
    let open = matches!(&c.phase, Phase::Tunnel(t) if matches!(t.state, State::Open { .. }));
    let outcome = if open {
        relay(c)
    } else {
        let Phase::Tunnel(t) = &mut c.phase else {
            return false;
        };
        match &mut t.state {
            State::Resolving => Outcome::Progress(false),
            State::Connecting { sock, addr, rest } => match connected(sock) {
                Ok(false) => Outcome::Progress(false),
                Ok(true) => {
                    let addr = *addr;
                    let State::Connecting { sock, .. } =
                        std::mem::replace(&mut t.state, State::Resolving)
                    else {
                        unreachable!("matched above");
                    };
                    let _ = sock.set_nodelay(true);
                    t.state = State::Open { sock };
                    t.addr = Some(addr);
                    log::info!("proxy: egress allowed: {} -> {addr}", t.grant);
                    c.outbuf
                        .push(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    Outcome::Progress(true)
                }
                Err(e) => {
                    log::warn!("proxy: CONNECT {} -> {addr}: {e}", t.grant);
                    let rest = std::mem::take(rest);
                    let old = std::mem::replace(&mut t.state, State::Resolving);
                    if let State::Connecting { mut sock, .. } = old {
                        let _ = ctx.registry.deregister(&mut sock);
                    }
                    match connect_next(ctx, id, t, rest) {
                        None => Outcome::Progress(true),
                        Some(msg) => Outcome::Refuse(502, "api_error", msg),
                    }
                }
            },
            State::Open { .. } => Outcome::Progress(false),
        }
    };
    match outcome {
        Outcome::Progress(p) => {
            if p && let Phase::Tunnel(t) = &mut c.phase {
                t.last_activity = Instant::now();
            }
            p
        }
        Outcome::Refuse(status, kind, msg) => {
            ctx.refuse(c, None, Rejection::new(status, kind, msg));
            true
        }
        Outcome::Die => {
            c.die();
            true
        }
    }
}

/// Has a non-blocking connect finished? `Ok(false)`: still in progress.
fn connected(sock: &TcpStream) -> io::Result<bool> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    match sock.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Moves bytes both ways as far as the buffers allow; half-close is passed on once the
/// bytes before it are delivered.
fn relay(c: &mut Client) -> Outcome {
    let Phase::Tunnel(t) = &mut c.phase else {
        return Outcome::Progress(false);
    };
    let State::Open { sock } = &mut t.state else {
        return Outcome::Progress(false);
    };
    let mut progress = false;
    // client -> inbuf
    while !t.client_eof && !c.inbuf.is_full() {
        match c.inbuf.read_from(&mut c.sock) {
            Ok(0) => {
                t.client_eof = true;
                progress = true;
            }
            Ok(n) => {
                c.inbuf.mark_scanned(n);
                t.bytes_up += n as u64;
                progress = true;
            }
            Err(e) if would_block(&e) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Outcome::Die,
        }
    }
    // inbuf -> target
    while !c.inbuf.is_empty() {
        match sock.write(c.inbuf.bytes()) {
            Ok(0) => return Outcome::Die,
            Ok(n) => {
                c.inbuf.consume(n);
                progress = true;
            }
            Err(e) if would_block(&e) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Outcome::Die,
        }
    }
    if t.client_eof && c.inbuf.is_empty() && !t.shut_target {
        let _ = sock.shutdown(Shutdown::Write);
        t.shut_target = true;
        progress = true;
    }
    // target -> outbuf (the loop's flush writes it to the client)
    while !t.target_eof && !c.outbuf.is_full() {
        match c.outbuf.read_from(&mut *sock as &mut dyn Read) {
            Ok(0) => {
                t.target_eof = true;
                progress = true;
            }
            Ok(n) => {
                c.outbuf.mark_scanned(n);
                t.bytes_down += n as u64;
                progress = true;
            }
            Err(e) if would_block(&e) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Outcome::Die,
        }
    }
    if t.target_eof && c.outbuf.is_empty() && !t.shut_client {
        c.sock.shutdown_write();
        t.shut_client = true;
        progress = true;
    }
    if t.shut_client && t.shut_target {
        return Outcome::Die;
    }
    Outcome::Progress(progress)
}

/// Timeouts, from the loop's sweep: lookup+connect beyond the connect limit get 504, an idle
/// open tunnel is closed. True when the client changed.
pub(crate) fn sweep(ctx: &mut Ctx, c: &mut Client, now: Instant) -> bool {
    let Phase::Tunnel(t) = &mut c.phase else {
        return false;
    };
    match t.state {
        State::Open { .. } => {
            if now.duration_since(t.last_activity) >= TUNNEL_IDLE {
                log::info!(
                    "proxy: egress tunnel {} idle for {} s",
                    t.grant,
                    TUNNEL_IDLE.as_secs()
                );
                c.die();
                return true;
            }
            false
        }
        State::Resolving | State::Connecting { .. } => {
            let limit = ctx.limits.connect_timeout;
            if now.duration_since(t.started) < limit {
                return false;
            }
            let msg = format!(
                "bottle-init proxy: resolving and connecting to {} took longer than {} s",
                t.grant,
                limit.as_secs()
            );
            log::warn!("proxy: CONNECT {}: timed out", t.grant);
            if let State::Connecting { sock, .. } = &mut t.state {
                let _ = ctx.registry.deregister(sock);
            }
            ctx.refuse(c, None, Rejection::new(504, "api_error", msg));
            true
        }
    }
}
