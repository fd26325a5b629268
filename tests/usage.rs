//! Issue 12, usage seen: the proxy reads the usage the API reports as the reply streams by,
//! changes no byte of it, and logs the figures the mock upstream sent. Every test checks that
//! neither the real token nor the session secret appears in a response or a log line.

mod support;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bottle_init::proxy::{Limits, UsageLimits};
use bottle_init::secret::CredentialKind;
use support::proxy::*;

/// A number no test could have hard-coded (a fresh hash per call).
fn random(below: u64) -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() % below
}

/// The figures one reply reports.
#[derive(Clone, Debug)]
struct Figures {
    model: String,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

impl Figures {
    fn random() -> Figures {
        Figures {
            model: format!("claude-test-{}", random(1 << 40)),
            input: 1 + random(1_000_000),
            output: random(100_000),
            cache_read: random(10_000_000),
            cache_write: random(500_000),
        }
    }

    /// What the log line must say, built from the figures the mock sent.
    fn log_fields(&self) -> String {
        format!(
            "model={} tokens_in={} tokens_out={} cache_read={} cache_write={}",
            self.model, self.input, self.output, self.cache_read, self.cache_write
        )
    }

    /// A streaming Messages API reply: message_start carries the input side, message_delta
    /// the output (the real API sends a placeholder output count in message_start).
    fn sse(&self) -> String {
        format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"type\":\"message\",\
             \"role\":\"assistant\",\"model\":\"{}\",\"content\":[],\"stop_reason\":null,\"usage\":{{\"input_tokens\":{},\
             \"cache_creation_input_tokens\":{},\"cache_read_input_tokens\":{},\"output_tokens\":1}}}}}}\n\n\
             event: ping\ndata: {{\"type\": \"ping\"}}\n\n\
             event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n\
             event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"usage: {{\\\"output_tokens\\\": 7}}\"}}}}\n\n\
             event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n\
             event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":{}}}}}\n\n\
             event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n",
            self.model, self.input, self.cache_write, self.cache_read, self.output
        )
    }

    /// A non-streaming reply.
    fn json(&self) -> String {
        format!(
            "{{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{}\",\
             \"content\":[{{\"type\":\"text\",\"text\":\"hi\"}}],\"stop_reason\":\"end_turn\",\
             \"usage\":{{\"input_tokens\":{},\"cache_creation_input_tokens\":{},\"cache_read_input_tokens\":{},\
             \"output_tokens\":{}}}}}",
            self.model, self.input, self.cache_write, self.cache_read, self.output
        )
    }
}

/// A mock that answers with `head` then `body`, the body sent as chunks of the given sizes
/// (cut anywhere, inside JSON strings and numbers) with a flush after each, and remembers the
/// exact response bytes it wrote.
fn replying(
    head: String,
    body: Vec<u8>,
    chunked: Option<Vec<usize>>,
) -> (Handler, Arc<Mutex<Vec<u8>>>) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = sent.clone();
    let handler: Handler = Arc::new(move |_req: &Recorded, w: &mut dyn Write| {
        // The pieces to write, each flushed on its own (chunked: one write per chunk).
        let mut pieces = vec![head.clone().into_bytes()];
        match &chunked {
            None => pieces[0].extend_from_slice(&body),
            Some(sizes) => {
                let mut rest = &body[..];
                for n in sizes.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (piece, tail) = rest.split_at((*n).min(rest.len()));
                    let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                    chunk.extend_from_slice(piece);
                    chunk.extend_from_slice(b"\r\n");
                    pieces.push(chunk);
                    rest = tail;
                }
                pieces.push(b"0\r\n\r\n".to_vec());
            }
        }
        // Recorded before the first byte goes out: the client may compare as soon as it has
        // read the reply.
        *record.lock().unwrap() = pieces.concat();
        for p in &pieces {
            w.write_all(p)?;
            w.flush()?;
        }
        Ok(true)
    });
    (handler, sent)
}

/// The one proxy log line that names `needle`.
fn log_line_with(needle: &str) -> String {
    let mut found = None;
    wait_until("the request's log line", Duration::from_secs(10), || {
        found = logs().into_iter().find(|l| l.contains(needle));
        found.is_some()
    });
    found.unwrap()
}

