//! CONNECT request heads (authority-form, RFC 9112 section 3.2.3), for the `allowlist`
//! egress mode's tunnels. Parsed by the same strict core as every other head
//! (`request::parse_raw_head`: bare CR/LF, obs-fold, httparse to the last byte, HTTP/1.1,
//! control bytes in values), then:
//! - the method is `CONNECT` (405 otherwise) and the target is made only of characters an
//!   RFC 3986 authority may hold (`unreserved`, `sub-delims`, `:`, `[`, `]`, `%HH`; 400
//!   otherwise). Whether it is a `host:port` the allowlist grants is policy, decided by
//!   `crate::egress::policy::decide_connect` on the returned target;
//! - the header names pass the same look-alike rule; a CONNECT has no content, so framing is
//!   refused (400) except a lone `Content-Length: 0`; no Upgrade, no Connection naming framing,
//!   and at most one Host, valid, as for every request.
//!
//! Two things are accepted here that an origin-form head may not do, because real tunnel
//! clients do them and neither changes where a tunnel goes (the target alone decides):
//! HTTP/1.0, and no Host. Python's `http.client` (pip, urllib) sends exactly
//! `CONNECT host:port HTTP/1.0` and no header.
//!
//! [`request_form`] tells, from the request line alone, which parser a head is for.

use super::rejection::Rejection;
use super::request::{
    Header, HostRule, RequestLimits, Versions, check_fields, check_names, parse_content_length,
    parse_raw_head,
};
use super::target::{check_chars, is_sub_delim, is_unreserved};

/// A validated CONNECT head. `head_len` input bytes were used; tunnel bytes follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectHead {
    /// The request-target as sent (`host:port`, `[v6]:port`), for the policy to decide.
    pub authority: String,
    pub headers: Vec<Header>,
    pub head_len: usize,
}

/// The request forms a proxy with tunnels tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `CONNECT host:port`: [`parse_connect_head`].
    Connect,
    /// `GET http://...` (what `HTTP_PROXY` makes clients send): never proxied.
    AbsoluteHttp,
    /// Anything else: `super::parse_request_head` decides.
    Other,
}

/// The form of the request whose line starts `buf` (after optional empty lines, as the parser
/// allows), or `None` while that line is incomplete.
pub fn request_form(buf: &[u8]) -> Option<Form> {
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let line = &buf[start..];
    let end = line.iter().position(|&b| b == b'\n')?;
    let mut words = line[..end].split(|&b| b == b' ');
    let method = words.next().unwrap_or_default();
    let target = words.next().unwrap_or_default();
    Some(if method == b"CONNECT" {
        Form::Connect
    } else if target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        Form::AbsoluteHttp
    } else {
        Form::Other
    })
}

/// Parses and validates a CONNECT head at the start of `buf`: `Ok(None)` while incomplete
/// (and within limits), `Err` for a head to refuse.
pub fn parse_connect_head(
    buf: &[u8],
    limits: &RequestLimits,
) -> Result<Option<ConnectHead>, Rejection> {
    let Some(raw) = parse_raw_head(buf, limits, Versions::Http10And11)? else {
        return Ok(None);
    };
    if raw.method != "CONNECT" {
        return Err(Rejection::new(
            405,
            "invalid_request_error",
            "only CONNECT is parsed as a tunnel request",
        ));
    }
    check_authority(&raw.target)?;
    check_names(&raw.headers)?;
    check_no_content(&raw.headers)?;
    check_fields(&raw.headers, HostRule::Optional)?;
    Ok(Some(ConnectHead {
        authority: raw.target,
        headers: raw.headers,
        head_len: raw.head_len,
    }))
}

/// RFC 3986 `authority` characters only (no user info: `@` is refused too).
fn check_authority(target: &str) -> Result<(), Rejection> {
    if target.is_empty() {
        return Err(Rejection::bad_request("the CONNECT target is empty"));
    }
    let ok = |b| is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'[' | b']');
    check_chars(target.as_bytes(), ok, "CONNECT target")
}

