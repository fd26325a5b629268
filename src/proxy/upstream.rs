//! One upstream connection: non-blocking TCP connect (trying each resolved address in turn),
//! then rustls. Plaintext is written only once the handshake has completed, so nothing (and
//! above all not the credential) is ever sent to a server whose certificate failed.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ClientConnection;
use rustls::pki_types::ServerName;

/// Why an upstream connection failed; the message goes into the 502 body (no secrets here).
#[derive(Debug)]
pub(crate) enum UpError {
    Connect { addr: SocketAddr, source: io::Error },
    Tls(rustls::Error),
    Io(io::Error),
    Closed,
}

impl std::fmt::Display for UpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpError::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            UpError::Tls(e) => write!(f, "TLS with the upstream failed: {e}"),
            UpError::Io(e) => write!(f, "upstream connection error: {e}"),
            UpError::Closed => write!(f, "the upstream closed the connection"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshaking,
    Ready,
}

pub(crate) struct UpConn {
    sock: TcpStream,
    pub(crate) tls: ClientConnection,
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    phase: Phase,
    /// Its own id (from the loop's counter): its poll token is `upstream_token(id)` for its
    /// whole life, in use or pooled, so moving it between clients and the pool costs no
    /// re-registration.
    pub(crate) id: u64,
    token: Token,
    registered: bool,
    /// TCP end of stream seen from the upstream.
    pub(crate) eof: bool,
    /// False only after a socket read returned WouldBlock and no event for it has come since
    /// (edge-triggered: new bytes bring an event), so no read is tried that cannot succeed.
    pub(crate) sock_readable: bool,
    /// The poller reported the upstream's end of stream (or an error): read on to WouldBlock
    /// or the end, never stopping at a short read.
    pub(crate) peer_closed: bool,
    /// When it went idle (pooled connections).
    pub(crate) idle_since: Instant,
    /// Its completed handshake has been counted in the stats.
    pub(crate) counted: bool,
}

impl UpConn {
    /// Starts connecting to the first address that accepts a connect attempt, registered
    /// under `token` (readable and writable, once: readiness is edge-triggered, and the loop
    /// drains to WouldBlock, so interest never needs to change).
    pub(crate) fn connect(
        addrs: Vec<SocketAddr>,
        config: &Arc<rustls::ClientConfig>,
        name: &ServerName<'static>,
        buffer_limit: usize,
        (id, token): (u64, Token),
        registry: &Registry,
    ) -> Result<UpConn, UpError> {
        let mut tls = ClientConnection::new(config.clone(), name.clone()).map_err(UpError::Tls)?;
        // Bounds what rustls queues for sending (plaintext before the handshake, TLS records
        // after); received plaintext is bounded by reading records only while it is drained.
        tls.set_buffer_limit(Some(buffer_limit));
        let (sock, next_addr) = start_connect(&addrs, 0)?;
        let mut up = UpConn {
            sock,
            tls,
            addrs,
            next_addr,
            phase: Phase::Connecting,
            id,
            token,
            registered: false,
            eof: false,
            sock_readable: true,
            peer_closed: false,
            idle_since: Instant::now(),
            counted: false,
        };
        up.register(registry).map_err(UpError::Io)?;
        Ok(up)
    }

    fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(
            &mut self.sock,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.registered = true;
        Ok(())
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        if std::mem::take(&mut self.registered) {
            // Failure means the fd is already gone from epoll; dropping the socket follows.
            let _ = registry.deregister(&mut self.sock);
        }
    }

