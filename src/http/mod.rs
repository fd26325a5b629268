//! Pure HTTP/1.1 logic for the proxy: request-head parsing and validation (origin-form
//! requests in [`request`], CONNECT's authority-form in [`connect`], one shared strict core),
//! header rewriting, body framing, response-head parsing, the usage scanner and locally
//! generated responses. No I/O here, and nothing from `crate::proxy`: everything is fed bytes
//! and tested whole, byte by byte and in random splits.
//!
//! Layering (checked by `scripts/import-graph`): `rejection` and `target` are leaves;
//! `request` < `body`, `connect`, `response`, `rewrite`; `mod.rs` only re-exports.
//!
//! Invariants:
//! - a request head is accepted only in one unambiguous shape (no smuggling: one framing,
//!   strict CRLF, no obs-fold, valid names and values, no underscore look-alikes of framing,
//!   hop-by-hop or credential names, one valid Host) and with an allowed method and an RFC 3986
//!   target ([`target`]); anything else is a [`Rejection`];
//! - bodies are never decoded into new bytes: the framers only track where a body ends, so the
//!   proxy forwards the original bytes unchanged;
//! - nothing here logs, and no rejection message ever quotes a header value (so a credential
//!   sent by a client can never be echoed back or logged).

pub mod body;
pub mod connect;
/// The fuzz harness (cargo-fuzz's `--cfg fuzzing`, and the bounded CI test that integration
/// tests build with the `test-hooks` feature); never in a release build.
#[cfg(any(fuzzing, feature = "test-hooks"))]
#[doc(hidden)]
pub mod fuzz;
pub mod local;
pub mod rejection;
pub mod request;
pub mod response;
pub mod rewrite;
pub mod target;
pub mod usage;

pub use body::{BodyFramer, FramingError};
pub use connect::{ConnectHead, Form, parse_connect_head, request_form};
pub use local::{error_response, final_error_response, warmup_response};
pub use rejection::Rejection;
pub use request::{BodyLength, Header, RequestHead, RequestLimits, parse_request_head};
pub use response::{ResponseHead, parse_response_head};
pub use rewrite::{AuthCheck, check_session_secret, upstream_request_head};
pub use usage::{Outcome, ScanMode, Tokens, UnscannedReason, Usage, UsageScanner};

#[cfg(test)]
mod props {
    //! Property tests: any split of the input gives the same result as feeding it whole.
    use super::*;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}"
    }

    fn field() -> impl Strategy<Value = (String, String)> {
        (token(), "[ -~\t]{0,40}").prop_filter("not framing or hop-by-hop", |(n, _)| {
            let l = n.to_ascii_lowercase();
            !matches!(
                l.as_str(),
                "content-length" | "transfer-encoding" | "host" | "upgrade" | "connection"
            )
        })
    }

    /// Parses `buf` growing it by the given split points, like a socket delivering pieces.
    fn parse_incrementally(buf: &[u8], cuts: &[usize]) -> Result<Option<RequestHead>, Rejection> {
        let limits = RequestLimits::default();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (buf.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts {
            if let Some(h) = parse_request_head(&buf[..c], &limits)? {
                return Ok(Some(h));
            }
        }
        parse_request_head(buf, &limits)
    }

    proptest! {
        #[test]
        fn heads_parse_the_same_in_any_split(
            fields in proptest::collection::vec(field(), 0..20),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut raw = b"POST /v1/messages HTTP/1.1\r\nHost: h\r\n".to_vec();
            for (n, v) in &fields {
                raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            let head_len = raw.len();
            raw.extend_from_slice(&body);
            let whole = parse_request_head(&raw, &RequestLimits::default());
            let split = parse_incrementally(&raw, &cuts);
            prop_assert_eq!(&whole, &split);
            let h = whole.unwrap().unwrap();
            prop_assert_eq!(h.head_len, head_len);
            prop_assert_eq!(h.headers.len(), fields.len() + 2);
            for ((n, v), got) in fields.iter().zip(&h.headers[1..]) {
                prop_assert_eq!(n, &got.name);
                prop_assert_eq!(v.trim_matches([' ', '\t']).as_bytes(), &got.value[..]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_agree_with_splits(
            raw in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            let whole = parse_request_head(&raw, &RequestLimits::default());
            if let Ok(Some(h)) = &whole {
                // Whatever is accepted is origin-form with one unambiguous framing.
                prop_assert!(h.target.starts_with('/'));
                prop_assert!(h.head_len <= raw.len());
            }
            // A prefix never reports a different complete head than the whole input.
            if let Ok(Some(h)) = parse_incrementally(&raw, &cuts) {
                prop_assert_eq!(Ok(Some(h)), whole);
            }
        }

        #[test]
        fn chunked_bodies_end_at_the_same_byte_in_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 0..10),
            ext in proptest::bool::ANY,
            trailer in proptest::bool::ANY,
            pieces in proptest::collection::vec(1usize..20, 1..6),
        ) {
            let mut body = Vec::new();
            for c in &chunks {
                body.extend_from_slice(format!("{:x}", c.len()).as_bytes());
                if ext { body.extend_from_slice(b";k=v"); }
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            if trailer { body.extend_from_slice(b"X-T: 1\r\n"); }
            body.extend_from_slice(b"\r\n");
            let end = body.len();
            body.extend_from_slice(b"NEXT");
            // As the proxy's buffer does: what is not released is offered again with more.
            let mut f = BodyFramer::chunked();
            let mut pos = 0;
            let mut arrived = 0;
            let mut sizes = pieces.iter().cycle();
            while arrived < body.len() && !f.is_done() {
                arrived += (*sizes.next().unwrap()).min(body.len() - arrived);
                pos += f.advance(&body[pos..arrived]).unwrap();
            }
            prop_assert_eq!(pos, end);
            prop_assert!(f.is_done());
        }

        #[test]
        fn framer_never_panics_on_garbage(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut f = BodyFramer::chunked().with_max(1 << 20);
            if let Ok(n) = f.advance(&raw) {
                prop_assert!(n <= raw.len());
            }
        }
    }
}
