//! What happens on one client connection: the request policy, the exchange state machine
//! (connect, send head and body, relay the response), failures, and closing. Driven by
//! [`Ctx::pump`], which the event loop calls on every readiness event of the client or of its
//! upstream connection.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::{Registry, Waker};
use rustls::pki_types::ServerName;

use super::conn::{Client, Exchange, HeadBytes, Phase, Resp};
use super::dns::Resolver;
use super::event_loop::upstream_token;
use super::upstream::{UpConn, UpError};
use super::{Limits, Settings, Stats};
use crate::http::{
    self, AuthCheck, BodyFramer, FramingError, Rejection, RequestHead, parse_request_head,
    parse_response_head,
};

/// After an error answer: how long we keep discarding the client's input so it reads our
/// answer rather than a connection reset.
const LINGER: Duration = Duration::from_secs(2);
/// The same for a connection answered 503 past the cap: its descriptor is what the next
/// connection needs. Long enough for a request already on its way to arrive and be drained
/// (so the kernel sends no reset over our answer); a client that reads the answer and closes
/// frees it at once.
pub(super) const OVERFLOW_LINGER: Duration = Duration::from_millis(250);
/// A closing connection that will not take our last bytes within this long is dropped.
const CLOSE_FLUSH: Duration = Duration::from_secs(30);
/// Rounds of a pump before other connections get their turn (each moves up to one buffer).
const PUMP_BUDGET: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    /// Nothing more can move until the next readiness event.
    Done,
    /// Stopped at the budget with bytes still moving.
    Unfinished,
}

/// What ended an exchange before its response completed.
pub(super) enum Fault {
    Dns(String),
    Upstream(UpError),
    /// The upstream's response could not be parsed or framed.
    BadResponse(String),
    /// The upstream ended the stream before the response was complete.
    UpstreamEof,
    RequestBody(FramingError),
    Timeout(String),
}

/// Everything but the client table, so a client can be borrowed from the table while the
/// context is used mutably.
pub(super) struct Ctx {
    pub(super) registry: Registry,
    pub(super) config: Settings,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) server_name: ServerName<'static>,
    /// The Host header value sent upstream.
    pub(super) host_header: String,
    pub(super) limits: Limits,
    pub(super) stats: Arc<Stats>,
    /// Idle upstream connections, most recently used last.
    pub(super) pool: Vec<(u64, UpConn)>,
    pub(super) next_id: u64,
    pub(super) resolver: Resolver,
    pub(super) dns_in_flight: bool,
    pub(super) dns_waiting: Vec<u64>,
    pub(super) _waker: Arc<Waker>,
    /// CONNECT tunnels (`BOTTLE_EGRESS=allowlist`); `None`: CONNECT stays refused.
    pub(super) egress: Option<super::tunnel::Egress>,
}

impl Ctx {
    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Moves bytes for one client and its upstream until nothing moves, or until its turn is
    /// over (so one fast stream cannot starve the others).
    pub(super) fn pump(&mut self, id: u64, c: &mut Client) -> Turn {
        for _ in 0..PUMP_BUDGET {
            let mut progress = self.read_client(c);
            progress |= match c.phase {
                Phase::Idle { .. } => self.next_request(id, c),
                Phase::Exchange(_) => self.step_exchange(c),
                Phase::Closing { .. } => step_closing(c),
                Phase::Tunnel(_) => super::tunnel::step(self, id, c),
                Phase::Dead => return Turn::Done,
            };
            progress |= flush_client(c);
            if let (true, Some(ex)) = (progress, c.exchange()) {
                ex.last_activity = Instant::now();
            }
            if !progress || c.is_dead() {
                return Turn::Done;
            }
        }
        Turn::Unfinished
    }

    /// Reads what the client sent, as far as the request side has room.
    pub(super) fn read_client(&mut self, c: &mut Client) -> bool {
        if c.read_eof {
            return false;
        }
        if let Phase::Closing {
            graceful: true,
            shut: true,
        } = c.phase
        {
            return discard_input(c);
        }
        if !matches!(c.phase, Phase::Idle { .. } | Phase::Exchange(_)) {
            return false;
        }
        let mut progress = false;
        while c.sock_readable && !c.inbuf.is_full() {
            match c.inbuf.read_from(&mut c.sock) {
                Ok(0) => {
                    // The client is gone (HTTP clients do not half-close): drop the exchange,
                    // and with it the upstream connection.
                    c.read_eof = true;
                    c.die();
                    return true;
                }
                Ok(n) => {
                    c.inbuf.mark_scanned(n);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.sock_readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.die();
                    return true;
                }
            }
        }
        progress
    }

