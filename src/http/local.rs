//! Responses the proxy generates itself, in the Anthropic API's error shape so that claude
//! shows the message to its user verbatim:
//! `{"type":"error","error":{"type":"authentication_error","message":"..."}}`.

use crate::logging::json_str_into;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A complete error response that closes the connection. `message` must not contain secrets;
/// callers only pass fixed text and error descriptions that never include header values.
pub fn error_response(status: u16, error_type: &str, message: &str) -> Vec<u8> {
    build_error(status, error_type, message, "")
}

/// [`error_response`] plus `x-should-retry: false`, for a failure a retry within seconds will
/// not fix (the upstream cannot be resolved, reached or verified). Claude Code honours the
/// header: it shows the message at once instead of retrying 10 times over about three minutes
/// (measured with 2.1.332; the README's "Upstream unreachable" has the figures).
pub fn final_error_response(status: u16, error_type: &str, message: &str) -> Vec<u8> {
    build_error(status, error_type, message, "x-should-retry: false\r\n")
}

/// The 429 `rate_limit_error` of a `BOTTLE_MAX_*` limit, final like
/// [`final_error_response`], with `retry-after` when the limit lifts by itself.
pub fn limit_response(message: &str, retry_after: Option<u64>) -> Vec<u8> {
    let extra = match retry_after {
        Some(s) => format!("x-should-retry: false\r\nretry-after: {s}\r\n"),
        None => "x-should-retry: false\r\n".to_string(),
    };
    build_error(429, "rate_limit_error", message, &extra)
}

fn build_error(status: u16, error_type: &str, message: &str, extra_headers: &str) -> Vec<u8> {
    let mut body = String::from(r#"{"type":"error","error":{"type":"#);
    json_str_into(&mut body, error_type);
    body.push_str(r#","message":"#);
    json_str_into(&mut body, message);
    body.push_str("}}");
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-bottle-proxy: local\r\n{extra_headers}connection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The answer to claude's unauthenticated `HEAD /` warm-up: answered locally so it neither
/// costs an upstream handshake nor carries a credential anywhere.
pub fn warmup_response() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-bottle-proxy: local\r\n\r\n".to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape_and_length() {
        let r = error_response(401, "authentication_error", "no \"key\"\n");
        let text = String::from_utf8(r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        assert_eq!(
            body,
            r#"{"type":"error","error":{"type":"authentication_error","message":"no \"key\"\n"}}"#
        );
        assert!(!head.contains("x-should-retry"));
    }

    #[test]
    fn final_error_tells_the_client_not_to_retry() {
        let r = final_error_response(502, "api_error", "cannot resolve x");
        let body = r#"{"type":"error","error":{"type":"api_error","message":"cannot resolve x"}}"#;
        let want = format!(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             x-bottle-proxy: local\r\nx-should-retry: false\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(String::from_utf8(r).unwrap(), want);
    }
}
