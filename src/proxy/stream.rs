//! The client side's sockets. An enum rather than a concrete TcpStream so a Unix-socket
//! listener (the `api-only` egress mode) can be added as one more variant.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::event::Source;
use mio::{Interest, Registry, Token};

pub(crate) enum Listener {
    Tcp(mio::net::TcpListener),
    /// `api-only`: the API socket, and the only uid allowed to connect (SO_PEERCRED).
    Unix(mio::net::UnixListener, u32),
}

impl Listener {
    /// Accepts one connection; `WouldBlock` when none is pending.
    pub(crate) fn accept(&self) -> io::Result<ClientStream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                // SSE events are small writes that must leave at once.
                s.set_nodelay(true)?;
                Ok(ClientStream::Tcp(s))
            }
            Listener::Unix(l, uid) => loop {
                // A refused peer is closed here and the next pending one tried, so one
                // stranger cannot stall the (edge-triggered) accept loop.
                let (s, _) = l.accept()?;
                match crate::egress::apisock::check_peer(&s, *uid) {
                    Ok(()) => return Ok(ClientStream::Unix(s)),
                    Err(e) => log::warn!("proxy: {e}"),
                }
            },
        }
    }

    pub(crate) fn source(&mut self) -> &mut dyn Source {
        match self {
            Listener::Tcp(l) => l,
            Listener::Unix(l, _) => l,
        }
    }
}

pub(crate) enum ClientStream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl ClientStream {
    /// Writes a short answer, ends our side and drains what the client already sent, then
    /// the socket is dropped: with nothing unread, closing sends a FIN, not a reset that could
    /// destroy the answer in the client's buffers. For a fresh socket the answer fits its send
    /// buffer, so one non-blocking write suffices.
    pub(crate) fn answer_and_close(&mut self, answer: &[u8]) {
        let _ = self.write(answer);
        self.shutdown_write();
        let mut scratch = [0u8; 4096];
        for _ in 0..16 {
            match self.read(&mut scratch) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }

    pub(crate) fn shutdown_write(&self) {
        // The peer may already be gone; nothing to do about it then.
        let _ = match self {
            ClientStream::Tcp(s) => s.shutdown(Shutdown::Write),
            ClientStream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    pub(crate) fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            ClientStream::Tcp(s) => r.register(s, t, i),
            ClientStream::Unix(s) => r.register(s, t, i),
        }
    }

    pub(crate) fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            ClientStream::Tcp(s) => r.deregister(s),
            ClientStream::Unix(s) => r.deregister(s),
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.read(buf),
            ClientStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.write(buf),
            ClientStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Tcp(s) => s.flush(),
            ClientStream::Unix(s) => s.flush(),
        }
    }
}
