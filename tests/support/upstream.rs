//! The one mock upstream every test binary uses: an accept loop on listeners the caller bound
//! (possibly inside another network namespace: a socket keeps the namespace it was made in),
//! TLS from [`super::tls`] or plain HTTP, one thread per connection, HTTP/1.1 keep-alive, and a
//! record of every request (head and body bytes exactly as received, plus the decoded body).
//! What it answers is the caller's [`Handler`]: the proxy tests write theirs inline, the
//! Messages-API mock (tests/support/e2e/mock.rs) is one such handler.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tls::TestCa;

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The head exactly as received, CRLFCRLF included.
    pub head: Vec<u8>,
    pub method: String,
    pub target: String,
    /// Header names as sent (case preserved), values as bytes, in wire order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body exactly as received (chunk framing included).
    pub body_raw: Vec<u8>,
    /// The body decoded (chunk framing removed).
    pub body: Vec<u8>,
    pub at: Instant,
    /// The connection number it arrived on, from 0 (to see keep-alive reuse).
    pub conn: usize,
    /// Its position in the mock's record, from 1.
    pub seq: usize,
}

impl Recorded {
    /// All values of a header (case-insensitive name), as lossy strings.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.header_all(name).len()
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// Writes one response to the stream; returns whether to keep the connection open.
pub type Handler = Arc<dyn Fn(&Recorded, &mut dyn Write) -> io::Result<bool> + Send + Sync>;

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
    /// Connections that ended (the peer closed them or the handler did).
    pub closed: AtomicUsize,
    pub requests: Mutex<Vec<Recorded>>,
    stop: AtomicBool,
}

/// A running mock. Dropping it stops accepting; open connections end with their peer or with
/// the test process.
pub struct MockUpstream {
    pub port: u16,
    pub tls: bool,
    pub state: Arc<MockState>,
}

impl MockUpstream {
    /// HTTPS on a fresh loopback port with a certificate signed by `ca`.
    pub fn start(ca: &TestCa, handler: Handler) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        MockUpstream::serve(vec![listener], Some(ca.server_config()), handler).unwrap()
    }

    /// Serves `handler` on every listener (the first one names the port): TLS with `tls`,
    /// plain HTTP without.
    pub fn serve(
        listeners: Vec<TcpListener>,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Handler,
    ) -> io::Result<MockUpstream> {
        let port = listeners
            .first()
            .ok_or_else(|| io::Error::other("no listener"))?
            .local_addr()?
            .port();
        let state = Arc::new(MockState::default());
        for listener in listeners {
            listener.set_nonblocking(true)?;
            let (st, tls, handler) = (state.clone(), tls.clone(), handler.clone());
            std::thread::Builder::new()
                .name("mock-accept".into())
                .spawn(move || accept_loop(listener, tls, &st, &handler))?;
        }
        Ok(MockUpstream {
            port,
            tls: tls.is_some(),
            state,
        })
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// Everything the upstream received so far, decrypted.
    pub fn raw_in(&self) -> Vec<u8> {
        lock(&self.state.raw_in).clone()
    }

    /// `https://localhost:PORT` (the name on the certificate) or `http://127.0.0.1:PORT`.
    pub fn upstream_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    st: &Arc<MockState>,
    handler: &Handler,
) {
    while !st.stop.load(Ordering::SeqCst) {
        // poll with a timeout rather than a blocking accept, so a dropped mock stops (nothing
        // can wake a listener in another namespace), without a sleep in front of every accept.
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        match listener.accept() {
            Ok((sock, _)) => {
                let n = st.accepts.fetch_add(1, Ordering::SeqCst);
                let (tls, st, handler) = (tls.clone(), st.clone(), handler.clone());
                let _ = std::thread::Builder::new()
                    .name(format!("mock-conn-{n}"))
                    .spawn(move || {
                        if let Err(err) = serve(sock, n, tls, &st, &handler) {
                            eprintln!("mock: connection {n}: {err}");
                        }
                        st.closed.fetch_add(1, Ordering::SeqCst);
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                eprintln!("mock: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// Counts and keeps every byte read; writes pass through.
struct Counting<'a> {
    inner: Box<dyn Io>,
    st: &'a MockState,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.st.plain_bytes_in.fetch_add(n as u64, Ordering::SeqCst);
        lock(&self.st.raw_in).extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A peer that closes (without close_notify, or with a reset) ends the connection quietly.
fn is_eof(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
    )
}

fn serve(
    mut sock: TcpStream,
    conn: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    st: &MockState,
    handler: &Handler,
) -> io::Result<()> {
    sock.set_nonblocking(false)?;
    // Handlers write in pieces; Nagle plus delayed ACKs would add 40 ms per response.
    sock.set_nodelay(true)?;
    // Long enough for any test; short enough that a forgotten connection does not live forever.
    sock.set_read_timeout(Some(Duration::from_secs(300)))?;
    let io: Box<dyn Io> = match tls {
        Some(cfg) => {
            let mut tls = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
            while tls.is_handshaking() {
                if tls.complete_io(&mut sock).is_err() {
                    st.handshake_failures.fetch_add(1, Ordering::SeqCst);
                    return Ok(());
                }
            }
            st.handshakes.fetch_add(1, Ordering::SeqCst);
            if tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                st.resumed.fetch_add(1, Ordering::SeqCst);
            }
            Box::new(rustls::StreamOwned::new(tls, sock))
        }
        None => Box::new(sock),
    };
    let mut reader = BufReader::new(Counting { inner: io, st });
    loop {
        let mut req = match read_request(&mut reader, conn) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(e) if is_eof(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        {
            let mut record = lock(&st.requests);
            req.seq = record.len() + 1;
            record.push(req.clone());
        }
        let keep = handler(&req, reader.get_mut());
        let _ = reader.get_mut().flush();
        match keep {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) if is_eof(&e) || e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Reads one request (head, then a Content-Length or chunked body); `Ok(None)` at a clean end
/// of stream.
pub fn read_request(r: &mut impl BufRead, conn: usize) -> io::Result<Option<Recorded>> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::other("EOF inside a request head"))
            };
        }
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut slots);
    let status = parsed
        .parse(&head)
        .map_err(|e| io::Error::other(format!("bad head: {e}")))?;
    if status.is_partial() {
        return Err(io::Error::other("partial head after CRLFCRLF"));
    }
    let mut out = Recorded {
        method: parsed.method.unwrap_or("").to_string(),
        target: parsed.path.unwrap_or("").to_string(),
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        head: Vec::new(),
        body_raw: Vec::new(),
        body: Vec::new(),
        at: Instant::now(),
        conn,
        seq: 0,
    };
    out.head = head;
    let chunked = out
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        out.body = read_chunked_raw(r, &mut out.body_raw)?;
    } else if let Some(cl) = out.header("content-length") {
        let n: usize = cl
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("bad content-length {cl:?}")))?;
        out.body_raw.resize(n, 0);
        r.read_exact(&mut out.body_raw)?;
        out.body = out.body_raw.clone();
    }
    Ok(Some(out))
}

/// Reads a chunked body, keeping its bytes exactly in `raw`; returns the decoded data.
pub fn read_chunked_raw(r: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Err(io::Error::other("EOF inside a chunk size"));
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line);
        let size_txt = text.trim_end().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_txt, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size_txt:?}")))?;
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            loop {
                let mut t = Vec::new();
                if r.read_until(b'\n', &mut t)? == 0 {
                    return Err(io::Error::other("EOF inside trailers"));
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

/// Position of `needle` in `hay` (small inputs: heads, chunk lines, short bodies).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
