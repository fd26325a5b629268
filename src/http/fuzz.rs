//! The fuzz harness over the proxy's request path, shared by the `cargo fuzz` target
//! (`fuzz/fuzz_targets/request_path.rs`) and the bounded random-input test that CI runs
//! (`tests/proxy.rs`, `fuzz_request_path_bounded`). Not part of the proxy's API.
//!
//! Input layout: byte 0 picks the credential kind and how the rest is split when fed to the
//! body framer; the rest is a client's bytes (head, then body). Invariants checked (a
//! violation panics, which is what the fuzzer reports):
//! - parsing never panics, and a head accepted from a prefix is the head of the whole input;
//! - an accepted head is origin-form with an allowed method, an RFC 3986 target, one valid
//!   Host and one framing, and rewriting it gives a head that
//!   parses again, with the same method, target and framing, exactly one credential header
//!   (the injected one), no hop-by-hop field, and the upstream Host;
//! - the body framer releases the same bytes whether fed whole or in pieces (what it holds
//!   back, an incomplete line, is offered again with more bytes);
//! - the response-head parser never panics on the same bytes.

use super::{
    BodyFramer, RequestLimits, parse_request_head, parse_response_head, upstream_request_head,
};
use crate::secret::{Credential, CredentialKind, Secret};

const HOST: &str = "upstream.test";

pub fn request_path(data: &[u8]) {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let limits = RequestLimits {
        max_head: 8192,
        max_headers: 64,
        max_body: 1 << 20,
    };
    let whole = parse_request_head(input, &limits);
    let _ = parse_response_head(input, ctl & 1 == 0);

    // A prefix may only report "incomplete", the same rejection, or the same head.
    let cut = input.len() * usize::from(ctl) / 255;
    if let Ok(Some(h)) = parse_request_head(&input[..cut], &limits) {
        assert_eq!(Ok(Some(h)), whole, "prefix and whole input disagree");
    }
    let Ok(Some(head)) = whole else { return };
    assert!(head.target.starts_with('/'));
    // Accepted only with an allowed method, an RFC 3986 target and one valid Host.
    assert!(super::target::METHODS.contains(&head.method.as_str()));
    assert_eq!(super::target::check_target(&head.target), Ok(()));
    let hosts: Vec<_> = head.headers.iter().filter(|h| h.is("host")).collect();
    assert!(hosts.len() == 1 && super::target::check_host(&hosts[0].value).is_ok());
    assert!(!head.target.contains(['#', '\\', '"', '{', '}', '|', ' ']));
    assert!(head.head_len <= input.len());

    let kind = if ctl & 2 == 0 {
        CredentialKind::OAuth
    } else {
        CredentialKind::ApiKey
    };
    let credential = Credential {
        kind,
        secret: Secret::new(b"REAL-CREDENTIAL".to_vec()),
    };
    let out = upstream_request_head(&head, &credential, HOST);
    let limits2 = RequestLimits {
        max_head: 1 << 20,
        max_headers: 1024,
        max_body: u64::MAX,
    };
    let again = match parse_request_head(&out, &limits2) {
        Ok(Some(h)) => h,
        other => panic!(
            "rewritten head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(again.head_len, out.len());
    assert_eq!(
        (&again.method, &again.target, again.body),
        (&head.method, &head.target, head.body)
    );
    let creds: Vec<_> = again
        .headers
        .iter()
        .filter(|h| h.is("authorization") || h.is("x-api-key"))
        .collect();
    assert_eq!(creds.len(), 1, "exactly one credential header upstream");
    assert!(creds[0].value.ends_with(b"REAL-CREDENTIAL"));
    let hop = ["connection", "keep-alive", "te", "trailer", "upgrade"];
    for h in &again.headers {
        let lower = h.name.to_ascii_lowercase();
        assert!(
            !hop.contains(&lower.as_str()) && !lower.starts_with("proxy-"),
            "hop-by-hop {lower} forwarded"
        );
    }
    let hosts: Vec<_> = again.headers.iter().filter(|h| h.is("host")).collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].value, HOST.as_bytes());

    // Body framing: whole versus arriving in pieces of (ctl >> 2) + 1 bytes, where what the
    // framer does not release yet is offered again with the next piece (as the proxy does).
    let body = &input[head.head_len..];
    let framer = BodyFramer::from_request(head.body, limits.max_body);
    let mut a = framer;
    let whole_res = a.advance(body);
    let mut b = framer;
    let step = usize::from(ctl >> 2) + 1;
    let mut pos = 0;
    let mut arrived = 0;
    let mut piece_res = Ok(0);
    while arrived < body.len() && !b.is_done() {
        arrived = (arrived + step).min(body.len());
        match b.advance(&body[pos..arrived]) {
            Ok(n) => {
                pos += n;
                piece_res = Ok(pos);
            }
            Err(e) => {
                piece_res = Err(e);
                break;
            }
        }
    }
    match (whole_res, piece_res) {
        (Ok(n), Ok(m)) => {
            assert_eq!(
                n, m,
                "framer released different amounts whole and in pieces"
            );
            assert_eq!(a.is_done(), b.is_done());
        }
        (Err(e1), Err(e2)) => assert_eq!(e1, e2),
        (x, y) => panic!("framer disagrees whole {x:?} vs pieces {y:?}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn harness_accepts_a_normal_request() {
        super::request_path(b"\x07POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s\r\nConnection: keep-alive, x-y\r\nX-Y: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        super::request_path(b"");
        super::request_path(b"\xffGET / HTTP/1.1\r\n\r\n");
    }
}
