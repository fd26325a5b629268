//! The one buffer pump: every byte the proxy moves between a socket (or rustls' plaintext
//! side) and a connection buffer goes through [`fill`] or [`drain`]. Each moves until the
//! other side would block, ends, or fails, or the buffer is full ([`fill`]) or has nothing
//! sendable left ([`drain`]), and says which: edge-triggered readiness (mio) needs exactly
//! that, because a source not read to `WouldBlock` brings no new event.

use std::io::{self, Read, Write};

use super::buf::Buf;

/// Why a pump stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The source or sink would block (or, see [`Drained::AtShortRead`], the source just
    /// emptied): wait for its next readiness event.
    Blocked,
    /// The source ended (read 0), or the sink took nothing (write 0).
    Eof,
    /// [`fill`]: the buffer is at its cap (backpressure: the source is not read further).
    Full,
    /// [`drain`]: nothing sendable is left.
    Empty,
    /// Any other error; the connection is done.
    Failed(io::Error),
}

/// Bytes moved and why the pump stopped.
#[derive(Debug)]
pub(crate) struct Pumped {
    pub(crate) moved: usize,
    pub(crate) stop: Stop,
}

impl Pumped {
    pub(crate) fn progress(&self) -> bool {
        self.moved > 0 || matches!(self.stop, Stop::Eof | Stop::Failed(_))
    }
}

/// How [`fill`] may know that a stream socket has nothing more queued.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Only when a read says `WouldBlock`.
    AtWouldBlock,
    /// Also after a short read (fewer bytes than offered): the socket's queue was empty at
    /// that instant, and any byte arriving later brings a new edge-triggered event, so the
    /// read that would return `WouldBlock` is skipped. Only for a socket whose peer has not
    /// half-closed (an end of stream that arrived with the last bytes brings no new event).
    AtShortRead,
}

