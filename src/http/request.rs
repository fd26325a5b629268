//! Request-head parsing with strict validation.
//!
//! The head is found by our own scan (so bare CR or LF anywhere in it is refused before
//! httparse, which is lenient about line endings, sees it), then parsed by httparse, then
//! checked for the shapes that let two HTTP parsers disagree about where a request ends.

use super::rejection::Rejection;
use super::target;

/// Size limits for a request. Defaults suit Claude Code (heads of a few KiB, bodies of a few
/// MiB with images).
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Bytes in the request line plus headers (431 beyond).
    pub max_head: usize,
    /// Number of header fields (431 beyond).
    pub max_headers: usize,
    /// Body bytes, Content-Length or the sum of chunk sizes (413 beyond).
    pub max_body: u64,
}

impl Default for RequestLimits {
    fn default() -> RequestLimits {
        RequestLimits {
            max_head: 64 * 1024,
            max_headers: 128,
            max_body: 64 * 1024 * 1024,
        }
    }
}

/// One header field as received: the name as sent (case kept) and the raw value bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    None,
    Length(u64),
    Chunked,
}

/// A validated request head. `head_len` is how many input bytes it used; the body follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target exactly as sent (origin-form: starts with `/`).
    pub target: String,
    pub headers: Vec<Header>,
    pub head_len: usize,
    pub body: BodyLength,
}

impl RequestHead {
    /// The target without its query string: what the log line shows.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Header> + 'a {
        self.headers.iter().filter(move |h| h.is(name))
    }

    /// Whether the client asked to close the connection after this exchange.
    pub fn wants_close(&self) -> bool {
        self.headers_named("connection")
            .any(|h| list_contains(&h.value, "close"))
    }
}

/// Parses and validates an origin-form request head at the start of `buf`.
///
/// `Ok(None)`: the head is incomplete and still within limits (read more bytes).
/// `Err`: the request must be refused with that status; the connection should close.
pub fn parse_request_head(
    buf: &[u8],
    limits: &RequestLimits,
) -> Result<Option<RequestHead>, Rejection> {
    let Some(raw) = parse_raw_head(buf, limits, Versions::Http11)? else {
        return Ok(None);
    };
    target::check_method(&raw.method)?;
    target::check_target(&raw.target)?;
    check_names(&raw.headers)?;
    let body = body_length(&raw.headers, limits)?;
    check_fields(&raw.headers, HostRule::Required)?;
    Ok(Some(RequestHead {
        method: raw.method,
        target: raw.target,
        headers: raw.headers,
        head_len: raw.head_len,
        body,
    }))
}

/// The HTTP versions a form accepts (others get 505).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Versions {
    Http11,
    /// HTTP/1.0 too: CONNECT from Python's `http.client` (pip, urllib) is
    /// `CONNECT host:port HTTP/1.0` with no Host.
    Http10And11,
}

/// Whether a request without a Host is refused.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostRule {
    /// RFC 9112 section 3.2: every HTTP/1.1 request has one.
    Required,
    /// CONNECT: the target alone says where the tunnel goes (clients such as Python's omit
    /// Host); one that is sent must still be single and valid.
    Optional,
}

/// What every request head shares before its form's own rules: found by [`find_head_end`]
/// (no bare CR or LF, within the size limit), no obs-fold, parsed by httparse to the last
/// byte, an accepted HTTP version, no control character in a value.
pub(crate) struct RawHead {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<Header>,
    pub(crate) head_len: usize,
}

/// The strict core shared by [`parse_request_head`] and `super::connect`; the checks run in
/// this order, so each malformed shape gets the same status whatever the form.
pub(crate) fn parse_raw_head(
    buf: &[u8],
    limits: &RequestLimits,
    versions: Versions,
) -> Result<Option<RawHead>, Rejection> {
    let Some(head_len) = find_head_end(buf, limits.max_head)? else {
        return Ok(None);
    };
    let head = &buf[..head_len];
    reject_obs_fold(head)?;

    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(_) => return Err(Rejection::bad_request("the request head is malformed")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::new(
                431,
                "invalid_request_error",
                format!(
                    "the request has more than {} header fields",
                    limits.max_headers
                ),
            ));
        }
        Err(e) => {
            return Err(Rejection::bad_request(format!(
                "the request head is malformed ({e})"
            )));
        }
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let accepted = match versions {
        Versions::Http11 => req.version == Some(1),
        Versions::Http10And11 => matches!(req.version, Some(0 | 1)),
    };
    if !accepted {
        return Err(Rejection::new(
            505,
            "invalid_request_error",
            "only HTTP/1.1 is supported by this proxy",
        ));
    }
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        if h.value
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(Rejection::bad_request(format!(
                "header {:?} has a control character in its value",
                h.name
            )));
        }
        headers.push(Header {
            name: h.name.to_string(),
            value: h.value.to_vec(),
        });
    }
    Ok(Some(RawHead {
        method,
        target,
        headers,
        head_len,
    }))
}

