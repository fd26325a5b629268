//! Counters the event loop publishes (a leaf: buffers and the loop both update them).

use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Counters the event loop publishes; read by tests and diagnostics. Never holds request data.
#[derive(Debug, Default)]
pub struct Stats {
    /// TCP connections opened to the upstream (each one costs a TLS handshake).
    pub upstream_connects: AtomicU64,
    /// TLS handshakes with the upstream that completed.
    pub upstream_handshakes: AtomicU64,
    /// Requests that reused a pooled upstream connection.
    pub upstream_reused: AtomicU64,
    /// Requests answered (forwarded or refused), as logged.
    pub requests: AtomicU64,
    /// Client connections currently open.
    pub open_clients: AtomicUsize,
    /// Upstream connections currently open (in use or pooled).
    pub open_upstreams: AtomicUsize,
    /// Largest number of bytes one connection ever held in its proxy buffers.
    pub peak_connection_buffered: AtomicUsize,
    /// Bytes allocated right now for the client connections' buffers (both directions, all
    /// connections): grows with the data actually relayed, not with the buffer cap.
    pub buffer_capacity: AtomicUsize,
    /// Idle client connections whose buffers were released.
    pub buffers_released: AtomicU64,
    /// Connections answered 503 because the cap was reached.
    pub overflow_answered: AtomicU64,
    /// Of those, answered through the reserve descriptor after accept failed with EMFILE.
    pub reserve_answered: AtomicU64,
}
