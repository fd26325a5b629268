//! The one log line per request (a leaf): its fields, rendered as the human line and attached
//! to the record as key-value pairs, so `BOTTLE_LOG_FORMAT=json` gets them as keys
//! (`crate::logging`). Never a header value, a query string or a body byte.

use std::fmt;

use crate::http::{Tokens, UnscannedReason, Usage};

/// What one request's line says.
pub(crate) struct RequestLine<'a> {
    pub(crate) method: &'a str,
    /// Without the query, at most 200 bytes (`ctx::log_path`).
    pub(crate) path: &'a str,
    pub(crate) status: Option<u16>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) ms: u64,
    /// `new`, `reused` or `none` (answered by the proxy itself).
    pub(crate) upstream: &'static str,
    pub(crate) usage: Option<&'a Usage>,
    /// Why the proxy answered itself or cut the reply; empty when it did not.
    pub(crate) note: &'a str,
}

/// The figures of a reply that reports usage (a `GET /v1/models` list does not).
pub(crate) fn reported(usage: &Usage) -> Option<&Tokens> {
    match usage {
        Usage::Scanned(t)
            if t.model().is_some()
                || t.input.is_some()
                || t.output.is_some()
                || t.cache_read.is_some()
                || t.cache_write.is_some() =>
        {
            Some(t)
        }
        _ => None,
    }
}

fn unseen(usage: Option<&Usage>) -> bool {
    matches!(
        usage,
        Some(Usage::Unscanned {
            reason: UnscannedReason::Encoded
        })
    )
}

impl RequestLine<'_> {
    /// Logs the line at `level` (info for a request, warn for a limit).
    pub(crate) fn log(&self, level: log::Level) {
        let t = self.usage.and_then(reported);
        let note = (!self.note.is_empty()).then_some(self.note);
        log::log!(
            level,
            method = self.method,
            path = self.path,
            status = self.status,
            "in" = self.bytes_in,
            "out" = self.bytes_out,
            ms = self.ms,
            upstream = self.upstream,
            model = t.and_then(Tokens::model),
            tokens_in = t.and_then(|t| t.input),
            tokens_out = t.and_then(|t| t.output),
            cache_read = t.and_then(|t| t.cache_read),
            cache_write = t.and_then(|t| t.cache_write),
            usage_unseen = unseen(self.usage),
            note = note;
            "{self}"
        );
    }
}

/// `proxy: POST /v1/messages 200 in=.. out=.. 12ms upstream=reused model=.. tokens_in=..
/// tokens_out=.. cache_read=.. cache_write=.. (note)`; `-` for what is not known.
impl fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        write!(
            f,
            "proxy: {} {} {} in={} out={} {}ms upstream={}",
            self.method,
            self.path,
            self.status
                .map_or_else(|| "-".to_string(), |s| s.to_string()),
            self.bytes_in,
            self.bytes_out,
            self.ms,
            self.upstream
        )?;
        if let Some(t) = self.usage.and_then(reported) {
            write!(
                f,
                " model={} tokens_in={} tokens_out={} cache_read={} cache_write={}",
                t.model().unwrap_or("-"),
                n(t.input),
                n(t.output),
                n(t.cache_read),
                n(t.cache_write)
            )?;
        } else if unseen(self.usage) {
            f.write_str(" usage=unseen (the upstream compressed the reply)")?;
        }
        if !self.note.is_empty() {
            write!(f, " {}", self.note)?;
        }
        Ok(())
    }
}
