//! A bounded byte buffer for one direction of one connection.
//!
//! Layout: `[consumed | sendable | unscanned | free]`. Bytes arrive at the end as "unscanned";
//! the response classifier marks them scanned once it knows they belong to the response being
//! relayed, and only scanned bytes are ever written out. The request direction never uses the
//! unscanned part.
//!
//! Memory: nothing is allocated until the first read; the allocation then starts at
//! [`INITIAL`] (2 KiB) and doubles, only when it is full, up to the cap, so an SSE stream of small
//! events keeps a few KiB rather than the cap. The allocation is kept across exchanges on a
//! keep-alive connection (freeing and re-faulting it per request was ~15% of the proxy's CPU
//! under musl's allocator) and given back by [`Buf::release`] when the connection has been
//! idle for a while. Every allocation that is given up (grown out of, released, dropped) is
//! wiped first: the request direction holds the session secret from the request head.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::stats::Stats;

/// First allocation of a buffer.
pub(crate) const INITIAL: usize = 2 * 1024;

pub(crate) struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    unscanned: usize,
    cap: usize,
    /// Bytes of `data` ever written (its tail beyond is still zero): what a wipe must cover.
    dirty: usize,
    /// Where the allocated capacity is published (`Stats::buffer_capacity`).
    gauge: Option<Arc<Stats>>,
}

