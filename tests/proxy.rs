//! Integration tests of the credential-injecting proxy, in-process: a real `Proxy` on loopback
//! in front of a TLS mock upstream signed by a CA generated per test. Every test also checks
//! that neither the real token nor the session secret appears in what the client got back or
//! in any log line.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bottle_init::proxy::{Limits, Proxy, ProxyError};
use bottle_init::secret::CredentialKind;
use support::proxy::*;

#[test]
fn real_credential_arrives_and_the_placeholder_never_does() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let proxy = proxy_for(&mock, &ca);
    let req = format!(
        "POST /v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {SESSION}\r\n\
         x-api-key: {SESSION}\r\nanthropic-beta: claude-code-20250219,interleaved-thinking-2025-05-14\r\n\
         Content-Length: 2\r\n\r\n{{}}",
        proxy.addr.port()
    );
    let resp = roundtrip(proxy.addr, req.as_bytes()).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    // The upstream's headers come back unchanged.
    assert_eq!(resp.header("request-id"), Some("req_123"));
    assert_eq!(
        resp.header("anthropic-ratelimit-requests-remaining"),
        Some("99")
    );
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(
        resp.body_text(),
        r#"{"ok":true,"path":"/v1/messages?beta=true"}"#
    );

    let got = mock.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(
        r.header("authorization").as_deref(),
        Some(format!("Bearer {REAL_TOKEN}").as_str())
    );
    assert_eq!(r.header_count("authorization"), 1);
    assert_eq!(r.header_count("x-api-key"), 0);
    assert!(
        !contains(&r.head, SESSION.as_bytes()),
        "placeholder forwarded"
    );
    assert_eq!(
        r.header("anthropic-beta").as_deref(),
        Some("claude-code-20250219,interleaved-thinking-2025-05-14,oauth-2025-04-20")
    );
    assert_eq!(r.header("host"), Some(format!("localhost:{}", mock.port)));
    assert_eq!(r.target, "/v1/messages?beta=true");
    assert_eq!(r.body_raw, b"{}");
}

#[test]
fn api_key_mode_sends_x_api_key() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let proxy = start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::ApiKey,
        Limits::default(),
    );
    let req =
        format!("GET /v1/models?limit=1000 HTTP/1.1\r\nHost: x\r\nx-api-key: {SESSION}\r\n\r\n");
    let resp = roundtrip(proxy.addr, req.as_bytes()).unwrap();
    assert_eq!(resp.status, 200);
    let r = &mock.requests()[0];
    assert_eq!(r.header("x-api-key").as_deref(), Some(REAL_TOKEN));
    assert_eq!(r.header_count("authorization"), 0);
    assert_eq!(
        r.header_count("anthropic-beta"),
        0,
        "no OAuth beta in API-key mode"
    );
    assert!(!contains(&r.head, SESSION.as_bytes()));
}

#[test]
fn passthrough_headers_arrive_unchanged_and_in_order() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let proxy = proxy_for(&mock, &ca);
    // claude's real header set (see shared/facts/claude-code-client.md), wire order.
    let passthrough = [
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        ("User-Agent", "claude-cli/2.1.126 (external, sdk-cli)"),
        (
            "X-Claude-Code-Session-Id",
            "0b6e4d8e-1111-2222-3333-444455556666",
        ),
        ("X-Stainless-Arch", "x64"),
        ("X-Stainless-Lang", "js"),
        ("X-Stainless-OS", "Linux"),
        ("X-Stainless-Package-Version", "0.60.0"),
        ("X-Stainless-Retry-Count", "0"),
        ("X-Stainless-Runtime", "node"),
        ("X-Stainless-Runtime-Version", "v22.0.0"),
        ("X-Stainless-Timeout", "600"),
        (
            "anthropic-beta",
            "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14",
        ),
        ("anthropic-dangerous-direct-browser-access", "true"),
        ("anthropic-version", "2023-06-01"),
        ("x-app", "cli"),
    ];
    let mut req = "POST /v1/messages?beta=true HTTP/1.1\r\n".to_string();
    for (i, (n, v)) in passthrough.iter().enumerate() {
        req.push_str(&format!("{n}: {v}\r\n"));
        if i == 0 {
            req.push_str(&format!("Authorization: Bearer {SESSION}\r\n"));
        }
    }
    req.push_str(&format!(
        "Host: 127.0.0.1:{}\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n",
        proxy.addr.port()
    ));
    req.push_str("Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n");
    req.push_str("Content-Length: 2\r\n\r\n{}");
    let resp = roundtrip(proxy.addr, req.as_bytes()).unwrap();
    assert_eq!(resp.status, 200);

    let r = &mock.requests()[0];
    let mut expected: Vec<(String, String)> = Vec::new();
    for (i, (n, v)) in passthrough.iter().enumerate() {
        expected.push((n.to_string(), v.to_string()));
        if i == 0 {
            expected.push(("Authorization".into(), format!("Bearer {REAL_TOKEN}")));
        }
    }
    expected.push(("Host".into(), format!("localhost:{}", mock.port)));
    // Asked for identity so the usage can be read (issue 12).
    expected.push(("Accept-Encoding".into(), "identity".into()));
    expected.push(("Content-Length".into(), "2".into()));
    let got: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn large_json_and_chunked_uploads_arrive_byte_exact() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let proxy = proxy_for(&mock, &ca);
    // ~100 KB of JSON whose bytes must not be re-serialised (odd spacing, escapes, unicode).
    let mut body = String::from(
        "{\"model\": \"claude\",  \"system\":[{\"text\":\"x-anthropic-billing-header: cch=abc;\"}],\"messages\":[",
    );
    let mut i = 0;
    while body.len() < 100_000 {
        body.push_str(&format!(
            "{{\"role\":\"user\",\"content\":\"m{i} \\u00e9 \\\"q\\\" ü\"}} ,"
        ));
        i += 1;
    }
    body.push_str("{}]}");
    let resp = roundtrip(proxy.addr, &post("/v1/messages", body.as_bytes())).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(mock.requests()[0].body_raw, body.as_bytes());

    // Chunked, with odd chunk sizes, an extension and a trailer, sent in small pieces.
    let mut chunked = Vec::new();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for (n, piece) in data.chunks(7919).enumerate() {
        if n == 2 {
            chunked.extend_from_slice(format!("{:X};ext=1\r\n", piece.len()).as_bytes());
        } else {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        }
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {SESSION}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut s = connect(proxy.addr);
    s.write_all(head.as_bytes()).unwrap();
    for piece in chunked.chunks(3000) {
        s.write_all(piece).unwrap();
    }
    let resp = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(resp.status, 200);
    let got = &mock.requests()[1];
    assert_eq!(got.header("transfer-encoding").as_deref(), Some("chunked"));
    assert!(got.body_raw == chunked, "chunked body changed in transit");
    assert_no_leak("response", &resp.raw_body);
}