/// No header name that folds onto a special one ([`reject_look_alike`]).
pub(crate) fn check_names(headers: &[Header]) -> Result<(), Rejection> {
    headers.iter().try_for_each(|h| reject_look_alike(&h.name))
}

/// The field rules after framing, shared by every form: no Upgrade, no Connection naming a
/// framing or routing header, exactly one valid Host (RFC 9112 section 3.2; at most one
/// under [`HostRule::Optional`]).
pub(crate) fn check_fields(headers: &[Header], host: HostRule) -> Result<(), Rejection> {
    if headers.iter().any(|h| h.is("upgrade")) {
        return Err(Rejection::bad_request(
            "protocol upgrades (Upgrade header, e.g. WebSocket or h2c) are not supported",
        ));
    }
    for h in headers.iter().filter(|h| h.is("connection")) {
        for token in list_items(&h.value) {
            let named_framing = ["content-length", "transfer-encoding", "host"]
                .iter()
                .any(|f| token.eq_ignore_ascii_case(f.as_bytes()));
            if named_framing {
                return Err(Rejection::bad_request(
                    "the Connection header names a header that is not hop-by-hop",
                ));
            }
        }
    }
    let mut hosts = headers.iter().filter(|h| h.is("host"));
    match (hosts.next(), hosts.next()) {
        (None, _) if host == HostRule::Optional => Ok(()),
        (None, _) => Err(Rejection::bad_request(
            "the request has no Host header (RFC 9112 section 3.2)",
        )),
        (Some(_), Some(_)) => Err(Rejection::bad_request(
            "the request has more than one Host header",
        )),
        (Some(h), None) => target::check_host(&h.value),
    }
}

/// Finds the end of the head (just past the empty line). Refuses a bare CR or LF before it and
/// heads longer than `max_head`. Leading empty lines (CRLF) are tolerated as RFC 9112 allows.
fn find_head_end(buf: &[u8], max_head: usize) -> Result<Option<usize>, Rejection> {
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let mut i = start;
    let scan_end = buf.len().min(max_head.saturating_add(1));
    while i < scan_end {
        match buf[i] {
            b'\n' => {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(Rejection::bad_request("the request head has a bare LF"));
                }
                if i >= start + 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
                    let len = i + 1;
                    if len > max_head {
                        break;
                    }
                    return Ok(Some(len));
                }
            }
            b'\r' => {
                if let Some(&next) = buf.get(i + 1)
                    && next != b'\n'
                {
                    return Err(Rejection::bad_request("the request head has a bare CR"));
                }
            }
            _ => {}
        }
        i += 1;
    }
    if buf.len() > max_head {
        return Err(Rejection::new(
            431,
            "invalid_request_error",
            format!("the request head is larger than {max_head} bytes"),
        ));
    }
    Ok(None)
}

