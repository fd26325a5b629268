//! Upstream response heads: just enough parsing to know how the body is framed, whether the
//! connection may be reused, and whether this is an interim (1xx) response. The head bytes
//! themselves are relayed to the client unchanged.

use super::body::BodyFramer;
use super::request::{is_special_name, list_contains, list_items, parse_content_length, trim_ows};
use super::usage::ScanMode;

/// Most response header fields we accept from the upstream.
const MAX_RESPONSE_HEADERS: usize = 256;
/// Largest response head we buffer before giving up on the upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    /// Where the body ends. For 1xx this is an empty body and another head follows.
    pub framing: BodyFramer,
    /// The upstream connection cannot carry another request after this response.
    pub close: bool,
    /// How the body's usage figures are read (`Content-Type`, `Content-Encoding`).
    pub scan: ScanMode,
}

impl ResponseHead {
    /// 1xx other than 101: relayed, then the real response follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete. `Err`: the upstream
/// sent something we will not relay (the message says what, never header values).
pub fn parse_response_head(
    buf: &[u8],
    request_was_head: bool,
) -> Result<Option<ResponseHead>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(format!(
                    "response head larger than {MAX_RESPONSE_HEAD} bytes"
                ));
            }
            return Ok(None);
        }
        Err(e) => return Err(format!("malformed response head ({e})")),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        return Err("unexpected 101 Switching Protocols (no upgrade was requested)".into());
    }
    let http10 = resp.version == Some(0);
    // The connection is reused only after a response whose framing is complete and
    // unambiguous: anything another parser could read differently closes it afterwards
    // (the response itself is still relayed, framed the way RFC 9112 section 6.3 says).
    let mut close = http10 || has_bare_lf(&buf[..head_len]);
    let mut chunked = false;
    let mut te_headers = 0;
    let mut lengths = Vec::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            if list_contains(h.value, "close") {
                close = true;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_headers += 1;
            // RFC 9112 6.3: the final coding decides; chunked must be last.
            let last = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .map(trim_ows)
                .unwrap_or(b"");
            chunked = last.eq_ignore_ascii_case(b"chunked");
            // A list of codings (`gzip, chunked`) is legal but more than we want to reason
            // about on a connection that carries credentials next.
            if list_items(h.value).count() != 1 {
                close = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value).ok_or("invalid Content-Length in response")?;
            lengths.push(n);
        } else if h.name.contains('_')
            && is_special_name(&h.name.to_ascii_lowercase().replace('_', "-"))
        {
            // `Transfer_Encoding` and friends: a server that folds `_` frames it differently.
            close = true;
        }
    }
    let te_present = te_headers > 0;
    if te_headers > 1 || lengths.len() > 1 {
        close = true;
    }
    let no_body =
        request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        BodyFramer::none()
    } else if te_present {
        // A response with both is allowed to exist; TE wins, and the connection is not reused
        // so nothing can hide behind the discarded Content-Length.
        if !lengths.is_empty() {
            close = true;
        }
        if chunked {
            BodyFramer::chunked()
        } else {
            close = true;
            BodyFramer::until_close()
        }
    } else if let Some(first) = lengths.first() {
        if lengths.iter().any(|n| n != first) {
            return Err("conflicting Content-Length values in response".into());
        }
        BodyFramer::length(*first)
    } else {
        close = true;
        BodyFramer::until_close()
    };
    let scan = ScanMode::from_headers(resp.headers.iter().map(|h| (h.name, h.value)));
    Ok(Some(ResponseHead {
        status,
        head_len,
        framing,
        close,
        scan,
    }))
}

/// A line ended by LF alone (httparse accepts it in responses; other parsers may not).
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_kinds() {
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.status, r.head_len, r.framing, r.close),
            (200, 38, BodyFramer::length(3), false)
        );
        let r = parse_response_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, BodyFramer::chunked());
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(r.framing.is_until_close() && r.close);
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert!(r.framing.is_done());
        for s in [204, 304, 100, 103] {
            let head = format!("HTTP/1.1 {s} X\r\nContent-Length: 9\r\n\r\n");
            let r = parse_response_head(head.as_bytes(), false)
                .unwrap()
                .unwrap();
            assert!(r.framing.is_done(), "{s}");
            assert_eq!(r.is_interim(), s < 200);
        }
        let r = parse_response_head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(r.close && r.framing.is_done());
    }

    #[test]
    fn incomplete_and_bad() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
        for n in 0..full.len() {
            assert_eq!(parse_response_head(&full[..n], false), Ok(None), "{n}");
        }
        assert!(
            parse_response_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(parse_response_head(b"HTTP/1.1 101 Switching\r\n\r\n", false).is_err());
        assert!(parse_response_head(b"garbage\r\n\r\n", false).is_err());
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_RESPONSE_HEAD + 1, b'a');
        assert!(parse_response_head(&big, false).is_err());
    }

    /// Issue 10 item 11: only complete, unambiguous framing leaves the connection reusable.
    #[test]
    fn ambiguous_framing_closes_the_connection_afterwards() {
        let reusable = [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX_Custom: 1\r\nContent-Length: 3\r\n\r\n",
        ];
        for h in reusable {
            let r = parse_response_head(h.as_bytes(), false).unwrap().unwrap();
            assert!(!r.close, "{h:?}");
        }
        let ambiguous = [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer_Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent_Length: 5\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
        ];
        for h in ambiguous {
            let r = parse_response_head(h.as_bytes(), false).unwrap().unwrap();
            assert!(r.close, "{h:?} would be pooled");
        }
    }
}
