//! The fast TLS upstream: a stand-in for the Messages API. Thread per connection, blocking
//! rustls streams, keep-alive. `POST /v1/messages` reads the whole request body and answers a
//! ~2 KB SSE body in one write; `?pace=MS&events=N` instead sends N events MS apart, each with
//! its CLOCK_MONOTONIC send time (`"t":ns`) so the client can measure relay delay.
//!
//! It counts full and resumed TLS handshakes, requests and requests without the expected
//! credential; a plain-text control port answers `stats` and `reset` (one line each).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};

use crate::clock::mono_ns;
use crate::http1::{BufConn, header, request_framing};

#[derive(Default)]
struct Stats {
    full: AtomicU64,
    resumed: AtomicU64,
    requests: AtomicU64,
    bad_auth: AtomicU64,
    conns: AtomicU64,
}

pub struct Options<'a> {
    pub listen: Vec<String>,
    pub control: String,
    pub cert: &'a Path,
    pub key: &'a Path,
    /// The exact Authorization value a proxy must inject.
    pub expect_auth: String,
}

/// The canned streaming answer: realistic Messages API SSE events, about 2 KB.
fn canned_events() -> Vec<String> {
    let mut ev = vec![
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_bench0000000000000000001","type":"message","role":"assistant","model":"claude-bench","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25000,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}

"#
        .to_string(),
        r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

"#
        .to_string(),
    ];
    for i in 0..12 {
        ev.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"word {i:02} of a benchmark answer, padded out to a typical delta size\"}}}}\n\n"
        ));
    }
    ev.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into(),
    );
    ev.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":120}}\n\n".into());
    ev.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
    ev
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\nrequest-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n";

fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn canned_response() -> Vec<u8> {
    let mut out = SSE_HEAD.as_bytes().to_vec();
    for e in canned_events() {
        chunk(&mut out, e.as_bytes());
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

pub fn canned_body_len() -> usize {
    canned_events().iter().map(|e| e.len()).sum()
}

fn query_param(target: &str, name: &str) -> Option<u64> {
    let q = target.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn load_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("reading {}: {e}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("reading {}: {e}", key.display()))?;
    let mut cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server config: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Big enough for every pooled connection of every proxy to resume.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    Ok(Arc::new(cfg))
}

pub fn run(opts: Options) -> Result<(), String> {
    let cfg = load_config(opts.cert, opts.key)?;
    let stats = Arc::new(Stats::default());
    let canned = Arc::new(canned_response());
    let expect = Arc::new(opts.expect_auth.into_bytes());

    let control = TcpListener::bind(&opts.control)
        .map_err(|e| format!("binding control {}: {e}", opts.control))?;
    let mut listeners = Vec::new();
    for addr in &opts.listen {
        match TcpListener::bind(addr) {
            Ok(l) => {
                deepen_backlog(&l);
                listeners.push(l)
            }
            // ::1 may be missing in some sandboxes; 127.0.0.1 is required.
            Err(e) if addr.starts_with('[') => eprintln!("upstream: not listening on {addr}: {e}"),
            Err(e) => return Err(format!("binding {addr}: {e}")),
        }
    }
    for l in listeners {
        let (cfg, stats, canned, expect) =
            (cfg.clone(), stats.clone(), canned.clone(), expect.clone());
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (cfg, stats, canned, expect) =
                    (cfg.clone(), stats.clone(), canned.clone(), expect.clone());
                let _ = thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || serve(s, cfg, &stats, &canned, &expect));
            }
        });
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for s in control.incoming().flatten() {
        let mut r = BufReader::new(&s);
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            continue;
        }
        let mut w = &s;
        let _ = match line.trim() {
            "stats" => writeln!(
                w,
                "{} {} {} {} {}",
                stats.full.load(Relaxed),
                stats.resumed.load(Relaxed),
                stats.requests.load(Relaxed),
                stats.bad_auth.load(Relaxed),
                stats.conns.load(Relaxed)
            ),
            "reset" => {
                for c in [
                    &stats.full,
                    &stats.resumed,
                    &stats.requests,
                    &stats.bad_auth,
                ] {
                    c.store(0, Relaxed);
                }
                writeln!(w, "ok")
            }
            _ => writeln!(w, "?"),
        };
    }
    Ok(())
}

