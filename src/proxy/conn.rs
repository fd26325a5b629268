//! Per-client connection state, and what every phase does with the client socket. The event
//! loop owns every [`Client`]; a client owns its socket, both direction buffers, its phase
//! (between requests, an [`Exchange`], a [`Tunnel`], closing) and, while one is in use, its
//! upstream connection. Also here: the poll tokens, derived from a connection's id.
//!
//! Nothing here decides policy or talks to the upstream: the phase handlers (`exchange`,
//! `tunnel`) change a client's state, and this module only moves client bytes (through
//! `pump`) and derives the socket's interest from that state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::buf::Buf;
use super::pump::{self, Drained, Stop};
use super::stats::Stats;
use super::stream::ClientStream;
use super::upstream::UpConn;
use crate::egress::policy::Grant;
use crate::http::{BodyFramer, UsageScanner};

/// After an error answer: how long we keep discarding the client's input so it reads our
/// answer rather than a connection reset.
const LINGER: Duration = Duration::from_secs(2);
/// The same for a connection answered 503 past the cap: its descriptor is what the next
/// connection needs. Long enough for a request already on its way to arrive and be drained
/// (so the kernel sends no reset over our answer); a client that reads the answer and closes
/// frees it at once.
const OVERFLOW_LINGER: Duration = Duration::from_millis(250);
/// A closing connection that will not take our last bytes within this long is dropped.
const CLOSE_FLUSH: Duration = Duration::from_secs(30);

/// Client `id`'s socket: tokens are `2*id` for a client and `2*id+1` for the upstream (or
/// tunnel target) socket it uses; a pooled upstream connection gets an id of its own.
pub(crate) fn client_token(id: u64) -> Token {
    Token((id as usize) << 1)
}

pub(crate) fn upstream_token(id: u64) -> Token {
    Token(((id as usize) << 1) | 1)
}

/// The connection id of a token, and whether it is the upstream side.
pub(crate) fn token_owner(token: Token) -> (u64, bool) {
    ((token.0 >> 1) as u64, token.0 & 1 == 1)
}

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
    Tunnel(Box<Tunnel>),
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

/// One request/response exchange. Its fields feed the one log line per request. While the
/// client has no upstream connection (`Client::up` is `None`), the exchange waits for the
/// resolver's answer (the resolver alone records who waits).
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
    /// Reads the usage the API reports in the response body as it is relayed (issue 12).
    /// Boxed and handed back to the client after the exchange ([`Client::spare_scanner`]).
    pub(crate) usage: Box<UsageScanner>,
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

/// Where a tunnel is.
pub(crate) enum TunnelState {
    /// The resolver is looking the granted name up.
    Resolving,
    Connecting {
        sock: TcpStream,
        addr: SocketAddr,
        /// Allowed addresses not tried yet, last first.
        rest: Vec<SocketAddr>,
    },
    Open {
        sock: TcpStream,
    },
}

/// One CONNECT tunnel, held in the client's [`Phase::Tunnel`]. Its log line is written when it
/// goes away (if it ever opened).
pub(crate) struct Tunnel {
    pub(crate) grant: Grant,
    pub(crate) state: TunnelState,
    pub(crate) started: Instant,
    pub(crate) last_activity: Instant,
    pub(crate) client_eof: bool,
    pub(crate) target_eof: bool,
    pub(crate) shut_target: bool,
    pub(crate) shut_client: bool,
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) addr: Option<SocketAddr>,
}

