//! Test harness for the proxy: a generated CA, a TLS mock of the upstream API on loopback
//! (blocking, one thread per connection, counting accepts, handshakes and decrypted bytes),
//! a plain HTTP/1.1 test client, and a logger that captures every log line so tests can check
//! that no secret is ever logged.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
// The mock upstream

#[derive(Clone, Debug)]
pub struct MockRequest {
    pub head: Vec<u8>,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body exactly as received (chunk framing included).
    pub body_raw: Vec<u8>,
}

impl MockRequest {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// Writes one response to the stream; returns whether to keep the connection open.
pub type Handler = Arc<dyn Fn(&MockRequest, &mut dyn Write) -> io::Result<bool> + Send + Sync>;

#[derive(Default)]
pub struct MockState {
    pub accepts: AtomicUsize,
    pub handshakes: AtomicUsize,
    pub handshake_failures: AtomicUsize,
    /// Handshakes that resumed an earlier TLS session.
    pub resumed: AtomicUsize,
    /// Decrypted bytes received, over all connections.
    pub plain_bytes_in: AtomicU64,
    /// The decrypted bytes themselves, in arrival order (all connections).
    pub raw_in: Mutex<Vec<u8>>,
    /// Connections that ended (the proxy closed them or the handler did).
    pub closed: AtomicUsize,
    pub requests: Mutex<Vec<MockRequest>>,
}

pub struct Mock {
    pub port: u16,
    pub state: Arc<MockState>,
}

impl Mock {
    pub fn start(ca: &TestCa, handler: Handler) -> Mock {
        let cfg = ca.server_config();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(MockState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                st.accepts.fetch_add(1, Ordering::SeqCst);
                let (cfg, st, handler) = (cfg.clone(), st.clone(), handler.clone());
                std::thread::spawn(move || serve(conn, cfg, &st, &handler));
            }
        });
        Mock { port, state }
    }

    pub fn requests(&self) -> Vec<MockRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Everything the upstream received so far, decrypted.
    pub fn raw_in(&self) -> Vec<u8> {
        self.state.raw_in.lock().unwrap().clone()
    }

    pub fn upstream_url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

struct Counting<'a, R> {
    inner: R,
    count: &'a AtomicU64,
    raw: &'a Mutex<Vec<u8>>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::SeqCst);
        self.raw.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl<R: Write> Write for Counting<'_, R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn serve(mut sock: TcpStream, cfg: Arc<rustls::ServerConfig>, st: &MockState, handler: &Handler) {
    // Handlers write in pieces; Nagle plus delayed ACKs would add 40 ms per response.
    sock.set_nodelay(true).unwrap();
    let mut tls = rustls::ServerConnection::new(cfg).unwrap();
    while tls.is_handshaking() {
        if tls.complete_io(&mut sock).is_err() {
            st.handshake_failures.fetch_add(1, Ordering::SeqCst);
            st.closed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
    st.handshakes.fetch_add(1, Ordering::SeqCst);
    if tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        st.resumed.fetch_add(1, Ordering::SeqCst);
    }
    let stream = rustls::StreamOwned::new(tls, sock);
    let mut reader = BufReader::new(Counting {
        inner: stream,
        count: &st.plain_bytes_in,
        raw: &st.raw_in,
    });
    while let Ok(Some(req)) = read_request(&mut reader) {
        st.requests.lock().unwrap().push(req.clone());
        let keep = handler(&req, reader.get_mut());
        let _ = reader.get_mut().flush();
        if !matches!(keep, Ok(true)) {
            break;
        }
    }
    st.closed.fetch_add(1, Ordering::SeqCst);
}

/// Reads one request; `Ok(None)` at a clean end of stream.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Option<MockRequest>> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    req.parse(&head)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    let mut out = MockRequest {
        method: req.method.unwrap().to_string(),
        target: req.path.unwrap().to_string(),
        head: head.clone(),
        headers,
        body_raw: Vec::new(),
    };
    if let Some(cl) = out.header("content-length") {
        let n: usize = cl.trim().parse().unwrap();
        out.body_raw.resize(n, 0);
        r.read_exact(&mut out.body_raw)?;
    } else if out.header("transfer-encoding").is_some() {
        read_chunked_raw(r, &mut out.body_raw)?;
    }
    Ok(Some(out))
}

/// Reads a chunked body, keeping its bytes exactly; returns the decoded data.
pub fn read_chunked_raw(r: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line);
        let size_txt = text.trim_end().split(';').next().unwrap_or("");
        let size =
            usize::from_str_radix(size_txt, 16).map_err(|e| io::Error::other(e.to_string()))?;
        if size == 0 {
            loop {
                let mut t = Vec::new();
                if r.read_until(b'\n', &mut t)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                raw.extend_from_slice(&t);
                if t == b"\r\n" {
                    return Ok(data);
                }
            }
        }
        let mut chunk = vec![0u8; size + 2];
        r.read_exact(&mut chunk)?;
        raw.extend_from_slice(&chunk);
        data.extend_from_slice(&chunk[..size]);
    }
}

/// A handler answering every request with `200` and a small JSON body, keeping the
/// connection open, with the headers claude needs relayed unchanged.
pub fn ok_handler() -> Handler {
    Arc::new(|req: &MockRequest, w: &mut dyn Write| {
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
