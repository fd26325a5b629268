//! A mock of the Anthropic Messages API for the end-to-end tests, as a handler of the one mock
//! upstream (tests/support/upstream.rs): HTTPS with a per-mock CA (or plain HTTP, to validate
//! the mock against the real client without bottle-init), SSE in the real wire format
//! (chunked, one event per chunk), optional pacing between events, and an optional gate that
//! holds a stream open until the test releases it. The server records every request.

use std::io::{self, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::support::upstream::{Handler, MockUpstream};
pub use crate::support::upstream::{Recorded, find};

/// Which credential the mock accepts; anything else gets the API's 401.
#[derive(Clone, Debug)]
pub enum Expect {
    /// `Authorization: Bearer <token>` (OAuth).
    Bearer(String),
    /// `x-api-key: <key>`.
    ApiKey(String),
    /// Accept any request (for the plain-HTTP control run against the client's placeholder).
    Anything,
}

/// How the mock answers.
#[derive(Clone, Debug)]
pub struct MockConfig {
    pub tls: bool,
    pub expect: Expect,
    /// The assistant's reply, sent as `text_delta`s of one word each.
    pub reply: String,
    /// Delay between consecutive SSE events of a streamed reply.
    pub pace: Duration,
    /// Hold streamed replies after `message_start` until [`Mock::release`].
    pub gated: bool,
}

impl MockConfig {
    pub fn new(expect: Expect, reply: &str) -> MockConfig {
        MockConfig {
            tls: true,
            expect,
            reply: reply.to_string(),
            pace: Duration::ZERO,
            gated: false,
        }
    }
}

#[derive(Default)]
struct GateState {
    reached: bool,
    released: bool,
}

/// What the handler shares with the test: its configuration and the gate.
struct Shared {
    cfg: MockConfig,
    gate: Mutex<GateState>,
    gate_cv: Condvar,
}

/// A running mock. Dropping it stops accepting and releases the gate; open connections end
/// with the test process.
pub struct Mock {
    server: MockUpstream,
    ca_pem: Option<PathBuf>,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

impl Mock {
    /// Starts serving on `listener` (bound by the caller, possibly inside another network
    /// namespace: a socket keeps the namespace it was created in).
    pub fn start(listener: TcpListener, cfg: MockConfig) -> io::Result<Mock> {
        Mock::start_on(vec![listener], cfg)
    }

    /// Like [`Mock::start`] on several listeners (e.g. 127.0.0.1 and ::1 with the same port, so
    /// `localhost` works whichever address a client tries first). The first one names the port.
    pub fn start_on(listeners: Vec<TcpListener>, cfg: MockConfig) -> io::Result<Mock> {
        let identity = if cfg.tls {
            Some(MockIdentity::generate()?)
        } else {
            None
        };
        Mock::start_with(listeners, cfg, identity)
    }

    /// Like [`Mock::start_on`] with a certificate made earlier (its CA had to exist first,
    /// e.g. to be mounted into a container before the mock can listen in its namespace).
    pub fn start_with(
        listeners: Vec<TcpListener>,
        cfg: MockConfig,
        identity: Option<MockIdentity>,
    ) -> io::Result<Mock> {
        let dir = tempfile::tempdir()?;
        let (tls, ca_pem) = match identity {
            Some(id) if cfg.tls => {
                let path = dir.path().join("mock-ca.pem");
                std::fs::write(&path, &id.ca_pem)?;
                (Some(id.server), Some(path))
            }
            _ => (None, None),
        };
        let shared = Arc::new(Shared {
            cfg,
            gate: Mutex::new(GateState::default()),
            gate_cv: Condvar::new(),
        });
        let s = shared.clone();
        let handler: Handler = Arc::new(move |req: &Recorded, w: &mut dyn Write| {
            respond(w, req, &s)?;
            Ok(true)
        });
        Ok(Mock {
            server: MockUpstream::serve(listeners, tls, handler)?,
            ca_pem,
            shared,
            _dir: dir,
        })
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `https://localhost:PORT` (the name on the mock's certificate) or `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.upstream_url()
    }

    /// The PEM file of the CA that signed the mock's certificate (TLS mode).
    pub fn ca_pem(&self) -> &Path {
        self.ca_pem.as_deref().expect("mock runs without TLS")
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.server.requests()
    }

    /// Requests to `POST /v1/messages` (any query).
    pub fn messages(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path() == "/v1/messages")
            .collect()
    }

    /// The first `POST /v1/messages` whose body contains `text` (a prompt).
    pub fn message_containing(&self, text: &str) -> Option<Recorded> {
        self.messages()
            .into_iter()
            .find(|r| String::from_utf8_lossy(&r.body).contains(text))
    }

    /// Waits until a gated stream is being held. False on timeout.
    pub fn wait_gate(&self, timeout: Duration) -> bool {
        let g = self.shared.gate.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .shared
            .gate_cv
            .wait_timeout_while(g, timeout, |g| !g.reached)
            .unwrap_or_else(|e| e.into_inner());
        g.reached
    }

    /// Lets every held and future stream run to its end.
    pub fn release(&self) {
        let mut g = self.shared.gate.lock().unwrap_or_else(|e| e.into_inner());
        g.released = true;
        self.shared.gate_cv.notify_all();
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.release();
    }
}

/// The mock's TLS identity: a fresh CA and a server certificate it signed.
pub struct MockIdentity {
    server: Arc<rustls::ServerConfig>,
    /// The CA certificate (PEM) a client must trust.
    pub ca_pem: String,
}

impl MockIdentity {
    pub fn generate() -> io::Result<MockIdentity> {
        let ca = crate::support::tls::TestCa::new("bottle-init test mock CA");
        Ok(MockIdentity {
            server: ca.server_config(),
            ca_pem: ca.pem,
        })
    }
}

fn respond(io: &mut dyn Write, req: &Recorded, shared: &Shared) -> io::Result<()> {
    let cfg = &shared.cfg;
    let n = req.seq;
    if req.method == "HEAD" && req.path() == "/" {
        return write_plain(io, "200 OK", "text/plain", b"", n);
    }
    if !authorized(req, &cfg.expect) {
        let body = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key or bearer token (mock)"}}"#;
        return write_plain(io, "401 Unauthorized", "application/json", body, n);
    }
    match (req.method.as_str(), req.path()) {
        ("POST", "/v1/messages") => {
            let json: serde_json::Value =
                serde_json::from_slice(&req.body).unwrap_or(serde_json::Value::Null);
            let model = json
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or("claude-sonnet-4-5")
                .to_string();
            if json.get("stream").and_then(|s| s.as_bool()) == Some(true) {
                stream_reply(io, &model, n, shared)
            } else {
                let body = serde_json::json!({
                    "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": cfg.reply}],
                    "stop_reason": "end_turn", "stop_sequence": null,
                    "usage": {"input_tokens": 12, "output_tokens": 7}
                });
                write_plain(
                    io,
                    "200 OK",
                    "application/json",
                    body.to_string().as_bytes(),
                    n,
                )
            }
        }
        ("POST", "/v1/messages/count_tokens") => write_plain(
            io,
            "200 OK",
            "application/json",
            br#"{"input_tokens":42}"#,
            n,
        ),
        ("GET", "/v1/models") => {
            let body = br#"{"data":[{"type":"model","id":"claude-sonnet-4-5","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"}],"has_more":false,"first_id":"claude-sonnet-4-5","last_id":"claude-sonnet-4-5"}"#;
            write_plain(io, "200 OK", "application/json", body, n)
        }
        _ => {
            let body = format!(
                r#"{{"type":"error","error":{{"type":"not_found_error","message":"mock: no route for {} {}"}}}}"#,
                req.method,
                req.path()
            );
            write_plain(io, "404 Not Found", "application/json", body.as_bytes(), n)
        }
    }
}