/// The mock sends one SSE event, then waits until the test client confirms it received it.
#[test]
fn sse_events_are_relayed_one_by_one() {
    let ca = TestCa::new("test CA");
    let (confirm_tx, confirm_rx) = mpsc::channel::<()>();
    let confirm_rx = Arc::new(Mutex::new(confirm_rx));
    let handler: Handler = Arc::new(move |_req: &Recorded, w: &mut dyn Write| {
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")?;
        for i in 0..5 {
            let ev = format!("event: content_block_delta\ndata: {{\"i\":{i}}}\n\n");
            write!(w, "{:x}\r\n{ev}\r\n", ev.len())?;
            w.flush()?;
            confirm_rx
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| std::io::Error::other("client never confirmed the event"))?;
        }
        w.write_all(b"0\r\n\r\n")?;
        Ok(true)
    });
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    let mut s = connect(proxy.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&post("/v1/messages", br#"{"stream":true}"#))
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(r.read_line(&mut head).unwrap() > 0);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for i in 0..5 {
        // Each event must arrive while the upstream is still waiting for our confirmation.
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut ev = vec![0u8; n + 2];
        r.read_exact(&mut ev).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ev[..n]),
            format!("event: content_block_delta\ndata: {{\"i\":{i}}}\n\n")
        );
        confirm_tx.send(()).unwrap();
    }
    let mut end = String::new();
    r.read_line(&mut end).unwrap();
    assert_eq!(end, "0\r\n");
    assert_no_leak("sse", head.as_bytes());
}

#[test]
fn sequential_requests_cost_one_upstream_handshake() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let proxy = proxy_for(&mock, &ca);
    // Keep-alive on the client side...
    let s = connect(proxy.addr);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for i in 0..10 {
        w.write_all(&post(&format!("/v1/messages?n={i}"), b"{}"))
            .unwrap();
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.body_text(),
            format!(r#"{{"ok":true,"path":"/v1/messages?n={i}"}}"#)
        );
    }
    // ...and the pool across client connections.
    for _ in 0..5 {
        assert_eq!(
            roundtrip(proxy.addr, &post("/v1/messages", b"{}"))
                .unwrap()
                .status,
            200
        );
    }
    assert_eq!(mock.requests().len(), 15);
    assert_eq!(
        mock.state.accepts.load(Ordering::SeqCst),
        1,
        "one TCP connection upstream"
    );
    assert_eq!(
        mock.state.handshakes.load(Ordering::SeqCst),
        1,
        "one TLS handshake upstream"
    );
    assert_eq!(proxy.stats.upstream_handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(proxy.stats.upstream_reused.load(Ordering::SeqCst), 14);
    assert!(logs().iter().any(|l| l.contains("upstream=reused")));
}