/// Obsolete line folding (a header line starting with SP or HTAB) is refused: parsers disagree
/// on it.
fn reject_obs_fold(head: &[u8]) -> Result<(), Rejection> {
    let folded = head
        .windows(3)
        .any(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t'));
    if folded {
        return Err(Rejection::bad_request(
            "obsolete header line folding (obs-fold) is not accepted",
        ));
    }
    Ok(())
}

/// Header names the proxy treats specially (framing, routing, hop-by-hop, credentials): a
/// name that is not one of them but becomes one with `_` read as `-` (`Transfer_Encoding`,
/// `X_Api_Key`) is refused, because servers that fold underscores (nginx with
/// `underscores_in_headers`, CGI-style frameworks) would read it as that header.
pub(crate) fn is_special_name(normalized: &str) -> bool {
    matches!(
        normalized,
        "content-length"
            | "transfer-encoding"
            | "host"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "authorization"
            | "x-api-key"
            | "cookie"
    ) || normalized.starts_with("proxy-")
}

fn reject_look_alike(name: &str) -> Result<(), Rejection> {
    if !name.contains('_') {
        return Ok(());
    }
    let normalized = name.to_ascii_lowercase().replace('_', "-");
    if is_special_name(&normalized) {
        return Err(Rejection::bad_request(format!(
            "header {name:?} looks like {normalized:?} with underscores; send the real header \
             name (or none)"
        )));
    }
    Ok(())
}

/// Works out the body framing, refusing every ambiguous combination.
pub(crate) fn body_length(
    headers: &[Header],
    limits: &RequestLimits,
) -> Result<BodyLength, Rejection> {
    let te: Vec<&Header> = headers
        .iter()
        .filter(|h| h.is("transfer-encoding"))
        .collect();
    let cl: Vec<&Header> = headers.iter().filter(|h| h.is("content-length")).collect();
    if !te.is_empty() && !cl.is_empty() {
        return Err(Rejection::bad_request(
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    if cl.len() > 1 {
        return Err(Rejection::bad_request(
            "the request has more than one Content-Length",
        ));
    }
    if te.len() > 1 {
        return Err(Rejection::bad_request(
            "the request has more than one Transfer-Encoding",
        ));
    }
    if let Some(te) = te.first() {
        if !trim_ows(&te.value).eq_ignore_ascii_case(b"chunked") {
            return Err(Rejection::bad_request(
                "the only Transfer-Encoding accepted is exactly \"chunked\"",
            ));
        }
        return Ok(BodyLength::Chunked);
    }
    if let Some(cl) = cl.first() {
        let n = parse_content_length(&cl.value)
            .ok_or_else(|| Rejection::bad_request("Content-Length is not a decimal number"))?;
        if n > limits.max_body {
            return Err(Rejection::new(
                413,
                "request_too_large",
                format!("the request body is larger than {} bytes", limits.max_body),
            ));
        }
        return Ok(if n == 0 {
            BodyLength::None
        } else {
            BodyLength::Length(n)
        });
    }
    Ok(BodyLength::None)
}

/// `1*DIGIT` only (no sign, no spaces inside, no list), at most 19 digits so it fits a u64.
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let v = trim_ows(value);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// The items of a comma-separated header list, trimmed, empty items skipped.
pub(crate) fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

pub(crate) fn list_contains(v: &[u8], token: &str) -> bool {
    list_items(v).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
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

    fn parse(s: &[u8]) -> Result<Option<RequestHead>, Rejection> {
        parse_request_head(s, &lim())
    }

    fn status(s: &[u8]) -> u16 {
        parse(s).expect_err("should be refused").status
    }

    const GOOD: &[u8] = b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello";

    #[test]
    fn parses_a_good_head() {
        let h = parse(GOOD).unwrap().unwrap();
        assert_eq!(h.method, "POST");
        assert_eq!(h.target, "/v1/messages?beta=true");
        assert_eq!(h.path(), "/v1/messages");
        assert_eq!(h.body, BodyLength::Length(5));
        assert_eq!(h.head_len, GOOD.len() - 5);
        let names: Vec<_> = h.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Host", "Content-Length", "X-A"]);
    }

    #[test]
    fn every_prefix_is_incomplete_and_the_whole_is_complete() {
        let head_len = GOOD.len() - 5;
        for n in 0..head_len {
            assert_eq!(parse(&GOOD[..n]), Ok(None), "prefix {n}");
        }
        for n in head_len..=GOOD.len() {
            assert_eq!(parse(&GOOD[..n]).unwrap().unwrap().head_len, head_len);
        }
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let cases: &[(&[u8], u16)] = &[
            (b"POST /v1/x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST /v1/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            (b"POST /v1/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
            (b"POST /v1/x HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n", 400),
            (b"POST /v1/x HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400),
            (b"POST /v1/x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            (b"POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST /v1/x HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\nX-A: 1\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\nX-A: 1\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\nX-A: a\rb\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\nX A: 1\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\nX-A : 1\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\n: 1\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\nX-A: a\x01b\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET http://evil/v1/x HTTP/1.1\r\n\r\n", 400),
            (b"GET * HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT evil:443 HTTP/1.1\r\n\r\n", 405),
            (b"TRACE /v1/x HTTP/1.1\r\n\r\n", 405),
            (b"GET /v1/x HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.1\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\n", 400),
            (b"GET /v1/x HTTP/1.0\r\n\r\n", 505),
            (b"POST /v1/x HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", 413),
            (b"GET /v1/x HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\n\r\n", 431),
        ];
        for (req, want) in cases {
            assert_eq!(status(req), *want, "{}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn head_size_limit_applies_before_the_head_is_complete() {
        let mut big = b"GET /v1/x HTTP/1.1\r\nX-A: ".to_vec();
        big.resize(1025, b'a');
        assert_eq!(status(&big), 431);
        let mut exact = b"GET /v1/x HTTP/1.1\r\nHost: x\r\nX-A: ".to_vec();
        exact.resize(1020, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exact.len(), 1024);
        assert!(parse(&exact).unwrap().is_some());
        exact.insert(40, b'a');
        assert_eq!(status(&exact), 431);
    }

    #[test]
    fn chunked_and_no_body() {
        let h = parse(b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyLength::Chunked);
        let h = parse(b"GET /v1/x HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyLength::None);
        let h =
            parse(b"\r\nGET /v1/x HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.wants_close());
    }

    #[test]
    fn rejection_messages_never_quote_values() {
        let secret = "sk-ant-oat01-SECRETVALUE";
        let reqs = [
            format!("GET /v1/x HTTP/1.1\r\nAuthorization: Bearer {secret}\x01\r\n\r\n"),
            format!("GET /v1/x HTTP/1.1\r\nContent-Length: {secret}\r\n\r\n"),
            format!("GET /v1/x HTTP/1.1\r\nTransfer-Encoding: {secret}\r\n\r\n"),
            format!("GET /v1/x HTTP/1.1\r\nConnection: {secret}, content-length\r\n\r\n"),
        ];
        for r in reqs {
            let e = parse(r.as_bytes()).unwrap_err();
            assert!(!e.message.contains("SECRETVALUE"), "{}", e.message);
        }
    }

    /// Issue 10 item 11: underscore look-alikes of framing, hop-by-hop and credential names.
    #[test]
    fn look_alike_names_are_refused() {
        for name in [
            "Transfer_Encoding",
            "transfer_encoding",
            "Content_Length",
            "CONTENT_LENGTH",
            "Connection_",
            "Keep_Alive",
            "Proxy_Authorization",
            "Proxy_Connection",
            "X_Api_Key",
            "Trailer_",
            "Upgrade_",
        ] {
            let req =
                format!("POST /v1/x HTTP/1.1\r\nHost: x\r\n{name}: 0\r\nContent-Length: 0\r\n\r\n");
            // Names that only end in `_` do not fold onto a special name: they pass.
            let want_refused = !name.ends_with('_');
            assert_eq!(parse(req.as_bytes()).is_err(), want_refused, "{name}");
        }
        let req = b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\nContent-Length: 0\r\n\r\n";
        let e = parse(req).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("Transfer_Encoding"), "{}", e.message);
        // Ordinary underscores are fine.
        let ok = b"GET /v1/x HTTP/1.1\r\nHost: x\r\nX_Custom_Thing: 1\r\n\r\n";
        assert!(parse(ok).unwrap().is_some());
    }

    /// Issue 10 items 10 and 12 at the parser: methods, target bytes and Host.
    #[test]
    fn methods_targets_and_hosts() {
        for m in ["trace", "TRACK", "PROPFIND", "PUT", "OPTIONS", "get"] {
            let req = format!("{m} /v1/x HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 405, "{m}");
        }
        for t in [
            "/v1/x#/../../a",
            "/v1/..\\api",
            "/v1/\"",
            "/v1/|",
            "/v1/{",
            "/v1/}",
            "/v1/%zz",
        ] {
            let req = format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 400, "{t}");
        }
        let raw = b"GET /v1/\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(parse(raw).is_err());
        for host in ["", "user@x", "x/path", "x y"] {
            let req = format!("GET /v1/x HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 400, "{host:?}");
        }
        assert_eq!(status(b"GET /v1/x HTTP/1.1\r\n\r\n"), 400);
        for m in ["GET", "HEAD", "POST", "DELETE"] {
            let req = format!("{m} /v1/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n");
            assert!(parse(req.as_bytes()).unwrap().is_some(), "{m}");
        }
    }
}