fn authorized(req: &Recorded, expect: &Expect) -> bool {
    match expect {
        Expect::Anything => true,
        Expect::Bearer(t) => req.header_all("authorization") == [format!("Bearer {t}")],
        Expect::ApiKey(k) => {
            req.header_all("x-api-key") == [k.clone()] && req.header("authorization").is_none()
        }
    }
}

fn write_plain(
    io: &mut dyn Write,
    status: &str,
    ctype: &str,
    body: &[u8],
    n: usize,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nrequest-id: req_mock_{n}\r\n\
         anthropic-ratelimit-requests-remaining: 999\r\n\r\n",
        body.len()
    );
    io.write_all(head.as_bytes())?;
    io.write_all(body)?;
    io.flush()
}

/// The SSE events of one reply, in the order and shape the real API sends them.
pub fn sse_events(model: &str, reply: &str, n: usize) -> Vec<String> {
    let ev = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = vec![ev(
        "message_start",
        serde_json::json!({"type": "message_start", "message": {
            "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}
        }}),
    )];
    out.push(ev(
        "content_block_start",
        serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    out.push(ev("ping", serde_json::json!({"type": "ping"})));
    let words: Vec<&str> = reply.split_inclusive(' ').collect();
    for w in words {
        out.push(ev(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}),
        ));
    }
    out.push(ev(
        "content_block_stop",
        serde_json::json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(ev(
        "message_delta",
        serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 7}}),
    ));
    out.push(ev(
        "message_stop",
        serde_json::json!({"type": "message_stop"}),
    ));
    out
}

fn stream_reply(io: &mut dyn Write, model: &str, n: usize, shared: &Shared) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n\
         request-id: req_mock_{n}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    io.write_all(head.as_bytes())?;
    io.flush()?;
    let events = sse_events(model, &shared.cfg.reply, n);
    for (i, event) in events.iter().enumerate() {
        if i > 0 && !shared.cfg.pace.is_zero() {
            std::thread::sleep(shared.cfg.pace);
        }
        // One chunk per event, flushed, so every event is on the wire before the next waits.
        io.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())?;
        io.flush()?;
        if i == 0 && shared.cfg.gated {
            let mut g = shared.gate.lock().unwrap_or_else(|e| e.into_inner());
            g.reached = true;
            shared.gate_cv.notify_all();
            let _g = shared
                .gate_cv
                .wait_timeout_while(g, Duration::from_secs(120), |g| !g.released)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
    io.write_all(b"0\r\n\r\n")?;
    io.flush()
}