#[test]
fn untrusted_upstream_certificate_gives_502_and_no_request_bytes() {
    let trusted = TestCa::new("trusted CA");
    let other = TestCa::new("attacker CA");
    let mock = Mock::start(&other, ok_handler());
    let proxy = proxy_for(&mock, &trusted);
    let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
    assert_eq!(resp.status, 502);
    let (kind, msg) = resp.anthropic_error();
    assert_eq!(kind, "api_error");
    assert!(
        msg.contains("TLS") && msg.to_lowercase().contains("certificate"),
        "{msg}"
    );
    // Unreachable upstream: claude must show this at once, not retry for minutes.
    assert_eq!(resp.header("x-should-retry"), Some("false"));
    wait_until(
        "the mock to see the handshake fail",
        Duration::from_secs(5),
        || mock.state.handshake_failures.load(Ordering::SeqCst) == 1,
    );
    assert_eq!(mock.state.handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(
        mock.state.plain_bytes_in.load(Ordering::SeqCst),
        0,
        "request bytes reached an untrusted server"
    );
    assert!(mock.requests().is_empty());
}

#[test]
fn bad_requests_get_their_4xx_and_nothing_is_forwarded() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let limits = Limits {
        request: bottle_init::http::RequestLimits {
            max_head: 4096,
            max_headers: 32,
            max_body: 1000,
        },
        ..Limits::default()
    };
    let proxy = start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::OAuth,
        limits,
    );
    // Every case carries a valid Host, so each is refused for its own reason.
    let auth = format!("Host: 127.0.0.1\r\nAuthorization: Bearer {SESSION}\r\n");
    let many_headers: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(String, u16)> = vec![
        (
            format!(
                "POST /v1/messages HTTP/1.1\r\n{auth}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            format!(
                "POST /v1/messages HTTP/1.1\r\n{auth}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
            ),
            400,
        ),
        (
            format!(
                "POST /v1/messages HTTP/1.1\r\n{auth}Content-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}"
            ),
            400,
        ),
        (
            format!("POST /v1/messages HTTP/1.1\r\n{auth}Transfer-Encoding: gzip\r\n\r\n"),
            400,
        ),
        (
            format!(
                "POST /v1/messages HTTP/1.1\r\n{auth}Transfer-Encoding: chunked, identity\r\n\r\n"
            ),
            400,
        ),
        (
            format!("GET /v1/models HTTP/1.1\r\n{auth}X-A: 1\r\n  folded\r\n\r\n"),
            400,
        ),
        (format!("GET /v1/models HTTP/1.1\n{auth}\r\n"), 400),
        (
            format!("GET /v1/models HTTP/1.1\r\n{auth}X-A: a\rb\r\n\r\n"),
            400,
        ),
        (
            format!("GET /v1/models HTTP/1.1\r\n{auth}Bad Name: 1\r\n\r\n"),
            400,
        ),
        (
            format!("GET /v1/models HTTP/1.1\r\n{auth}X-A: a\x01b\r\n\r\n"),
            400,
        ),
        (
            format!("GET https://evil.example/v1/models HTTP/1.1\r\n{auth}\r\n"),
            400,
        ),
        (
            format!("CONNECT evil.example:443 HTTP/1.1\r\n{auth}\r\n"),
            405,
        ),
        (format!("TRACE /v1/models HTTP/1.1\r\n{auth}\r\n"), 405),
        (
            format!(
                "GET /v1/models HTTP/1.1\r\n{auth}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            ),
            400,
        ),
        (
            format!(
                "GET /v1/models HTTP/1.1\r\n{auth}X-Big: {}\r\n\r\n",
                "a".repeat(5000)
            ),
            431,
        ),
        (
            format!("GET /v1/models HTTP/1.1\r\n{auth}{many_headers}\r\n"),
            431,
        ),
        (
            format!("POST /v1/messages HTTP/1.1\r\n{auth}Content-Length: 1001\r\n\r\n"),
            413,
        ),
        (
            format!(
                "POST /v1/messages HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n3e9\r\n{}\r\n0\r\n\r\n",
                "a".repeat(1001)
            ),
            413,
        ),
        (
            format!("POST /v1/messages HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
            400,
        ),
        (format!("GET /admin HTTP/1.1\r\n{auth}\r\n"), 404),
        (format!("GET /v1/../admin HTTP/1.1\r\n{auth}\r\n"), 404),
        (format!("GET /v1/%2e%2e/admin HTTP/1.1\r\n{auth}\r\n"), 404),
        // Issue 10 item 10: methods and targets are an allowlist; every shape it lists.
        (format!("trace /v1/models HTTP/1.1\r\n{auth}\r\n"), 405),
        (format!("TRACK /v1/models HTTP/1.1\r\n{auth}\r\n"), 405),
        (format!("PROPFIND /v1/models HTTP/1.1\r\n{auth}\r\n"), 405),
        (format!("PUT /v1/models HTTP/1.1\r\n{auth}\r\n"), 405),
        (format!("get /v1/models HTTP/1.1\r\n{auth}\r\n"), 405),
        (
            format!("GET /v1/x#/../../api/oauth HTTP/1.1\r\n{auth}\r\n"),
            400,
        ),
        (format!("GET /v1/..%2fapi HTTP/1.1\r\n{auth}\r\n"), 404),
        (format!("GET /v1/%2e%2e%2fapi HTTP/1.1\r\n{auth}\r\n"), 404),
        (format!("GET /v1/..%5capi HTTP/1.1\r\n{auth}\r\n"), 404),
        (format!("GET /v1/..%5Capi HTTP/1.1\r\n{auth}\r\n"), 404),
        (format!("GET /v1/..\\api HTTP/1.1\r\n{auth}\r\n"), 400),
        (format!("GET /v1/..;/api HTTP/1.1\r\n{auth}\r\n"), 404),
        (format!("GET /v1//models HTTP/1.1\r\n{auth}\r\n"), 404),
        (format!("GET /v1/models/ HTTP/1.1\r\n{auth}\r\n"), 404),
        // Item 12: target bytes outside RFC 3986, and bad Hosts.
        (format!("GET /v1/\"x\" HTTP/1.1\r\n{auth}\r\n"), 400),
        (format!("GET /v1/a|b HTTP/1.1\r\n{auth}\r\n"), 400),
        (format!("GET /v1/{{x}} HTTP/1.1\r\n{auth}\r\n"), 400),
        (format!("GET /v1/caf\u{e9} HTTP/1.1\r\n{auth}\r\n"), 400),
        (format!("GET /v1/%zz HTTP/1.1\r\n{auth}\r\n"), 400),
        (format!("GET /v1/models?a=%g1 HTTP/1.1\r\n{auth}\r\n"), 400),
        (
            format!("GET /v1/models HTTP/1.1\r\nAuthorization: Bearer {SESSION}\r\n\r\n"),
            400,
        ),
        (
            format!("GET /v1/models HTTP/1.1\r\nHost:\r\nAuthorization: Bearer {SESSION}\r\n\r\n"),
            400,
        ),
        (
            format!(
                "GET /v1/models HTTP/1.1\r\nHost: user@evil\r\nAuthorization: Bearer {SESSION}\r\n\r\n"
            ),
            400,
        ),
        (
            format!(
                "GET /v1/models HTTP/1.1\r\nHost: x/path\r\nAuthorization: Bearer {SESSION}\r\n\r\n"
            ),
            400,
        ),
        (
            format!(
                "GET /v1/models HTTP/1.1\r\nHost: a b\r\nAuthorization: Bearer {SESSION}\r\n\r\n"
            ),
            400,
        ),
        (
            format!(
                "GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer {SESSION}\r\n\r\n"
            ),
            400,
        ),
        // Item 11: underscore look-alikes of framing and hop-by-hop names.
        (
            format!(
                "POST /v1/messages HTTP/1.1\r\n{auth}Transfer_Encoding: chunked\r\nContent-Length: 0\r\n\r\n"
            ),
            400,
        ),
        (
            format!(
                "POST /v1/messages HTTP/1.1\r\n{auth}Content_Length: 5\r\nContent-Length: 0\r\n\r\n"
            ),
            400,
        ),
        (
            format!("GET /v1/models HTTP/1.1\r\n{auth}X_Api_Key: {SESSION}\r\n\r\n"),
            400,
        ),
        (format!("GET /v1/models HTTP/1.0\r\n{auth}\r\n"), 505),
    ];
    for (req, want) in &cases {
        let resp = roundtrip(proxy.addr, req.as_bytes()).unwrap_or_else(|e| panic!("{req:?}: {e}"));
        assert_eq!(resp.status, *want, "{req:?} -> {}", resp.body_text());
        let (kind, msg) = resp.anthropic_error();
        assert!(!kind.is_empty() && !msg.is_empty());
        assert_eq!(resp.header("connection"), Some("close"));
    }
    // The chunked 413 case reached the upstream only as an unfinished request, which the
    // mock never completes; nothing else may have arrived at all.
    assert!(
        mock.requests().is_empty(),
        "forwarded: {:?}",
        mock.requests()
    );
}

/// Issue 10 items 11 and 12: chunk extensions to the RFC 9112 grammar, trailers to the
/// header field rules (credential, framing and hop-by-hop fields refused); a refused line
/// never reaches the upstream, not even in part, and that upstream connection is not reused.
#[test]
fn bad_chunk_lines_and_trailers_never_reach_the_upstream() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let proxy = proxy_for(&mock, &ca);
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {SESSION}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    // (the body after the head, a marker that must never reach the upstream)
    let smuggled =
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SESSION}\r\n");
    let bad: Vec<(String, String)> = vec![
        (
            "2\r\n{}\r\n5;a=\"unbalanced\r\nhello\r\n0\r\n\r\n".into(),
            "unbalanced".into(),
        ),
        ("2;ext=\"x\"junk\r\n{}\r\n0\r\n\r\n".into(), "junk".into()),
        ("2;a b\r\n{}\r\n0\r\n\r\n".into(), "2;a b".into()),
        (
            format!("2\r\n{{}}\r\n0\r\n{smuggled}\r\n"),
            "/v1/models".into(),
        ),
        (
            format!("2\r\n{{}}\r\n0\r\nAuthorization: Bearer {SESSION}\r\n\r\n"),
            SESSION.into(),
        ),
        (
            format!("2\r\n{{}}\r\n0\r\nx-api-key: {SESSION}\r\n\r\n"),
            SESSION.into(),
        ),
        (
            format!("2\r\n{{}}\r\n0\r\nX_Api_Key: {SESSION}\r\n\r\n"),
            SESSION.into(),
        ),
        (
            "2\r\n{}\r\n0\r\nProxy-Authorization: Basic eA==\r\n\r\n".into(),
            "eA==".into(),
        ),
        (
            "2\r\n{}\r\n0\r\nCookie: sid=MARK\r\n\r\n".into(),
            "MARK".into(),
        ),
        (
            "2\r\n{}\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            "Transfer-Encoding: chunked\r\n\r\n".into(),
        ),
        (
            "2\r\n{}\r\n0\r\nTransfer_Encoding: chunked\r\n\r\n".into(),
            "Transfer_Encoding".into(),
        ),
        (
            "2\r\n{}\r\n0\r\nContent-Length: 5\r\n\r\n".into(),
            "Content-Length: 5".into(),
        ),
        (
            "2\r\n{}\r\n0\r\nConnection: MARK\r\n\r\n".into(),
            "MARK".into(),
        ),
        (
            "2\r\n{}\r\n0\r\nX-T: a\x00MARK\r\n\r\n".into(),
            "MARK".into(),
        ),
        (
            "2\r\n{}\r\n0\r\nX-T: a\x01MARK\r\n\r\n".into(),
            "MARK".into(),
        ),
        (
            "2\r\n{}\r\n0\r\nno colon MARK\r\n\r\n".into(),
            "MARK".into(),
        ),
        ("2\r\n{}\r\n0\r\nX-MARK : 1\r\n\r\n".into(), "MARK".into()),
        (
            "2\r\n{}\r\n0\r\n X-MARK: folded\r\n\r\n".into(),
            "MARK".into(),
        ),
    ];
    for (body, marker) in &bad {
        let before = mock.raw_in().len();
        let mut s = connect(proxy.addr);
        s.write_all(head.as_bytes()).unwrap();
        // In small pieces, so a line is never complete in one read.
        for piece in body.as_bytes().chunks(3) {
            if s.write_all(piece).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let resp = read_response(&mut BufReader::new(s), false).unwrap();
        assert_eq!(resp.status, 400, "{body:?}: {}", resp.body_text());
        assert_clean(&resp);
        // The upstream connection is closed, never pooled: give the mock a moment to see it.
        wait_until(
            "the upstream connection to close",
            Duration::from_secs(5),
            || {
                mock.state.closed.load(Ordering::SeqCst)
                    == mock.state.accepts.load(Ordering::SeqCst)
            },
        );
        let got = mock.raw_in()[before..].to_vec();
        assert!(
            !contains(&got, marker.as_bytes()),
            "{body:?}: the refused line reached the upstream: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            !contains(&got, SESSION.as_bytes()),
            "session secret forwarded"
        );
    }
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
    let refused_accepts = mock.state.accepts.load(Ordering::SeqCst);
    // Allowed shapes still pass byte for byte, on a fresh connection (none was pooled).
    let good = "2;name=token;q=\"quoted \\\" ;x\" ; bws = v\r\n{}\r\n0\r\nX-Checksum: abc\r\nX-T:1\r\n\r\n";
    let mut s = connect(proxy.addr);
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(good.as_bytes()).unwrap();
    let resp = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(mock.requests()[0].body_raw, good.as_bytes());
    assert_eq!(
        mock.state.accepts.load(Ordering::SeqCst),
        refused_accepts + 1,
        "a connection that carried a refused body was reused"
    );
    for line in logs() {
        assert_no_leak("log line", line.as_bytes());
    }
}

