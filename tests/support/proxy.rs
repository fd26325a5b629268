//! Test harness for the proxy: the one mock upstream (tests/support/upstream.rs, counting
//! accepts, handshakes and decrypted bytes) with its default handler, a plain HTTP/1.1 test
//! client, and a logger that captures every log line so tests can check
//! that no secret is ever logged.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bottle_init::proxy::{Limits, Proxy, ProxyConfig, Stats, Upstream};
use bottle_init::secret::{Credential, CredentialKind, Secret};

pub const REAL_TOKEN: &str = "sk-ant-oat01-REALTOKEN-must-never-leave-the-proxy";
pub const SESSION: &str = "bottle-SESSIONSECRET0123456789abcdef0123456789abcdef0123456789abcd";

// ---------------------------------------------------------------------------------------
// Logs

struct Capture;

fn log_lines() -> &'static Mutex<Vec<String>> {
    static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LINES.get_or_init(|| Mutex::new(Vec::new()))
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {} {}", record.level(), record.target(), record.args());
        if std::env::var_os("PROXY_TEST_LOG").is_some() {
            eprintln!("{line}");
        }
        log_lines().lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

/// Installs the capturing logger (once per test binary), at debug level so rustls' own
/// messages are checked too.
pub fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        log::set_logger(&Capture).expect("no other logger");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

pub fn logs() -> Vec<String> {
    log_lines().lock().unwrap().clone()
}

/// Neither the real token nor the session secret appears in `bytes` or in any log line.
pub fn assert_no_leak(what: &str, bytes: &[u8]) {
    for secret in [REAL_TOKEN, SESSION] {
        assert!(
            !contains(bytes, secret.as_bytes()),
            "{what} contains a secret: {}",
            String::from_utf8_lossy(bytes)
        );
        for line in logs() {
            assert!(
                !line.contains(secret),
                "a log line contains a secret: {line}"
            );
        }
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// Certificates

pub use crate::support::tls::TestCa;

// ---------------------------------------------------------------------------------------
// The mock upstream: the one in tests/support, with handlers written here and in the tests

pub use crate::support::upstream::{Handler, MockUpstream as Mock, Recorded, read_chunked_raw};

/// A handler answering every request with `200` and a small JSON body, keeping the
/// connection open, with the headers claude needs relayed unchanged.
pub fn ok_handler() -> Handler {
    Arc::new(|req: &Recorded, w: &mut dyn Write| {
        let body = format!("{{\"ok\":true,\"path\":\"{}\"}}", req.target);
        write!(
            w,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_123\r\n\
             anthropic-ratelimit-requests-remaining: 99\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{}",
            body.len(),
            body
        )?;
        Ok(true)
    })
}

// ---------------------------------------------------------------------------------------
// The proxy under test

pub struct TestProxy {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
}

pub fn config(upstream: &str, ca_pem: Option<&str>, kind: CredentialKind) -> ProxyConfig {
    ProxyConfig {
        upstream: Upstream::parse(upstream).unwrap(),
        extra_roots_pem: ca_pem.map(|p| p.as_bytes().to_vec()),
        credential: Credential {
            kind,
            secret: Secret::new(REAL_TOKEN.as_bytes().to_vec()),
        },
        session_secret: Secret::new(SESSION.as_bytes().to_vec()),
    }
}

pub fn start_proxy(
    upstream: &str,
    ca_pem: Option<&str>,
    kind: CredentialKind,
    limits: Limits,
) -> TestProxy {
    init_logs();
    let proxy = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        config(upstream, ca_pem, kind),
    )
    .unwrap()
    .with_limits(limits);
    let addr = proxy.local_addr();
    let stats = proxy.stats();
    proxy.spawn().unwrap();
    TestProxy { addr, stats }
}

/// A proxy in front of a mock with the default handler, OAuth credential and default limits.
pub fn proxy_for(mock: &Mock, ca: &TestCa) -> TestProxy {
    start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::OAuth,
        Limits::default(),
    )
}

// ---------------------------------------------------------------------------------------
// The test client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    /// The body as sent (chunk framing included).
    pub raw_body: Vec<u8>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the Anthropic error shape and returns (type, message).
    pub fn anthropic_error(&self) -> (String, String) {
        let text = self.body_text();
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{text}"
        );
        assert!(
            text.starts_with(r#"{"type":"error","error":{"type":""#),
            "{text}"
        );
        let rest = &text[r#"{"type":"error","error":{"type":""#.len()..];
        let (kind, rest) = rest.split_once('"').unwrap();
        let msg = rest
            .strip_prefix(r#","message":""#)
            .and_then(|m| m.strip_suffix("\"}}"))
            .unwrap();
        (kind.to_string(), msg.to_string())
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Reads one response head and its body (Content-Length, chunked, or until close).
pub fn read_response(r: &mut impl BufRead, request_was_head: bool) -> io::Result<Response> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("eof in head: {:?}", String::from_utf8_lossy(&head)),
            ));
        }
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut slots);
    resp.parse(&head)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let status = resp.code.unwrap();
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut out = Response {
        status,
        head: String::from_utf8_lossy(&head).into_owned(),
        headers,
        raw_body: Vec::new(),
        body: Vec::new(),
    };
    if request_was_head || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(out);
    }
    if let Some(cl) = out.header("content-length") {
        let n: usize = cl.trim().parse().unwrap();
        out.raw_body.resize(n, 0);
        r.read_exact(&mut out.raw_body)?;
        out.body = out.raw_body.clone();
    } else if out.header("transfer-encoding").is_some() {
        out.body = read_chunked_raw(r, &mut out.raw_body)?;
    } else {
        r.read_to_end(&mut out.raw_body)?;
        out.body = out.raw_body.clone();
    }
    Ok(out)
}

/// Neither secret is in the response (head or body) nor in any log line so far.
pub fn assert_clean(resp: &Response) {
    assert_no_leak("response head", resp.head.as_bytes());
    assert_no_leak("response body", &resp.raw_body);
}

/// Sends `raw` on a new connection and reads one response.
pub fn roundtrip(addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    let mut s = connect(addr);
    s.write_all(raw)?;
    let head = raw.starts_with(b"HEAD ");
    let resp = read_response(&mut BufReader::new(s), head)?;
    assert_clean(&resp);
    Ok(resp)
}

/// A well-formed authorized request.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {SESSION}\r\n\
         content-type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
