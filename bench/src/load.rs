//! The load client: N threads, one keep-alive connection each (plain HTTP to a proxy, TLS
//! when talking to the upstream directly). Throughput mode sends `POST /v1/messages` with a
//! 100 KB JSON body and reads the SSE answer to its end, recording each request's latency;
//! SSE mode asks for paced events and records, per event, receive time minus the upstream's
//! embedded send time.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::http1::{BufConn, parse_response};

pub enum Target {
    Plain(SocketAddr),
    Tls {
        addr: SocketAddr,
        cfg: Arc<ClientConfig>,
        name: ServerName<'static>,
    },
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

impl Target {
    pub fn tls(addr: SocketAddr, ca: &Path) -> Result<Target, String> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("reading {}: {e}", ca.display()))?
        {
            let c = c.map_err(|e| format!("reading {}: {e}", ca.display()))?;
            roots.add(c).map_err(|e| format!("adding CA: {e}"))?;
        }
        let mut cfg = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from("localhost").expect("literal name");
        Ok(Target::Tls {
            addr,
            cfg: Arc::new(cfg),
            name,
        })
    }

    fn connect(&self) -> io::Result<Box<dyn Io>> {
        match self {
            Target::Plain(a) => {
                let s = TcpStream::connect(a)?;
                set_opts(&s)?;
                Ok(Box::new(s))
            }
            Target::Tls { addr, cfg, name } => {
                let s = TcpStream::connect(addr)?;
                set_opts(&s)?;
                let c =
                    ClientConnection::new(cfg.clone(), name.clone()).map_err(io::Error::other)?;
                Ok(Box::new(StreamOwned::new(c, s)))
            }
        }
    }
}

/// No Nagle delay; and a stuck proxy fails the run instead of hanging it.
fn set_opts(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))
}

/// A request as bytes: head plus a JSON body padded to `body_len`.
pub fn build_request(path: &str, auth: &str, body_len: usize) -> Vec<u8> {
    let prefix = r#"{"model":"claude-bench","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":""#;
    let suffix = r#""}]}"#;
    let pad = body_len.saturating_sub(prefix.len() + suffix.len());
    let mut body = String::with_capacity(body_len);
    body.push_str(prefix);
    let words = "lorem ipsum dolor sit amet consectetur adipiscing elit ";
    while body.len() < prefix.len() + pad {
        let room = prefix.len() + pad - body.len();
        body.push_str(&words[..room.min(words.len())]);
    }
    body.push_str(suffix);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nAccept: application/json\r\nanthropic-version: 2023-06-01\r\nanthropic-beta: claude-code-20250219,oauth-2025-04-20\r\nx-app: cli\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

/// Requests each connection completes before the measured window may start.
const WARM_REQUESTS: u32 = 3;

pub struct Outcome {
    /// Sorted latencies (ns) or relay delays (ns).
    pub samples: Vec<u64>,
    pub secs: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Outcome {
    pub fn pct(&self, p: f64) -> f64 {
        percentile(&self.samples, p)
    }
    pub fn rps(&self) -> f64 {
        self.samples.len() as f64 / self.secs
    }
}

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

struct Shared {
    phase: AtomicU8, // 0 warm-up, 1 measure, 2 stop
    /// Threads that have completed their warm-up requests.
    warmed: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, e: impl std::fmt::Display) {
        if self.phase.load(Relaxed) == 1 {
            self.errors.fetch_add(1, Relaxed);
        }
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e.to_string());
        }
    }
}

/// One request/response exchange; returns the status.
fn exchange(
    c: &mut BufConn<Box<dyn Io>>,
    req: &[u8],
    sink: &mut dyn FnMut(&[u8], u64) -> io::Result<()>,
) -> io::Result<(u16, bool)> {
    c.s.write_all(req)?;
    c.s.flush()?;
    let head = c
        .read_head()?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before response"))?;
    let r = parse_response(&head)?;
    c.read_body(r.framing, false, sink)?;
    Ok((r.status, r.close))
}