/// What the client received (head and body as sent) is exactly what the mock wrote.
fn assert_relayed_unchanged(resp: &Response, sent: &[u8]) {
    let mut got = resp.head.clone().into_bytes();
    got.extend_from_slice(&resp.raw_body);
    assert!(
        got == sent,
        "the proxy changed the reply:\n got {:?}\nsent {:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(sent)
    );
}

#[test]
fn sse_usage_is_logged_as_the_mock_sent_it_and_the_stream_is_unchanged() {
    let ca = TestCa::new("usage CA");
    let f = Figures::random();
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\nrequest-id: req_u1\r\n\
                transfer-encoding: chunked\r\n\r\n"
        .to_string();
    // Odd chunk sizes: events, keys and numbers are cut across chunks.
    let (handler, sent) = replying(head, f.sse().into_bytes(), Some(vec![1, 17, 5, 93, 3, 211]));
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    let resp = roundtrip(proxy.addr, &post("/v1/messages", br#"{"stream":true}"#)).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, f.sse().as_bytes());
    assert_relayed_unchanged(&resp, &sent.lock().unwrap());
    let line = log_line_with(&format!("model={} ", f.model));
    assert!(line.contains("POST /v1/messages 200"), "{line}");
    assert!(
        line.contains(&f.log_fields()),
        "{line}\nwanted {}",
        f.log_fields()
    );
    // What `bottle-init status` reports: the same figures, by kind and by model.
    let tally = proxy.stats.with_tally(|t| t.clone());
    assert_eq!(tally.by_model.get(&f.model), Some(&(f.input, f.output)));
    assert_eq!(tally.by_status.get(&200), Some(&1));
    let t = tally.tokens;
    assert_eq!(
        (t.input, t.output, t.cache_read, t.cache_write),
        (f.input, f.output, f.cache_read, f.cache_write)
    );
    assert_clean(&resp);
}

#[test]
fn json_usage_is_logged_as_the_mock_sent_it_and_the_body_is_unchanged() {
    let ca = TestCa::new("usage CA");
    let f = Figures::random();
    let body = f.json();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (handler, sent) = replying(head, body.clone().into_bytes(), None);
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
    assert_eq!(resp.status, 200);
    assert_relayed_unchanged(&resp, &sent.lock().unwrap());
    let line = log_line_with(&format!("model={} ", f.model));
    assert!(
        line.contains(&f.log_fields()),
        "{line}\nwanted {}",
        f.log_fields()
    );

    // The same document, chunked, in one-byte chunks.
    let f = Figures::random();
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_string();
    let (handler, sent) = replying(head, f.json().into_bytes(), Some(vec![1]));
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
    assert_relayed_unchanged(&resp, &sent.lock().unwrap());
    let line = log_line_with(&format!("model={} ", f.model));
    assert!(
        line.contains(&f.log_fields()),
        "{line}\nwanted {}",
        f.log_fields()
    );
    assert_clean(&resp);
}

/// claude asks for `gzip, deflate, br, zstd`; the upstream is asked for `identity`, so the
/// usage stays readable. An upstream that compresses anyway is relayed untouched and its usage
/// is logged as unseen, never guessed.
#[test]
fn the_upstream_is_asked_for_identity_and_a_compressed_reply_is_logged_unseen() {
    let ca = TestCa::new("usage CA");
    let f = Figures::random();
    let body = f.json();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n\
         x-test-reply: {}\r\ncontent-length: {}\r\n\r\n",
        f.model,
        body.len()
    );
    let (handler, sent) = replying(head, body.into_bytes(), None);
    let mock = Mock::start(&ca, handler);
    let proxy = proxy_for(&mock, &ca);
    let path = format!("/v1/messages/{}", f.model);
    let mut req = post(&path, b"{}");
    let at = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
    req.splice(
        at..at,
        b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
            .iter()
            .copied(),
    );
    let resp = roundtrip(proxy.addr, &req).unwrap();
    assert_relayed_unchanged(&resp, &sent.lock().unwrap());
    let r = &mock.requests()[0];
    assert_eq!(r.header("accept-encoding").as_deref(), Some("identity"));
    assert_eq!(r.header_count("accept-encoding"), 1);
    let line = log_line_with(&format!("POST {path} 200"));
    assert!(line.contains("usage=unseen"), "{line}");
    assert!(!line.contains("tokens_in="), "{line}");
    assert_clean(&resp);
}

fn limited_proxy(mock: &Mock, ca: &TestCa, usage: UsageLimits) -> TestProxy {
    start_proxy(
        &mock.upstream_url(),
        Some(&ca.pem),
        CredentialKind::OAuth,
        Limits {
            usage,
            ..Limits::default()
        },
    )
}

/// A 429 from the proxy itself: the Anthropic error shape, final (`x-should-retry: false`),
/// never a secret.
fn assert_limited(resp: &Response, var: &str) -> String {
    assert_eq!(resp.status, 429, "{}", resp.body_text());
    let (kind, msg) = resp.anthropic_error();
    assert_eq!(kind, "rate_limit_error");
    assert!(msg.contains(var), "{msg}");
    assert_eq!(resp.header("x-should-retry"), Some("false"));
    assert_eq!(resp.header("x-bottle-proxy"), Some("local"));
    assert_clean(resp);
    msg
}

/// `BOTTLE_MAX_REQUESTS_PER_MINUTE=N`: request N+1 within the minute is answered 429 by the
/// proxy, with how long to wait; the mock never sees it; status counts it.
#[test]
fn past_the_request_rate_the_proxy_answers_429_and_forwards_nothing() {
    let ca = TestCa::new("usage CA");
    let mock = Mock::start(&ca, ok_handler());
    let n = 2 + random(3);
    let proxy = limited_proxy(
        &mock,
        &ca,
        UsageLimits {
            requests_per_minute: Some(n),
            tokens: None,
        },
    );
    for _ in 0..n {
        let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
        assert_eq!(resp.status, 200);
    }
    let before = mock.raw_in().len();
    let path = format!("/v1/messages/rate-{}", random(1 << 40));
    let resp = roundtrip(proxy.addr, &post(&path, b"{}")).unwrap();
    let msg = assert_limited(
        &resp,
        &format!("BOTTLE_MAX_REQUESTS_PER_MINUTE={n} reached"),
    );
    let wait: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "retry-after {wait}");
    assert!(msg.contains(&format!("retry in {wait} s")), "{msg}");
    assert_eq!(
        mock.requests().len() as u64,
        n,
        "the limited request was forwarded"
    );
    assert_eq!(mock.raw_in().len(), before, "bytes reached the mock");
    let line = log_line_with(&format!("POST {path} 429"));
    assert!(line.contains("limited: "), "{line}");
    let tally = proxy.stats.with_tally(|t| t.clone());
    assert_eq!((tally.limited, tally.by_status.get(&429)), (1, Some(&1)));
    assert_eq!(tally.by_status.get(&200), Some(&n));
}