/// A CONNECT request has no content (RFC 9110 section 9.3.6): no Transfer-Encoding, and at
/// most one `Content-Length: 0` (which some clients send).
fn check_no_content(headers: &[Header]) -> Result<(), Rejection> {
    if headers.iter().any(|h| h.is("transfer-encoding")) {
        return Err(Rejection::bad_request(
            "a CONNECT request has no body: Transfer-Encoding is not accepted",
        ));
    }
    let mut cl = headers.iter().filter(|h| h.is("content-length"));
    match (cl.next(), cl.next()) {
        (None, _) => Ok(()),
        (Some(h), None) if parse_content_length(&h.value) == Some(0) => Ok(()),
        _ => Err(Rejection::bad_request(
            "a CONNECT request has no body: only one Content-Length: 0 is accepted",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> RequestLimits {
        RequestLimits {
            max_head: 1024,
            max_headers: 8,
            max_body: 1000,
        }
    }

    fn parse(s: &[u8]) -> Result<Option<ConnectHead>, Rejection> {
        parse_connect_head(s, &lim())
    }

    fn status(s: &[u8]) -> u16 {
        parse(s).expect_err("should be refused").status
    }

    const GOOD: &[u8] = b"CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\nUser-Agent: git/2\r\n\r\nEARLY";

    #[test]
    fn parses_a_good_head_and_leaves_tunnel_bytes() {
        let h = parse(GOOD).unwrap().unwrap();
        assert_eq!(h.authority, "github.com:443");
        assert_eq!(h.head_len, GOOD.len() - b"EARLY".len());
        let names: Vec<_> = h.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Host", "User-Agent"]);
        for t in ["[2001:db8::1]:443", "1.2.3.4:22", "no-port-here", "a.b:0"] {
            // Syntax only: ports and hosts are the policy's to judge.
            let req = format!("CONNECT {t} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(parse(req.as_bytes()).unwrap().unwrap().authority, t);
        }
        let cl0 = b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 0\r\n\r\n";
        assert!(parse(cl0).unwrap().is_some());
        // Python's http.client: HTTP/1.0, no Host. And HTTP/1.1 without Host.
        for req in [
            &b"CONNECT pypi.org:443 HTTP/1.0\r\n\r\n"[..],
            b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n",
            b"CONNECT pypi.org:443 HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n",
        ] {
            let h = parse(req).unwrap().unwrap();
            assert_eq!(
                (h.authority.as_str(), h.head_len),
                ("pypi.org:443", req.len())
            );
        }
    }

    /// Byte by byte: every prefix is incomplete, never refused, never a different head.
    #[test]
    fn every_prefix_is_incomplete() {
        let head_len = GOOD.len() - 5;
        for n in 0..head_len {
            assert_eq!(parse(&GOOD[..n]), Ok(None), "prefix {n}");
        }
        for n in head_len..=GOOD.len() {
            assert_eq!(parse(&GOOD[..n]).unwrap().unwrap().head_len, head_len);
        }
    }

    /// Every shape the origin-form parser refuses is refused here too, with the same status,
    /// plus what only a CONNECT can get wrong (content, a target that is no authority).
    #[test]
    fn smuggling_shapes_are_refused_as_for_every_head() {
        let cases: &[(&[u8], u16)] = &[
            (b"CONNECT a:1 HTTP/1.1\nHost: a:1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a\r1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\tfolded\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX A: 1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX-A : 1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n: 1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX-A: a\x01b\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX-A: a\x7fb\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nHost: b:1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.0\r\nHost: a:1\r\nHost: a:1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: user@a:1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: \r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 5\r\n\r\nhello", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: +0\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nTransfer_Encoding: chunked\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent_Length: 0\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nProxy_Authorization: x\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nUpgrade: h2c\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nConnection: host\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/0.9\r\nHost: a:1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/2.0\r\nHost: a:1\r\n\r\n", 400),
            (b"CONNECT  a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\n\r\n", 431),
            (b"connect a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n", 405),
            (b"GET /v1/x HTTP/1.1\r\nHost: a:1\r\n\r\n", 405),
        ];
        for (req, want) in cases {
            assert_eq!(status(req), *want, "{}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn targets_that_are_no_authority_are_refused() {
        for t in [
            "http://a:1/",
            "a:1/x",
            "/x",
            "a:1?q",
            "a:1#f",
            "user@a:1",
            "a\"b:1",
            "a|b:1",
            "a{b}:1",
            "a\\b:1",
            "a%zz:1",
            "a%:1",
            "caf\u{e9}.com:443",
        ] {
            let req = format!("CONNECT {t} HTTP/1.1\r\nHost: a:1\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 400, "{t:?}");
        }
    }

    #[test]
    fn head_size_limit_applies_before_the_head_is_complete() {
        let mut big = b"CONNECT a:1 HTTP/1.1\r\nX-A: ".to_vec();
        big.resize(1025, b'a');
        assert_eq!(status(&big), 431);
    }

    #[test]
    fn rejection_messages_never_quote_values() {
        let secret = "sk-ant-oat01-SECRETVALUE";
        for r in [
            format!(
                "CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nProxy-Authorization: {secret}\x01\r\n\r\n"
            ),
            format!("CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: {secret}\r\n\r\n"),
            format!("CONNECT a:1 HTTP/1.1\r\nHost: {secret}@a\r\n\r\n"),
        ] {
            let e = parse(r.as_bytes()).unwrap_err();
            assert!(!e.message.contains("SECRETVALUE"), "{}", e.message);
        }
    }

    #[test]
    fn forms_from_the_request_line() {
        assert_eq!(
            request_form(b"CONNECT a:1 HTTP/1.1"),
            None,
            "line incomplete"
        );
        assert_eq!(request_form(b""), None);
        assert_eq!(
            request_form(b"CONNECT a:1 HTTP/1.1\r\n"),
            Some(Form::Connect)
        );
        assert_eq!(
            request_form(b"\r\nCONNECT a:1 HTTP/1.1\r\n"),
            Some(Form::Connect)
        );
        assert_eq!(
            request_form(b"GET HTTP://x/ HTTP/1.1\r\n"),
            Some(Form::AbsoluteHttp)
        );
        assert_eq!(
            request_form(b"POST http://x/v1 HTTP/1.1\r\n"),
            Some(Form::AbsoluteHttp)
        );
        assert_eq!(
            request_form(b"GET /v1/messages HTTP/1.1\r\n"),
            Some(Form::Other)
        );
        assert_eq!(request_form(b"connect a:1 HTTP/1.1\r\n"), Some(Form::Other));
        assert_eq!(
            request_form(b"GET https://x/ HTTP/1.1\r\n"),
            Some(Form::Other)
        );
    }

    proptest::proptest! {
        /// Random bytes never panic, and a head found in a prefix is the head of the whole.
        #[test]
        fn arbitrary_bytes_never_panic_and_agree_with_prefixes(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let whole = parse(&raw);
            let cut = cut % (raw.len() + 1);
            if let Ok(Some(h)) = parse(&raw[..cut]) {
                proptest::prop_assert_eq!(Ok(Some(h)), whole.clone());
            }
            if let Ok(Some(h)) = whole {
                proptest::prop_assert!(h.head_len <= raw.len());
                proptest::prop_assert!(check_authority(&h.authority).is_ok());
            }
            let _ = request_form(&raw);
        }
    }
}