    /// Moves TLS bytes both ways as far as the socket allows. Returns whether anything moved.
    /// Reads TLS records only while rustls has no undelivered plaintext, which bounds what it
    /// buffers; the caller drains plaintext from `tls.reader()` (through `pump::fill`).
    pub(crate) fn drive(&mut self, registry: &Registry) -> Result<bool, UpError> {
        let mut progress = false;
        if self.phase == Phase::Connecting {
            match self.check_connected(registry)? {
                true => {
                    self.phase = Phase::Handshaking;
                    progress = true;
                }
                false => return Ok(false),
            }
        }
        loop {
            let mut moved = false;
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut self.sock) {
                    Ok(0) => break,
                    Ok(_) => moved = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(UpError::Io(e)),
                }
            }
            while !self.eof && self.sock_readable && self.tls.wants_read() {
                let mut rd = ShortRead {
                    sock: &mut self.sock,
                    short: false,
                };
                let read = self.tls.read_tls(&mut rd);
                let short = rd.short;
                match read {
                    Ok(0) => {
                        self.eof = true;
                        moved = true;
                    }
                    Ok(_) => {
                        moved = true;
                        // The socket's queue was empty at that instant; later bytes bring an
                        // event (see `pump::Drained::AtShortRead`).
                        if short && !self.peer_closed {
                            self.sock_readable = false;
                        }
                        self.tls.process_new_packets().map_err(|e| {
                            // Best effort: tell the server why (an alert), then fail.
                            let _ = self.tls.write_tls(&mut self.sock);
                            UpError::Tls(e)
                        })?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.sock_readable = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(UpError::Io(e)),
                }
            }
            if self.phase == Phase::Handshaking && !self.tls.is_handshaking() {
                self.phase = Phase::Ready;
                moved = true;
            }
            if self.eof && self.phase != Phase::Ready {
                return Err(UpError::Closed);
            }
            if !moved {
                return Ok(progress);
            }
            progress = true;
        }
    }

    /// Queues plaintext for the upstream (bounded by the buffer limit set in
    /// [`UpConn::connect`]). Only valid once ready.
    pub(crate) fn write_plain(&mut self, bytes: &[u8]) -> Result<usize, UpError> {
        debug_assert!(self.is_ready());
        self.tls.writer().write(bytes).map_err(UpError::Io)
    }

    /// Whether a pooled connection has gone bad: the upstream closed it, sent bytes we never
    /// asked for, or broke TLS. Used on readable events of idle pooled connections.
    pub(crate) fn idle_is_broken(&mut self, registry: &Registry) -> bool {
        if self.drive(registry).is_err() || self.eof {
            return true;
        }
        let mut probe = [0u8; 1];
        !matches!(self.tls.reader().read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Connected, still connecting, or on to the next address after a failure.
    fn check_connected(&mut self, registry: &Registry) -> Result<bool, UpError> {
        let failure = match self.sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match self.sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                Err(e) => Some(e),
            },
        };
        let Some(err) = failure else {
            // Nagle would hold back small request writes.
            self.sock.set_nodelay(true).map_err(UpError::Io)?;
            return Ok(true);
        };
        if self.next_addr >= self.addrs.len() {
            let addr = self.addrs[self.next_addr - 1];
            return Err(UpError::Connect { addr, source: err });
        }
        log::debug!(
            "proxy: connect to {} failed ({err}); trying the next address",
            self.addrs[self.next_addr - 1]
        );
        self.deregister(registry);
        let (sock, next) = start_connect(&self.addrs, self.next_addr)?;
        self.sock = sock;
        self.sock_readable = true;
        self.next_addr = next;
        self.register(registry).map_err(UpError::Io)?;
        Ok(false)
    }
}

/// The socket as rustls reads it, noting whether a read returned fewer bytes than offered.
struct ShortRead<'a> {
    sock: &'a mut TcpStream,
    short: bool,
}

impl Read for ShortRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.short = n > 0 && n < buf.len();
        Ok(n)
    }
}

/// Starts a non-blocking connect to the first address from `from` that does not fail at once.
/// Returns the socket and the index of the address after it.
fn start_connect(addrs: &[SocketAddr], from: usize) -> Result<(TcpStream, usize), UpError> {
    let mut last = None;
    for (i, addr) in addrs.iter().enumerate().skip(from) {
        match TcpStream::connect(*addr) {
            Ok(s) => return Ok((s, i + 1)),
            Err(e) => {
                last = Some(UpError::Connect {
                    addr: *addr,
                    source: e,
                })
            }
        }
    }
    Err(last.unwrap_or(UpError::Closed))
}
