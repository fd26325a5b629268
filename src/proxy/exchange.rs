//! The request phase of a client connection: the request policy (what is answered locally,
//! refused, or forwarded with the real credential), and the exchange state machine (wait for
//! the upstream's addresses or take a pooled connection, connect, send head and body, relay the
//! response, pool or drop the upstream), its failures and its timeouts. The event loop calls
//! [`next_request`] between requests and [`step`] on every readiness event of the client or of
//! its upstream connection. A sibling of `tunnel`: neither imports the other.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::buf::Buf;
use super::conn::{Client, Exchange, HeadBytes, Phase, Resp};
use super::ctx::{Ctx, local_line, log_path};
use super::pump::{self, Drained, Stop};
use super::upstream::{UpConn, UpError};
use crate::http::{
    self, AuthCheck, BodyFramer, FramingError, Rejection, RequestHead, ScanMode, UnscannedReason,
    UsageScanner, parse_request_head, parse_response_head,
};

/// Test builds only (feature `test-hooks`, never in release builds): an authenticated request
/// to this path panics the proxy thread, so tests can check what PID 1 does when it dies.
#[cfg(feature = "test-hooks")]
pub const TEST_PANIC_PATH: &str = "/v1/bottle-init-test-hooks/panic";

/// What ended an exchange before its response completed.
pub(crate) enum Fault {
    Dns(String),
    Upstream(UpError),
    /// The upstream's response could not be parsed or framed.
    BadResponse(String),
    /// The upstream ended the stream before the response was complete.
    UpstreamEof,
    RequestBody(FramingError),
    Timeout(String),
}

/// Between requests (origin-form): parse the next request head, once the previous answer is
/// fully written.
pub(crate) fn next_request(ctx: &mut Ctx, id: u64, c: &mut Client) -> bool {
    match parse_request_head(c.inbuf.bytes(), &ctx.limits.request) {
        Ok(None) => {
            c.head_incomplete(ctx.limits.head_timeout);
            false
        }
        Err(rejection) => {
            ctx.refuse(c, None, rejection);
            true
        }
        Ok(Some(head)) => {
            c.inbuf.consume(head.head_len);
            start_request(ctx, id, c, head);
            true
        }
    }
}

/// The policy: what is answered locally, refused, or forwarded.
fn start_request(ctx: &mut Ctx, id: u64, c: &mut Client, head: RequestHead) {
    let now = Instant::now();
    if head.method == "HEAD" && head.target == "/" && head.body == http::BodyLength::None {
        // claude's unauthenticated warm-up: answered here, never forwarded.
        c.outbuf.push(&http::warmup_response());
        ctx.stats.count_request(Some(200), None);
        local_line("HEAD", "/", 200, "(warm-up, answered locally)").log(log::Level::Info);
        if head.wants_close() {
            c.close(true);
        } else {
            c.await_next_request(ctx.limits.idle_timeout);
        }
        return;
    }
    let auth = http::check_session_secret(&head, &ctx.settings.session_secret);
    if auth != AuthCheck::Ok {
        ctx.refuse(
            c,
            Some(&head),
            Rejection::new(401, "authentication_error", auth.message()),
        );
        return;
    }
    #[cfg(feature = "test-hooks")]
    if head.target == TEST_PANIC_PATH {
        panic!("test hook: {TEST_PANIC_PATH} asked the proxy thread to panic");
    }
    if let Err(r) = http::target::check_api_path(head.path()) {
        ctx.refuse(c, Some(&head), r);
        return;
    }
    let stats = &ctx.stats;
    let used = || stats.with_tally(|t| t.tokens.input.saturating_add(t.tokens.output));
    if let Err(limited) = ctx.quota.admit(now, used) {
        ctx.refuse_limited(c, &head, limited);
        return;
    }
    let host_header = &ctx.settings.host_header;
    let built = ctx
        .settings
        .credential
        .with(|cred| http::upstream_request_head(&head, cred, host_header));
    let Some(bytes) = built else {
        // PID 1 is exiting and has wiped the credential.
        let msg = "bottle-init proxy: shutting down; the credential is no longer available";
        ctx.refuse(c, Some(&head), Rejection::new(503, "overloaded_error", msg));
        return;
    };
    let mut usage = c
        .spare_scanner
        .take()
        .unwrap_or_else(|| Box::new(UsageScanner::new(ScanMode::Sse)));
    usage.restart(ScanMode::Unscanned(UnscannedReason::ContentType));
    let mut ex = Box::new(Exchange {
        method: head.method.clone(),
        path: log_path(head.path()).to_string(),
        started: now,
        last_activity: now,
        bytes_in: 0,
        bytes_out: 0,
        reused: false,
        up_head: Some(HeadBytes { bytes, written: 0 }),
        req: BodyFramer::from_request(head.body, ctx.limits.request.max_body),
        resp: Resp::Head,
        is_head: head.method == "HEAD",
        status: None,
        response_started: false,
        client_close: head.wants_close(),
        up_close: false,
        usage,
    });
    if let Some(up) = ctx.take_pooled() {
        ex.reused = true;
        ctx.stats.upstream_reused.fetch_add(1, Ordering::Relaxed);
        ctx.attach(id, c, up);
    } else {
        ctx.resolver.upstream(id);
    }
    c.phase = Phase::Exchange(ex);
}

