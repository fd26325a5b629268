//! Per-client connection state. The event loop owns every `Client`; a client owns its socket,
//! both direction buffers, the exchange in progress and, while one is in use, its upstream
//! connection.

use std::sync::Arc;
use std::time::Instant;

use mio::{Interest, Registry, Token};

use super::Stats;
use super::buf::Buf;
use super::stream::ClientStream;
use super::upstream::UpConn;
use crate::http::BodyFramer;

pub(crate) enum Phase {
    /// Waiting for (more of) a request head. `head_started`: some bytes of it arrived, so the
    /// deadline is the head deadline rather than the keep-alive idle one.
    Idle { head_started: bool },
    /// A request is being forwarded and its response relayed.
    Exchange(Box<Exchange>),
    /// Flushing what is queued for the client, then closing. `graceful`: after the flush, shut
    /// down our side and discard input for a while, so the client reads our response instead
    /// of a reset. Not graceful: a truncated stream; close as soon as the relayed bytes are out.
    Closing { graceful: bool, shut: bool },
    /// An HTTP CONNECT tunnel (`BOTTLE_EGRESS=allowlist`, see tunnel.rs).
    Tunnel(Box<super::tunnel::Tunnel>),
    /// Remove at the end of this event.
    Dead,
}

/// Where the relayed response is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resp {
    /// Waiting for a (final) response head; 1xx heads are relayed on the way.
    Head,
    Body(BodyFramer),
    Done,
}

/// One request/response exchange. Its fields feed the one log line per request.
pub(crate) struct Exchange {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) started: Instant,
    /// Any byte moved either way (stream idle timeout).
    pub(crate) last_activity: Instant,
    /// Request body bytes forwarded / response bytes relayed.
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) reused: bool,
    /// The rewritten head, holding the real credential, until rustls has taken all of it.
    /// Wiped when taken or dropped.
    pub(crate) up_head: Option<HeadBytes>,
    pub(crate) req: BodyFramer,
    pub(crate) resp: Resp,
    pub(crate) is_head: bool,
    pub(crate) status: Option<u16>,
    /// Some response byte (even a 1xx head) has been queued for the client: from here on a
    /// failure can only truncate, not answer with an error.
    pub(crate) response_started: bool,
    /// The client sent `Connection: close`.
    pub(crate) client_close: bool,
    /// The upstream connection cannot be reused after this response.
    pub(crate) up_close: bool,
}

/// The upstream request head, wiped on drop since it carries the credential.
pub(crate) struct HeadBytes {
    pub(crate) bytes: Vec<u8>,
    pub(crate) written: usize,
}

impl Drop for HeadBytes {
    fn drop(&mut self) {
        crate::secret::wipe(&mut self.bytes);
    }
}

pub(crate) struct Client {
    pub(crate) sock: ClientStream,
    /// Client -> upstream bytes (request heads and bodies).
    pub(crate) inbuf: Buf,
    /// Upstream -> client bytes (relayed responses, local answers).
    pub(crate) outbuf: Buf,
    pub(crate) phase: Phase,
    pub(crate) up: Option<UpConn>,
    /// Waiting for a DNS answer to open `up`.
    pub(crate) waiting_dns: bool,
    /// The client ended its side (or reset).
    pub(crate) read_eof: bool,
    /// False only after a read of the client socket returned WouldBlock and no event for it
    /// has come since: with edge-triggered readiness, any new byte brings an event, so reading
    /// again before one would only cost a syscall that returns WouldBlock.
    pub(crate) sock_readable: bool,
    /// Meaning depends on the phase: idle/head deadline, linger end.
    pub(crate) deadline: Instant,
    /// Since when the connection has been idle between requests with empty buffers (the
    /// sweep releases its buffers after `Limits::buffer_release_after`).
    pub(crate) idle_since: Option<Instant>,
    registered: Option<Interest>,
    /// The exchange that was running when the client went away, kept for its log line.
    pub(crate) ended_exchange: Option<Box<Exchange>>,
    /// Accepted past the connection cap: only answered 503, with a short linger.
    pub(crate) overflow: bool,
}

impl Client {
    pub(crate) fn new(
        sock: ClientStream,
        in_cap: usize,
        out_cap: usize,
        deadline: Instant,
        gauge: Arc<Stats>,
    ) -> Client {
        Client {
            sock,
            inbuf: Buf::new(in_cap, Some(gauge.clone())),
            outbuf: Buf::new(out_cap, Some(gauge)),
            phase: Phase::Idle {
                head_started: false,
            },
            up: None,
            waiting_dns: false,
            read_eof: false,
            sock_readable: true,
            deadline,
            idle_since: None,
            registered: None,
            ended_exchange: None,
            overflow: false,
        }
    }

    pub(crate) fn exchange(&mut self) -> Option<&mut Exchange> {
        match &mut self.phase {
            Phase::Exchange(ex) => Some(ex),
            _ => None,
        }
    }

    /// The client is gone or must go: the connection is removed at the end of this event.
    pub(crate) fn die(&mut self) {
        if let Phase::Exchange(ex) = std::mem::replace(&mut self.phase, Phase::Dead) {
            self.ended_exchange = Some(ex);
        }
    }

    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.phase, Phase::Dead)
    }

    /// Interest follows state: writable only while something is queued for the client.
    pub(crate) fn update_interest(
        &mut self,
        registry: &Registry,
        token: Token,
    ) -> std::io::Result<()> {
        let interest = if self.outbuf.sendable().is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        match self.registered {
            Some(i) if i == interest => Ok(()),
            Some(_) => {
                self.registered = Some(interest);
                self.sock.reregister(registry, token, interest)
            }
            None => {
                self.registered = Some(interest);
                self.sock.register(registry, token, interest)
            }
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        if self.registered.take().is_some() {
            let _ = self.sock.deregister(registry);
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        self.inbuf.len() + self.outbuf.len()
    }

    /// Between requests, nothing held either way, nothing half-received.
    pub(crate) fn is_quiet(&self) -> bool {
        matches!(
            self.phase,
            Phase::Idle {
                head_started: false
            }
        ) && self.buffered() == 0
    }

    /// Gives both buffers back (wiped) if the connection is quiet; returns whether any
    /// memory was released.
    pub(crate) fn release_buffers(&mut self) -> bool {
        if !self.is_quiet() {
            return false;
        }
        let a = self.inbuf.release();
        let b = self.outbuf.release();
        a || b
    }
}