/// Runs `conc` connections for `warm` then `dur`; `at_start`/`at_end` are called at the
/// edges of the measured window (to snapshot counters). Latency of requests completed inside
/// the window is recorded.
pub fn throughput(
    target: Arc<Target>,
    req: Arc<Vec<u8>>,
    conc: usize,
    warm: Duration,
    dur: Duration,
    at_start: &mut dyn FnMut(),
    at_end: &mut dyn FnMut(),
) -> Outcome {
    let sh = Arc::new(Shared {
        phase: AtomicU8::new(0),
        warmed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let mut handles = Vec::new();
    for _ in 0..conc {
        let (target, req, sh) = (target.clone(), req.clone(), sh.clone());
        handles.push(
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut lat = Vec::with_capacity(4096);
                    let mut done = 0u32;
                    let mut conn: Option<BufConn<Box<dyn Io>>> = None;
                    while sh.phase.load(Relaxed) != 2 {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match target.connect() {
                                Ok(s) => conn.insert(BufConn::new(s)),
                                Err(e) => {
                                    sh.error(format!("connect: {e}"));
                                    thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            },
                        };
                        let t0 = Instant::now();
                        match exchange(c, &req, &mut |_, _| Ok(())) {
                            Ok((200, close)) => {
                                let ns = t0.elapsed().as_nanos() as u64;
                                if sh.phase.load(Relaxed) == 1 {
                                    lat.push(ns);
                                }
                                done += 1;
                                if done == WARM_REQUESTS {
                                    sh.warmed.fetch_add(1, Relaxed);
                                }
                                if close {
                                    conn = None;
                                }
                            }
                            Ok((s, _)) => {
                                sh.error(format!("status {s}"));
                                conn = None;
                            }
                            Err(e) => {
                                sh.error(format!("exchange: {e}"));
                                conn = None;
                                thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                    lat
                })
                .expect("spawning a client thread"),
        );
    }
    // Warm-up lasts at least `warm` and until every connection has done a few requests, so
    // that connection set-up (and each proxy's pool growth) is not in the measured window.
    let t0 = Instant::now();
    thread::sleep(warm);
    while sh.warmed.load(Relaxed) < conc as u64 && t0.elapsed() < warm + Duration::from_secs(20) {
        thread::sleep(Duration::from_millis(10));
    }
    at_start();
    sh.phase.store(1, Relaxed);
    let t1 = Instant::now();
    thread::sleep(dur);
    sh.phase.store(2, Relaxed);
    let secs = t1.elapsed().as_secs_f64();
    at_end();
    let mut samples = Vec::new();
    for h in handles {
        if let Ok(v) = h.join() {
            samples.extend(v);
        }
    }
    samples.sort_unstable();
    let first_error = sh
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Outcome {
        samples,
        secs,
        errors: sh.errors.load(Relaxed),
        first_error,
    }
}

/// Scans SSE bytes for complete events and records receive time minus the `"t":` stamp.
struct SseScan {
    pending: Vec<u8>,
    delays: Vec<u64>,
    events: u64,
}

impl SseScan {
    fn feed(&mut self, data: &[u8], recv_ns: u64) {
        self.pending.extend_from_slice(data);
        while let Some(i) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let ev: Vec<u8> = self.pending.drain(..i + 2).collect();
            self.events += 1;
            let ev = String::from_utf8_lossy(&ev);
            if let Some(p) = ev.find("\"t\":") {
                let digits: String = ev[p + 4..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                if let Ok(t) = digits.parse::<u64>() {
                    self.delays.push(recv_ns.saturating_sub(t));
                }
            }
        }
    }
}

/// `conc` connections each run `rounds` paced streams of `events` events; `sample` is called
/// about every 100 ms on the calling thread while streams are in flight (for RSS).
pub fn sse(
    target: Arc<Target>,
    req: Arc<Vec<u8>>,
    conc: usize,
    rounds: usize,
    events: u64,
    sample: &mut dyn FnMut(),
) -> Outcome {
    let sh = Arc::new(Shared {
        phase: AtomicU8::new(1),
        warmed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let t1 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..conc {
        let (target, req, sh) = (target.clone(), req.clone(), sh.clone());
        handles.push(
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut scan = SseScan {
                        pending: Vec::new(),
                        delays: Vec::new(),
                        events: 0,
                    };
                    let mut conn = match target.connect() {
                        Ok(s) => BufConn::new(s),
                        Err(e) => {
                            sh.error(format!("connect: {e}"));
                            return scan.delays;
                        }
                    };
                    for _ in 0..rounds {
                        let before = scan.events;
                        match exchange(&mut conn, &req, &mut |d, t| {
                            scan.feed(d, t);
                            Ok(())
                        }) {
                            Ok((200, _)) if scan.events - before == events => {}
                            Ok((200, _)) => {
                                sh.error(format!("got {} of {events} events", scan.events - before))
                            }
                            Ok((s, _)) => sh.error(format!("status {s}")),
                            Err(e) => {
                                sh.error(format!("stream: {e}"));
                                break;
                            }
                        }
                    }
                    scan.delays
                })
                .expect("spawning a client thread"),
        );
    }
    while handles.iter().any(|h| !h.is_finished()) {
        sample();
        thread::sleep(Duration::from_millis(100));
    }
    let secs = t1.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    for h in handles {
        if let Ok(v) = h.join() {
            samples.extend(v);
        }
    }
    samples.sort_unstable();
    let first_error = sh
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Outcome {
        samples,
        secs,
        errors: sh.errors.load(Relaxed),
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_exact_body_length_and_auth() {
        let r = build_request("/v1/messages", "Bearer s3cret", 100 * 1024);
        let text = String::from_utf8(r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), 100 * 1024);
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains("\r\nAuthorization: Bearer s3cret\r\n"));
        assert!(body.starts_with('{') && body.ends_with('}'));
    }

    #[test]
    fn sse_delays_use_the_arrival_of_each_events_last_byte() {
        let mut s = SseScan {
            pending: Vec::new(),
            delays: Vec::new(),
            events: 0,
        };
        s.feed(b"event: x\ndata: {\"t\":1000,\"a\":1}\n", 1500);
        assert!(s.delays.is_empty(), "an incomplete event is not counted");
        s.feed(
            b"\nevent: y\ndata: {\"t\":2000}\n\nevent: z\ndata: {}\n\n",
            2600,
        );
        assert_eq!(s.delays, vec![1600, 600]);
        assert_eq!(s.events, 3);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