    /// Idle: parse the next request head, once the previous answer is fully written.
    pub(super) fn next_request(&mut self, id: u64, c: &mut Client) -> bool {
        if !c.outbuf.is_empty() || c.inbuf.is_empty() {
            return false;
        }
        if let Some(progress) = super::tunnel::intercept(self, id, c) {
            return progress;
        }
        match parse_request_head(c.inbuf.bytes(), &self.limits.request) {
            Ok(None) => {
                if let Phase::Idle {
                    head_started: started @ false,
                } = &mut c.phase
                {
                    *started = true;
                    c.deadline = Instant::now() + self.limits.head_timeout;
                }
                false
            }
            Err(rejection) => {
                self.refuse(c, None, rejection);
                true
            }
            Ok(Some(head)) => {
                c.inbuf.consume(head.head_len);
                self.start_request(id, c, head);
                true
            }
        }
    }

    /// The policy: what is answered locally, refused, or forwarded.
    pub(super) fn start_request(&mut self, id: u64, c: &mut Client, head: RequestHead) {
        let now = Instant::now();
        if head.method == "HEAD" && head.target == "/" && head.body == http::BodyLength::None {
            // claude's unauthenticated warm-up: answered here, never forwarded.
            c.outbuf.push(&http::warmup_response());
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "proxy: HEAD / 200 in=0 out=0 0ms upstream=none (warm-up, answered locally)"
            );
            c.phase = if head.wants_close() {
                closing(c, true)
            } else {
                c.deadline = now + self.limits.idle_timeout;
                Phase::Idle {
                    head_started: false,
                }
            };
            return;
        }
        let auth = http::check_session_secret(&head, &self.config.session_secret);
        if auth != AuthCheck::Ok {
            self.refuse(
                c,
                Some(&head),
                Rejection::new(401, "authentication_error", auth.message()),
            );
            return;
        }
        #[cfg(feature = "test-hooks")]
        if head.target == crate::proxy::TEST_PANIC_PATH {
            panic!(
                "test hook: {} asked the proxy thread to panic",
                crate::proxy::TEST_PANIC_PATH
            );
        }
        if let Err(r) = http::target::check_api_path(head.path()) {
            self.refuse(c, Some(&head), r);
            return;
        }
        let built = self
            .config
            .credential
            .with(|cred| http::upstream_request_head(&head, cred, &self.host_header));
        let Some(bytes) = built else {
            // PID 1 is exiting and has wiped the credential.
            let msg = "bottle-init proxy: shutting down; the credential is no longer available";
            self.refuse(c, Some(&head), Rejection::new(503, "overloaded_error", msg));
            return;
        };
        let ex = Exchange {
            method: head.method.clone(),
            path: log_path(head.path()).to_string(),
            started: now,
            last_activity: now,
            bytes_in: 0,
            bytes_out: 0,
            reused: false,
            up_head: Some(HeadBytes { bytes, written: 0 }),
            req: BodyFramer::from_request(head.body, self.limits.request.max_body),
            resp: Resp::Head,
            is_head: head.method == "HEAD",
            status: None,
            response_started: false,
            client_close: head.wants_close(),
            up_close: false,
        };
        let mut ex = Box::new(ex);
        if let Some(up) = self.take_pooled() {
            ex.reused = true;
            self.stats.upstream_reused.fetch_add(1, Ordering::Relaxed);
            c.up = Some(up);
        } else {
            c.waiting_dns = true;
            self.dns_waiting.push(id);
            if !self.dns_in_flight {
                self.request_dns();
            }
        }
        c.phase = Phase::Exchange(ex);
    }

    pub(super) fn request_dns(&mut self) {
        match self.resolver.request() {
            Ok(()) => self.dns_in_flight = true,
            Err(m) => log::error!("proxy: {m}"),
        }
    }

    /// The most recently used pooled connection that is still healthy.
    pub(super) fn take_pooled(&mut self) -> Option<UpConn> {
        while let Some((_, mut up)) = self.pool.pop() {
            if up.idle_is_broken(&self.registry) {
                self.drop_upstream(up);
                continue;
            }
            // Re-registered under the client's token next; read it at least once.
            up.sock_readable = true;
            return Some(up);
        }
        None
    }

    /// One exchange step: connect/handshake, send head and body, relay the response.
    pub(super) fn step_exchange(&mut self, c: &mut Client) -> bool {
        match self.move_exchange_bytes(c) {
            Ok(progress) => {
                let done = c.exchange().is_some_and(|ex| ex.resp == Resp::Done);
                if done {
                    self.finish_exchange(c);
                    return true;
                }
                progress
            }
            Err(Fault::UpstreamEof) => {
                let Some(ex) = c.exchange() else { return true };
                match ex.resp {
                    Resp::Body(f) if f.is_until_close() => {
                        ex.resp = Resp::Done;
                        ex.up_close = true;
                        ex.client_close = true;
                        self.finish_exchange(c);
                    }
                    _ => self.fail(c, Fault::UpstreamEof),
                }
                true
            }
            Err(fault) => {
                self.fail(c, fault);
                true
            }
        }
    }

    pub(super) fn move_exchange_bytes(&mut self, c: &mut Client) -> Result<bool, Fault> {
        let Client {
            up,
            phase,
            inbuf,
            outbuf,
            ..
        } = c;
        let (Some(up), Phase::Exchange(ex)) = (up.as_mut(), phase) else {
            return Ok(false);
        };
        let mut progress = up.drive(&self.registry).map_err(Fault::Upstream)?;
        if !up.is_ready() {
            return Ok(progress);
        }
        if !up.counted {
            up.counted = true;
            self.stats
                .upstream_handshakes
                .fetch_add(1, Ordering::Relaxed);
        }
        // Request head, then body bytes as far as rustls takes them.
        if let Some(h) = &mut ex.up_head {
            let n = up
                .write_plain(&h.bytes[h.written..])
                .map_err(Fault::Upstream)?;
            h.written += n;
            progress |= n > 0;
            if h.written == h.bytes.len() {
                ex.up_head = None;
            }
        }
        if ex.up_head.is_none() && !ex.req.is_done() && !inbuf.is_empty() {
            // Only validated bytes leave: a chunk-size or trailer line is released once whole
            // (the framer holds back an incomplete one until its end arrives).
            let mut probe = ex.req;
            let avail = probe.advance(inbuf.bytes()).map_err(Fault::RequestBody)?;
            if avail > 0 {
                let n = up
                    .write_plain(&inbuf.bytes()[..avail])
                    .map_err(Fault::Upstream)?;
                if n == avail {
                    ex.req = probe;
                } else if n > 0 {
                    ex.req
                        .skip_validated(&inbuf.bytes()[..n])
                        .map_err(Fault::RequestBody)?;
                }
                if n > 0 {
                    inbuf.consume(n);
                    ex.bytes_in += n as u64;
                    progress = true;
                }
            }
        }
        progress |= up.drive(&self.registry).map_err(Fault::Upstream)?;
        // Response bytes, as far as the client side has room.
        while ex.resp != Resp::Done && !outbuf.is_full() {
            match up.read_plain(outbuf).map_err(Fault::Upstream)? {
                None => break,
                Some(0) => return Err(Fault::UpstreamEof),
                Some(_) => {
                    progress = true;
                    classify(ex, outbuf)?;
                }
            }
            // Reading plaintext may let rustls take more records off the socket.
            progress |= up.drive(&self.registry).map_err(Fault::Upstream)?;
        }
        if ex.resp == Resp::Done && !outbuf.unscanned().is_empty() {
            // Bytes after the end of the response: not relayed, and the connection is suspect.
            outbuf.drop_unscanned();
            ex.up_close = true;
        }
        Ok(progress)
    }

    /// The response is complete: log, pool or drop the upstream, and ready the client for the
    /// next request (or close it).
    pub(super) fn finish_exchange(&mut self, c: &mut Client) {
        let Phase::Exchange(ex) = std::mem::replace(&mut c.phase, Phase::Dead) else {
            return;
        };
        self.log_exchange(&ex, ex.status, "");
        let request_done = ex.up_head.is_none() && ex.req.is_done();
        if let Some(up) = c.up.take() {
            if request_done && !ex.up_close && up.is_ready() && !up.eof {
                self.pool_upstream(up);
            } else {
                self.drop_upstream(up);
            }
        }
        c.phase = if ex.client_close || !request_done {
            closing(c, true)
        } else {
            c.deadline = Instant::now() + self.limits.idle_timeout;
            Phase::Idle {
                head_started: false,
            }
        };
    }

    pub(super) fn pool_upstream(&mut self, mut up: UpConn) {
        if self.limits.pool_max_idle == 0 {
            self.drop_upstream(up);
            return;
        }
        if self.pool.len() >= self.limits.pool_max_idle {
            let (_, oldest) = self.pool.remove(0);
            self.drop_upstream(oldest);
        }
        let id = self.next_id();
        up.idle_since = Instant::now();
        match up.update_interest(&self.registry, upstream_token(id)) {
            Ok(()) => self.pool.push((id, up)),
            Err(e) => {
                log::warn!("proxy: cannot pool an upstream connection: {e}");
                self.drop_upstream(up);
            }
        }
    }

    pub(super) fn drop_upstream(&mut self, mut up: UpConn) {
        up.deregister(&self.registry);
        self.stats.open_upstreams.fetch_sub(1, Ordering::Relaxed);
    }

    /// An exchange failed: answer with an error if nothing was relayed yet, else truncate.
    pub(super) fn fail(&mut self, c: &mut Client, fault: Fault) {
        // Never reached a ready upstream (DNS, TCP, TLS, or the connect timeout): the answer
        // says not to retry, so claude shows why at once instead of after ~3 minutes of
        // retries. A failure on a connection that worked (reused, mid-exchange) stays
        // retryable.
        let unreachable = !c.up.as_ref().is_some_and(UpConn::is_ready);
        if let Some(up) = c.up.take() {
            self.drop_upstream(up);
        }
        c.waiting_dns = false;
        let Phase::Exchange(ex) = std::mem::replace(&mut c.phase, Phase::Dead) else {
            return;
        };
        let upstream = &self.host_header;
        let (status, kind, msg) = match fault {
            Fault::Dns(m) => (
                502,
                "api_error",
                format!("cannot resolve the upstream host {upstream}: {m}"),
            ),
            Fault::Upstream(UpError::Tls(e)) => (
                502,
                "api_error",
                format!("TLS with the upstream {upstream} failed: {e}"),
            ),
            Fault::Upstream(e) => (502, "api_error", format!("upstream {upstream}: {e}")),
            Fault::BadResponse(m) => (
                502,
                "api_error",
                format!("the upstream {upstream} sent an invalid response: {m}"),
            ),
            Fault::UpstreamEof => (
                502,
                "api_error",
                format!(
                    "the upstream {upstream} closed the connection before the response was complete"
                ),
            ),
            Fault::RequestBody(FramingError::TooLarge { max }) => (
                413,
                "request_too_large",
                format!("the request body is larger than {max} bytes"),
            ),
            Fault::RequestBody(e) => (
                400,
                "invalid_request_error",
                format!("invalid request body: {e}"),
            ),
            Fault::Timeout(m) => (504, "api_error", m),
        };
        let msg = format!("bottle-init proxy: {msg}");
        if ex.response_started {
            // Part of the response is on its way: the client must see a truncated stream, not
            // an error body glued onto it.
            self.log_exchange(&ex, ex.status, &format!("truncated: {msg}"));
            c.outbuf.drop_unscanned();
            c.phase = closing(c, false);
        } else {
            self.log_exchange(&ex, Some(status), &msg);
            c.outbuf.clear();
            let answer = if unreachable && status >= 500 {
                http::final_error_response(status, kind, &msg)
            } else {
                http::error_response(status, kind, &msg)
            };
            c.outbuf.push(&answer);
            c.phase = closing(c, true);
        }
    }

    /// Answers locally with an error and closes. `head`: what the log line names, if parsed.
    pub(super) fn refuse(&mut self, c: &mut Client, head: Option<&RequestHead>, r: Rejection) {
        let (method, path) = head.map_or(("-", "-"), |h| (h.method.as_str(), log_path(h.path())));
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "proxy: {method} {path} {} in=0 out=0 0ms upstream=none (refused: {})",
            r.status,
            r.message
        );
        c.outbuf.clear();
        c.outbuf
            .push(&http::error_response(r.status, r.error_type, &r.message));
        c.phase = closing(c, true);
    }

    pub(super) fn log_exchange(&self, ex: &Exchange, status: Option<u16>, note: &str) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let status = status.map_or_else(|| "-".to_string(), |s| s.to_string());
        let upstream = if ex.reused { "reused" } else { "new" };
        let sep = if note.is_empty() { "" } else { " " };
        log::info!(
            "proxy: {} {} {status} in={} out={} {}ms upstream={upstream}{sep}{note}",
            ex.method,
            ex.path,
            ex.bytes_in,
            ex.bytes_out,
            ex.started.elapsed().as_millis(),
        );
    }
}

