//! Who may use the proxy (the session-secret check) and the request head sent upstream.
//!
//! The upstream head is the client's head with: the client's `Authorization` and `x-api-key`
//! replaced by the real credential (at the position of the first of them, else at the end);
//! `Host` set to the upstream (in place, else first); hop-by-hop fields dropped (`Connection`
//! and the fields it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Upgrade`); in OAuth
//! mode `oauth-2025-04-20` appended to `anthropic-beta` when missing; `Accept-Encoding` set to
//! `identity` (in place of the first, else at the end), so the usage in the response can be
//! read as it streams and a client cannot hide it from the limits by asking for gzip. Every
//! other field is passed unchanged, in order. The request line is passed unchanged.

use super::request::{RequestHead, list_contains, list_items, trim_ows};
use crate::secret::{Credential, CredentialKind, Secret};

pub const OAUTH_BETA: &str = "oauth-2025-04-20";
/// Added when the client sent no `Accept-Encoding`.
const ACCEPT_IDENTITY: &[u8] = b"Accept-Encoding: identity\r\n";

/// Outcome of checking a request for the session secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthCheck {
    Ok,
    /// Neither `Authorization` nor `x-api-key` was sent.
    Missing,
    /// A credential was sent but it is not the session secret.
    Wrong,
}

impl AuthCheck {
    /// The human-readable reason for a 401 (never quotes what the client sent).
    pub fn message(self) -> &'static str {
        match self {
            AuthCheck::Ok => "authorized",
            AuthCheck::Missing => {
                "bottle-init proxy: no credential in the request; send this container's session \
                 secret as `Authorization: Bearer <secret>` or `x-api-key: <secret>` (claude does \
                 this automatically with the environment bottle-init gives it)"
            }
            AuthCheck::Wrong => {
                "bottle-init proxy: the credential in the request is not this container's session \
                 secret; only processes started by bottle-init in this container can use the proxy \
                 (the real Anthropic credential stays inside bottle-init)"
            }
        }
    }
}

/// Accepts `Authorization: Bearer <secret>` or `x-api-key: <secret>`; every comparison is
/// constant time.
pub fn check_session_secret(head: &RequestHead, secret: &Secret) -> AuthCheck {
    let mut seen = false;
    let mut ok = false;
    for h in &head.headers {
        let candidate = if h.is("authorization") {
            let v = trim_ows(&h.value);
            match v.split_at_checked(7) {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => trim_ows(token),
                _ => v,
            }
        } else if h.is("x-api-key") {
            trim_ows(&h.value)
        } else {
            continue;
        };
        seen = true;
        // `|=` (not `||`) so every presented value is compared.
        ok |= secret.ct_eq(candidate);
    }
    match (seen, ok) {
        (_, true) => AuthCheck::Ok,
        (false, _) => AuthCheck::Missing,
        (true, false) => AuthCheck::Wrong,
    }
}

/// The Host value for the upstream: `host` or `host:port` when the port is not 443; IPv6
/// literals in brackets.
pub fn host_header(host: &str, port: u16) -> String {
    let h = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == 443 {
        h
    } else {
        format!("{h}:{port}")
    }
}