/// Reads from `src` into the free space of `buf` (new bytes are unscanned, see [`Buf`]).
pub(crate) fn fill(buf: &mut Buf, src: &mut dyn Read, drained: Drained) -> Pumped {
    let mut moved = 0;
    loop {
        if buf.is_full() {
            return Pumped {
                moved,
                stop: Stop::Full,
            };
        }
        let stop = match buf.read_some(src) {
            Ok((0, _)) => Stop::Eof,
            Ok((n, short)) => {
                moved += n;
                if short && drained == Drained::AtShortRead {
                    Stop::Blocked
                } else {
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Stop::Blocked,
            Err(e) => Stop::Failed(e),
        };
        return Pumped { moved, stop };
    }
}

/// Writes the sendable bytes of `buf` to `sink`, consuming what it took.
pub(crate) fn drain(buf: &mut Buf, sink: &mut dyn Write) -> Pumped {
    let mut moved = 0;
    loop {
        let out = buf.sendable();
        if out.is_empty() {
            return Pumped {
                moved,
                stop: Stop::Empty,
            };
        }
        let stop = match sink.write(out) {
            Ok(0) => Stop::Eof,
            Ok(n) => {
                buf.consume(n);
                moved += n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Stop::Blocked,
            Err(e) => Stop::Failed(e),
        };
        return Pumped { moved, stop };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source or sink that hands out `script` one step per call.
    struct Script {
        steps: Vec<io::Result<usize>>,
        data: Vec<u8>,
    }

    impl Script {
        fn new(steps: Vec<io::Result<usize>>) -> Script {
            Script {
                steps: steps.into_iter().rev().collect(),
                data: Vec::new(),
            }
        }
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self
                .steps
                .pop()
                .unwrap_or(Err(io::ErrorKind::WouldBlock.into()))?;
            let n = n.min(buf.len());
            buf[..n].fill(b'x');
            Ok(n)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self
                .steps
                .pop()
                .unwrap_or(Err(io::ErrorKind::WouldBlock.into()))?;
            let n = n.min(buf.len());
            self.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn would_block() -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    #[test]
    fn fill_reads_until_it_would_block_ends_fails_or_is_full() {
        let mut b = Buf::new(100, None);
        let interrupted = Err(io::ErrorKind::Interrupted.into());
        let p = fill(
            &mut b,
            &mut Script::new(vec![Ok(3), interrupted, Ok(4), would_block()]),
            Drained::AtWouldBlock,
        );
        assert_eq!((p.moved, b.len()), (7, 7));
        assert!(matches!(p.stop, Stop::Blocked) && p.progress());
        assert_eq!(b.sendable(), b"", "filled bytes are unscanned");

        let p = fill(
            &mut b,
            &mut Script::new(vec![Ok(2), Ok(0)]),
            Drained::AtWouldBlock,
        );
        assert!(matches!(p.stop, Stop::Eof) && p.moved == 2);
        let p = fill(
            &mut b,
            &mut Script::new(vec![Err(io::ErrorKind::ConnectionReset.into())]),
            Drained::AtWouldBlock,
        );
        assert!(matches!(p.stop, Stop::Failed(_)) && p.moved == 0 && p.progress());
        let p = fill(
            &mut b,
            &mut Script::new(vec![would_block()]),
            Drained::AtWouldBlock,
        );
        assert!(matches!(p.stop, Stop::Blocked) && !p.progress());

        let p = fill(
            &mut b,
            &mut Script::new(vec![Ok(1000), Ok(1000)]),
            Drained::AtWouldBlock,
        );
        assert!(matches!(p.stop, Stop::Full), "{p:?}");
        assert_eq!((p.moved, b.len()), (91, 100));
        // Full before any read: the source is not touched.
        let mut untouched = Script::new(vec![Ok(5)]);
        let p = fill(&mut b, &mut untouched, Drained::AtWouldBlock);
        assert!(matches!(p.stop, Stop::Full) && p.moved == 0 && untouched.steps.len() == 1);
    }

    /// A short read ends the fill only when the caller says a short read means drained.
    #[test]
    fn a_short_read_counts_as_drained_only_when_asked() {
        let mut b = Buf::new(100, None);
        let mut src = Script::new(vec![Ok(3), Ok(4)]);
        let p = fill(&mut b, &mut src, Drained::AtShortRead);
        assert!(matches!(p.stop, Stop::Blocked) && p.moved == 3);
        assert_eq!(src.steps.len(), 1, "no read after the short one");
        let p = fill(&mut b, &mut src, Drained::AtWouldBlock);
        assert!(matches!(p.stop, Stop::Blocked) && p.moved == 4);
        assert!(src.steps.is_empty(), "read on to WouldBlock");
        // A read that fills all that was offered is not short: reading goes on.
        let mut b = Buf::new(4, None);
        let mut src = Script::new(vec![Ok(4), Ok(1)]);
        let p = fill(&mut b, &mut src, Drained::AtShortRead);
        assert!(matches!(p.stop, Stop::Full) && p.moved == 4);
    }

    #[test]
    fn drain_writes_only_sendable_bytes_until_empty_or_blocked() {
        let mut b = Buf::new(100, None);
        b.push(b"0123456789");
        let mut sink = Script::new(vec![
            Ok(4),
            Err(io::ErrorKind::Interrupted.into()),
            would_block(),
        ]);
        let p = drain(&mut b, &mut sink);
        assert!(matches!(p.stop, Stop::Blocked) && p.moved == 4);
        assert_eq!(
            (sink.data.as_slice(), b.sendable()),
            (&b"0123"[..], &b"456789"[..])
        );

        let mut sink = Script::new(vec![Ok(100)]);
        let p = drain(&mut b, &mut sink);
        assert!(matches!(p.stop, Stop::Empty) && p.moved == 6);
        assert!(b.is_empty() && sink.data == b"456789");

        // Unscanned bytes (a response not yet classified) never leave.
        let _ = fill(&mut b, &mut Script::new(vec![Ok(5)]), Drained::AtWouldBlock);
        let mut sink = Script::new(vec![Ok(100)]);
        let p = drain(&mut b, &mut sink);
        assert!(matches!(p.stop, Stop::Empty) && p.moved == 0 && sink.data.is_empty());

        b.mark_scanned(5);
        let p = drain(&mut b, &mut Script::new(vec![Ok(0)]));
        assert!(matches!(p.stop, Stop::Eof) && p.progress());
    }
}