/// `BOTTLE_MAX_TOKENS=N`: once the replies reported N input + output tokens, the next request
/// is answered 429 and not forwarded (a reply in flight is never cut).
#[test]
fn past_the_token_budget_the_proxy_answers_429_and_forwards_nothing() {
    let ca = TestCa::new("usage CA");
    let f = Figures::random();
    let body = f.json();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (handler, _sent) = replying(head, body.into_bytes(), None);
    let mock = Mock::start(&ca, handler);
    let budget = f.input + f.output;
    let proxy = limited_proxy(
        &mock,
        &ca,
        UsageLimits {
            requests_per_minute: None,
            tokens: Some(budget.max(1)),
        },
    );
    let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
    assert_eq!(resp.status, 200, "the first request is within the budget");
    log_line_with(&format!("model={} ", f.model));
    let resp = roundtrip(proxy.addr, &post("/v1/messages", b"{}")).unwrap();
    let msg = assert_limited(
        &resp,
        &format!("BOTTLE_MAX_TOKENS={} reached", budget.max(1)),
    );
    assert!(
        msg.contains(&format!("({budget} input and output tokens")),
        "{msg}"
    );
    assert_eq!(
        resp.header("retry-after"),
        None,
        "the budget does not lift by itself"
    );
    assert_eq!(
        mock.requests().len(),
        1,
        "the limited request was forwarded"
    );
    let tally = proxy.stats.with_tally(|t| t.clone());
    assert_eq!(tally.limited, 1);
}