/// Sorts newly read response bytes: heads (1xx relayed, the final one decides the framing)
/// and body bytes become sendable; the end of the response is found exactly.
fn classify(ex: &mut Exchange, outbuf: &mut super::buf::Buf) -> Result<(), Fault> {
    loop {
        let pending = outbuf.unscanned();
        if pending.is_empty() {
            return Ok(());
        }
        let pending_len = pending.len();
        match ex.resp {
            Resp::Head => {
                let head = parse_response_head(pending, ex.is_head).map_err(Fault::BadResponse)?;
                let Some(head) = head else {
                    if outbuf.is_full() && outbuf.sendable().is_empty() {
                        return Err(Fault::BadResponse("response head too large".into()));
                    }
                    return Ok(());
                };
                outbuf.mark_scanned(head.head_len);
                ex.bytes_out += head.head_len as u64;
                ex.response_started = true;
                if head.is_interim() {
                    continue;
                }
                ex.status = Some(head.status);
                ex.up_close |= head.close;
                // The relayed head may say `Connection: close` to the client: honour it.
                ex.client_close |= head.close;
                ex.resp = if head.framing.is_done() {
                    Resp::Done
                } else {
                    Resp::Body(head.framing)
                };
            }
            Resp::Body(mut f) => {
                let n = f
                    .advance(pending)
                    .map_err(|e| Fault::BadResponse(format!("response body: {e}")))?;
                outbuf.mark_scanned(n);
                ex.bytes_out += n as u64;
                ex.resp = if f.is_done() {
                    Resp::Done
                } else {
                    Resp::Body(f)
                };
                // Not done: the rest is an incomplete line the framer waits to see whole.
                if n == pending_len || !f.is_done() {
                    return Ok(());
                }
            }
            Resp::Done => return Ok(()),
        }
    }
}