impl Tunnel {
    /// `client_eof`: the client already ended its side (after the head and first bytes).
    pub(crate) fn new(grant: Grant, client_eof: bool) -> Tunnel {
        let now = Instant::now();
        Tunnel {
            grant,
            state: TunnelState::Resolving,
            started: now,
            last_activity: now,
            client_eof,
            target_eof: false,
            shut_target: false,
            shut_client: false,
            bytes_up: 0,
            bytes_down: 0,
            addr: None,
        }
    }
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

pub(crate) struct Client {
    pub(crate) sock: ClientStream,
    /// Client -> upstream bytes (request heads and bodies; a tunnel's upward bytes).
    pub(crate) inbuf: Buf,
    /// Upstream -> client bytes (relayed responses, local answers; a tunnel's downward bytes).
    pub(crate) outbuf: Buf,
    pub(crate) phase: Phase,
    pub(crate) up: Option<UpConn>,
    /// The client ended its side (or reset).
    pub(crate) read_eof: bool,
    /// False only after a read of the client socket returned WouldBlock and no event for it
    /// has come since: with edge-triggered readiness, any new byte brings an event, so reading
    /// again before one would only cost a syscall that returns WouldBlock.
    pub(crate) sock_readable: bool,
    /// The poller reported the peer's end of stream (or an error): read to WouldBlock or the
    /// end from now on, never stopping at a short read.
    pub(crate) peer_closed: bool,
    /// Meaning depends on the phase: idle/head deadline, linger end.
    pub(crate) deadline: Instant,
    /// Since when the connection has been idle between requests with empty buffers (the
    /// sweep releases its buffers after `Limits::buffer_release_after`).
    pub(crate) idle_since: Option<Instant>,
    registered: bool,
    /// The exchange that was running when the client went away, kept for its log line.
    pub(crate) ended_exchange: Option<Box<Exchange>>,
    /// The last exchange's usage scanner, restarted by the next one: a keep-alive connection
    /// allocates it once, not per request (a ~1 KB malloc and free per request made musl's
    /// allocator map and unmap pages).
    pub(crate) spare_scanner: Option<Box<UsageScanner>>,
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
            read_eof: false,
            sock_readable: true,
            peer_closed: false,
            deadline,
            idle_since: None,
            registered: false,
            ended_exchange: None,
            spare_scanner: None,
            overflow: false,
        }
    }

    pub(crate) fn exchange(&mut self) -> Option<&mut Exchange> {
        match &mut self.phase {
            Phase::Exchange(ex) => Some(ex),
            _ => None,
        }
    }

    /// An exchange without an upstream connection: it waits for the upstream's addresses.
    pub(crate) fn awaits_upstream(&self) -> bool {
        matches!(self.phase, Phase::Exchange(_)) && self.up.is_none()
    }

    /// A tunnel whose target name is being looked up.
    pub(crate) fn awaits_tunnel_lookup(&self) -> bool {
        matches!(&self.phase, Phase::Tunnel(t) if matches!(t.state, TunnelState::Resolving))
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

    /// Closes after what is queued has been written (see [`Phase::Closing`]).
    pub(crate) fn close(&mut self, graceful: bool) {
        self.deadline = Instant::now() + CLOSE_FLUSH;
        self.phase = Phase::Closing {
            graceful,
            shut: false,
        };
    }

    /// Back to waiting for the next request, with the keep-alive deadline.
    pub(crate) fn await_next_request(&mut self, idle_timeout: Duration) {
        self.deadline = Instant::now() + idle_timeout;
        self.phase = Phase::Idle {
            head_started: false,
        };
    }

    /// A request head has started but is not complete: from now on the head deadline holds.
    pub(crate) fn head_incomplete(&mut self, head_timeout: Duration) {
        if let Phase::Idle {
            head_started: started @ false,
        } = &mut self.phase
        {
            *started = true;
            self.deadline = Instant::now() + head_timeout;
        }
    }

    /// Reads what the client sent, as far as the request side has room (between requests and
    /// during an exchange), or discards it (lingering after an answer). A tunnel reads its
    /// client itself.
    pub(crate) fn read_input(&mut self) -> bool {
        if self.read_eof || !self.sock_readable {
            return false;
        }
        match self.phase {
            Phase::Idle { .. } | Phase::Exchange(_) => {}
            Phase::Closing {
                graceful: true,
                shut: true,
            } => return self.discard_input(),
            _ => return false,
        }
        let drained = if self.peer_closed {
            Drained::AtWouldBlock
        } else {
            Drained::AtShortRead
        };
        let p = pump::fill(&mut self.inbuf, &mut self.sock, drained);
        self.inbuf.mark_scanned(p.moved);
        match p.stop {
            Stop::Blocked => self.sock_readable = false,
            Stop::Full | Stop::Empty => {}
            // The client is gone (HTTP clients do not half-close): drop the exchange, and
            // with it the upstream connection. Between requests, what it sent before its end
            // is still looked at: a CONNECT client may send its head, the first tunnel bytes
            // and its end at once (the tunnel then starts half-closed).
            Stop::Eof => {
                self.read_eof = true;
                if !matches!(self.phase, Phase::Idle { .. }) || self.inbuf.is_empty() {
                    self.die();
                }
            }
            Stop::Failed(_) => self.die(),
        }
        p.progress()
    }

    /// Lingering after an answer: read and drop whatever the client still sends until it
    /// closes. The request buffer is free by now; it is emptied after every fill.
    fn discard_input(&mut self) -> bool {
        loop {
            let p = pump::fill(&mut self.inbuf, &mut self.sock, Drained::AtWouldBlock);
            self.inbuf.clear();
            match p.stop {
                Stop::Full => continue,
                Stop::Blocked | Stop::Empty => {
                    self.sock_readable = false;
                    return false;
                }
                Stop::Eof | Stop::Failed(_) => {
                    self.die();
                    return true;
                }
            }
        }
    }

    /// Writes what may be sent to the client.
    pub(crate) fn flush(&mut self) -> bool {
        if self.is_dead() {
            return false;
        }
        let p = pump::drain(&mut self.outbuf, &mut self.sock);
        if matches!(p.stop, Stop::Eof | Stop::Failed(_)) {
            self.die();
        }
        p.progress()
    }

    /// Closing: once everything queued is written, close (truncation) or shut our side down
    /// and linger (error answers).
    pub(crate) fn step_closing(&mut self) -> bool {
        let Phase::Closing { graceful, shut } = &mut self.phase else {
            return false;
        };
        if !self.outbuf.sendable().is_empty() || *shut {
            return false;
        }
        if !*graceful {
            self.die();
            return true;
        }
        self.sock.shutdown_write();
        *shut = true;
        self.deadline = Instant::now()
            + if self.overflow {
                OVERFLOW_LINGER
            } else {
                LINGER
            };
        // What the client sent meanwhile is read (and dropped) from here on.
        self.sock_readable = true;
        true
    }

    /// Registers the socket for readable and writable events, once: readiness is
    /// edge-triggered and every step drains to WouldBlock (or a full buffer), so interest never
    /// needs to change (each change would be a syscall).
    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        self.sock
            .register(registry, token, Interest::READABLE | Interest::WRITABLE)?;
        self.registered = true;
        Ok(())
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        if std::mem::take(&mut self.registered) {
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
