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
        // A model seen before (nearly every request) is counted without allocating its key.
        let m = match self.by_model.get_mut(model) {
            Some(m) => m,
            None => {
                let key = if self.by_model.len() < MAX_MODELS {
                    model
                } else {
                    OTHER_MODELS
                };
                self.by_model.entry(key.to_string()).or_default()
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{ScanMode, Usage, UsageScanner};

    /// The figures a non-streaming reply with these values reports.
    fn reply(model: &str, input: u64, output: u64) -> Tokens {
        let mut s = UsageScanner::new(ScanMode::Json);
        s.feed(
            format!(
                "{{\"model\":\"{model}\",\"usage\":{{\"input_tokens\":{input},\"output_tokens\":{output}}}}}"
            )
            .as_bytes(),
        );
        match s.usage() {
            Usage::Scanned(t) => t,
            other => panic!("not scanned: {other:?}"),
        }
    }

    #[test]
    fn tokens_are_counted_by_model_up_to_the_cap() {
        let mut t = Tally::default();
        t.add(Some(200), Some(&reply("claude-a", 3, 4)));
        t.add(Some(200), Some(&reply("claude-a", 10, 20)));
        t.add(Some(429), None);
        assert_eq!(t.by_model.get("claude-a"), Some(&(13, 24)));
        assert_eq!(t.by_status, BTreeMap::from([(200, 2), (429, 1)]));
        assert_eq!((t.tokens.input, t.tokens.output), (13, 24));
        for i in 1..MAX_MODELS + 5 {
            t.add(Some(200), Some(&reply(&format!("m{i}"), 1, 2)));
        }
        assert_eq!(t.by_model.len(), MAX_MODELS + 1, "{:?}", t.by_model.keys());
        // claude-a and m1..m63 have their own line; m64..m68 count as one.
        assert_eq!(t.by_model.get(OTHER_MODELS), Some(&(5, 10)));
        assert_eq!(t.by_model.get("m63"), Some(&(1, 2)));
        assert_eq!(t.by_model.get("m64"), None);
        // A name counted before the cap was reached keeps its own line.
        t.add(Some(200), Some(&reply("claude-a", 1, 1)));
        assert_eq!(t.by_model.get("claude-a"), Some(&(14, 25)));
        assert_eq!(t.tokens.input, 13 + 1 + (MAX_MODELS as u64 + 4));
    }
}
