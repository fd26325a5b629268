//! HTTP CONNECT tunnels for `BOTTLE_EGRESS=allowlist` (issue 5): the tunnel phase of a client
//! connection, a sibling of `exchange` (neither imports the other).
//!
//! Only when the proxy was given an allowlist (`Proxy::with_connect_allowlist`); otherwise
//! CONNECT keeps its 405 from the request parser. Per tunnel:
//! 1. the head is parsed by `crate::http::connect` (as strict as every other head), then
//!    `crate::egress::policy::decide_connect` judges its target: a refusal is logged and
//!    answered 403;
//! 2. the name is resolved NOW by the proxy's resolver (off the loop; at most
//!    `resolver::MAX_LOOKUPS` at once, beyond that 503), and every address is checked with
//!    `check_resolved` (`crate::egress::resolve::resolve_grant`);
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

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::Interest;
use mio::net::TcpStream;

use super::buf::Buf;
use super::conn::{Client, Phase, Tunnel, TunnelState, upstream_token};
use super::ctx::Ctx;
use super::pump::{self, Drained, Stop};
use super::resolver::Refused;
use crate::egress::policy::decide_connect;
use crate::egress::resolve::{ResolveError, Resolved};
use crate::http::{Rejection, parse_connect_head};

/// An open tunnel with no byte either way for this long is closed (>= 300 s, the issue's
/// floor; long-lived git/npm transfers stay well within it while bytes move).
pub(crate) const TUNNEL_IDLE: Duration = Duration::from_secs(600);

/// Between requests, a CONNECT head: parse it, decide, and queue the lookup.
pub(crate) fn next_request(ctx: &mut Ctx, id: u64, c: &mut Client) -> bool {
    let head = match parse_connect_head(c.inbuf.bytes(), &ctx.limits.request) {
        // The client ended its side before its head was whole: nothing more will come.
        Ok(None) if c.read_eof => {
            c.die();
            return true;
        }
        Ok(None) => {
            c.head_incomplete(ctx.limits.head_timeout);
            return false;
        }
        Err(r) => {
            ctx.refuse(c, None, r);
            return true;
        }
        Ok(Some(head)) => head,
    };
    c.inbuf.consume(head.head_len);
    let Some(allow) = &ctx.allow else {
        let r = Rejection::new(405, "invalid_request_error", "CONNECT is not enabled");
        ctx.refuse(c, None, r);
        return true;
    };
    let grant = match decide_connect(&head.authority, allow) {
        Ok(g) => g,
        Err(d) => {
            log::warn!("proxy: {d}");
            ctx.stats.with_tally(|t| t.egress_denied += 1);
            let r = Rejection::new(403, "permission_error", d.to_string());
            ctx.refuse(c, None, r);
            return true;
        }
    };
    match ctx.resolver.connect(id, grant.clone()) {
        Ok(()) => c.phase = Phase::Tunnel(Box::new(Tunnel::new(grant, c.read_eof))),
        Err(Refused::Full | Refused::NoTunnels) => {
            let msg = "bottle-init proxy: too many CONNECT lookups at once; retry shortly";
            ctx.refuse(c, None, Rejection::new(503, "overloaded_error", msg));
        }
    }
    true
}

/// Between requests, an absolute-form `http://` request: refused, plain HTTP is not proxied.
pub(crate) fn refuse_plain_http(ctx: &mut Ctx, c: &mut Client) -> bool {
    let msg = "bottle-init proxy: plain http:// is not proxied; use https:// (HTTPS_PROXY tunnels to BOTTLE_ALLOW_HOSTS)";
    log::warn!("proxy: egress denied: a plain http:// request through the proxy");
    ctx.stats.with_tally(|t| t.egress_denied += 1);
    ctx.refuse(c, None, Rejection::new(403, "permission_error", msg));
    true
}

