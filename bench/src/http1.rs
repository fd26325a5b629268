//! Just enough HTTP/1.1 for the harness: a buffered reader that splits heads off and reads
//! bodies framed by Content-Length or chunked encoding, handing body bytes to a sink together
//! with the CLOCK_MONOTONIC time of the read that delivered them (for SSE relay delay).

use std::io::{self, Read};

use crate::clock::mono_ns;

const MAX_HEAD: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

pub struct BufConn<S> {
    pub s: S,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// When the last successful read returned (monotonic ns).
    pub last_read_ns: u64,
}

pub fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<S: Read> BufConn<S> {
    pub fn new(s: S) -> Self {
        BufConn {
            s,
            buf: vec![0; 128 * 1024],
            pos: 0,
            len: 0,
            last_read_ns: 0,
        }
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        } else if self.len == self.buf.len() {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        let n = loop {
            match self.s.read(&mut self.buf[self.len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.last_read_ns = mono_ns();
        self.len += n;
        Ok(n)
    }

    /// The next head (through the blank line), or None on a clean EOF between messages.
    pub fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut scanned: usize = 0;
        loop {
            let avail = &self.buf[self.pos..self.len];
            let from = scanned.saturating_sub(3);
            if let Some(i) = find(&avail[from..], b"\r\n\r\n") {
                let end = from + i + 4;
                let head = avail[..end].to_vec();
                self.pos += end;
                return Ok(Some(head));
            }
            scanned = avail.len();
            if scanned > MAX_HEAD {
                return Err(invalid("head too large"));
            }
            if self.fill()? == 0 {
                if self.pos == self.len {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a head",
                ));
            }
        }
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..self.len], b"\r\n") {
                let line = self.buf[self.pos..self.pos + i + 2].to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.len - self.pos > 4096 {
                return Err(invalid("chunk line too long"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside chunked body",
                ));
            }
        }
    }

    fn copy_exact(
        &mut self,
        mut n: u64,
        sink: &mut dyn FnMut(&[u8], u64) -> io::Result<()>,
    ) -> io::Result<()> {
        while n > 0 {
            if self.pos == self.len && self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside body",
                ));
            }
            let take = (self.len - self.pos).min(n as usize);
            sink(&self.buf[self.pos..self.pos + take], self.last_read_ns)?;
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    /// Reads one body. With `raw`, the sink also sees the chunk framing (for relaying);
    /// otherwise it sees only the payload.
    pub fn read_body(
        &mut self,
        framing: Framing,
        raw: bool,
        sink: &mut dyn FnMut(&[u8], u64) -> io::Result<()>,
    ) -> io::Result<()> {
        match framing {
            Framing::Length(n) => self.copy_exact(n, sink),
            Framing::UntilClose => loop {
                if self.pos == self.len && self.fill()? == 0 {
                    return Ok(());
                }
                sink(&self.buf[self.pos..self.len], self.last_read_ns)?;
                self.pos = self.len;
            },
            Framing::Chunked => loop {
                let line = self.read_line()?;
                if raw {
                    sink(&line, self.last_read_ns)?;
                }
                let digits = line[..line.len() - 2]
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or(&[]);
                let digits = std::str::from_utf8(digits).map_err(|_| invalid("bad chunk size"))?;
                let size = u64::from_str_radix(digits.trim(), 16)
                    .map_err(|_| invalid("bad chunk size"))?;
                if size == 0 {
                    loop {
                        let t = self.read_line()?;
                        if raw {
                            sink(&t, self.last_read_ns)?;
                        }
                        if t == b"\r\n" {
                            return Ok(());
                        }
                    }
                }
                self.copy_exact(size, sink)?;
                let crlf = self.read_line()?;
                if crlf != b"\r\n" {
                    return Err(invalid("missing CRLF after chunk"));
                }
                if raw {
                    sink(&crlf, self.last_read_ns)?;
                }
            },
        }
    }
}

pub fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn is_chunked(headers: &[httparse::Header]) -> bool {
    header(headers, "transfer-encoding")
        .map(|v| {
            String::from_utf8_lossy(v)
                .to_ascii_lowercase()
                .contains("chunked")
        })
        .unwrap_or(false)
}

fn content_length(headers: &[httparse::Header]) -> io::Result<Option<u64>> {
    match header(headers, "content-length") {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| invalid("bad content-length")),
    }
}

pub fn request_framing(headers: &[httparse::Header]) -> io::Result<Framing> {
    if is_chunked(headers) {
        return Ok(Framing::Chunked);
    }
    Ok(Framing::Length(content_length(headers)?.unwrap_or(0)))
}

pub fn response_framing(status: u16, headers: &[httparse::Header]) -> io::Result<Framing> {
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Length(0));
    }
    if is_chunked(headers) {
        return Ok(Framing::Chunked);
    }
    Ok(match content_length(headers)? {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

pub struct ParsedResponse {
    pub status: u16,
    pub framing: Framing,
    pub close: bool,
}

pub fn parse_response(head: &[u8]) -> io::Result<ParsedResponse> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(invalid("unparseable response head")),
    }
    let status = r.code.unwrap_or(0);
    let framing = response_framing(status, r.headers)?;
    let close = header(r.headers, "connection")
        .map(|v| v.eq_ignore_ascii_case(b"close"))
        .unwrap_or(false);
    Ok(ParsedResponse {
        status,
        framing,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads byte by byte, so every split point of the input is exercised.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }

    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nb\r\n, chunked!!\r\n0\r\nTrailer: v\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";

    #[test]
    fn chunked_payload_and_raw_relay_split_anywhere() {
        let mut c = BufConn::new(Trickle(RESP));
        let head = c.read_head().unwrap().unwrap();
        let r = parse_response(&head).unwrap();
        assert_eq!((r.status, r.framing), (200, Framing::Chunked));
        let mut body = Vec::new();
        c.read_body(r.framing, false, &mut |d, _| {
            body.extend_from_slice(d);
            Ok(())
        })
        .unwrap();
        assert_eq!(body, b"hello, chunked!!");
        // The next message on the same connection is intact.
        let head2 = c.read_head().unwrap().unwrap();
        assert_eq!(parse_response(&head2).unwrap().status, 204);
        assert!(c.read_head().unwrap().is_none());

        let mut c = BufConn::new(RESP);
        let head = c.read_head().unwrap().unwrap();
        let mut raw = head.clone();
        c.read_body(Framing::Chunked, true, &mut |d, _| {
            raw.extend_from_slice(d);
            Ok(())
        })
        .unwrap();
        assert_eq!(raw, &RESP[..raw.len()]);
        assert!(RESP[raw.len()..].starts_with(b"HTTP/1.1 204"));
    }

    #[test]
    fn truncated_bodies_are_errors() {
        let mut c = BufConn::new(&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..]);
        let h = c.read_head().unwrap().unwrap();
        let r = parse_response(&h).unwrap();
        assert_eq!(r.framing, Framing::Length(10));
        assert!(c.read_body(r.framing, false, &mut |_, _| Ok(())).is_err());
        let mut c =
            BufConn::new(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..]);
        c.read_head().unwrap();
        assert!(
            c.read_body(Framing::Chunked, false, &mut |_, _| Ok(()))
                .is_err()
        );
    }
}