/// Issue 10 item 11: an upstream connection is pooled only after a response whose framing was
/// complete and unambiguous.
#[test]
fn ambiguous_responses_are_relayed_but_their_connection_is_never_reused() {
    let ca = TestCa::new("test CA");
    let heads: Arc<Mutex<Vec<&'static str>>> = Arc::new(Mutex::new(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        "HTTP/1.1 200 OK\r\nTransfer_Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        // Control: clean framing, pooled.
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ]));
    let h = heads.clone();
    let handler: Handler = Arc::new(move |_req: &Recorded, w: &mut dyn Write| {
        let next = h.lock().unwrap().remove(0);
        w.write_all(next.as_bytes())?;
        Ok(true)
    });
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    let mut accepts = Vec::new();
    for _ in 0..5 {
        let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"{}");
        // The proxy has logged the exchange; pooling happens before the next request.
        std::thread::sleep(Duration::from_millis(50));
        accepts.push(mock.state.accepts.load(Ordering::SeqCst));
    }
    // Each ambiguous response forces a new connection for the request after it; the clean
    // one before the last is reused by the last.
    assert_eq!(accepts, [1, 2, 3, 4, 4], "upstream connections per request");
}

#[test]
fn missing_or_wrong_session_secret_gets_401_in_the_anthropic_shape() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let proxy = proxy_for(&mock, &ca);
    let cases = [
        "POST /v1/messages HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}".to_string(),
        "POST /v1/messages HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer bottle-wrong\r\nContent-Length: 2\r\n\r\n{}".to_string(),
        format!("POST /v1/messages HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {REAL_TOKEN}\r\nContent-Length: 2\r\n\r\n{{}}"),
        format!("POST /v1/messages HTTP/1.1\r\nHost: h\r\nx-api-key: {}\r\nContent-Length: 2\r\n\r\n{{}}", &SESSION[..SESSION.len() - 1]),
    ];
    for req in &cases {
        let resp = roundtrip(proxy.addr, req.as_bytes()).unwrap();
        assert_eq!(resp.status, 401);
        let (kind, msg) = resp.anthropic_error();
        assert_eq!(kind, "authentication_error");
        assert!(msg.contains("session secret"), "{msg}");
    }
    assert!(mock.requests().is_empty());
    assert_eq!(
        mock.state.accepts.load(Ordering::SeqCst),
        0,
        "no upstream connection for refused requests"
    );
}

#[test]
fn head_warmup_is_answered_locally() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let proxy = proxy_for(&mock, &ca);
    let s = connect(proxy.addr);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r, true).unwrap();
    assert_clean(&resp);
    assert_eq!(resp.status, 200);
    // Same connection goes on to a real request.
    w.write_all(&post("/v1/messages", b"{}")).unwrap();
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(mock.requests()[0].method, "POST");
}

#[test]
fn bind_validates_without_contacting_the_upstream() {
    init_logs();
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let bad = config(
        &mock.upstream_url(),
        Some("not a certificate"),
        CredentialKind::OAuth,
    );
    match Proxy::bind("127.0.0.1:0".parse().unwrap(), bad) {
        Err(ProxyError::BadCa(m)) => assert!(!m.contains(REAL_TOKEN)),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("bad CA accepted"),
    }
    let proxy = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        config(&mock.upstream_url(), Some(&ca.pem), CredentialKind::OAuth),
    )
    .unwrap();
    assert_ne!(proxy.local_addr().port(), 0);
    proxy.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mock.state.accepts.load(Ordering::SeqCst), 0);
    assert_no_leak("logs", b"");
}

/// A response far larger than the proxy's buffers, to a client that does not read: the proxy
/// must stop reading the upstream (backpressure reaches the mock's writes) and hold only its
/// bounded buffers.
#[test]
fn slow_reader_keeps_proxy_memory_bounded() {
    const TOTAL: usize = 64 * 1024 * 1024;
    let ca = TestCa::new("test CA");
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w2 = written.clone();
    let handler: Handler = Arc::new(move |_req: &Recorded, w: &mut dyn Write| {
        write!(
            w,
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {TOTAL}\r\n\r\n"
        )?;
        let block = vec![b'x'; 16 * 1024];
        for _ in 0..TOTAL / block.len() {
            w.write_all(&block)?;
            w2.fetch_add(block.len(), Ordering::SeqCst);
        }
        Ok(true)
    });
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    let rss_before = vm_rss_kib();
    let mut s = connect(proxy.addr);
    s.write_all(&post("/v1/messages", b"{}")).unwrap();
    // Do not read for a while: everything the mock manages to write must fit in kernel socket
    // buffers plus the proxy's bounded buffers.
    std::thread::sleep(Duration::from_millis(1500));
    let stalled_at = written.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    let still = written.load(Ordering::SeqCst);
    let peak = proxy.stats.peak_connection_buffered.load(Ordering::SeqCst);
    let rss_stalled = vm_rss_kib();
    eprintln!(
        "slow reader: mock wrote {stalled_at} then {still} bytes of {TOTAL}; proxy peak per-connection buffer {peak} B; VmRSS {rss_before} -> {rss_stalled} KiB"
    );
    assert!(
        still < TOTAL / 2,
        "the upstream was read without backpressure ({still} bytes)"
    );
    assert_eq!(
        stalled_at, still,
        "the mock kept writing while the client read nothing"
    );
    assert!(
        peak <= 200 * 1024,
        "proxy buffered {peak} bytes for one connection"
    );
    // Now read it all: every byte arrives, in order.
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), TOTAL);
    assert!(resp.body.iter().all(|b| *b == b'x'));
    assert_clean(&resp);
    let peak = proxy.stats.peak_connection_buffered.load(Ordering::SeqCst);
    assert!(
        peak <= 200 * 1024,
        "proxy buffered {peak} bytes for one connection"
    );
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// An SSE stream whose handler reports when its connection goes away.
fn endless_sse_handler(events_sent: Arc<std::sync::atomic::AtomicUsize>) -> Handler {
    Arc::new(move |_req: &Recorded, w: &mut dyn Write| {
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")?;
        for i in 0.. {
            let ev = format!("event: ping\ndata: {{\"i\":{i}}}\n\n");
            write!(w, "{:x}\r\n{ev}\r\n", ev.len())?;
            w.flush()?;
            events_sent.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            if i > 3000 {
                break;
            }
        }
        Ok(false)
    })
}

