//! What a request line and a Host may look like: allowlists, not blocklists, because the target
//! is forwarded byte for byte to a server whose own parser we do not control.
//!
//! - [`check_method`]: `GET`, `HEAD`, `POST`, `DELETE` (the methods of the Messages API
//!   family), case-sensitive; anything else is 405. (`CONNECT` in `allowlist` mode is parsed
//!   by `super::connect` instead.)
//! - [`check_target`] (400): origin-form, made only of RFC 3986 path and query characters
//!   (`unreserved`, `sub-delims`, `:`, `@`, `/`, a `?` before the query, and `%HH` with two
//!   hex digits); so no fragment (`#`), no backslash, no `"`, `|`, `{`, `}`, space, control or
//!   raw non-ASCII byte, no malformed `%`.
//! - [`check_api_path`] (404): the path (the target without its query) is under `/v1/` and has
//!   no empty segment (`//`, a trailing `/`), no `.` or `..` segment (also with `;params`, as
//!   in `..;/`, which some servers read as `..`), and no percent-encoded
//!   `.`, `/`, `\` or control character (any case: `%2e`, `%2F`, `%5c`, `%00`...), so no
//!   decoding upstream can turn it into another path.
//! - [`check_host`] (400, RFC 9112 section 3.2): exactly one Host, and it is `host[:port]`:
//!   a reg-name or IPv4 address of RFC 3986 characters, or a bracketed IPv6 literal; no user
//!   info (`@`), path, space or empty value. Its value is never forwarded (the upstream's
//!   name replaces it), but a request with a bad one is not a request we understand.

use super::rejection::Rejection;

/// The methods the proxy forwards.
pub const METHODS: [&str; 4] = ["GET", "HEAD", "POST", "DELETE"];

pub fn check_method(method: &str) -> Result<(), Rejection> {
    if METHODS.contains(&method) {
        return Ok(());
    }
    // The method is a token (httparse checked), at most 32 bytes of it are quoted.
    let shown: String = method.chars().take(32).collect();
    Err(Rejection::new(
        405,
        "invalid_request_error",
        format!(
            "method {shown} is not allowed by this proxy (only {})",
            METHODS.join(", ")
        ),
    ))
}

pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

pub(crate) fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// `pchar` minus `pct-encoded` (checked separately).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@'
}

/// Checks the `%HH` sequences and that every other byte passes `ok`.
pub(crate) fn check_chars(s: &[u8], ok: impl Fn(u8) -> bool, what: &str) -> Result<(), Rejection> {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            if hex.is_none() {
                return Err(Rejection::bad_request(format!(
                    "the request {what} has a malformed percent-encoding (% must be followed by \
                     two hex digits)"
                )));
            }
            i += 3;
            continue;
        }
        if !ok(b) {
            let shown = match b {
                b'#' => "a fragment (#)".to_string(),
                b'\\' => "a backslash".to_string(),
                0x21..=0x7e => format!("the character {:?}", b as char),
                _ => format!("the byte 0x{b:02x}"),
            };
            return Err(Rejection::bad_request(format!(
                "the request {what} contains {shown}, which RFC 3986 does not allow there; \
                 percent-encode it"
            )));
        }
        i += 1;
    }
    Ok(())
}

/// The request-target's syntax (RFC 3986 `absolute-path [ "?" query ]`). 400 otherwise.
pub fn check_target(target: &str) -> Result<(), Rejection> {
    if !target.starts_with('/') {
        return Err(Rejection::bad_request(
            "only origin-form request targets (a path starting with /) are accepted; \
             this is a reverse proxy for the Anthropic API, not a forward proxy",
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    check_chars(path.as_bytes(), |b| is_pchar(b) || b == b'/', "path")?;
    if let Some(q) = query {
        check_chars(
            q.as_bytes(),
            |b| is_pchar(b) || b == b'/' || b == b'?',
            "query",
        )?;
    }
    Ok(())
}

/// Whether the path (no query) is one the proxy forwards. 404 otherwise. Expects a target
/// that passed [`check_target`].
pub fn check_api_path(path: &str) -> Result<(), Rejection> {
    let not_found = |why: &str| {
        Rejection::new(
            404,
            "not_found_error",
            format!("bottle-init proxy: only Anthropic API paths under /v1/ are forwarded ({why})"),
        )
    };
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(not_found("the path is not under /v1/"));
    };
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err(not_found("the path has an empty segment"));
        }
        // `..;x` is `..` to servers that strip path parameters (Tomcat, Spring).
        let bare = seg.split(';').next().unwrap_or(seg);
        if bare == "." || bare == ".." {
            return Err(not_found("the path has a dot segment"));
        }
    }
    let b = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
        let byte = u8::from_str_radix(hex, 16).unwrap_or(0);
        if matches!(byte, b'.' | b'/' | b'\\') || byte < 0x20 || byte == 0x7f {
            return Err(not_found(
                "the path percent-encodes a dot, slash, backslash or control character",
            ));
        }
    }
    Ok(())
}

