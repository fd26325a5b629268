//! A bounded byte buffer for one direction of one connection.
//!
//! Layout: `[consumed | sendable | unscanned | free]`. Bytes arrive at the end as "unscanned";
//! the response classifier marks them scanned once it knows they belong to the response being
//! relayed, and only scanned bytes are ever written out. The request direction never uses the
//! unscanned part.

use std::io::{self, Read};

pub(crate) struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    unscanned: usize,
    cap: usize,
}

impl Buf {
    /// Memory is allocated on first use, so idle connections cost little.
    pub(crate) fn new(cap: usize) -> Buf {
        Buf {
            data: Vec::new(),
            start: 0,
            end: 0,
            unscanned: 0,
            cap,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.cap
    }

    /// All bytes held (request direction).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Bytes that may be written out.
    pub(crate) fn sendable(&self) -> &[u8] {
        &self.data[self.start..self.end - self.unscanned]
    }

    pub(crate) fn unscanned(&self) -> &[u8] {
        &self.data[self.end - self.unscanned..self.end]
    }

    pub(crate) fn mark_scanned(&mut self, n: usize) {
        debug_assert!(n <= self.unscanned);
        self.unscanned -= n;
    }

    /// Discards bytes that arrived but belong to nothing we relay.
    pub(crate) fn drop_unscanned(&mut self) {
        self.end -= self.unscanned;
        self.unscanned = 0;
    }

    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.unscanned = 0;
    }

    /// Appends a small locally generated message, beyond the cap if need be.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.compact();
        if self.data.len() < self.end + bytes.len() {
            self.data.resize(self.end + bytes.len(), 0);
        }
        self.data[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// One `read` into the free space; new bytes count as unscanned. `Ok(0)` is end of stream
    /// (callers only call this when there is space).
    pub(crate) fn read_from(&mut self, r: &mut dyn Read) -> io::Result<usize> {
        if self.end == self.cap || self.data.len() < self.cap {
            self.compact();
        }
        if self.data.len() < self.cap {
            self.data.resize(self.cap, 0);
        }
        let n = r.read(&mut self.data[self.end..self.cap])?;
        self.end += n;
        self.unscanned += n;
        Ok(n)
    }

    /// Frees the memory of an empty buffer (idle keep-alive connections).
    pub(crate) fn shrink_if_empty(&mut self) {
        if self.is_empty() {
            self.data = Vec::new();
            self.clear();
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ordered() {
        let mut b = Buf::new(8);
        let mut src: &[u8] = b"0123456789";
        assert_eq!(b.read_from(&mut src).unwrap(), 8);
        assert!(b.is_full());
        assert_eq!(b.sendable(), b"");
        b.mark_scanned(5);
        assert_eq!(b.sendable(), b"01234");
        assert_eq!(b.unscanned(), b"567");
        b.consume(3);
        assert_eq!(b.read_from(&mut src).unwrap(), 2);
        assert_eq!(b.bytes(), b"3456789");
        b.drop_unscanned();
        assert_eq!(b.bytes(), b"34");
        b.push(b"xyz");
        assert_eq!(b.sendable(), b"34xyz");
    }
}