#[test]
fn client_disconnect_mid_stream_frees_the_upstream() {
    let ca = TestCa::new("test CA");
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mock = Mock::start(&ca, endless_sse_handler(sent.clone()));
    let proxy = proxy_for(&mock, &ca);
    let s = connect(proxy.addr);
    let mut w = s.try_clone().unwrap();
    w.write_all(&post("/v1/messages", br#"{"stream":true}"#))
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !line.contains("event: ping") {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    assert_eq!(proxy.stats.open_upstreams.load(Ordering::SeqCst), 1);
    drop(r);
    drop(w);
    // The proxy closes its upstream connection; the mock's next writes fail.
    wait_until(
        "the upstream connection to close",
        Duration::from_secs(10),
        || mock.state.closed.load(Ordering::SeqCst) == 1,
    );
    assert_eq!(
        proxy.stats.open_upstreams.load(Ordering::SeqCst),
        0,
        "half-read connection kept"
    );
    assert!(
        logs()
            .iter()
            .any(|l| l.contains("client closed the connection"))
    );
    assert_eq!(mock.requests().len(), 1);
    assert_no_leak("stream", line.as_bytes());
}

#[test]
fn upstream_closing_mid_stream_truncates_the_client_stream() {
    let ca = TestCa::new("test CA");
    let handler: Handler = Arc::new(|req: &Recorded, w: &mut dyn Write| {
        if req.target.contains("chunked") {
            w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")?;
        } else {
            w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly-this")?;
        }
        w.flush()?;
        Ok(false) // close without finishing the body
    });
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);

    let mut s = connect(proxy.addr);
    s.write_all(&post("/v1/messages", b"{}")).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\nonly-this"),
        "truncated body must end as sent: {text}"
    );

    let mut s = connect(proxy.addr);
    s.write_all(&post("/v1/messages?chunked", b"{}")).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.ends_with("5\r\nhello\r\n"),
        "no terminating chunk may be invented: {text:?}"
    );
    assert_no_leak("truncated", &all);
    assert!(logs().iter().any(|l| l.contains("truncated")));
}

#[test]
fn two_hundred_concurrent_streams_complete() {
    let ca = TestCa::new("test CA");
    let handler: Handler = Arc::new(|req: &Recorded, w: &mut dyn Write| {
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")?;
        for i in 0..3 {
            let ev = format!("data: {} {i}\n\n", req.target);
            write!(w, "{:x}\r\n{ev}\r\n", ev.len())?;
            w.flush()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        w.write_all(b"0\r\n\r\n")?;
        Ok(true)
    });
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    let addr = proxy.addr;
    let start = Instant::now();
    let threads: Vec<_> = (0..200)
        .map(|n| {
            std::thread::spawn(move || {
                let resp = roundtrip(addr, &post(&format!("/v1/messages?n={n}"), b"{}")).unwrap();
                assert_eq!(resp.status, 200);
                let want: String = (0..3)
                    .map(|i| format!("data: /v1/messages?n={n} {i}\n\n"))
                    .collect();
                assert_eq!(resp.body_text(), want);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("200 concurrent streams in {:?}", start.elapsed());
    assert_eq!(mock.requests().len(), 200);
}

#[test]
fn slowloris_head_gets_408() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let limits = Limits {
        head_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let proxy = start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::OAuth,
        limits,
    );
    let mut s = connect(proxy.addr);
    let start = Instant::now();
    s.write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"X-Slow: 1\r\n").unwrap();
    let resp = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(resp.status, 408);
    assert_clean(&resp);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(mock.requests().is_empty());
}

#[test]
fn idle_keepalive_connections_are_closed() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let limits = Limits {
        idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let proxy = start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::OAuth,
        limits,
    );
    let s = connect(proxy.addr);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(&post("/v1/messages", b"{}")).unwrap();
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    let start = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(
        r.read(&mut buf).unwrap(),
        0,
        "idle connection closed without a response"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_no_leak("logs", b"");
}

#[test]
fn connection_cap_answers_503() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let proxy = start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::OAuth,
        limits,
    );
    let _a = connect(proxy.addr);
    let _b = connect(proxy.addr);
    wait_until("two open connections", Duration::from_secs(5), || {
        proxy.stats.open_clients.load(Ordering::SeqCst) == 2
    });
    let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.anthropic_error().0, "overloaded_error");
    drop((_a, _b));
    wait_until("connections to close", Duration::from_secs(5), || {
        proxy.stats.open_clients.load(Ordering::SeqCst) == 0
    });
    assert_eq!(
        roundtrip(proxy.addr, &post("/v1/messages", b"{}"))
            .unwrap()
            .status,
        200
    );
}

/// Issue 10 item 13, in-process with small numbers: more connections than the cap plus the
/// overflow answers in progress wait in the backlog and are answered in turn; none is closed
/// without an answer, and the held ones stay served.
#[test]
fn past_the_cap_every_connection_is_answered_in_turn() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let limits = Limits {
        max_connections: 2,
        max_overflow: 2,
        ..Limits::default()
    };
    let proxy = start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::OAuth,
        limits,
    );
    let held: Vec<_> = (0..2).map(|_| connect(proxy.addr)).collect();
    wait_until("two served connections", Duration::from_secs(5), || {
        proxy.stats.open_clients.load(Ordering::SeqCst) == 2
    });
    // Twelve more: two answered at a time (each lingers 250 ms unless the client closes).
    let started = Instant::now();
    let readers: Vec<_> = (0..12)
        .map(|_| {
            let addr = proxy.addr;
            std::thread::spawn(move || {
                let mut s = connect(addr);
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut got = Vec::new();
                let r = s.read_to_end(&mut got);
                (r.map_err(|e| e.kind()), got)
            })
        })
        .collect();
    for r in readers {
        let (res, got) = r.join().unwrap();
        assert!(res.is_ok(), "{res:?}");
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 503") && text.contains("overloaded_error"),
            "{text:?}"
        );
        assert_no_leak("overflow answer", &got);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(proxy.stats.overflow_answered.load(Ordering::SeqCst), 12);
    // The held connections are still served.
    for mut s in held {
        s.write_all(&post("/v1/messages", b"{}")).unwrap();
        let resp = read_response(&mut BufReader::new(s), false).unwrap();
        assert_eq!(resp.status, 200);
    }
}