fn closing(c: &mut Client, graceful: bool) -> Phase {
    c.deadline = Instant::now() + CLOSE_FLUSH;
    Phase::Closing {
        graceful,
        shut: false,
    }
}

/// Closing: once everything queued is written, close (truncation) or shut our side down and
/// linger (error answers).
fn step_closing(c: &mut Client) -> bool {
    let Phase::Closing { graceful, shut } = &mut c.phase else {
        return false;
    };
    if !c.outbuf.sendable().is_empty() || *shut {
        return false;
    }
    if !*graceful {
        c.die();
        return true;
    }
    c.sock.shutdown_write();
    *shut = true;
    c.deadline = Instant::now() + if c.overflow { OVERFLOW_LINGER } else { LINGER };
    true
}

/// Lingering after an answer: read and drop whatever the client still sends until it closes.
fn discard_input(c: &mut Client) -> bool {
    let mut scratch = [0u8; 8192];
    loop {
        match c.sock.read(&mut scratch) {
            Ok(0) => {
                c.die();
                return true;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.die();
                return true;
            }
        }
    }
}

/// Writes what may be sent to the client.
fn flush_client(c: &mut Client) -> bool {
    let mut progress = false;
    loop {
        let out = c.outbuf.sendable();
        if out.is_empty() || c.is_dead() {
            return progress;
        }
        match c.sock.write(out) {
            Ok(0) => {
                c.die();
                return true;
            }
            Ok(n) => {
                c.outbuf.consume(n);
                progress = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return progress,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.die();
                return true;
            }
        }
    }
}

/// The path as logged: without the query (already cut by the caller), at most 200 bytes so a
/// client cannot flood the log.
fn log_path(path: &str) -> &str {
    match path.char_indices().nth(200) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}
