//! The proxy's tunables and how they are fitted to the descriptors the process may open.

use std::time::Duration;

use super::resolver::MAX_LOOKUPS;

/// Tunables of the proxy. [`Limits::default`] is what bottle-init runs with; tests shorten
/// the timeouts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Client connections served at once; beyond it a connection is answered 503.
    pub max_connections: usize,
    /// Connections past `max_connections` being answered 503 at once (each holds its
    /// descriptor until the client has read the answer, or briefly). Beyond this the proxy
    /// stops accepting: new connections wait in the kernel's backlog, never reset.
    pub max_overflow: usize,
    /// The RLIMIT_NOFILE soft limit these limits were fitted to ([`Limits::fit_to_fds`]).
    pub fd_limit: Option<u64>,
    /// Descriptors left for connections under that limit: the proxy accepts only while the
    /// worst case (two per served client, one per pooled upstream and per overflow answer)
    /// stays within it, so accept never meets EMFILE. Overflow answers may then use what the
    /// pool does not (more than `max_overflow` at a time).
    pub fd_budget: Option<usize>,
    /// Request head size, header count and body size (431 / 431 / 413).
    pub request: crate::http::RequestLimits,
    /// Bytes buffered per direction per connection (backpressure beyond it).
    pub buffer_size: usize,
    /// A request head must be complete this long after its first byte (slowloris): 408.
    pub head_timeout: Duration,
    /// An idle keep-alive client connection is closed after this long.
    pub idle_timeout: Duration,
    /// DNS + TCP connect + TLS handshake to the upstream: 504 beyond it.
    pub connect_timeout: Duration,
    /// Longest silence (no byte either way) inside one exchange. At least claude's own 600 s.
    pub stream_idle_timeout: Duration,
    /// Idle upstream connections kept for reuse: as many as there are concurrent clients,
    /// so that steady use at that concurrency costs no handshakes.
    pub pool_max_idle: usize,
    /// An idle pooled upstream connection is closed after this long.
    pub pool_idle_timeout: Duration,
    /// A keep-alive client connection idle this long gives its buffers back (wiped); they
    /// are kept across back-to-back requests, so that busy connections do not reallocate.
    pub buffer_release_after: Duration,
    /// `BOTTLE_MAX_*` (issue 12): requests past them are answered 429, not forwarded.
    pub usage: crate::config::UsageLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_overflow: 256,
            fd_limit: None,
            fd_budget: None,
            request: crate::http::RequestLimits::default(),
            buffer_size: 64 * 1024,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(610),
            pool_max_idle: 256,
            pool_idle_timeout: Duration::from_secs(30),
            buffer_release_after: Duration::from_secs(3),
            usage: crate::config::UsageLimits::default(),
        }
    }
}

/// Descriptors the proxy keeps free for everything that is not a connection: the upstream
/// lookup, files rustls or the resolver open, a second socket while a connect moves
/// on to the next address.
const FD_MARGIN: usize = 16;
/// Descriptors of the proxy itself beyond those open when it is fitted: the poller, its
/// waker and the reserve descriptor (kept to answer one connection when accept hits EMFILE).
const FD_OWN: usize = 3;

impl Limits {
    /// Sizes the connection cap, the overflow answers and the upstream pool so that they fit
    /// in `soft` descriptors with `in_use` already open: each served client can hold its socket
    /// and an upstream connection (or a tunnel's), each overflow connection its socket, each
    /// pooled upstream one; `tunnels` reserves two per concurrent CONNECT lookup. Never raises
    /// a configured limit.
    pub fn fit_to_fds(mut self, soft: u64, in_use: usize, tunnels: bool) -> Limits {
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        let lookups = if tunnels { 2 * MAX_LOOKUPS } else { 0 };
        let avail = soft.saturating_sub(in_use + FD_OWN + FD_MARGIN + lookups);
        self.max_overflow = (avail / 8).clamp(1, self.max_overflow.max(1));
        self.pool_max_idle = (avail / 4).min(self.pool_max_idle);
        let for_clients = avail.saturating_sub(self.max_overflow + self.pool_max_idle);
        self.max_connections = (for_clients / 2).clamp(1, self.max_connections.max(1));
        self.fd_limit = Some(soft as u64);
        self.fd_budget = Some(avail);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::Limits;

    #[test]
    fn limits_fit_the_descriptors() {
        let d = Limits::default();
        // Docker's default soft limit with no higher hard limit: 10 fds already open.
        let l = d.clone().fit_to_fds(1024, 10, false);
        let avail = 1024 - 10 - 3 - 16;
        assert_eq!(l.max_overflow, avail / 8);
        assert_eq!(l.pool_max_idle, avail / 4);
        assert_eq!(l.max_connections, (avail - avail / 8 - avail / 4) / 2);
        assert_eq!(
            (l.max_connections, l.max_overflow, l.pool_max_idle),
            (311, 124, 248)
        );
        // Everything fits, counting two fds per served client.
        let worst = 10 + 3 + 16 + 2 * l.max_connections + l.max_overflow + l.pool_max_idle;
        assert!(worst <= 1024, "{worst}");
        assert_eq!((l.fd_limit, l.fd_budget), (Some(1024), Some(avail)));
        // CONNECT lookups take their share.
        let t = d.clone().fit_to_fds(1024, 10, true);
        assert!(t.max_connections < l.max_connections);
        let worst = 10 + 3 + 16 + 128 + 2 * t.max_connections + t.max_overflow + t.pool_max_idle;
        assert!(worst <= 1024, "{worst}");
        // A large limit keeps the configured values.
        let big = d.clone().fit_to_fds(1 << 20, 10, true);
        assert_eq!(
            (big.max_connections, big.max_overflow, big.pool_max_idle),
            (d.max_connections, d.max_overflow, d.pool_max_idle)
        );
        // Tiny or exhausted: still at least one connection and one overflow answer.
        let tiny = d.clone().fit_to_fds(20, 30, false);
        assert_eq!(
            (tiny.max_connections, tiny.max_overflow, tiny.pool_max_idle),
            (1, 1, 0)
        );
    }
}