#[test]
fn upstream_refusing_connections_gives_502() {
    init_logs();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let ca = TestCa::new("test CA");
    let proxy = start_proxy(
        &format!("https://localhost:{port}"),
        Some(&ca.pem),
        CredentialKind::OAuth,
        Limits::default(),
    );
    let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
    assert_eq!(resp.status, 502);
    let (kind, msg) = resp.anthropic_error();
    assert_eq!(kind, "api_error");
    assert!(msg.contains("cannot connect"), "{msg}");
    assert_eq!(resp.header("x-should-retry"), Some("false"));
}

#[test]
fn upstream_that_never_handshakes_gives_504() {
    init_logs();
    // Accepts TCP but never speaks TLS.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let conns: Vec<_> = silent.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(conns);
    });
    let ca = TestCa::new("test CA");
    let limits = Limits {
        connect_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let proxy = start_proxy(
        &format!("https://127.0.0.1:{port}"),
        Some(&ca.pem),
        CredentialKind::OAuth,
        limits,
    );
    let start = Instant::now();
    let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
    assert_eq!(resp.status, 504);
    assert!(resp.anthropic_error().1.contains("took longer than 1 s"));
    assert_eq!(resp.header("x-should-retry"), Some("false"));
    assert!(start.elapsed() < Duration::from_secs(4));
    drop(held);
}

#[test]
fn upstream_that_never_answers_gives_504_after_the_stream_idle_timeout() {
    let ca = TestCa::new("test CA");
    let handler: Handler = Arc::new(|_req: &Recorded, _w: &mut dyn Write| {
        std::thread::sleep(Duration::from_secs(4));
        Ok(false)
    });
    let mock = Mock::start(&ca, handler);
    let limits = Limits {
        stream_idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let proxy = start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::OAuth,
        limits,
    );
    let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
    assert_eq!(resp.status, 504);
    assert_eq!(mock.requests().len(), 1);
    // The upstream was reached: a retry may well succeed, so claude may retry.
    assert_eq!(resp.header("x-should-retry"), None);
}

#[test]
fn default_limits_allow_long_streams() {
    let l = Limits::default();
    assert!(
        l.stream_idle_timeout >= Duration::from_secs(600),
        "claude waits 600 s"
    );
    assert!(l.head_timeout <= Duration::from_secs(30));
    assert!(l.max_connections >= 256);
}

/// The fuzz harness (`bottle_init::http::fuzz::request_path`, also the `cargo fuzz` target)
/// driven by mutated seed requests for a bounded time. `FUZZ_SECONDS` (default 10) and
/// `FUZZ_SEED` tune it; the seed and the iteration count are printed.
#[test]
fn fuzz_request_path_bounded() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let seeds: Vec<Vec<u8>> = vec![
        post("/v1/messages?beta=true", br#"{"stream":true}"#),
        b"POST /v1/messages HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n".to_vec(),
        b"GET /v1/models HTTP/1.1\r\nx-api-key: k\r\nConnection: keep-alive, X-Gone\r\nX-Gone: 1\r\nanthropic-beta: a,b\r\nTE: trailers\r\n\r\n".to_vec(),
        b"HEAD / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    let tokens: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b":",
        b",",
        b";",
        b"0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: 0\r\n",
        b"Connection: close, te\r\n",
        b"Host: evil\r\n",
        b"Authorization: Bearer x\r\n",
        b"x-api-key: y\r\n",
        b"Upgrade: h2c\r\n",
        b"\x00",
        b"\x7f",
        b"\xff",
        b"ffffffffffffffff\r\n",
        b"HTTP/1.0",
        b"http://a/",
        b"anthropic-beta: oauth-2025-04-20\r\n",
    ];
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut iterations = 0u64;
    while Instant::now() < deadline {
        for _ in 0..256 {
            let mut input = vec![next() as u8];
            input.extend_from_slice(&seeds[(next() as usize) % seeds.len()]);
            for _ in 0..(next() % 6) {
                let len = input.len().max(2);
                let at = 1 + (next() as usize) % (len - 1);
                let at = at.min(input.len());
                match next() % 5 {
                    0 => input.insert(at, next() as u8),
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    2 if at < input.len() => input[at] ^= 1 << (next() % 8),
                    3 => {
                        let t = tokens[(next() as usize) % tokens.len()];
                        input.splice(at..at, t.iter().copied());
                    }
                    _ => {
                        let end = (at + (next() as usize) % 16).min(input.len());
                        let dup = input[at..end].to_vec();
                        input.splice(at..at, dup);
                    }
                }
            }
            let result = std::panic::catch_unwind(|| bottle_init::http::fuzz::request_path(&input));
            if result.is_err() {
                panic!(
                    "seed {seed}: harness failed on input {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            iterations += 1;
        }
    }
    eprintln!(
        "fuzz_request_path_bounded: {iterations} inputs ran clean (seed {seed}, {seconds} s)"
    );
    assert!(
        iterations > 1000,
        "too few iterations to mean anything: {iterations}"
    );
}

/// An upstream that closes idle connections: the pool notices and the next request opens a
/// fresh connection instead of failing on a dead one, resuming the earlier TLS session.
#[test]
fn pooled_connections_closed_by_the_upstream_are_dropped() {
    let ca = TestCa::new("test CA");
    let handler: Handler = Arc::new(|_req: &Recorded, w: &mut dyn Write| {
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")?;
        Ok(false) // close after answering, without announcing it
    });
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    for i in 0..3 {
        let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
        assert_eq!(resp.status, 200, "request {i}: {}", resp.body_text());
        wait_until(
            "the pool to drop the closed connection",
            Duration::from_secs(5),
            || proxy.stats.open_upstreams.load(Ordering::SeqCst) == 0,
        );
    }
    assert_eq!(mock.state.accepts.load(Ordering::SeqCst), 3);
    // New connections resume the TLS session of an earlier one (one shared client config).
    assert_eq!(mock.state.resumed.load(Ordering::SeqCst), 2);
}

/// Interim (1xx) responses are relayed, then the final response on the same connection, and
/// the connection is still reused afterwards.
#[test]
fn interim_responses_are_relayed() {
    let ca = TestCa::new("test CA");
    let handler: Handler = Arc::new(|_req: &Recorded, w: &mut dyn Write| {
        w.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")?;
        w.flush()?;
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")?;
        Ok(true)
    });
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    for _ in 0..2 {
        let s = connect(proxy.addr);
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        w.write_all(&post("/v1/messages", b"{}")).unwrap();
        let interim = read_response(&mut r, false).unwrap();
        assert_eq!(interim.status, 103);
        assert_eq!(interim.header("link"), Some("</x>"));
        let fin = read_response(&mut r, false).unwrap();
        assert_eq!((fin.status, fin.body_text().as_str()), (200, "done"));
        assert_clean(&interim);
        assert_clean(&fin);
    }
    assert_eq!(mock.state.accepts.load(Ordering::SeqCst), 1);
}

/// Two requests in one write (pipelining): answered in order on the same connection.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    let proxy = proxy_for(&mock, &ca);
    let s = connect(proxy.addr);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut both = post("/v1/messages?first", b"{\"a\":1}");
    both.extend_from_slice(&post("/v1/messages?second", b"{\"b\":2}"));
    w.write_all(&both).unwrap();
    for which in ["first", "second"] {
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.body_text().contains(which), "{}", resp.body_text());
        assert_clean(&resp);
    }
    let got = mock.requests();
    assert_eq!(got[0].body_raw, b"{\"a\":1}");
    assert_eq!(got[1].body_raw, b"{\"b\":2}");
}