/// The resolver answered for a tunnel that waits for its lookup: connect, or refuse.
pub(crate) fn resolved(
    ctx: &mut Ctx,
    id: u64,
    c: &mut Client,
    result: Result<Resolved, ResolveError>,
) {
    let Phase::Tunnel(t) = &mut c.phase else {
        return;
    };
    let refusal = match result {
        Err(ResolveError::Denied(d)) => {
            log::warn!("proxy: {d}");
            ctx.stats.with_tally(|t| t.egress_denied += 1);
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
                t.state = TunnelState::Connecting { sock, addr, rest };
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

/// One step of a tunnel: finish connecting, or move bytes. Called by the loop's pump.
pub(crate) fn step(ctx: &mut Ctx, id: u64, c: &mut Client) -> bool {
    let open = matches!(&c.phase, Phase::Tunnel(t) if matches!(t.state, TunnelState::Open { .. }));
    let outcome = if open {
        relay(c)
    } else {
        let Phase::Tunnel(t) = &mut c.phase else {
            return false;
        };
        match &mut t.state {
            TunnelState::Resolving => Outcome::Progress(false),
            TunnelState::Connecting { sock, addr, rest } => match connected(sock) {
                Ok(false) => Outcome::Progress(false),
                Ok(true) => {
                    let addr = *addr;
                    let TunnelState::Connecting { sock, .. } =
                        std::mem::replace(&mut t.state, TunnelState::Resolving)
                    else {
                        unreachable!("matched above");
                    };
                    let _ = sock.set_nodelay(true);
                    t.state = TunnelState::Open { sock };
                    t.addr = Some(addr);
                    log::info!("proxy: egress allowed: {} -> {addr}", t.grant);
                    ctx.stats.with_tally(|t| t.egress_allowed += 1);
                    c.outbuf
                        .push(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    Outcome::Progress(true)
                }
                Err(e) => {
                    log::warn!("proxy: CONNECT {} -> {addr}: {e}", t.grant);
                    let rest = std::mem::take(rest);
                    let old = std::mem::replace(&mut t.state, TunnelState::Resolving);
                    if let TunnelState::Connecting { mut sock, .. } = old {
                        let _ = ctx.registry.deregister(&mut sock);
                    }
                    match connect_next(ctx, id, t, rest) {
                        None => Outcome::Progress(true),
                        Some(msg) => Outcome::Refuse(502, "api_error", msg),
                    }
                }
            },
            TunnelState::Open { .. } => Outcome::Progress(false),
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

/// Moves bytes both ways as far as the buffers allow; half-close is passed on once the
/// bytes before it are delivered. The loop's flush writes `outbuf` to the client.
fn relay(c: &mut Client) -> Outcome {
    let Phase::Tunnel(t) = &mut c.phase else {
        return Outcome::Progress(false);
    };
    let TunnelState::Open { sock } = &mut t.state else {
        return Outcome::Progress(false);
    };
    let mut progress = false;
    // client -> inbuf
    if !t.client_eof {
        match take_in(&mut c.inbuf, &mut c.sock, &mut t.bytes_up) {
            Ok((p, eof)) => (progress, t.client_eof) = (p, eof),
            Err(()) => return Outcome::Die,
        }
    }
    // inbuf -> target
    let p = pump::drain(&mut c.inbuf, sock);
    progress |= p.progress();
    if matches!(p.stop, Stop::Eof | Stop::Failed(_)) {
        return Outcome::Die;
    }
    if t.client_eof && c.inbuf.is_empty() && !t.shut_target {
        let _ = sock.shutdown(Shutdown::Write);
        t.shut_target = true;
        progress = true;
    }
    // target -> outbuf
    if !t.target_eof {
        match take_in(&mut c.outbuf, sock, &mut t.bytes_down) {
            Ok((p, eof)) => {
                progress |= p;
                t.target_eof = eof;
            }
            Err(()) => return Outcome::Die,
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

/// One side's bytes into its buffer, all relayed as they are: `(progress, end of stream)`, or
/// `Err` when the socket failed.
fn take_in(buf: &mut Buf, src: &mut dyn Read, count: &mut u64) -> Result<(bool, bool), ()> {
    let p = pump::fill(buf, src, Drained::AtWouldBlock);
    buf.mark_scanned(p.moved);
    *count += p.moved as u64;
    match p.stop {
        Stop::Eof => Ok((true, true)),
        Stop::Failed(_) => Err(()),
        Stop::Blocked | Stop::Full | Stop::Empty => Ok((p.moved > 0, false)),
    }
}

/// Timeouts, from the loop's sweep: lookup+connect beyond the connect limit get 504, an idle
/// open tunnel is closed. True when the client changed.
pub(crate) fn sweep(ctx: &mut Ctx, c: &mut Client, now: Instant) -> bool {
    let Phase::Tunnel(t) = &mut c.phase else {
        return false;
    };
    match t.state {
        TunnelState::Open { .. } => {
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
        TunnelState::Resolving | TunnelState::Connecting { .. } => {
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
            if let TunnelState::Connecting { sock, .. } = &mut t.state {
                let _ = ctx.registry.deregister(sock);
            }
            ctx.refuse(c, None, Rejection::new(504, "api_error", msg));
            true
        }
    }
}