impl Buf {
    /// Memory is allocated on first use, so connections that never send cost little.
    pub(crate) fn new(cap: usize, gauge: Option<Arc<Stats>>) -> Buf {
        Buf {
            data: Vec::new(),
            start: 0,
            end: 0,
            unscanned: 0,
            cap,
            dirty: 0,
            gauge,
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

    /// Bytes currently allocated.
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.data.len()
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
            let want = (self.end + bytes.len()).max(INITIAL);
            self.regrow(want);
        }
        self.data[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
        self.dirty = self.dirty.max(self.end);
    }

    /// One `read` into the free space; new bytes count as unscanned. `Ok(0)` is end of stream
    /// (callers only call this when there is space, that is when `!is_full()`).
    #[cfg(test)]
    pub(crate) fn read_from(&mut self, r: &mut dyn Read) -> io::Result<usize> {
        self.read_some(r).map(|(n, _)| n)
    }

    /// One `read` into the free space (new bytes count as unscanned; `0` is end of stream),
    /// and whether it was short (fewer bytes than offered, more than none): a stream socket
    /// then had nothing more queued at that instant. Callers only call it when `!is_full()`.
    pub(crate) fn read_some(&mut self, r: &mut dyn Read) -> io::Result<(usize, bool)> {
        if self.end == self.data.len() {
            self.compact();
        }
        if self.end == self.data.len() && self.data.len() < self.cap {
            // Full (or never used): double, up to the cap.
            let want = (self.data.len() * 2).max(INITIAL).min(self.cap);
            self.regrow(want);
        }
        // Never more than the cap held (the allocation may be larger after a `push`).
        let limit = (self.start + self.cap).min(self.data.len()).max(self.end);
        let offered = limit - self.end;
        let n = r.read(&mut self.data[self.end..limit])?;
        self.end += n;
        self.unscanned += n;
        self.dirty = self.dirty.max(self.end);
        Ok((n, n > 0 && n < offered))
    }

    /// Gives the allocation back (wiped) if nothing is held; returns whether it did.
    pub(crate) fn release(&mut self) -> bool {
        if !self.is_empty() || self.data.is_empty() {
            return false;
        }
        self.clear();
        self.replace_data(Vec::new());
        true
    }

    /// Moves the held bytes into a fresh zeroed allocation of `want` bytes. Not `Vec::resize`:
    /// a reallocation would leave the old bytes (the session secret) in freed memory.
    fn regrow(&mut self, want: usize) {
        let mut bigger = vec![0u8; want];
        let live = self.len();
        bigger[..live].copy_from_slice(&self.data[self.start..self.end]);
        self.end = live;
        self.start = 0;
        self.replace_data(bigger);
        self.dirty = live;
    }

    /// Swaps in `new`, wipes and frees the old allocation, and keeps the gauge right.
    fn replace_data(&mut self, new: Vec<u8>) {
        let old = std::mem::replace(&mut self.data, new);
        if let Some(g) = &self.gauge {
            g.buffer_capacity
                .fetch_add(self.data.len(), Ordering::Relaxed);
            g.buffer_capacity.fetch_sub(old.len(), Ordering::Relaxed);
        }
        retire(old, self.dirty);
        self.dirty = 0;
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.replace_data(Vec::new());
    }
}

/// Wipes the written part of a buffer that is given up, then frees it.
fn retire(mut old: Vec<u8>, dirty: usize) {
    if old.is_empty() {
        return;
    }
    let dirty = dirty.min(old.len());
    crate::secret::wipe(&mut old[..dirty]);
    #[cfg(test)]
    tests::RETIRED.with(|r| r.borrow_mut().push(old.clone()));
    drop(old);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// Copies of every allocation as it was just before being freed (test hook).
        pub(super) static RETIRED: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    fn retired() -> Vec<Vec<u8>> {
        RETIRED.with(|r| std::mem::take(&mut *r.borrow_mut()))
    }

    #[test]
    fn bounded_and_ordered() {
        let mut b = Buf::new(8, None);
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

    /// Grows only when full, doubling from INITIAL up to the cap and never beyond; the data
    /// survives every growth in order.
    #[test]
    fn grows_on_demand_up_to_the_cap() {
        let cap = 64 * 1024;
        let mut b = Buf::new(cap, None);
        assert_eq!(b.allocated(), 0);
        let mut small: &[u8] = b"data: {}\n\n";
        b.read_from(&mut small).unwrap();
        assert_eq!(
            b.allocated(),
            INITIAL,
            "a small event allocates the initial size"
        );
        let all: Vec<u8> = (0..cap * 2).map(|i| (i % 251) as u8).collect();
        let mut src: &[u8] = &all;
        let mut sizes = vec![b.allocated()];
        while !b.is_full() {
            b.read_from(&mut src).unwrap();
            if *sizes.last().unwrap() != b.allocated() {
                sizes.push(b.allocated());
            }
        }
        assert_eq!(sizes, [2048, 4096, 8192, 16384, 32768, 65536]);
        assert_eq!(b.len(), cap);
        let mut want = b"data: {}\n\n".to_vec();
        want.extend_from_slice(&all[..cap - want.len()]);
        assert!(b.bytes() == want.as_slice(), "bytes reordered by growth");
        // Consuming and reading on never grows past the cap.
        b.mark_scanned(b.len());
        b.consume(1000);
        assert_eq!(b.read_from(&mut src).unwrap(), 1000);
        assert_eq!(b.allocated(), cap);
    }

    /// The old allocation of a grown buffer, a released one and a dropped one are all wiped
    /// before they are freed, and the gauge follows the allocations.
    #[test]
    fn given_up_allocations_are_wiped() {
        retired();
        let stats = Arc::new(Stats::default());
        let secret = b"Authorization: Bearer bottle-SECRET\r\n";
        let mut b = Buf::new(64 * 1024, Some(stats.clone()));
        let mut head: &[u8] = secret;
        b.read_from(&mut head).unwrap();
        assert_eq!(stats.buffer_capacity.load(Ordering::Relaxed), INITIAL);
        // Fill it so that it grows: the 4 KiB allocation with the secret is given up.
        let filler = vec![b'x'; INITIAL + 10];
        let mut src: &[u8] = &filler;
        while b.allocated() == INITIAL {
            b.read_from(&mut src).unwrap();
        }
        assert_eq!(stats.buffer_capacity.load(Ordering::Relaxed), 2 * INITIAL);
        assert!(b.bytes().starts_with(secret), "live bytes kept");
        let r = retired();
        assert_eq!(r.len(), 1, "one allocation given up by the growth");
        assert_eq!(r[0].len(), INITIAL);
        assert!(
            r[0].iter().all(|&x| x == 0),
            "grown-out allocation not wiped"
        );

        // Released when empty (and only then), wiped.
        assert!(!b.release(), "a buffer holding bytes must not be released");
        let n = b.len();
        b.mark_scanned(n);
        b.consume(n);
        assert!(b.release());
        assert_eq!(b.allocated(), 0);
        assert_eq!(stats.buffer_capacity.load(Ordering::Relaxed), 0);
        let r = retired();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].len(), 2 * INITIAL);
        assert!(
            r[0].iter().all(|&x| x == 0),
            "released allocation not wiped"
        );

        // Usable again after a release; dropped: wiped.
        let mut head: &[u8] = secret;
        b.read_from(&mut head).unwrap();
        assert_eq!(b.bytes(), secret);
        b.push(b"local answer");
        drop(b);
        assert_eq!(stats.buffer_capacity.load(Ordering::Relaxed), 0);
        let r = retired();
        assert_eq!(r.len(), 1);
        assert!(r[0].iter().all(|&x| x == 0), "dropped allocation not wiped");
    }

    /// Keeping the allocation across exchanges: an emptied buffer is reused, not reallocated.
    #[test]
    fn kept_across_exchanges() {
        retired();
        let mut b = Buf::new(64 * 1024, None);
        for _ in 0..10 {
            let mut req: &[u8] = b"POST /v1/messages HTTP/1.1\r\n\r\n";
            b.read_from(&mut req).unwrap();
            let n = b.len();
            b.mark_scanned(n);
            b.consume(n);
        }
        assert_eq!(b.allocated(), INITIAL);
        assert!(
            retired().is_empty(),
            "no allocation given up between exchanges"
        );
    }
}