/// The resolver answered for an exchange that waits for the upstream's addresses.
pub(crate) fn upstream_resolved(
    ctx: &mut Ctx,
    id: u64,
    c: &mut Client,
    result: &Result<Vec<SocketAddr>, String>,
) {
    match result {
        Ok(addrs) => match ctx.connect_upstream(addrs.clone()) {
            Ok(up) => ctx.attach(id, c, up),
            Err(e) => fail(ctx, c, Fault::Upstream(e)),
        },
        Err(m) => fail(ctx, c, Fault::Dns(m.clone())),
    }
}

/// One exchange step: connect/handshake, send head and body, relay the response.
pub(crate) fn step(ctx: &mut Ctx, c: &mut Client) -> bool {
    match move_bytes(ctx, c) {
        Ok(progress) => {
            let done = c.exchange().is_some_and(|ex| ex.resp == Resp::Done);
            if done {
                finish(ctx, c);
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
                    finish(ctx, c);
                }
                _ => fail(ctx, c, Fault::UpstreamEof),
            }
            true
        }
        Err(fault) => {
            fail(ctx, c, fault);
            true
        }
    }
}

fn move_bytes(ctx: &mut Ctx, c: &mut Client) -> Result<bool, Fault> {
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
    let mut progress = up.drive(&ctx.registry).map_err(Fault::Upstream)?;
    if !up.is_ready() {
        return Ok(progress);
    }
    if !up.counted {
        up.counted = true;
        ctx.stats
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
    progress |= up.drive(&ctx.registry).map_err(Fault::Upstream)?;
    // Response bytes, as far as the client side has room; classified as they arrive, so
    // nothing past the end of the response is ever relayed.
    while ex.resp != Resp::Done {
        // rustls' plaintext, not a socket: reading on to WouldBlock costs no syscall.
        let p = pump::fill(outbuf, &mut up.tls.reader(), Drained::AtWouldBlock);
        if p.moved > 0 {
            progress = true;
            classify(ex, outbuf)?;
        }
        match p.stop {
            Stop::Full | Stop::Empty => break,
            // Reading plaintext may let rustls take more records off the socket.
            Stop::Blocked => {
                let more = up.drive(&ctx.registry).map_err(Fault::Upstream)?;
                progress |= more;
                if !more {
                    break;
                }
            }
            // close_notify, or a TCP end without it.
            Stop::Eof => return end_of_stream(ex),
            Stop::Failed(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return end_of_stream(ex);
            }
            Stop::Failed(e) => return Err(Fault::Upstream(UpError::Io(e))),
        }
    }
    if ex.resp == Resp::Done && !outbuf.unscanned().is_empty() {
        // Bytes after the end of the response: not relayed, and the connection is suspect.
        outbuf.drop_unscanned();
        ex.up_close = true;
    }
    Ok(progress)
}

/// The upstream ended its stream: fine right after a complete response (the connection is
/// not reused), else the caller decides (a body framed by the close ends here).
fn end_of_stream(ex: &mut Exchange) -> Result<bool, Fault> {
    if ex.resp == Resp::Done {
        ex.up_close = true;
        return Ok(true);
    }
    Err(Fault::UpstreamEof)
}

/// The response is complete: log, pool or drop the upstream, and ready the client for the
/// next request (or close it).
fn finish(ctx: &mut Ctx, c: &mut Client) {
    let Phase::Exchange(ex) = std::mem::replace(&mut c.phase, Phase::Dead) else {
        return;
    };
    ctx.log_exchange(&ex, ex.status, "");
    let request_done = ex.up_head.is_none() && ex.req.is_done();
    if let Some(up) = ctx.detach(c) {
        if request_done && !ex.up_close && up.is_ready() && !up.eof {
            ctx.pool_upstream(up);
        } else {
            ctx.drop_upstream(up);
        }
    }
    let close = ex.client_close || !request_done;
    c.spare_scanner = Some(ex.usage);
    if close {
        c.close(true);
    } else {
        c.await_next_request(ctx.limits.idle_timeout);
    }
}

/// Timeouts, from the loop's sweep: connecting beyond the connect limit, or an exchange in
/// which nothing moved for the stream idle limit, gets 504. True when the client changed.
pub(crate) fn sweep(ctx: &mut Ctx, c: &mut Client, now: Instant) -> bool {
    let Phase::Exchange(ex) = &c.phase else {
        return false;
    };
    let limits = &ctx.limits;
    let connected = c.up.as_ref().is_some_and(UpConn::is_ready);
    let fault = if !connected && now.duration_since(ex.started) >= limits.connect_timeout {
        Fault::Timeout(format!(
            "connecting to the upstream {} (DNS, TCP and TLS) took longer than {} s",
            ctx.settings.host_header,
            limits.connect_timeout.as_secs()
        ))
    } else if now.duration_since(ex.last_activity) >= limits.stream_idle_timeout {
        Fault::Timeout(format!(
            "no data moved for {} s on this request",
            limits.stream_idle_timeout.as_secs()
        ))
    } else {
        return false;
    };
    fail(ctx, c, fault);
    true
}

/// An exchange failed: answer with an error if nothing was relayed yet, else truncate.
pub(crate) fn fail(ctx: &mut Ctx, c: &mut Client, fault: Fault) {
    // Never reached a ready upstream (DNS, TCP, TLS, or the connect timeout): the answer
    // says not to retry, so claude shows why at once instead of after ~3 minutes of
    // retries. A failure on a connection that worked (reused, mid-exchange) stays
    // retryable.
    let unreachable = !c.up.as_ref().is_some_and(UpConn::is_ready);
    if let Some(up) = ctx.detach(c) {
        ctx.drop_upstream(up);
    }
    let Phase::Exchange(ex) = std::mem::replace(&mut c.phase, Phase::Dead) else {
        return;
    };
    let upstream = &ctx.settings.host_header;
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
        ctx.log_exchange(&ex, ex.status, &format!("truncated: {msg}"));
        c.outbuf.drop_unscanned();
        c.close(false);
    } else {
        ctx.log_exchange(&ex, Some(status), &msg);
        c.outbuf.clear();
        let answer = if unreachable && status >= 500 {
            http::final_error_response(status, kind, &msg)
        } else {
            http::error_response(status, kind, &msg)
        };
        c.outbuf.push(&answer);
        c.close(true);
    }
}

/// Sorts newly read response bytes: heads (1xx relayed, the final one decides the framing)
/// and body bytes become sendable; the end of the response is found exactly.
fn classify(ex: &mut Exchange, outbuf: &mut Buf) -> Result<(), Fault> {
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
                ex.usage.restart(head.scan);
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
                // The payload is read where it lies in the buffer: nothing copied or held.
                let usage = &mut ex.usage;
                let n = f
                    .advance_payload(pending, &mut |data| usage.feed(data))
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