/// RFC 9112 section 3.2: a Host that is `uri-host [ ":" port ]`. 400 otherwise.
pub fn check_host(value: &[u8]) -> Result<(), Rejection> {
    let bad = |why: &str| {
        Rejection::bad_request(format!(
            "the Host header {why}; it must be host[:port] (RFC 9112 section 3.2)"
        ))
    };
    if value.is_empty() {
        return Err(bad("is empty"));
    }
    let (host, port) = if value[0] == b'[' {
        let end = value
            .iter()
            .position(|&b| b == b']')
            .ok_or_else(|| bad("has an unclosed IPv6 literal"))?;
        let literal = &value[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(bad("has an invalid IPv6 literal"));
        }
        match &value[end + 1..] {
            [] => (&value[..=end], None),
            [b':', port @ ..] => (&value[..=end], Some(port)),
            _ => return Err(bad("has bytes after its IPv6 literal")),
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        }
    };
    if host.is_empty() {
        return Err(bad("has no host name"));
    }
    if host[0] != b'[' {
        for &b in host {
            if b == b'@' {
                return Err(bad("contains user information (@)"));
            }
            if !(is_unreserved(b) || is_sub_delim(b) || b == b'%') {
                return Err(bad("contains a character a host name cannot have"));
            }
        }
    }
    if let Some(p) = port {
        let digits = !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit);
        let n: u32 = std::str::from_utf8(p)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u32::MAX);
        if !digits || n > 65535 {
            return Err(bad("has an invalid port"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_an_allowlist() {
        for m in METHODS {
            assert_eq!(check_method(m), Ok(()));
        }
        for m in [
            "get", "Post", "TRACE", "trace", "TRACK", "PROPFIND", "PUT", "PATCH", "OPTIONS",
            "CONNECT", "MKCOL", "BREW",
        ] {
            let r = check_method(m).unwrap_err();
            assert_eq!(r.status, 405, "{m}");
        }
    }

    #[test]
    fn targets_the_api_uses_pass() {
        for t in [
            "/v1/messages",
            "/v1/messages?beta=true",
            "/v1/models?limit=1000",
            "/v1/messages/count_tokens?beta=true",
            "/v1/files/file_011CNha8iCJcU1wXNR6q4V8w/content",
            "/v1/models?after_id=a-b.c~d&x=%20%2F%2e",
            "/v1/x:y@z!$&'()*+,;=",
            "/",
        ] {
            assert_eq!(check_target(t), Ok(()), "{t}");
        }
        for p in [
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/a%20b",
            "/v1/...",
            "/v1/.well",
        ] {
            assert_eq!(check_api_path(p), Ok(()), "{p}");
        }
    }

    /// Every shape issue 10 (item 10) and item 12 list, and their relatives.
    #[test]
    fn bad_targets_are_refused() {
        let syntax = [
            "/v1/x#/../../api/oauth",
            "/v1/x#frag",
            "/v1/..\\api",
            "/v1/a\\b",
            "/v1/\"q\"",
            "/v1/a|b",
            "/v1/{x}",
            "/v1/a}",
            "/v1/caf\u{e9}",
            "/v1/%zz",
            "/v1/%2",
            "/v1/%",
            "/v1/x?%g0",
            "/v1/x?a=\"",
            "/v1/x?a#b",
            "/v1/a b",
            "/v1/a\tb",
            "/v1/a[b]",
            "/v1/a^b",
            "/v1/a`b",
            "/v1/<x>",
            "http://evil/v1/x",
            "*",
            "v1/messages",
        ];
        for t in syntax {
            assert_eq!(check_target(t).map_err(|r| r.status), Err(400), "{t:?}");
        }
        let paths = [
            "/v1/..%2fapi",
            "/v1/..%2Fapi",
            "/v1/%2e%2e%2fapi",
            "/v1/%2E%2E/api",
            "/v1/..%5capi",
            "/v1/..%5Capi",
            "/v1/..;/api",
            "/v1/../api",
            "/v1/./messages",
            "/v1/messages/..",
            "/v1/messages/.",
            "/v1//messages",
            "/v1/messages/",
            "/v1/",
            "/v1",
            "/v2/messages",
            "/api/oauth",
            "/",
            "/V1/messages",
            "/v1/a%00b",
            "/v1/a%0Ab",
            "/v1/a%7f",
            "/v1/x%2e",
            "/v1/.;x/messages",
            "/v1/messages/..;",
        ];
        for p in paths {
            let got = check_target(p).and_then(|()| check_api_path(p));
            assert_eq!(got.map_err(|r| r.status), Err(404), "{p:?}");
        }
    }

    #[test]
    fn hosts() {
        for h in [
            "api.anthropic.com",
            "localhost",
            "127.0.0.1:44123",
            "[::1]:8080",
            "[::1]",
            "x",
            "a-b.c_d~e",
            "h:443",
        ] {
            assert_eq!(check_host(h.as_bytes()), Ok(()), "{h}");
        }
        for h in [
            "", "user@x", "u:p@x", "x/path", "x y", "x ", " x", "x:", "x:99999", "x:1a", ":80",
            "[::1", "[zz]", "[::1]x", "[]", "x?y", "x#y", "x\\y", "\"x\"",
        ] {
            assert_eq!(
                check_host(h.as_bytes()).map_err(|r| r.status),
                Err(400),
                "{h:?}"
            );
        }
    }
}
