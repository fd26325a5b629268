//! Counters the event loop publishes (a leaf: buffers and the loop both update them).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use crate::http::Tokens;

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
    /// Requests by status, tokens, egress decisions: what `bottle-init status` reports.
    pub tally: Mutex<Tally>,
}

/// Most distinct model names counted one by one; later names count under [`OTHER_MODELS`]
/// (the names come from the upstream, so this only guards against surprises).
pub const MAX_MODELS: usize = 64;
/// Where tokens of models past [`MAX_MODELS`] are counted.
pub const OTHER_MODELS: &str = "(other)";

/// What `bottle-init status` reports, kept by the event loop under [`Stats::tally`]'s lock
/// (taken once per finished request and once per status query).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Answered requests by status (a request cut before its status is in `Stats::requests`
    /// only).
    pub by_status: BTreeMap<u16, u64>,
    pub tokens: TokenCounts,
    /// Input and output tokens by model.
    pub by_model: BTreeMap<String, (u64, u64)>,
    /// CONNECT tunnels opened (`allowlist`).
    pub egress_allowed: u64,
    /// CONNECT or plain-http requests refused by the egress policy.
    pub egress_denied: u64,
    /// Requests answered 429 by `BOTTLE_MAX_*` without being forwarded.
    pub limited: u64,
}

/// Token counts by kind, over the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Tally {
    /// One answered request and the usage its reply reported.
    pub fn add(&mut self, status: Option<u16>, usage: Option<&Tokens>) {
        if let Some(s) = status {
            *self.by_status.entry(s).or_default() += 1;
        }
        let Some(t) = usage else { return };
        let (input, output) = (t.input.unwrap_or(0), t.output.unwrap_or(0));
        let k = &mut self.tokens;
        k.input = k.input.saturating_add(input);
        k.output = k.output.saturating_add(output);
        k.cache_read = k.cache_read.saturating_add(t.cache_read.unwrap_or(0));
        k.cache_write = k.cache_write.saturating_add(t.cache_write.unwrap_or(0));
        let model = t.model().unwrap_or("-");
        let key = if self.by_model.contains_key(model) || self.by_model.len() < MAX_MODELS {
            model
        } else {
            OTHER_MODELS
        };
        let m = self.by_model.entry(key.to_string()).or_default();
        m.0 = m.0.saturating_add(input);
        m.1 = m.1.saturating_add(output);
    }
}

impl Stats {
    /// One answered request (forwarded or refused), as logged, and the usage it reported.
    pub(crate) fn count_request(&self, status: Option<u16>, usage: Option<&Tokens>) {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.with_tally(|t| t.add(status, usage));
    }

    /// Runs `f` on the tally (a poisoned lock only means a panic elsewhere: the counts stand).
    pub fn with_tally<R>(&self, f: impl FnOnce(&mut Tally) -> R) -> R {
        let mut guard = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}