/// std listens with a backlog of 128; a proxy opening hundreds of pooled connections at once
/// would overflow it and wait for a 1 s SYN retransmit. Linux lets listen() be called again
/// to change the backlog.
fn deepen_backlog(l: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen() on a socket fd we own; no memory is passed.
    unsafe { libc::listen(l.as_raw_fd(), 4096) };
}

fn serve(sock: TcpStream, cfg: Arc<ServerConfig>, stats: &Stats, canned: &[u8], expect: &[u8]) {
    let _ = sock.set_nodelay(true);
    let Ok(conn) = ServerConnection::new(cfg) else {
        return;
    };
    stats.conns.fetch_add(1, Relaxed);
    let mut c = BufConn::new(StreamOwned::new(conn, sock));
    let mut counted = false;
    let _ = serve_requests(&mut c, stats, canned, expect, &mut counted);
    stats.conns.fetch_sub(1, Relaxed);
}

fn serve_requests(
    c: &mut BufConn<StreamOwned<ServerConnection, TcpStream>>,
    stats: &Stats,
    canned: &[u8],
    expect: &[u8],
    counted: &mut bool,
) -> std::io::Result<()> {
    loop {
        let Some(head) = c.read_head()? else {
            return Ok(());
        };
        if !*counted {
            *counted = true;
            match c.s.conn.handshake_kind() {
                Some(HandshakeKind::Resumed) => stats.resumed.fetch_add(1, Relaxed),
                _ => stats.full.fetch_add(1, Relaxed),
            };
        }
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            return Err(crate::http1::invalid("bad request head"));
        }
        let target = req.path.unwrap_or("/").to_string();
        let framing = request_framing(req.headers)?;
        let auth_ok = header(req.headers, "authorization") == Some(expect);
        let close =
            header(req.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
        c.read_body(framing, false, &mut |_, _| Ok(()))?;
        stats.requests.fetch_add(1, Relaxed);
        if !auth_ok {
            stats.bad_auth.fetch_add(1, Relaxed);
            let body = r#"{"type":"error","error":{"type":"authentication_error","message":"bench upstream: wrong credential"}}"#;
            write!(
                c.s,
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )?;
            c.s.flush()?;
        } else if let Some(pace) = query_param(&target, "pace") {
            let events = query_param(&target, "events").unwrap_or(50);
            c.s.write_all(SSE_HEAD.as_bytes())?;
            c.s.flush()?;
            for i in 0..events {
                if i > 0 {
                    thread::sleep(Duration::from_millis(pace));
                }
                let ev = format!(
                    "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"t\":{},\"delta\":{{\"type\":\"text_delta\",\"text\":\"paced event {i}\"}}}}\n\n",
                    mono_ns()
                );
                let mut out = Vec::with_capacity(ev.len() + 16);
                chunk(&mut out, ev.as_bytes());
                c.s.write_all(&out)?;
                c.s.flush()?;
            }
            c.s.write_all(b"0\r\n\r\n")?;
            c.s.flush()?;
        } else {
            c.s.write_all(canned)?;
            c.s.flush()?;
        }
        if close {
            return Ok(());
        }
    }
}

/// Client side of the control port.
pub fn control(addr: &str, cmd: &str) -> Result<String, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("upstream control {addr}: {e}"))?;
    (&s).write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| format!("upstream control: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("upstream control: {e}"))?;
    Ok(line.trim().to_string())
}

#[derive(Clone, Copy, Debug, Default)]
pub struct UpStats {
    pub full: u64,
    pub resumed: u64,
    pub requests: u64,
    pub bad_auth: u64,
}

pub fn stats(addr: &str) -> Result<UpStats, String> {
    let line = control(addr, "stats")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return Err(format!("upstream control: bad stats line {line:?}"));
    }
    Ok(UpStats {
        full: v[0],
        resumed: v[1],
        requests: v[2],
        bad_auth: v[3],
    })
}