/// An SSE stream that sends one event at once, then one every 200 ms until `stop` is set,
/// then ends the stream cleanly.
fn paced_sse_handler(stop: Arc<std::sync::atomic::AtomicBool>) -> Handler {
    Arc::new(move |req: &Recorded, w: &mut dyn Write| {
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")?;
        let mut i = 0;
        loop {
            let ev = format!(
                "event: content_block_delta\ndata: {{\"path\":\"{}\",\"i\":{i}}}\n\n",
                req.target
            );
            write!(w, "{:x}\r\n{ev}\r\n", ev.len())?;
            w.flush()?;
            i += 1;
            for _ in 0..20 {
                if stop.load(Ordering::SeqCst) {
                    w.write_all(b"0\r\n\r\n")?;
                    return Ok(true);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    })
}

/// 256 open SSE streams of small events: the proxy's buffers grow with what is relayed (a
/// request head one way, ~100-byte events the other), not to the 2 x 64 KiB cap per stream.
#[test]
fn many_open_sse_streams_hold_little_buffer_memory() {
    const STREAMS: usize = 256;
    let ca = TestCa::new("test CA");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mock = Mock::start(&ca, paced_sse_handler(stop.clone()));
    let proxy = proxy_for(&mock, &ca);
    let addr = proxy.addr;
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..STREAMS)
        .map(|n| {
            let started = started.clone();
            std::thread::spawn(move || {
                let mut s = connect(addr);
                s.write_all(&post(&format!("/v1/messages?n={n}"), br#"{"stream":true}"#))
                    .unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                while !line.starts_with("data: ") {
                    line.clear();
                    assert!(
                        r.read_line(&mut line).unwrap() > 0,
                        "stream {n} ended early"
                    );
                }
                assert!(line.contains(&format!("n={n}")), "{line}");
                started.fetch_add(1, Ordering::SeqCst);
                // The rest of the stream, to its clean end.
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).ok();
                rest
            })
        })
        .collect();
    wait_until("all streams to start", Duration::from_secs(60), || {
        started.load(Ordering::SeqCst) == STREAMS
    });
    // Let a few more events flow through every stream before measuring.
    std::thread::sleep(Duration::from_millis(600));
    let open = proxy.stats.open_clients.load(Ordering::SeqCst);
    let capacity = proxy.stats.buffer_capacity.load(Ordering::SeqCst);
    eprintln!(
        "{STREAMS} open SSE streams: {open} clients, {capacity} bytes of buffers ({} per stream)",
        capacity / STREAMS
    );
    assert_eq!(open, STREAMS);
    assert!(capacity > 0, "the buffer gauge does not count anything");
    assert!(
        capacity < STREAMS * 16 * 1024,
        "{capacity} bytes of buffers for {STREAMS} streams of small events"
    );
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let rest = t.join().unwrap();
        assert_no_leak("stream", &rest);
    }
    assert_eq!(mock.requests().len(), STREAMS);
}

/// After a warm-up that opens one upstream connection per client, K clients doing requests
/// back to back never make the proxy open another one: the pool keeps them all.
#[test]
fn warm_pool_serves_concurrent_clients_without_new_connections() {
    const K: usize = 64;
    const ROUNDS: usize = 15;
    let ca = TestCa::new("test CA");
    // The warm-up requests are held until all K have arrived, so K upstream connections
    // exist at once; after it, at most K requests are ever in flight.
    let warm = Arc::new(std::sync::Barrier::new(K));
    let ok = ok_handler();
    let handler: Handler = Arc::new(move |req: &Recorded, w: &mut dyn Write| {
        if req.target.contains("warm") {
            warm.wait();
        }
        ok(req, w)
    });
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    let addr = proxy.addr;
    let warmed = Arc::new(std::sync::Barrier::new(K + 1));
    let go = Arc::new(std::sync::Barrier::new(K + 1));
    let threads: Vec<_> = (0..K)
        .map(|n| {
            let (warmed, go) = (warmed.clone(), go.clone());
            std::thread::spawn(move || {
                let s = connect(addr);
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut ask = |path: String| {
                    w.write_all(&post(&path, b"{}")).unwrap();
                    let resp = read_response(&mut r, false).unwrap();
                    assert_eq!(resp.status, 200);
                    assert_eq!(
                        resp.body_text(),
                        format!(r#"{{"ok":true,"path":"{path}"}}"#)
                    );
                    assert_clean(&resp);
                };
                ask(format!("/v1/messages?warm={n}"));
                warmed.wait();
                go.wait();
                for i in 0..ROUNDS {
                    ask(format!("/v1/messages?n={n}&i={i}"));
                }
            })
        })
        .collect();
    warmed.wait();
    let accepts = mock.state.accepts.load(Ordering::SeqCst);
    let handshakes = mock.state.handshakes.load(Ordering::SeqCst);
    assert_eq!(accepts, K, "one upstream connection per warm-up request");
    go.wait();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(mock.requests().len(), K * (ROUNDS + 1));
    assert_eq!(
        mock.state.accepts.load(Ordering::SeqCst),
        accepts,
        "new upstream TCP connections after warm-up"
    );
    assert_eq!(
        mock.state.handshakes.load(Ordering::SeqCst),
        handshakes,
        "new upstream TLS handshakes after warm-up"
    );
    assert_eq!(
        proxy.stats.upstream_reused.load(Ordering::SeqCst),
        (K * ROUNDS) as u64
    );
    assert_no_leak("logs", b"");
}

/// A burst of new upstream connections resumes TLS sessions instead of doing full
/// handshakes, beyond rustls' default of 8 tickets per server.
#[test]
fn bursts_of_new_upstream_connections_resume_tls() {
    const K: usize = 24;
    let ca = TestCa::new("test CA");
    let gate = Arc::new(std::sync::Barrier::new(K));
    let ok = ok_handler();
    let handler: Handler = Arc::new(move |req: &Recorded, w: &mut dyn Write| {
        if req.target.contains("burst") {
            gate.wait();
        }
        ok(req, w)
    });
    let mock = Mock::start(&ca, handler);
    // No pool: every request needs a new upstream connection.
    let limits = Limits {
        pool_max_idle: 0,
        ..Limits::default()
    };
    let proxy = start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::OAuth,
        limits,
    );
    let addr = proxy.addr;
    let burst = |tag: &'static str| {
        let threads: Vec<_> = (0..K)
            .map(|n| {
                std::thread::spawn(move || {
                    let resp =
                        roundtrip(addr, &post(&format!("/v1/messages?{tag}={n}"), b"{}")).unwrap();
                    assert_eq!(resp.status, 200);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    };
    // K new connections, each leaving tickets behind (the mock sends 2 per handshake)...
    burst("burst");
    let resumed_before = mock.state.resumed.load(Ordering::SeqCst);
    // ...so the next K concurrent connections all resume.
    burst("burst");
    let handshakes = mock.state.handshakes.load(Ordering::SeqCst);
    let resumed = mock.state.resumed.load(Ordering::SeqCst) - resumed_before;
    eprintln!("{handshakes} handshakes; second burst: {resumed} of {K} resumed");
    assert_eq!(handshakes, 2 * K);
    assert_eq!(
        resumed, K,
        "only {resumed} of the second burst's {K} connections resumed"
    );
    assert_no_leak("logs", b"");
}

/// Keep-alive connections that have gone quiet give their buffers back (wiped, see buf.rs),
/// stay open, and work again afterwards.
#[test]
fn idle_connections_release_their_buffers() {
    const N: usize = 16;
    let ca = TestCa::new("test CA");
    // The first round of responses is held until the test has looked at the buffers.
    let hold = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h2 = hold.clone();
    let ok = ok_handler();
    let handler: Handler = Arc::new(move |req: &Recorded, w: &mut dyn Write| {
        while req.target.contains("held") && h2.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        ok(req, w)
    });
    let mock = Mock::start(&ca, handler);
    let limits = Limits {
        buffer_release_after: Duration::from_millis(300),
        ..Limits::default()
    };
    let proxy = start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::OAuth,
        limits,
    );
    let body = vec![b'x'; 100 * 1024];
    let mut conns: Vec<_> = (0..N)
        .map(|n| {
            let s = connect(proxy.addr);
            let mut w = s.try_clone().unwrap();
            w.write_all(&post(&format!("/v1/messages?held={n}"), &body))
                .unwrap();
            (w, BufReader::new(s))
        })
        .collect();
    wait_until("the held requests", Duration::from_secs(20), || {
        mock.requests().len() == N
    });
    let busy = proxy.stats.buffer_capacity.load(Ordering::SeqCst);
    // Each request body went through a growing request buffer.
    assert!(
        busy >= N * 32 * 1024,
        "{busy} bytes of buffers for {N} 100 KB uploads in flight"
    );
    hold.store(false, Ordering::SeqCst);
    for (_, r) in conns.iter_mut() {
        let resp = read_response(r, false).unwrap();
        assert_eq!(resp.status, 200);
        assert_clean(&resp);
    }
    wait_until(
        "idle buffers to be released",
        Duration::from_secs(10),
        || proxy.stats.buffer_capacity.load(Ordering::SeqCst) == 0,
    );
    assert_eq!(proxy.stats.open_clients.load(Ordering::SeqCst), N);
    assert!(proxy.stats.buffers_released.load(Ordering::SeqCst) >= N as u64);
    // The same connections serve the next request.
    for (n, (w, r)) in conns.iter_mut().enumerate() {
        w.write_all(&post(&format!("/v1/messages?again={n}"), b"{}"))
            .unwrap();
        let resp = read_response(r, false).unwrap();
        assert_eq!(resp.status, 200);
        assert_clean(&resp);
    }
    assert_eq!(mock.requests().len(), 2 * N);
}

/// Issue 2: the credential is "zeroed on exit". PID 1 empties the shared slot when its init
/// loop ends; from then on the proxy must refuse instead of forwarding anything.
#[test]
fn after_the_credential_is_wiped_requests_get_503_and_nothing_is_forwarded() {
    let ca = TestCa::new("test CA");
    let mock = Mock::start(&ca, ok_handler());
    init_logs();
    let proxy = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        config(&mock.upstream_url(), Some(&ca.pem), CredentialKind::OAuth),
    )
    .unwrap();
    let slot = proxy.credential_slot();
    let addr = proxy.local_addr();
    proxy.spawn().unwrap();
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {SESSION}\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    assert_eq!(
        slot.with(|c| c.secret.expose() == REAL_TOKEN.as_bytes()),
        Some(true)
    );
    let before = roundtrip(addr, req.as_bytes()).unwrap();
    assert_eq!(before.status, 200, "{}", before.body_text());

    slot.wipe();
    assert!(
        slot.with(|_| ()).is_none(),
        "the slot still holds a credential"
    );
    let after = roundtrip(addr, req.as_bytes()).unwrap();
    assert_eq!(after.status, 503, "{}", after.body_text());
    let (kind, msg) = after.anthropic_error();
    assert_eq!(kind, "overloaded_error");
    assert!(msg.contains("shutting down"), "{msg}");
    assert_eq!(
        mock.requests().len(),
        1,
        "a request was forwarded after the wipe"
    );
    assert_clean(&before);
    assert_clean(&after);
    for line in logs() {
        assert_no_leak("log line", line.as_bytes());
    }
}

/// Kernel thread ids of this process's threads named `proxy`.
fn proxy_threads() -> Vec<String> {
    let mut tids = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == "proxy" {
            tids.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    tids
}

fn voluntary_switches(tid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in status")
}

/// An idle proxy (no connection, nothing pooled) sleeps until something happens: no timer
/// wakes its thread (issue 11; before, the sweep woke it 5 times a second for nothing).
#[test]
fn an_idle_proxy_thread_is_not_woken() {
    for _attempt in 0..20 {
        let before = proxy_threads();
        let p = start_proxy(
            "https://localhost:1",
            None,
            CredentialKind::OAuth,
            Limits::default(),
        );
        // The thread names itself once it runs: wait for it to show up.
        let mut new = Vec::new();
        let start = Instant::now();
        while new.is_empty() && start.elapsed() < Duration::from_secs(5) {
            new = proxy_threads()
                .into_iter()
                .filter(|t| !before.contains(t))
                .collect();
            std::thread::sleep(Duration::from_millis(5));
        }
        // Another test may have started a proxy at the same moment: try again.
        let [tid] = new.as_slice() else { continue };
        // Let it start up and settle, then watch it. By now every thread started before it
        // has its name: if another new one shows up, which is ours is not known.
        std::thread::sleep(Duration::from_millis(300));
        let now_new = proxy_threads()
            .into_iter()
            .filter(|t| !before.contains(t))
            .count();
        if now_new != 1 {
            continue;
        }
        let start = voluntary_switches(tid);
        std::thread::sleep(Duration::from_millis(1500));
        let woken = voluntary_switches(tid) - start;
        assert!(
            woken <= 1,
            "the idle proxy thread was woken {woken} times in 1.5 s"
        );
        // And it still serves: a connection wakes it.
        let resp = roundtrip(p.addr, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(resp.status, 200);
        return;
    }
    panic!("could not tell this test's proxy thread from the others'");
}