/// Builds the head sent upstream. The returned buffer holds the real credential: the caller
/// must wipe it (`crate::secret::wipe`) once it is handed to TLS.
pub fn upstream_request_head(head: &RequestHead, credential: &Credential, host: &str) -> Vec<u8> {
    let hop_by_hop: Vec<Vec<u8>> = head
        .headers_named("connection")
        .flat_map(|h| list_items(&h.value).map(|t| t.to_ascii_lowercase()))
        .collect();
    let is_hop = |name: &str| {
        let lower = name.to_ascii_lowercase();
        matches!(
            lower.as_str(),
            "connection" | "keep-alive" | "te" | "trailer" | "upgrade"
        ) || lower.starts_with("proxy-")
            || hop_by_hop.iter().any(|t| t == lower.as_bytes())
    };
    let oauth = credential.kind == CredentialKind::OAuth;
    let beta_needed = oauth
        && !head
            .headers_named("anthropic-beta")
            .filter(|h| !is_hop(&h.name))
            .any(|h| list_contains(&h.value, OAUTH_BETA));
    let last_beta = head
        .headers
        .iter()
        .rposition(|h| h.is("anthropic-beta") && !is_hop(&h.name));

    // Sized up front so the buffer never reallocates after the credential is in it (a
    // reallocation would free a copy of the credential without wiping it).
    let mut out = Vec::with_capacity(
        head.head_len
            + credential.secret.len()
            + host.len()
            + OAUTH_BETA.len()
            + ACCEPT_IDENTITY.len()
            + 128,
    );
    let capacity = out.capacity();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host_done = false;
    let mut cred_done = false;
    let mut encoding_done = false;
    if !head.headers.iter().any(|h| h.is("host")) {
        push_field(&mut out, "Host", host.as_bytes());
        host_done = true;
    }
    for (i, h) in head.headers.iter().enumerate() {
        if h.is("host") {
            if !host_done {
                push_field(&mut out, &h.name, host.as_bytes());
                host_done = true;
            }
        } else if h.is("authorization") || h.is("x-api-key") {
            if !cred_done {
                push_credential(&mut out, credential);
                cred_done = true;
            }
        } else if is_hop(&h.name) {
            continue;
        } else if h.is("accept-encoding") {
            if !encoding_done {
                push_field(&mut out, &h.name, b"identity");
                encoding_done = true;
            }
        } else if beta_needed && Some(i) == last_beta {
            let mut v = trim_ows(&h.value).to_vec();
            if !v.is_empty() {
                v.push(b',');
            }
            v.extend_from_slice(OAUTH_BETA.as_bytes());
            push_field(&mut out, &h.name, &v);
        } else {
            push_field(&mut out, &h.name, &h.value);
        }
    }
    if !cred_done {
        push_credential(&mut out, credential);
    }
    if beta_needed && last_beta.is_none() {
        push_field(&mut out, "anthropic-beta", OAUTH_BETA.as_bytes());
    }
    if !encoding_done {
        // No Accept-Encoding means any coding is acceptable (RFC 9110 section 12.5.3).
        out.extend_from_slice(ACCEPT_IDENTITY);
    }
    out.extend_from_slice(b"\r\n");
    debug_assert_eq!(
        out.capacity(),
        capacity,
        "the credential buffer reallocated"
    );
    out
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_credential(out: &mut Vec<u8>, credential: &Credential) {
    match credential.kind {
        CredentialKind::OAuth => {
            out.extend_from_slice(b"Authorization: Bearer ");
        }
        CredentialKind::ApiKey => {
            out.extend_from_slice(b"x-api-key: ");
        }
    }
    out.extend_from_slice(credential.secret.expose());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{RequestLimits, parse_request_head};

    fn head(s: &str) -> RequestHead {
        parse_request_head(s.as_bytes(), &RequestLimits::default())
            .unwrap()
            .unwrap()
    }

    fn cred(kind: CredentialKind) -> Credential {
        Credential {
            kind,
            secret: Secret::new(b"REAL-TOKEN".to_vec()),
        }
    }

    fn rewrite(s: &str, kind: CredentialKind) -> String {
        String::from_utf8(upstream_request_head(&head(s), &cred(kind), "api.example")).unwrap()
    }

    #[test]
    fn oauth_rewrite_keeps_order_and_replaces_credentials() {
        let got = rewrite(
            "POST /v1/messages?beta=true HTTP/1.1\r\nAccept: application/json\r\nAuthorization: Bearer placeholder\r\n\
             X-Stainless-Arch: x64\r\nanthropic-beta: a,b\r\nx-api-key: placeholder\r\nConnection: keep-alive, X-Drop\r\n\
             X-Drop: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nTE: trailers\r\nTrailer: X\r\nHost: 127.0.0.1:9\r\n\
             Accept-Encoding: gzip\r\nContent-Length: 2\r\n\r\n",
            CredentialKind::OAuth,
        );
        assert_eq!(
            got,
            "POST /v1/messages?beta=true HTTP/1.1\r\nAccept: application/json\r\nAuthorization: Bearer REAL-TOKEN\r\n\
             X-Stainless-Arch: x64\r\nanthropic-beta: a,b,oauth-2025-04-20\r\nHost: api.example\r\n\
             Accept-Encoding: identity\r\nContent-Length: 2\r\n\r\n"
        );
    }

    #[test]
    fn beta_present_is_untouched_and_missing_is_added() {
        let got = rewrite(
            "GET /v1/x HTTP/1.1\r\nHost: h\r\nanthropic-beta: x, oauth-2025-04-20 ,y\r\n\r\n",
            CredentialKind::OAuth,
        );
        assert!(
            got.contains("anthropic-beta: x, oauth-2025-04-20 ,y\r\n"),
            "{got}"
        );
        let got = rewrite(
            "GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n",
            CredentialKind::OAuth,
        );
        assert_eq!(
            got,
            "GET /v1/x HTTP/1.1\r\nHost: api.example\r\nAuthorization: Bearer REAL-TOKEN\r\nanthropic-beta: oauth-2025-04-20\r\n\
             Accept-Encoding: identity\r\n\r\n"
        );
    }

    #[test]
    fn api_key_mode() {
        let got = rewrite(
            "GET /v1/x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer p\r\nanthropic-beta: a\r\n\r\n",
            CredentialKind::ApiKey,
        );
        assert_eq!(
            got,
            "GET /v1/x HTTP/1.1\r\nHost: api.example\r\nx-api-key: REAL-TOKEN\r\nanthropic-beta: a\r\n\
             Accept-Encoding: identity\r\n\r\n"
        );
    }

    /// claude asks for `gzip, deflate, br, zstd`; the upstream is asked for `identity` in the
    /// same place (one field, whatever the client sent), so the usage can be read.
    #[test]
    fn accept_encoding_becomes_identity() {
        let got = rewrite(
            "POST /v1/m HTTP/1.1\r\nHost: h\r\naccept-encoding: gzip, deflate, br, zstd\r\nX-A: 1\r\n\
             Accept-Encoding: br\r\nContent-Length: 0\r\n\r\n",
            CredentialKind::ApiKey,
        );
        assert_eq!(
            got,
            "POST /v1/m HTTP/1.1\r\nHost: api.example\r\naccept-encoding: identity\r\nX-A: 1\r\n\
             Content-Length: 0\r\nx-api-key: REAL-TOKEN\r\n\r\n"
        );
    }

    #[test]
    fn host_header_forms() {
        assert_eq!(host_header("a.b", 443), "a.b");
        assert_eq!(host_header("a.b", 8443), "a.b:8443");
        assert_eq!(host_header("::1", 9), "[::1]:9");
    }

    #[test]
    fn session_secret_check() {
        let s = Secret::new(b"sess".to_vec());
        let check = |req: &str| check_session_secret(&head(req), &s);
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer sess\r\n\r\n"),
            AuthCheck::Ok
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: h\r\nauthorization: bearer  sess \r\n\r\n"),
            AuthCheck::Ok
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: h\r\nX-Api-Key: sess\r\n\r\n"),
            AuthCheck::Ok
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
            AuthCheck::Missing
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer nope\r\n\r\n"),
            AuthCheck::Wrong
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Basic sess\r\n\r\n"),
            AuthCheck::Wrong
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: h\r\nAuthorization: sess\r\n\r\n"),
            AuthCheck::Ok
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: h\r\nx-api-key: Bearer sess\r\n\r\n"),
            AuthCheck::Wrong
        );
    }
}
