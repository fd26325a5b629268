//! Passive token-usage scanning of one API response body (issue 12). The proxy feeds the
//! decoded body payload it relays (for a chunked body only the chunk data; otherwise the bytes
//! as they are), in whatever pieces it has, and at the end asks what the API reported: the
//! model and the input, output, cache-read and cache-write token counts.
//!
//! Invariants:
//! - read-only: the scanner takes `&[u8]` and returns nothing about the bytes, so it cannot
//!   change or hold back what is relayed;
//! - bounded: no allocation at all and nothing buffered. The JSON of an SSE event or of a
//!   document is lexed as it streams by (a per-byte state machine with a depth-limited key
//!   path), keeping only the few scalars we want; the model name is capped at [`MODEL_CAP`];
//! - total: any bytes, split anywhere, give the same result as fed whole, and never panic.
//!   Malformed JSON stops the scan of that SSE event (it is not counted) or of that JSON
//!   document (what came before counts); [`Tokens::outcome`] says which happened (for SSE only
//!   of events whose data is lexed: see below).
//!
//! What counts (the policy):
//! - `text/event-stream`: events framed as the WHATWG spec says (CRLF, LF or CR line ends;
//!   `data:` with one optional space, several data lines joined by LF; `:` comments; an empty
//!   line dispatches). Each event's data must be one JSON value. Its `type` decides, not the
//!   `event:` name: `message_start` gives `message.model` and `message.usage.*`,
//!   `message_delta` gives `usage.*`, anything else is ignored. An event whose `event:` name is
//!   present and names another type than its data is ignored (a confused stream is not
//!   counted), and so is an event with more than one `event:` line. Since an event named for a
//!   type that carries no usage (`content_block_delta`, `ping`, ...: the bulk of a stream) can
//!   never count, its data is not lexed at all once the name is known: the scan of a real
//!   stream costs little more than finding its line ends. A count carried by a `message_delta` wins over `message_start`'s, whatever the
//!   order, and the last `message_delta` that carries it wins (they are cumulative; newer API
//!   versions also repeat the input and cache counts there, as the SDKs expect).
//! - `application/json`: the document's top-level `model` and `usage.*`.
//! - A key that occurs twice: the last occurrence wins, as in `JSON.parse`. A count that is not
//!   a non-negative integer fitting u64 (negative, fraction, exponent, null, a string) is
//!   unknown; `usage` objects elsewhere (inside `content`, a tool's input, a string) are not
//!   counted.
//! - The model name keeps visible ASCII (`!`..=`~`); any other character (space, control,
//!   non-ASCII, escaped or raw) becomes one `?`, so it can go in a `key=value` log line as is.

use std::fmt;

/// Longest model name kept; the rest of a longer name is dropped.
pub const MODEL_CAP: usize = 200;
/// Deepest JSON nesting scanned; deeper input is treated as malformed.
pub const MAX_DEPTH: usize = 256;

/// How a response body is scanned, from its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    /// `text/event-stream`: the streaming Messages API.
    Sse,
    /// `application/json`: a non-streaming reply.
    Json,
    /// Not scanned, and why.
    Unscanned(UnscannedReason),
}

/// Why a body is not scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnscannedReason {
    /// `Content-Type` is missing, is neither `text/event-stream` nor `application/json`, or
    /// several `Content-Type` fields disagree.
    ContentType,
    /// A `Content-Encoding` other than identity, or a transfer coding other than chunked: the
    /// payload is compressed and its usage cannot be read without decoding it.
    Encoded,
}

impl UnscannedReason {
    /// A short word for a log line.
    pub fn as_str(self) -> &'static str {
        match self {
            UnscannedReason::ContentType => "content-type",
            UnscannedReason::Encoded => "encoded",
        }
    }
}

impl fmt::Display for UnscannedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ScanMode {
    /// Chooses the mode from a response's header fields, e.g.
    /// `ScanMode::from_headers(resp.headers.iter().map(|h| (h.name, h.value)))` with httparse.
    /// An encoding wins over the content type, so the reason names what to fix.
    pub fn from_headers<'a, I>(headers: I) -> ScanMode
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        let mut kind: Option<Option<ScanMode>> = None;
        let mut conflict = false;
        let mut encoded = false;
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("content-type") {
                let k = media_type(value);
                match kind {
                    None => kind = Some(k),
                    Some(prev) if prev != k => conflict = true,
                    Some(_) => {}
                }
            } else if name.eq_ignore_ascii_case("content-encoding") {
                encoded |= !codings(value).all(|c| c.is_empty() || c == b"identity");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                encoded |= !codings(value).all(|c| c.is_empty() || c == b"chunked");
            }
        }
        match kind {
            _ if encoded => ScanMode::Unscanned(UnscannedReason::Encoded),
            Some(Some(mode)) if !conflict => mode,
            _ => ScanMode::Unscanned(UnscannedReason::ContentType),
        }
    }
}

/// The media type of a `Content-Type` value, if it is one we scan (parameters ignored).
fn media_type(value: &[u8]) -> Option<ScanMode> {
    let mt = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    if mt.eq_ignore_ascii_case(b"text/event-stream") {
        Some(ScanMode::Sse)
    } else if mt.eq_ignore_ascii_case(b"application/json") {
        Some(ScanMode::Json)
    } else {
        None
    }
}

/// The codings of a comma-separated list, parameters and whitespace dropped; `identity` and
/// `chunked` (the two we compare against) come back lowercase whatever their case.
fn codings(value: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    value.split(|&b| b == b',').map(|c| {
        let c = c.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
        if c.eq_ignore_ascii_case(b"identity") {
            b"identity".as_slice()
        } else if c.eq_ignore_ascii_case(b"chunked") {
            b"chunked".as_slice()
        } else {
            c
        }
    })
}

/// What a scanned body reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per response, returned by value; the model is inline so nothing allocates"
)]
pub enum Usage {
    Unscanned { reason: UnscannedReason },
    Scanned(Tokens),
}

/// The usage figures found; `None` where the body did not report that figure.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    model: Option<Model>,
    /// `input_tokens`.
    pub input: Option<u64>,
    /// `output_tokens`.
    pub output: Option<u64>,
    /// `cache_read_input_tokens`.
    pub cache_read: Option<u64>,
    /// `cache_creation_input_tokens`.
    pub cache_write: Option<u64>,
    pub outcome: Outcome,
}

impl Tokens {
    /// The model name, sanitised as the module doc says.
    pub fn model(&self) -> Option<&str> {
        self.model.as_ref().map(Model::as_str)
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("model", &self.model())
            .field("input", &self.input)
            .field("output", &self.output)
            .field("cache_read", &self.cache_read)
            .field("cache_write", &self.cache_write)
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// How the body ended, as far as the scanner can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// JSON: one complete document. SSE: every event was well formed and the body ended
    /// between events.
    Complete,
    /// The body (so far) ends inside a document or an event: the figures are what came before.
    Truncated,
    /// JSON: the document is malformed (or nested deeper than [`MAX_DEPTH`]); the figures are
    /// those before the fault. SSE: at least one event whose data was lexed (not one ignored by
    /// its name) had data that was not one JSON value; such events are not counted.
    Malformed,
}

/// Scans one response body. Create it from the response head, feed it every payload byte in
/// order, then read [`UsageScanner::usage`] (at any time: mid-body it is the figures so far).
#[derive(Clone, Debug)]
pub struct UsageScanner {
    inner: Inner,
}

#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per in-flight response; inline so scanning never allocates"
)]
enum Inner {
    Off(UnscannedReason),
    Json(JsonScan),
    Sse(Sse),
}

impl UsageScanner {
    pub fn new(mode: ScanMode) -> UsageScanner {
        let inner = match mode {
            ScanMode::Sse => Inner::Sse(Sse::new()),
            ScanMode::Json => Inner::Json(JsonScan::new(Schema::Document)),
            ScanMode::Unscanned(reason) => Inner::Off(reason),
        };
        UsageScanner { inner }
    }

    /// Starts over for another response, in place (a proxy connection keeps one scanner for
    /// all its requests).
    pub fn restart(&mut self, mode: ScanMode) {
        *self = UsageScanner::new(mode);
    }

    /// Reads the next piece of the payload.
    pub fn feed(&mut self, bytes: &[u8]) {
        // A measurement build only (`scripts/bench-scan`: RUSTFLAGS=--cfg bottle_bench_noscan):
        // the scan's cost is a build against the same build without it. `black_box` keeps the
        // scanner's code in that build, so the two differ in the scan's work alone.
        if cfg!(bottle_bench_noscan) && std::hint::black_box(true) {
            return;
        }
        match &mut self.inner {
            Inner::Off(_) => {}
            Inner::Json(j) => j.feed(bytes),
            Inner::Sse(s) => s.feed(bytes),
        }
    }

    /// What the body reported so far.
    pub fn usage(&self) -> Usage {
        match &self.inner {
            Inner::Off(reason) => Usage::Unscanned { reason: *reason },
            Inner::Json(j) => Usage::Scanned(j.tokens()),
            Inner::Sse(s) => Usage::Scanned(s.tokens()),
        }
    }
}

/// A sanitised model name, stored inline (no allocation). Bytes past `len` are stale.
#[derive(Clone, Copy, Eq)]
struct Model {
    buf: [u8; MODEL_CAP],
    len: usize,
}

impl Model {
    const EMPTY: Model = Model {
        buf: [0; MODEL_CAP],
        len: 0,
    };

    fn push(&mut self, b: u8) {
        if self.len < MODEL_CAP {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    /// A raw string byte: visible ASCII kept, each other character one `?` (UTF-8
    /// continuation bytes belong to the character their lead byte already replaced).
    fn push_raw(&mut self, b: u8) {
        match b {
            0x21..=0x7e => self.push(b),
            0x80..=0xbf => {}
            _ => self.push(b'?'),
        }
    }

    /// A `\uXXXX` code unit: a low surrogate belongs to the high one before it.
    fn push_unit(&mut self, u: u16) {
        match u {
            0x21..=0x7e => self.push(u as u8),
            0xdc00..=0xdfff => {}
            _ => self.push(b'?'),
        }
    }

    fn as_str(&self) -> &str {
        // Only visible ASCII is ever pushed, so this is always valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl PartialEq for Model {
    fn eq(&self, other: &Model) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A short ASCII word (a key, a type, a field name) compared against a few known ones. A word
/// that is too long or not ASCII never compares equal to any.
#[derive(Clone, Copy, Debug)]
struct Word<const N: usize> {
    buf: [u8; N],
    len: usize,
    bad: bool,
}

impl<const N: usize> Word<N> {
    const EMPTY: Self = Word {
        buf: [0; N],
        len: 0,
        bad: false,
    };

    fn push(&mut self, b: u8) {
        if self.len < N && b.is_ascii() {
            self.buf[self.len] = b;
            self.len += 1;
        } else {
            self.bad = true;
        }
    }

    /// `push` of each byte of `bytes`, at once.
    fn extend(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if !self.bad && end <= N && bytes.is_ascii() {
            self.buf[self.len..end].copy_from_slice(bytes);
            self.len = end;
        } else if !bytes.is_empty() {
            self.bad = true;
        }
    }

    fn get(&self) -> Option<&[u8]> {
        (!self.bad).then_some(&self.buf[..self.len])
    }
}

// Indexes of the four counts.
const INPUT: usize = 0;
const OUTPUT: usize = 1;
const CACHE_READ: usize = 2;
const CACHE_WRITE: usize = 3;
type Counts = [Option<u64>; 4];

/// The `type` of an SSE event (or its `event:` name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventType {
    /// No `type` in the data; for a name: no `event:` line, empty, or `message` (the default).
    Default,
    Start,
    Delta,
    Other,
}

impl EventType {
    fn of(word: Option<&[u8]>) -> EventType {
        match word {
            Some(b"message_start") => EventType::Start,
            Some(b"message_delta") => EventType::Delta,
            _ => EventType::Other,
        }
    }

    /// The type an `event:` line's value names (empty and `message` are the default type).
    fn of_name(word: Option<&[u8]>) -> EventType {
        match word {
            Some(b"" | b"message") => EventType::Default,
            other => EventType::of(other),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Skipping: most of a body is bytes nobody wants (string content, the data of events without
// usage), so the scanner skips to the next byte that matters many bytes at a time: lines with
// memchr's vector search, JSON string runs eight bytes at a time (they are short).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that equals `b`. A set bit is exact for the lowest match
/// (borrows only run upwards, past a true match), which is all [`find`] uses.
fn bytes_equal(w: u64, b: u8) -> u64 {
    let x = w ^ (ONES * u64::from(b));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The high bit of each byte of `w` below `n` (<= 0x80; exact for the lowest, as above).
fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS
}

/// How the API's event lines start.
const EVENT_PREFIX: &[u8] = b"event: ";

/// The names the Messages API streams, most frequent first, and the type each names.
const KNOWN_EVENTS: [(&[u8], EventType); 7] = [
    (b"content_block_delta", EventType::Other),
    (b"ping", EventType::Other),
    (b"content_block_start", EventType::Other),
    (b"content_block_stop", EventType::Other),
    (b"message_start", EventType::Start),
    (b"message_delta", EventType::Delta),
    (b"message_stop", EventType::Other),
];

/// When `s` starts with an `event: ` line naming one of [`KNOWN_EVENTS`] whose line end is in
/// `s`: the length of that line (without its line end) and the type it names. One compare
/// per name instead of a search for the line end (each event of a stream usually comes in a
/// piece of its own).
fn known_event_line(s: &[u8]) -> Option<(usize, EventType)> {
    let name = s.strip_prefix(EVENT_PREFIX)?;
    KNOWN_EVENTS.iter().find_map(|&(k, named)| {
        (starts_with_key(name, k) && matches!(name.get(k.len()), Some(b'\r' | b'\n')))
            .then_some((EVENT_PREFIX.len() + k.len(), named))
    })
}

/// When `s` starts with a whole event that one of [`KNOWN_EVENTS`] names for a type without
/// usage (its first line), with the blank line that ends it whole in `s`: its length, that
/// blank line included. Nothing of such an event is read but its line ends (a vector search
/// per line, [`to_blank_line`]), so it is passed in one step: most events of a stream. `None`
/// (cut by the piece's end, or by a CR last in it that may be half a CR LF): the general
/// steps take it.
fn whole_ignored_event(s: &[u8]) -> Option<usize> {
    let (i, named) = known_event_line(s)?;
    if named != EventType::Other {
        return None;
    }
    match to_blank_line(s, after_line_end(s, i)?) {
        ToBlank::Blank(j) => after_line_end(s, j),
        ToBlank::AtStart | ToBlank::AfterCr | ToBlank::InLine => None,
    }
}

/// Where [`to_blank_line`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ToBlank {
    /// At the line end of a blank line (the event's end), its index.
    Blank(usize),
    /// At the end of `s`, at a line's start.
    AtStart,
    /// At the end of `s`, just after a CR (an LF next completes that line end).
    AfterCr,
    /// At the end of `s`, inside a line.
    InLine,
}

/// Skips whole lines from the line start `s[i]` to the first blank one: the one walk over the
/// lines of an event nothing of which is read (`whole_ignored_event`, `Sse::skip_ignored`).
fn to_blank_line(s: &[u8], mut i: usize) -> ToBlank {
    loop {
        match s.get(i) {
            None => return ToBlank::AtStart,
            Some(b'\r' | b'\n') => return ToBlank::Blank(i),
            Some(_) => {}
        }
        let Some(n) = line_end(&s[i..]) else {
            return ToBlank::InLine;
        };
        let Some(next) = after_line_end(s, i + n) else {
            return ToBlank::AfterCr;
        };
        i = next;
    }
}

/// Where the line after the line end at `s[i]` (CR, LF or CR LF) starts; `None` for a CR last
/// in `s` (it may be the first half of a CR LF).
fn after_line_end(s: &[u8], i: usize) -> Option<usize> {
    if s[i] == b'\n' {
        return Some(i + 1);
    }
    match *s.get(i + 1)? {
        b'\n' => Some(i + 2),
        _ => Some(i + 1),
    }
}

/// The first CR or LF of `s`. Most of an SSE body is lines nobody reads to their end (the
/// data of events without usage): memchr's vector search (SSE2/AVX2, NEON) skips them 16 or 32
/// bytes at a step.
fn line_end(s: &[u8]) -> Option<usize> {
    memchr::memchr2(b'\r', b'\n', s)
}

/// Where a JSON string's plain run stops: its quote, an escape, or a control byte (an error).
fn is_string_stop(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

fn string_stop(w: u64) -> u64 {
    // Flipping bit 1 keeps the control bytes below 0x20 and moves only `"` (0x22) to 0x20:
    // one test for both.
    bytes_below(w ^ (ONES * 0x02), 0x21) | bytes_equal(w, b'\\')
}

/// The first byte of `s` for which `one` holds; `eight` is the same test on eight bytes read
/// little-endian (any byte order of the machine), giving the high bit of each byte that holds.
fn find(s: &[u8], eight: fn(u64) -> u64, one: fn(u8) -> bool) -> Option<usize> {
    // Indexes, not `chunks_exact`: the strings are short, the set-up is most of the cost.
    let mut i = 0;
    while let Some(w) = s.get(i..i + 8) {
        let hits = eight(u64::from_le_bytes(w.try_into().expect("eight bytes")));
        if hits != 0 {
            return Some(i + hits.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    s[i..].iter().position(|&b| one(b)).map(|p| i + p)
}

// ---------------------------------------------------------------------------------------------
// JSON: an incremental lexer that knows where it is in the few paths we read.

/// Which document shape the key path is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schema {
    /// A non-streaming reply: `model`, `usage.*`.
    Document,
    /// An SSE event's data: `type`, `message.model`, `message.usage.*`, `usage.*`.
    Event,
}

/// What a value position means. Containers we descend into, leaves we capture, or `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Other,
    Root,
    /// `message` of an event.
    Message,
    /// A usage object: set 0 is the document's `usage` or an event's `message.usage`, set 1 an
    /// event's top-level `usage`.
    Usage(usize),
    Model,
    Type,
    Count(usize, usize),
}

impl Node {
    fn is_container(self) -> bool {
        matches!(self, Node::Root | Node::Message | Node::Usage(_))
    }

    /// The keys a container we track expects, each with its closing quote, and the node each
    /// names: the one table both key paths read (`child`, `known_key`).
    fn keys(self, schema: Schema) -> &'static [(&'static [u8], Node)] {
        const fn usage(set: usize) -> [(&'static [u8], Node); 4] {
            [
                (b"input_tokens\"", Node::Count(set, INPUT)),
                (b"output_tokens\"", Node::Count(set, OUTPUT)),
                (b"cache_read_input_tokens\"", Node::Count(set, CACHE_READ)),
                (
                    b"cache_creation_input_tokens\"",
                    Node::Count(set, CACHE_WRITE),
                ),
            ]
        }
        const USAGE: [[(&[u8], Node); 4]; 2] = [usage(0), usage(1)];
        match (schema, self) {
            (_, Node::Usage(set)) => &USAGE[set],
            (Schema::Document, Node::Root) => {
                &[(b"model\"", Node::Model), (b"usage\"", Node::Usage(0))]
            }
            (Schema::Event, Node::Root) => &[
                (b"type\"", Node::Type),
                (b"message\"", Node::Message),
                (b"usage\"", Node::Usage(1)),
            ],
            (Schema::Event, Node::Message) => {
                &[(b"model\"", Node::Model), (b"usage\"", Node::Usage(0))]
            }
            _ => &[],
        }
    }

    /// The child at a whole key (its content, read byte by byte: escapes undone).
    fn child(self, schema: Schema, key: &[u8]) -> Node {
        self.keys(schema)
            .iter()
            .find(|(k, _)| k.len() == key.len() + 1 && k.starts_with(key))
            .map_or(Node::Other, |&(_, node)| node)
    }

    /// The key our child `self` (a container we track) expects at the start of `rest` (just
    /// after the key's quote) when it is whole there, closing quote included: that child and
    /// the key's length. A compare of the first byte, then of the key, no search for the
    /// quote. `None`: no key of ours is whole there (the key may still be one of ours with an
    /// escape, or cut by the piece's end: `child` decides those).
    fn known_key(self, schema: Schema, rest: &[u8]) -> Option<(Node, usize)> {
        let first = *rest.first()?;
        self.keys(schema)
            .iter()
            .find(|(k, _)| k[0] == first && starts_with_key(rest, k))
            .map(|&(k, node)| (node, k.len() - 1))
    }
}

/// `rest` starts with `key` (at least four bytes long): a few word compares, the last one
/// overlapping, inline (a call to `memcmp` costs more than the compare for keys this short).
fn starts_with_key(rest: &[u8], key: &[u8]) -> bool {
    let n = key.len();
    // Every key of `Node::keys` and name of `KNOWN_EVENTS` is (`ping` is the shortest): a
    // shorter one has no four-byte word to compare, and says so here rather than as an index
    // out of range.
    debug_assert!(n >= 4, "a key shorter than 4 bytes: {key:?}");
    let Some(r) = rest.get(..n) else {
        return false;
    };
    let w4 = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().expect("4 bytes"));
    let w8 = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    if n < 8 {
        return w4(r, 0) == w4(key, 0) && w4(r, n - 4) == w4(key, n - 4);
    }
    let mut i = 0;
    while i + 8 < n {
        if w8(r, i) != w8(key, i) {
            return false;
        }
        i += 8;
    }
    w8(r, n - 8) == w8(key, n - 8)
}

/// Containers whose node is tracked: the root object, `message`, `message.usage`. Deeper ones
/// are `Other` by construction.
const PATH: usize = 3;

/// The values found in one document or event. A value's start clears what it will set, so a
/// repeated key's last occurrence wins.
/// The model is captured in place; `has_model` says it is a complete string value.
#[derive(Clone, Copy, Debug)]
struct Found {
    model: Model,
    has_model: bool,
    ty: EventType,
    counts: [Counts; 2],
}

impl Found {
    fn model(&self) -> Option<Model> {
        self.has_model.then_some(self.model)
    }

    /// Forgets everything (the model's bytes are left, `has_model` hides them).
    fn forget(&mut self) {
        self.has_model = false;
        self.ty = EventType::Default;
        self.counts = [[None; 4]; 2];
    }

    /// Forgets what a value starting at `node` will set.
    #[inline]
    fn clear(&mut self, node: Node) {
        // Most values are at no node of ours: no call for them.
        if node != Node::Other {
            self.clear_node(node);
        }
    }

    fn clear_node(&mut self, node: Node) {
        match node {
            Node::Model => self.has_model = false,
            Node::Type => self.ty = EventType::Default,
            Node::Message => {
                self.has_model = false;
                self.counts[0] = [None; 4];
            }
            Node::Usage(set) => self.counts[set] = [None; 4],
            Node::Count(set, i) => self.counts[set][i] = None,
            Node::Root | Node::Other => {}
        }
    }
}

/// Where the bytes of the string being lexed go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Capture {
    Skip,
    Word,
    Model,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumState {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl NumState {
    /// A number may end here.
    fn can_end(self) -> bool {
        matches!(
            self,
            NumState::Zero | NumState::Int | NumState::Frac | NumState::ExpDigits
        )
    }
}

// A plain tag (no niche in a field): each test of the state is one compare.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// A value must come: at the root, after `:`, after `,` in an array.
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object.
    Key,
    Colon,
    /// After a value inside a container: `,` or the closer.
    After,
    Str,
    Escape,
    Unicode {
        digits: u8,
        unit: u16,
    },
    /// `count` stays `Some` while the number is still a valid token count.
    Number {
        state: NumState,
        count: Option<u64>,
    },
    /// The rest of `true`, `false` or `null`.
    Literal(&'static [u8]),
    /// The root value is complete; only whitespace may follow.
    Done,
    Failed,
}

#[derive(Clone, Debug)]
struct JsonScan {
    schema: Schema,
    state: Lex,
    depth: usize,
    /// Bit `d` set: the container at depth `d + 1` is an object.
    objects: [u64; MAX_DEPTH / 64],
    /// Node of the container at depth `d + 1`, for `d < PATH`.
    nodes: [Node; PATH],
    /// Node of the value about to start (or being lexed, for scalars).
    next: Node,
    in_key: bool,
    capture: Capture,
    word: Word<32>,
    found: Found,
    /// Bytes fed so far (tests check what is not lexed).
    #[cfg(test)]
    lexed: usize,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl JsonScan {
    fn new(schema: Schema) -> JsonScan {
        JsonScan {
            schema,
            state: Lex::Value,
            depth: 0,
            objects: [0; MAX_DEPTH / 64],
            nodes: [Node::Other; PATH],
            next: Node::Root,
            in_key: false,
            capture: Capture::Skip,
            word: Word::EMPTY,
            found: Found {
                model: Model::EMPTY,
                has_model: false,
                ty: EventType::Default,
                counts: [[None; 4]; 2],
            },
            #[cfg(test)]
            lexed: 0,
        }
    }

    /// Starts over for the next event, reusing the memory.
    /// Nothing but whitespace has been fed since the last reset: a reset would change nothing.
    fn is_fresh(&self) -> bool {
        self.state == Lex::Value && self.depth == 0
    }

    fn reset(&mut self) {
        self.state = Lex::Value;
        self.depth = 0;
        self.next = Node::Root;
        self.found.forget();
    }

    /// The input so far is exactly one JSON value (plus whitespace).
    fn complete(&self) -> bool {
        match self.state {
            Lex::Done => true,
            // A bare number at the root ends with the input.
            Lex::Number { state, .. } => self.depth == 0 && state.can_end(),
            _ => false,
        }
    }

    fn outcome(&self) -> Outcome {
        match self.state {
            Lex::Failed => Outcome::Malformed,
            _ if self.complete() => Outcome::Complete,
            _ => Outcome::Truncated,
        }
    }

    fn tokens(&self) -> Tokens {
        let c = self.found.counts[0];
        Tokens {
            model: self.found.model(),
            input: c[INPUT],
            output: c[OUTPUT],
            cache_read: c[CACHE_READ],
            cache_write: c[CACHE_WRITE],
            outcome: self.outcome(),
        }
    }

    fn feed(&mut self, input: &[u8]) {
        #[cfg(test)]
        {
            self.lexed += input.len();
        }
        let mut i = 0;
        while i < input.len() {
            match self.state {
                Lex::Failed => return,
                // String content runs to its quote, an escape or a control byte: take the run
                // at once (the bulk of a body is string content nobody wants: skipped).
                Lex::Str => {
                    let rest = &input[i..];
                    let n = find(rest, string_stop, is_string_stop).unwrap_or(rest.len());
                    self.take_run(&rest[..n]);
                    i += n;
                    if i == input.len() {
                        return;
                    }
                }
                Lex::Value
                | Lex::ValueOrClose
                | Lex::KeyOrClose
                | Lex::Key
                | Lex::Colon
                | Lex::After
                | Lex::Done => {
                    let j = self.whole_tokens(input, i);
                    if j > i {
                        i = j;
                        continue;
                    }
                }
                _ => {}
            }
            self.byte(input[i]);
            i += 1;
        }
    }

    /// The plain bytes of a string (no quote, escape or control byte) where the capture wants
    /// them.
    fn take_run(&mut self, run: &[u8]) {
        match self.capture {
            Capture::Skip => {}
            Capture::Word => self.word.extend(run),
            Capture::Model => run.iter().for_each(|&b| self.found.model.push_raw(b)),
        }
    }

    /// Lexes the usual tokens a token at a step from `input[i]` on, while each is whole in
    /// `input`, with the state in locals: what `byte` does for each of their bytes (~45
    /// instructions a byte), in ~70 instructions a token (issue 12). Returns where it
    /// stopped, the state exact there: at a byte for `byte` (a rarer token, one cut by the
    /// piece's end, an error), inside a string cut by an escape, a control byte or the piece's
    /// end (the state is `Str`), or at the end of `input`.
    fn whole_tokens(&mut self, input: &[u8], mut i: usize) -> usize {
        let (mut state, mut depth, mut next) = (self.state, self.depth, self.next);
        // The innermost container in locals, changed only at its open and close: its node, is
        // it an object, the state after a value in it.
        let mut cont = self.container_at(depth);
        let mut obj = depth > 0 && self.object_at(depth);
        let mut after = Self::after_value(depth);
        let value = |state| matches!(state, Lex::Value | Lex::ValueOrClose);
        // On the byte first (a jump table), then on the state: only the structural states
        // are ever in `state` here.
        while let Some(&b) = input.get(i) {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' if matches!(state, Lex::KeyOrClose | Lex::Key) => {
                    let rest = &input[i + 1..];
                    let known = match cont {
                        Node::Other => None,
                        c => c.known_key(self.schema, rest),
                    };
                    let n = if let Some((node, n)) = known {
                        next = node;
                        n
                    } else {
                        let n = find(rest, string_stop, is_string_stop).unwrap_or(rest.len());
                        if rest.get(n) != Some(&b'"') {
                            // Not whole: the key's start and its run, the rest for `byte`.
                            (self.state, self.depth, self.next) = (state, depth, next);
                            self.begin_key();
                            self.take_run(&rest[..n]);
                            return i + 1 + n;
                        }
                        // Whole and not one `known_key` expects: no key of ours.
                        next = Node::Other;
                        n
                    };
                    i += n + 1;
                    // The colon, most often right after the key.
                    if rest.get(n + 1) == Some(&b':') {
                        state = Lex::Value;
                        i += 1;
                    } else {
                        state = Lex::Colon;
                    }
                }
                b'"' if value(state) => {
                    let rest = &input[i + 1..];
                    let n = find(rest, string_stop, is_string_stop).unwrap_or(rest.len());
                    if rest.get(n) != Some(&b'"') {
                        // Not whole: the string's start and its run, the rest for `byte`.
                        (self.state, self.depth, self.next) = (state, depth, next);
                        self.value(b'"');
                        self.take_run(&rest[..n]);
                        return i + 1 + n;
                    }
                    self.string_value(next, &rest[..n]);
                    state = after;
                    i += n + 1;
                }
                b':' if state == Lex::Colon => state = Lex::Value,
                b',' if state == Lex::After => {
                    if obj {
                        state = Lex::Key;
                    } else {
                        next = Node::Other;
                        state = Lex::Value;
                    }
                }
                b'}' | b']'
                    if state == Lex::After
                        || (b == b'}' && state == Lex::KeyOrClose)
                        || (b == b']' && state == Lex::ValueOrClose) =>
                {
                    if (b == b'}') != obj {
                        break; // `byte` fails it
                    }
                    depth -= 1;
                    cont = self.container_at(depth);
                    obj = depth > 0 && self.object_at(depth);
                    after = Self::after_value(depth);
                    state = after;
                }
                b'{' | b'[' if value(state) && depth < MAX_DEPTH => {
                    self.found.clear(next);
                    let object = b == b'{';
                    cont = self.enter(depth, object, next);
                    depth += 1;
                    obj = object;
                    after = Lex::After;
                    next = Node::Other;
                    state = Self::first_in(object);
                }
                b'0'..=b'9' if value(state) => {
                    let Some(n) = self.whole_count(next, &input[i..]) else {
                        break;
                    };
                    state = after;
                    i += n - 1;
                }
                b't' | b'f' | b'n' if value(state) => {
                    let rest = &input[i..];
                    // Constant lengths: each compare is a load and a compare.
                    let n = if rest.starts_with(b"true") || rest.starts_with(b"null") {
                        4
                    } else if rest.starts_with(b"false") {
                        5
                    } else {
                        break;
                    };
                    self.found.clear(next);
                    state = after;
                    i += n - 1;
                }
                _ => break,
            }
            i += 1;
        }
        (self.state, self.depth, self.next) = (state, depth, next);
        i
    }

    /// What a whole string value `s` (its content between the quotes, no escapes) at `node`
    /// does: what `value`, its run and `end_string` do, at once.
    fn string_value(&mut self, node: Node, s: &[u8]) {
        self.found.clear(node);
        match node {
            Node::Model => {
                self.found.model.len = 0;
                s.iter().for_each(|&b| self.found.model.push_raw(b));
                self.found.has_model = true;
            }
            // A word too long or not ASCII is neither type either.
            Node::Type => self.found.ty = EventType::of(Some(s)),
            _ => {}
        }
    }

    /// A number of digits at the start of `s` (at `node`), when the byte after it is in `s`
    /// and ends it (not `.` or an exponent: those numbers are for `byte`): its length, with
    /// what `value`, `number` and its end do to what is found. `None`: nothing done.
    fn whole_count(&mut self, node: Node, s: &[u8]) -> Option<usize> {
        let mut count = Some(u64::from(s[0] - b'0'));
        let mut n = 1;
        if s[0] != b'0' {
            while let Some(&d @ b'0'..=b'9') = s.get(n) {
                count = count
                    .and_then(|c| c.checked_mul(10))
                    .and_then(|c| c.checked_add(u64::from(d - b'0')));
                n += 1;
            }
        }
        let end = *s.get(n)?;
        if !(is_ws(end) || matches!(end, b',' | b'}' | b']')) {
            return None;
        }
        self.found.clear(node);
        if let Node::Count(set, i) = node {
            self.found.counts[set][i] = count;
        }
        Some(n)
    }

    fn fail(&mut self) {
        self.state = Lex::Failed;
    }

    fn byte(&mut self, b: u8) {
        match self.state {
            Lex::Value | Lex::ValueOrClose if is_ws(b) => {}
            Lex::ValueOrClose if b == b']' => self.close(b),
            Lex::Value | Lex::ValueOrClose => self.value(b),
            Lex::KeyOrClose | Lex::Key if is_ws(b) => {}
            Lex::KeyOrClose | Lex::Key if b == b'"' => self.begin_key(),
            Lex::KeyOrClose if b == b'}' => self.close(b),
            Lex::Colon if is_ws(b) => {}
            Lex::Colon if b == b':' => self.state = Lex::Value,
            Lex::After => self.after(b),
            Lex::Done if is_ws(b) => {}
            Lex::Str => self.string_byte(b),
            Lex::Escape => self.escape(b),
            Lex::Unicode { digits, unit } => {
                let Some(d) = (b as char).to_digit(16) else {
                    return self.fail();
                };
                let unit = (unit << 4) | d as u16;
                if digits == 3 {
                    self.put_unit(unit);
                    self.state = Lex::Str;
                } else {
                    self.state = Lex::Unicode {
                        digits: digits + 1,
                        unit,
                    };
                }
            }
            Lex::Number { state, count } => self.number(state, count, b),
            Lex::Literal(rest) => match rest.split_first() {
                Some((&want, tail)) if want == b => {
                    self.state = Lex::Literal(tail);
                    if tail.is_empty() {
                        self.end_value();
                    }
                }
                _ => self.fail(),
            },
            Lex::KeyOrClose | Lex::Key | Lex::Colon | Lex::Done | Lex::Failed => self.fail(),
        }
    }

    /// The node of the innermost open container.
    fn container(&self) -> Node {
        self.container_at(self.depth)
    }

    /// The node of the innermost container when `depth` are open.
    fn container_at(&self, depth: usize) -> Node {
        match depth {
            0 => Node::Other,
            d if d <= PATH => self.nodes[d - 1],
            _ => Node::Other,
        }
    }

    fn in_object(&self) -> bool {
        self.object_at(self.depth)
    }

    /// The innermost container is an object, when `depth` (> 0) are open.
    fn object_at(&self, depth: usize) -> bool {
        let d = depth - 1;
        self.objects[d / 64] & (1 << (d % 64)) != 0
    }

    fn value(&mut self, b: u8) {
        let node = self.next;
        self.found.clear(node);
        match b {
            b'{' => self.open(true, node),
            b'[' => self.open(false, node),
            b'"' => {
                self.in_key = false;
                self.capture = match node {
                    Node::Model => {
                        self.found.model.len = 0;
                        Capture::Model
                    }
                    Node::Type => {
                        self.word = Word::EMPTY;
                        Capture::Word
                    }
                    _ => Capture::Skip,
                };
                self.state = Lex::Str;
            }
            b'-' => {
                self.state = Lex::Number {
                    state: NumState::Minus,
                    count: None,
                }
            }
            b'0' => {
                self.state = Lex::Number {
                    state: NumState::Zero,
                    count: Some(0),
                }
            }
            b'1'..=b'9' => {
                self.state = Lex::Number {
                    state: NumState::Int,
                    count: Some(u64::from(b - b'0')),
                }
            }
            b't' => self.state = Lex::Literal(b"rue"),
            b'f' => self.state = Lex::Literal(b"alse"),
            b'n' => self.state = Lex::Literal(b"ull"),
            _ => self.fail(),
        }
    }

    fn open(&mut self, object: bool, node: Node) {
        if self.depth == MAX_DEPTH {
            return self.fail();
        }
        self.enter(self.depth, object, node);
        self.depth += 1;
        self.next = Node::Other;
        self.state = Self::first_in(object);
    }

    /// Records a container opening at `depth` (< `MAX_DEPTH`) at `node`: whether it is an
    /// object, and its node where tracked. Returns its node (`Other` when not tracked).
    fn enter(&mut self, depth: usize, object: bool, node: Node) -> Node {
        let bit = 1u64 << (depth % 64);
        if object {
            self.objects[depth / 64] |= bit;
        } else {
            self.objects[depth / 64] &= !bit;
        }
        if depth >= PATH {
            return Node::Other;
        }
        // An array, or an object where a scalar belongs, holds nothing we count.
        let cont = if object && node.is_container() {
            node
        } else {
            Node::Other
        };
        self.nodes[depth] = cont;
        cont
    }

    /// The state just inside a container that opened.
    fn first_in(object: bool) -> Lex {
        if object {
            Lex::KeyOrClose
        } else {
            Lex::ValueOrClose
        }
    }

    fn close(&mut self, b: u8) {
        if (b == b'}') != self.in_object() {
            return self.fail();
        }
        self.depth -= 1;
        self.end_value();
    }

    fn end_value(&mut self) {
        self.state = Self::after_value(self.depth);
    }

    /// The state after a value, when `depth` containers are open.
    fn after_value(depth: usize) -> Lex {
        if depth == 0 { Lex::Done } else { Lex::After }
    }

    fn after(&mut self, b: u8) {
        match b {
            _ if is_ws(b) => {}
            b',' if self.in_object() => self.state = Lex::Key,
            b',' => {
                self.next = Node::Other;
                self.state = Lex::Value;
            }
            b'}' | b']' => self.close(b),
            _ => self.fail(),
        }
    }

    fn begin_key(&mut self) {
        self.in_key = true;
        self.capture = if self.container() == Node::Other {
            Capture::Skip
        } else {
            self.word = Word::EMPTY;
            Capture::Word
        };
        self.state = Lex::Str;
    }

    fn string_byte(&mut self, b: u8) {
        match b {
            b'"' => self.end_string(),
            b'\\' => self.state = Lex::Escape,
            0..=0x1f => self.fail(),
            _ => match self.capture {
                Capture::Skip => {}
                Capture::Word => self.word.push(b),
                Capture::Model => self.found.model.push_raw(b),
            },
        }
    }

    fn escape(&mut self, b: u8) {
        let unit = match b {
            b'"' | b'\\' | b'/' => b,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                self.state = Lex::Unicode { digits: 0, unit: 0 };
                return;
            }
            _ => return self.fail(),
        };
        self.put_unit(u16::from(unit));
        self.state = Lex::Str;
    }

    fn put_unit(&mut self, u: u16) {
        match self.capture {
            Capture::Skip => {}
            // Non-ASCII marks the word bad: no key or type we match has it.
            Capture::Word => self.word.push(u8::try_from(u).unwrap_or(0x80)),
            Capture::Model => self.found.model.push_unit(u),
        }
    }

    fn end_string(&mut self) {
        if self.in_key {
            self.next = match (self.capture, self.word.get()) {
                (Capture::Word, Some(key)) => self.container().child(self.schema, key),
                _ => Node::Other,
            };
            self.state = Lex::Colon;
            return;
        }
        match self.next {
            Node::Model => self.found.has_model = true,
            Node::Type => self.found.ty = EventType::of(self.word.get()),
            _ => {}
        }
        self.end_value();
    }

    fn number(&mut self, state: NumState, mut count: Option<u64>, b: u8) {
        use NumState::*;
        let next = match (state, b) {
            (Minus, b'0') => Zero,
            (Minus, b'1'..=b'9') => Int,
            (Int, b'0'..=b'9') => {
                count = count
                    .and_then(|c| c.checked_mul(10))
                    .and_then(|c| c.checked_add(u64::from(b - b'0')));
                Int
            }
            (Zero | Int, b'.') => {
                count = None;
                Dot
            }
            (Zero | Int | Frac, b'e' | b'E') => {
                count = None;
                Exp
            }
            (Dot | Frac, b'0'..=b'9') => Frac,
            (Exp, b'+' | b'-') => ExpSign,
            (Exp | ExpSign | ExpDigits, b'0'..=b'9') => ExpDigits,
            (s, _) if s.can_end() && (is_ws(b) || matches!(b, b',' | b'}' | b']')) => {
                // The number ended just before `b`, which the container state reads next.
                if let Node::Count(set, i) = self.next {
                    self.found.counts[set][i] = count;
                }
                self.end_value();
                return self.byte(b);
            }
            _ => return self.fail(),
        };
        self.state = Lex::Number { state: next, count };
    }
}

// ---------------------------------------------------------------------------------------------
// SSE: WHATWG event-stream framing, with each event's data fed straight into a JsonScan.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// Nothing yet on this line.
    Start,
    /// In the field name.
    Name,
    /// Just after the colon: one space may follow.
    ValueStart,
    Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    /// `id`, `retry`, unknown fields, comments.
    Ignore,
}

const BOM: &[u8] = b"\xef\xbb\xbf";

/// The figures of the events dispatched so far.
#[derive(Clone, Copy, Debug)]
struct Committed {
    model: Option<Model>,
    start: Counts,
    delta: Counts,
}

#[derive(Clone, Debug)]
struct Sse {
    line: Line,
    field: Field,
    name: Word<5>,
    /// The value of an `event:` line being read byte by byte (a line whole in its piece is
    /// read in place).
    event: Word<16>,
    /// The type this event's `event:` line names (`Default` when it has none).
    named: EventType,
    has_data: bool,
    /// `event:` lines seen in this event.
    names: u8,
    /// This event cannot count (named for a type without usage, or named twice): its data is
    /// not lexed.
    ignored: bool,
    /// The last line ended in CR: an LF now completes that line end.
    after_cr: bool,
    /// How much of a leading BOM has been seen; `BOM.len()` once past the stream start.
    bom: usize,
    malformed: bool,
    json: JsonScan,
    committed: Committed,
}

impl Sse {
    fn new() -> Sse {
        Sse {
            line: Line::Start,
            field: Field::Ignore,
            name: Word::EMPTY,
            event: Word::EMPTY,
            named: EventType::Default,
            has_data: false,
            names: 0,
            ignored: false,
            after_cr: false,
            bom: 0,
            malformed: false,
            json: JsonScan::new(Schema::Event),
            committed: Committed {
                model: None,
                start: [None; 4],
                delta: [None; 4],
            },
        }
    }

    fn tokens(&self) -> Tokens {
        let c = &self.committed;
        let pick = |i: usize| c.delta[i].or(c.start[i]);
        let outcome = if self.malformed {
            Outcome::Malformed
        } else if self.has_data || self.line != Line::Start || (1..BOM.len()).contains(&self.bom) {
            Outcome::Truncated
        } else {
            Outcome::Complete
        };
        Tokens {
            model: c.model,
            input: pick(INPUT),
            output: pick(OUTPUT),
            cache_read: pick(CACHE_READ),
            cache_write: pick(CACHE_WRITE),
            outcome,
        }
    }

    fn feed(&mut self, input: &[u8]) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if self.bom < BOM.len() {
                if b == BOM[self.bom] {
                    self.bom += 1;
                    i += 1;
                    continue;
                }
                if self.bom > 0 {
                    // Not a BOM after all: those bytes began a field name no field has.
                    self.line = Line::Name;
                    self.name = Word::EMPTY;
                    self.name.bad = true;
                }
                self.bom = BOM.len();
            }
            if b == b'\r' || b == b'\n' {
                self.end_line();
                self.after_cr = b == b'\r';
                i += 1;
                continue;
            }
            match self.line {
                // Nothing in the rest of an ignored event matters but the blank line ending it.
                Line::Start if self.ignored => {
                    i = self.skip_ignored(input, i);
                    continue;
                }
                // A whole line in this piece (the usual case) is taken at once; the loop then
                // reads its line end.
                Line::Start => {
                    // At an event's start, one the API names for a type without usage (most
                    // of them) is passed whole; what it leaves is what its dispatch would.
                    if self.names == 0
                        && !self.has_data
                        && let Some(n) = whole_ignored_event(&input[i..])
                    {
                        i += n;
                        continue;
                    }
                    if let Some(n) = self.whole_line(&input[i..]) {
                        i += n;
                        continue;
                    }
                    // Cut by the end of the piece: byte by byte.
                    if b == b':' {
                        self.field = Field::Ignore;
                        self.line = Line::Value;
                    } else {
                        self.name = Word::EMPTY;
                        self.name.push(b);
                        self.line = Line::Name;
                    }
                }
                Line::Name if b == b':' => {
                    let name = self.name;
                    self.begin_field(name.get());
                    self.line = Line::ValueStart;
                }
                Line::Name => self.name.push(b),
                Line::ValueStart => {
                    self.line = Line::Value;
                    if b != b' ' {
                        continue; // `b` is the value's first byte
                    }
                }
                Line::Value => {
                    let rest = &input[i..];
                    let n = line_end(rest).unwrap_or(rest.len());
                    match self.field {
                        Field::Data if self.ignored => {}
                        Field::Data => self.lex(&rest[..n]),
                        Field::Event => self.event.extend(&rest[..n]),
                        Field::Ignore => {}
                    }
                    i += n;
                    continue;
                }
            }
            i += 1;
        }
    }

    /// At a line's start in an event that may count (`rest[0]` is no line end): when the line
    /// is whole in `rest` (the usual case), does what the per-byte steps do with it, at once,
    /// and returns its length without its line end. `None`: cut by the piece's end, nothing
    /// done.
    fn whole_line(&mut self, rest: &[u8]) -> Option<usize> {
        if let Some((n, named)) = known_event_line(rest) {
            // One of the API's own names: one compare each, no search for the line end.
            self.event_line(named);
            return Some(n);
        }
        let line = &rest[..line_end(rest)?];
        let colon = if line.starts_with(b"data:") {
            Some(4)
        } else if line.starts_with(b"event:") {
            Some(5)
        } else {
            memchr::memchr(b':', line)
        };
        let (name, value) = match colon {
            Some(c) => {
                let value = &line[c + 1..];
                (&line[..c], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if name == b"event" {
            self.event_line(EventType::of_name(Some(value)));
        } else {
            // A comment (`:` first) has an empty name: ignored like any unknown field.
            self.begin_field(Some(name));
            if self.field == Field::Data && !self.ignored {
                self.lex(value);
            }
            self.line = Line::Value;
        }
        Some(line.len())
    }

    /// A whole `event:` line naming `named`, up to its line end: its name ends here (and not
    /// again at its line end).
    fn event_line(&mut self, named: EventType) {
        self.field = Field::Ignore;
        self.name_ended(named);
        self.line = Line::Value;
    }

    /// Data for the event's JSON.
    fn lex(&mut self, bytes: &[u8]) {
        self.json.feed(bytes);
    }

    /// At the start of a line of an ignored event (`input[i]` is not a line end): skips whole
    /// lines to the blank line that ends the event, and returns where that blank line's line
    /// end is (the caller dispatches there), or the end of the input, with the state the
    /// per-byte steps would have left.
    fn skip_ignored(&mut self, input: &[u8], i: usize) -> usize {
        self.field = Field::Ignore;
        self.line = Line::Start;
        match to_blank_line(input, i) {
            ToBlank::Blank(j) => return j,
            ToBlank::AtStart => {}
            ToBlank::AfterCr => self.after_cr = true,
            ToBlank::InLine => self.line = Line::Value,
        }
        input.len()
    }

    /// A field name ended (at its colon, or at the line end for a line without one); `None`
    /// is a name no field has.
    fn begin_field(&mut self, name: Option<&[u8]>) {
        self.field = match name {
            Some(b"data") => {
                // Data lines of one event are joined by LF; in JSON it is whitespace.
                if self.has_data && !self.ignored {
                    self.lex(b"\n");
                }
                self.has_data = true;
                Field::Data
            }
            Some(b"event") => {
                self.event = Word::EMPTY;
                Field::Event
            }
            _ => Field::Ignore,
        };
    }

    fn end_line(&mut self) {
        match self.line {
            Line::Start => self.dispatch(),
            // The whole line is the field name; its value is empty.
            Line::Name => {
                let name = self.name;
                self.begin_field(name.get());
            }
            Line::ValueStart | Line::Value => {}
        }
        if self.line != Line::Start && self.field == Field::Event {
            self.name_ended(EventType::of_name(self.event.get()));
        }
        self.line = Line::Start;
    }

    /// An `event:` line naming `named` ended: decide whether this event can still count.
    fn name_ended(&mut self, named: EventType) {
        self.names = self.names.saturating_add(1);
        self.named = named;
        if self.names > 1 || named == EventType::Other {
            self.ignored = true;
        }
    }

    fn dispatch(&mut self) {
        if self.has_data && !self.ignored {
            if self.json.complete() {
                self.commit();
            } else {
                self.malformed = true;
            }
        }
        self.has_data = false;
        self.names = 0;
        self.named = EventType::Default;
        self.ignored = false;
        // Most events are ignored, their data never lexed: no reset for them.
        if !self.json.is_fresh() {
            self.json.reset();
        }
    }

    fn commit(&mut self) {
        let found = &self.json.found;
        let name = self.named;
        if name != EventType::Default && name != found.ty {
            return;
        }
        let merge = |dst: &mut Counts, src: &Counts| {
            for (d, s) in dst.iter_mut().zip(src) {
                if s.is_some() {
                    *d = *s;
                }
            }
        };
        let c = &mut self.committed;
        match found.ty {
            EventType::Start => {
                if found.has_model {
                    c.model = Some(found.model);
                }
                merge(&mut c.start, &found.counts[0]);
            }
            EventType::Delta => merge(&mut c.delta, &found.counts[1]),
            EventType::Default | EventType::Other => {}
        }
    }
}

/// The fuzz harness (`fuzz/fuzz_targets/usage_scan.rs`; the unit tests run it too). Byte 0
/// picks the mode (bit 0) and a piece size (the rest); the other bytes are a body. Checks: no
/// panic; the same result fed whole, in pieces and byte by byte; a sanitised, capped model.
/// Built only for tests and under cargo-fuzz (which sets `--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub fn fuzz_harness(data: &[u8]) {
    let Some((&ctl, body)) = data.split_first() else {
        return;
    };
    let mode = if ctl & 1 == 0 {
        ScanMode::Sse
    } else {
        ScanMode::Json
    };
    let mut whole = UsageScanner::new(mode);
    whole.feed(body);
    let mut pieces = UsageScanner::new(mode);
    body.chunks(usize::from(ctl >> 1) + 1)
        .for_each(|p| pieces.feed(p));
    let mut bytes = UsageScanner::new(mode);
    body.chunks(1).for_each(|p| bytes.feed(p));
    let usage = whole.usage();
    assert_eq!(usage, pieces.usage(), "whole and pieces disagree");
    assert_eq!(usage, bytes.usage(), "whole and bytes disagree");
    let Usage::Scanned(t) = usage else {
        panic!("a scanning mode reported {usage:?}");
    };
    if let Some(m) = t.model() {
        assert!(m.len() <= MODEL_CAP, "model longer than the cap");
        assert!(
            m.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "model not sanitised: {m:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both key lookups find each key of the table and nothing else: not near misses, not a
    /// key cut before its quote (`known_key`), in every container we track.
    #[test]
    fn key_lookups_find_the_table_and_nothing_else() {
        let misses: &[&[u8]] = &[
            b"typ",
            b"types",
            b"models",
            b"mode",
            b"usages",
            b"id",
            b"",
            b"cache_read",
            b"input_token",
            b"messagE",
            b"output_tokens_",
            b"cache_creation_input_token",
        ];
        let containers = [Node::Root, Node::Message, Node::Usage(0), Node::Usage(1)];
        let mut found = 0;
        for schema in [Schema::Document, Schema::Event] {
            for c in containers {
                let table = c.keys(schema);
                for &(quoted, node) in table {
                    let key = quoted
                        .strip_suffix(b"\"")
                        .expect("each key ends in its quote");
                    assert_eq!(c.child(schema, key), node, "{schema:?} {c:?} {key:?}");
                    let mut rest = quoted.to_vec();
                    rest.extend_from_slice(b":1");
                    let want = Some((node, key.len()));
                    assert_eq!(c.known_key(schema, &rest), want, "{schema:?} {c:?} {key:?}");
                    assert_eq!(c.known_key(schema, key), None, "{schema:?} {c:?} {key:?}");
                    found += 1;
                }
                // A key of one container is no key of another.
                let others: Vec<&[u8]> = (containers.iter().flat_map(|o| o.keys(schema)))
                    .map(|(k, _)| &k[..k.len() - 1])
                    .collect();
                for &key in misses.iter().chain(&others) {
                    if table.iter().any(|(k, _)| &k[..k.len() - 1] == key) {
                        continue;
                    }
                    let mut rest = key.to_vec();
                    rest.extend_from_slice(b"\":1");
                    assert_eq!(
                        c.child(schema, key),
                        Node::Other,
                        "{schema:?} {c:?} {key:?}"
                    );
                    assert_eq!(c.known_key(schema, &rest), None, "{schema:?} {c:?} {key:?}");
                }
            }
        }
        // Document: model, usage; event: type, message, usage and model, usage; in both, the
        // four counts of each usage set.
        assert_eq!(found, (2 + 8) + (3 + 2 + 8));
    }

    fn scan(mode: ScanMode, body: &[u8]) -> Tokens {
        let mut s = UsageScanner::new(mode);
        s.feed(body);
        match s.usage() {
            Usage::Scanned(t) => t,
            other => panic!("not scanned: {other:?}"),
        }
    }

    /// Scans `body` whole, byte by byte and split in two at every point; all must agree.
    fn scan_all_ways(mode: ScanMode, body: &[u8]) -> Tokens {
        let whole = scan(mode, body);
        let mut s = UsageScanner::new(mode);
        body.chunks(1).for_each(|b| s.feed(b));
        assert_eq!(s.usage(), Usage::Scanned(whole), "byte by byte");
        for cut in 0..=body.len() {
            let mut s = UsageScanner::new(mode);
            s.feed(&body[..cut]);
            s.feed(&body[cut..]);
            assert_eq!(s.usage(), Usage::Scanned(whole), "split at {cut}");
        }
        whole
    }

    fn figures(t: &Tokens) -> (Option<&str>, [Option<u64>; 4]) {
        (t.model(), [t.input, t.output, t.cache_read, t.cache_write])
    }

    /// The shape of the Messages streaming docs' example.
    const DOCS_SSE: &str = r#"event: message_start
data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-6", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}

"#;

    /// What tests/support/e2e/mock.rs sends (serde_json's compact form, no spaces).
    const MOCK_SSE: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_mock_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"from the mock\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    /// Newer API versions: nested `cache_creation`, `service_tier`, a tool's partial JSON with
    /// escaped quotes, and a `message_delta` that repeats input and cache counts.
    const NEWER_SSE: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5-20251001\",\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":849,\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":4,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":10,\"service_tier\":\"standard\"}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"json\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"usage\\\": {\\\"input_tokens\\\": 999}, \\\"t\\\": \\\"a\\\\\\\\\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":850,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":6,\"output_tokens\":47,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn real_shaped_streams_give_their_numbers() {
        let t = scan_all_ways(ScanMode::Sse, DOCS_SSE.as_bytes());
        // The message_delta's cumulative output_tokens replaces message_start's 1.
        assert_eq!(
            figures(&t),
            (Some("claude-opus-4-6"), [Some(25), Some(15), None, None])
        );
        assert_eq!(t.outcome, Outcome::Complete);

        let t = scan_all_ways(ScanMode::Sse, MOCK_SSE.as_bytes());
        assert_eq!(
            figures(&t),
            (
                Some("claude-sonnet-4-5"),
                [Some(12), Some(7), Some(0), Some(0)]
            )
        );
        assert_eq!(t.outcome, Outcome::Complete);

        // The tool input's `usage` is inside a string and not counted; the delta's repeated
        // input and cache counts win over message_start's.
        let t = scan_all_ways(ScanMode::Sse, NEWER_SSE.as_bytes());
        assert_eq!(
            figures(&t),
            (
                Some("claude-haiku-4-5-20251001"),
                [Some(850), Some(47), Some(6), Some(5)]
            )
        );
        assert_eq!(t.outcome, Outcome::Complete);
    }

    #[test]
    fn line_ends_crlf_cr_and_lf_all_frame_the_same() {
        for fixture in [DOCS_SSE, MOCK_SSE, NEWER_SSE] {
            let lf = scan(ScanMode::Sse, fixture.as_bytes());
            assert!(lf.input.is_some());
            for eol in ["\r\n", "\r"] {
                let body = fixture.replace('\n', eol);
                assert_eq!(scan_all_ways(ScanMode::Sse, body.as_bytes()), lf, "{eol:?}");
            }
        }
    }

    #[test]
    fn sse_framing_details() {
        // No `event:` lines, no space after `data:`, comments, id/retry lines, a BOM, data
        // split over several lines (joined by LF, whitespace in JSON), extra blank lines.
        let body = "\u{feff}: a comment\r\nid: 7\nretry: 100\ndata:{\"type\":\"message_start\",\n\
                    data:  \"message\":{\"model\":\"m-1\",\n: comment inside the event\n\
                    data:\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\n\n\
                    data: {\"type\":\"ping\"}\n\n\
                    event\ndata\n: the two lines above: fields with no colon (data is empty)\n\
                    data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n\
                    data:{\"type\":\"message_delta\",\"usage\":{\"output_tokens\":11}}\r\n\r\n";
        let t = scan_all_ways(ScanMode::Sse, body.as_bytes());
        assert_eq!(figures(&t), (Some("m-1"), [Some(3), Some(11), None, None]));
        assert_eq!(t.outcome, Outcome::Complete);

        // Field names are case-sensitive; `data` without the colon's space keeps a second one
        // (whitespace); an event without a blank line after it is not dispatched.
        let body = "DATA: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n\
                    data:  {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":6}}\n\n\
                    data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n";
        let t = scan_all_ways(ScanMode::Sse, body.as_bytes());
        assert_eq!(t.output, Some(6));
        assert_eq!(t.outcome, Outcome::Truncated);
    }

    #[test]
    fn the_json_type_decides_not_the_event_name() {
        let ev = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
        let delta =
            |n: u64| format!("{{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{n}}}}}");
        let body = [
            ev("message_delta", &delta(1)),
            // The name says delta, the data says ping: not a delta.
            ev(
                "message_delta",
                "{\"type\":\"ping\",\"usage\":{\"output_tokens\":100}}",
            ),
            // They disagree the other way: ignored too.
            ev("ping", &delta(200)),
            ev("content_block_delta", &delta(300)),
            // `message` is the default name, as if there were no event line.
            ev("message", &delta(2)),
            // A type that is not a string, or absent: not counted.
            ev(
                "message_delta",
                "{\"type\":7,\"usage\":{\"output_tokens\":400}}",
            ),
            ev("message_delta", "{\"usage\":{\"output_tokens\":500}}"),
        ]
        .concat();
        let t = scan_all_ways(ScanMode::Sse, body.as_bytes());
        assert_eq!(t.output, Some(2));
        assert_eq!(t.outcome, Outcome::Complete);
    }

    #[test]
    fn message_delta_wins_whatever_the_order() {
        let body = "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":40,\"input_tokens\":6}}\n\n\
                    data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1,\"cache_read_input_tokens\":2}}}\n\n";
        let t = scan_all_ways(ScanMode::Sse, body.as_bytes());
        assert_eq!(figures(&t), (Some("m"), [Some(6), Some(40), Some(2), None]));
        // message_start alone: its own figures.
        let start_only = body.split_once("\n\n").unwrap().1;
        let t = scan(ScanMode::Sse, start_only.as_bytes());
        assert_eq!(figures(&t), (Some("m"), [Some(5), Some(1), Some(2), None]));
    }

    #[test]
    fn usage_elsewhere_is_not_counted() {
        let body = concat!(
            // message_start's own top-level usage, and usage inside content, are not its counts.
            "data: {\"type\":\"message_start\",\"usage\":{\"input_tokens\":900},\"message\":{\"content\":[{\"usage\":{\"input_tokens\":901}}],",
            "\"x\":{\"usage\":{\"input_tokens\":902},\"model\":\"not-this\"},\"model\":\"real\",\"usage\":{\"input_tokens\":1},",
            "\"later\":[{\"usage\":{\"input_tokens\":906}}]}}\n\n",
            // message_delta: only the top-level usage; message.usage and delta.usage are not.
            "data: {\"type\":\"message_delta\",\"message\":{\"usage\":{\"output_tokens\":903}},\"delta\":{\"usage\":{\"output_tokens\":904}},\"usage\":{\"output_tokens\":2}}\n\n",
            // A string that looks like usage.
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"\\\"usage\\\":{\\\"output_tokens\\\":905}\"}}\n\n",
        );
        let t = scan_all_ways(ScanMode::Sse, body.as_bytes());
        assert_eq!(figures(&t), (Some("real"), [Some(1), Some(2), None, None]));
    }

    #[test]
    fn json_replies_in_any_key_order() {
        let usage = "\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":4,\"output_tokens\":7}";
        let content = "\"content\":[{\"type\":\"text\",\"text\":\"a \\\"usage\\\": {\\\"input_tokens\\\": 1} \\\\\"},\
                       {\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"t\",\"input\":{\"usage\":{\"input_tokens\":999,\"output_tokens\":999},\"model\":\"no\",\"deep\":[[{\"usage\":{\"output_tokens\":998}}]]}}]";
        let model = "\"model\":\"claude-sonnet-4-5\"";
        let rest = "\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"extra\":{\"model\":\"no\",\"usage\":{\"input_tokens\":997}}";
        let parts = [usage, content, model, rest];
        for order in [[0, 1, 2, 3], [1, 3, 2, 0], [2, 0, 3, 1], [3, 2, 1, 0]] {
            let body = format!("{{ {} }}\n", order.map(|i| parts[i]).join(" ,\n\t"));
            let t = scan_all_ways(ScanMode::Json, body.as_bytes());
            assert_eq!(
                figures(&t),
                (
                    Some("claude-sonnet-4-5"),
                    [Some(12), Some(7), Some(4), Some(3)]
                ),
                "{body}"
            );
            assert_eq!(t.outcome, Outcome::Complete);
        }
        // The mock's non-streaming reply.
        let mock = r#"{"content":[{"text":"hi","type":"text"}],"id":"msg_mock_1","model":"claude-sonnet-4-5","role":"assistant","stop_reason":"end_turn","stop_sequence":null,"type":"message","usage":{"input_tokens":12,"output_tokens":7}}"#;
        let t = scan_all_ways(ScanMode::Json, mock.as_bytes());
        assert_eq!(
            figures(&t),
            (Some("claude-sonnet-4-5"), [Some(12), Some(7), None, None])
        );
        // count_tokens' reply has a top-level input_tokens, which is not usage.
        let t = scan(ScanMode::Json, br#"{"input_tokens":42}"#);
        assert_eq!(figures(&t), (None, [None; 4]));
        assert_eq!(t.outcome, Outcome::Complete);
    }

    #[test]
    fn escapes_in_keys_and_values_are_decoded() {
        let body = r#"{"\u006dodel":"claude\u002dx\/y","us\u0061ge":{"input_\u0074okens":5,"output_tokens\u0000":6,"o\"utput_tokens":7},"a\\":"\\\"usage\\\""}"#;
        let t = scan_all_ways(ScanMode::Json, body.as_bytes());
        assert_eq!(
            figures(&t),
            (Some("claude-x/y"), [Some(5), None, None, None])
        );
        let body = r#"data: {"type":"message\u005fdelta","usage":{"output_tokens":3}}

"#;
        assert_eq!(
            scan_all_ways(ScanMode::Sse, body.as_bytes()).output,
            Some(3)
        );
    }

    /// The token-at-a-time path (`whole_tokens`) takes a token only when it is whole in the
    /// piece; `scan_all_ways` cuts each of these at every byte, so each token is lexed both
    /// ways, and the results must agree with each other and with the figures given.
    #[test]
    fn whole_tokens_agree_with_the_byte_path() {
        let some = |i, o| [Some(i), Some(o), None, None];
        for (body, model, counts, outcome) in [
            // Compact, spaced, tabs and line ends between every token.
            (
                r#"{"model":"m-1","usage":{"input_tokens":12,"output_tokens":3}}"#,
                Some("m-1"),
                some(12, 3),
                Outcome::Complete,
            ),
            (
                " {\t\"model\" :\r\n\"m\" , \"usage\"\n:\n{ \"input_tokens\" : 1 ,\"output_tokens\":2 } }\n",
                Some("m"),
                some(1, 2),
                Outcome::Complete,
            ),
            // Empty containers, literals, arrays of scalars, a nested unknown object.
            (
                r#"{"a":{},"b":[],"c":[true,false,null,1,-2,0.5,"s",[{}]],"usage":{"x":{"input_tokens":7},"input_tokens":4,"output_tokens":0}}"#,
                None,
                some(4, 0),
                Outcome::Complete,
            ),
            // A number followed by a fraction or exponent, `0` then a digit, a count too big.
            (
                r#"{"usage":{"input_tokens":5,"input_tokens":5.0,"output_tokens":18446744073709551616}}"#,
                None,
                [None; 4],
                Outcome::Complete,
            ),
            (
                r#"{"usage":{"input_tokens":1,"output_tokens":01}}"#,
                None,
                [Some(1), None, None, None],
                Outcome::Malformed,
            ),
            // A key and a value with escapes, a key too long, a non-ASCII model and key.
            (
                r#"{"mod\u0065l":"a\"b","model_________________________________x":"no","usage":{"input_tökens":9,"output_tokens":8}}"#,
                Some("a\"b"),
                [None, Some(8), None, None],
                Outcome::Complete,
            ),
            // The closer must match the opener; a value must follow a colon.
            (
                r#"{"usage":{"input_tokens":3]}"#,
                None,
                [Some(3), None, None, None],
                Outcome::Malformed,
            ),
            (
                r#"{"model":"m","usage":}"#,
                Some("m"),
                [None; 4],
                Outcome::Malformed,
            ),
            (
                r#"{"model":"m""usage":{}}"#,
                Some("m"),
                [None; 4],
                Outcome::Malformed,
            ),
            (
                r#"{"model":"m",}"#,
                Some("m"),
                [None; 4],
                Outcome::Malformed,
            ),
            (r#"{"model":nul}"#, None, [None; 4], Outcome::Malformed),
            (
                r#"{"model":"m"} {}"#,
                Some("m"),
                [None; 4],
                Outcome::Malformed,
            ),
            // A later value clears what an earlier one set, whatever its type.
            (
                r#"{"model":"m","model":null,"usage":{"output_tokens":1},"usage":[]}"#,
                None,
                [None; 4],
                Outcome::Complete,
            ),
            // Cut short: the figures so far.
            (
                r#"{"model":"m","usage":{"input_tokens":12"#,
                Some("m"),
                [None; 4],
                Outcome::Truncated,
            ),
            (
                r#"{"model":"m","usage":{"input_tokens":12,"#,
                Some("m"),
                [Some(12), None, None, None],
                Outcome::Truncated,
            ),
        ] {
            let t = scan_all_ways(ScanMode::Json, body.as_bytes());
            assert_eq!(
                (figures(&t), t.outcome),
                ((model, counts), outcome),
                "{body}"
            );
        }
        // A bare root value ends with the input or at whitespace.
        for (body, outcome) in [
            ("12", Outcome::Complete),
            ("12 ", Outcome::Complete),
            ("12,", Outcome::Malformed),
            ("true", Outcome::Complete),
            ("\"s\"\n", Outcome::Complete),
            ("[1] 2", Outcome::Malformed),
        ] {
            assert_eq!(
                scan_all_ways(ScanMode::Json, body.as_bytes()).outcome,
                outcome,
                "{body}"
            );
        }
    }

    #[test]
    fn counts_must_be_plain_non_negative_integers() {
        let one = |v: &str| {
            let body = format!("{{\"usage\":{{\"input_tokens\":{v} }}}}");
            let t = scan(ScanMode::Json, body.as_bytes());
            (t.input, t.outcome)
        };
        assert_eq!(one("0"), (Some(0), Outcome::Complete));
        assert_eq!(
            one("18446744073709551615"),
            (Some(u64::MAX), Outcome::Complete)
        );
        for v in [
            "-1",
            "-0",
            "1.5",
            "1.0",
            "2e3",
            "1E+2",
            "5e-1",
            "18446744073709551616",
            "99999999999999999999999",
            "null",
            "true",
            "\"12\"",
            "[12]",
            "{\"n\":12}",
        ] {
            assert_eq!(one(v), (None, Outcome::Complete), "{v}");
        }
        // Not JSON numbers at all: the document is malformed.
        for v in [
            "01", "1.", ".5", "1e", "-", "+1", "0x10", "1_000", "NaN", "tru",
        ] {
            assert_eq!(one(v), (None, Outcome::Malformed), "{v}");
        }
    }

    #[test]
    fn the_last_duplicate_wins() {
        let body = r#"{"model":"a","usage":{"input_tokens":1,"output_tokens":2},"model":"b","usage":{"input_tokens":3}}"#;
        let t = scan(ScanMode::Json, body.as_bytes());
        assert_eq!(figures(&t), (Some("b"), [Some(3), None, None, None]));
        let body = r#"{"model":"a","usage":{"input_tokens":1},"model":null,"usage":5}"#;
        let t = scan(ScanMode::Json, body.as_bytes());
        assert_eq!(figures(&t), (None, [None; 4]));
        let body = r#"{"usage":{"input_tokens":1,"input_tokens":-1}}"#;
        assert_eq!(scan(ScanMode::Json, body.as_bytes()).input, None);
    }

    #[test]
    fn the_model_is_sanitised_and_capped() {
        let t = scan(
            ScanMode::Json,
            "{\"model\":\"a b\\tc\\u00e9d\u{e9}e\u{1F600}f\\ud83d\\ude00g\\u0000h\\\"i\"}"
                .as_bytes(),
        );
        assert_eq!(t.model(), Some("a?b?c?d?e?f?g?h\"i"));
        let long = "m".repeat(MODEL_CAP + 50);
        let t = scan(
            ScanMode::Json,
            format!("{{\"model\":\"{long}\"}}").as_bytes(),
        );
        assert_eq!(t.model(), Some(&long[..MODEL_CAP]));
        // Equal names compare equal whatever was captured before them.
        let a = scan(
            ScanMode::Json,
            br#"{"model":"a-much-longer-name","model":"m"}"#,
        );
        let b = scan(ScanMode::Json, br#"{"model":"m"}"#);
        assert_eq!(a, b);
        // A key too long to be ours is skipped, not truncated into a match.
        let key = format!("model{}", "x".repeat(40));
        let t = scan(ScanMode::Json, format!("{{\"{key}\":\"no\"}}").as_bytes());
        assert_eq!(t.model(), None);
    }

    #[test]
    fn malformed_events_are_skipped_and_later_ones_counted() {
        let good = "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\n\n";
        for bad in [
            "data: [DONE]\n\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}}\n\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}} x\n\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}\n\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9},}\n\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\ndata: {}\n\n",
            "data: {\"type\":\"message_delta\",\"t\":\"a\u{1}b\",\"usage\":{\"output_tokens\":9}}\n\n",
            "data:\n\n",
        ] {
            for body in [format!("{bad}{good}"), format!("{good}{bad}")] {
                let t = scan_all_ways(ScanMode::Sse, body.as_bytes());
                assert_eq!(
                    (t.output, t.outcome),
                    (Some(4), Outcome::Malformed),
                    "{body:?}"
                );
            }
        }
    }

    /// The eight-at-a-time search finds what a byte-by-byte search finds, at every offset and
    /// length, for every byte value around every interesting one.
    #[test]
    fn find_agrees_with_a_byte_by_byte_search() {
        type Search = (fn(u64) -> u64, fn(u8) -> bool);
        let tests: [Search; 1] = [(string_stop, is_string_stop)];
        let mut buf = [b'a'; 40];
        for (eight, one) in tests {
            for at in 0..buf.len() {
                for b in 0..=255u8 {
                    // A second candidate later on: the first must win.
                    buf[at] = b;
                    let later = (at + 5).min(buf.len() - 1);
                    if later != at {
                        buf[later] = if one(b'\n') { b'\n' } else { b'"' };
                    }
                    for start in 0..3.min(buf.len()) {
                        for end in [buf.len(), buf.len() - 3, at + 1].map(|e| e.max(start)) {
                            let s = &buf[start..end];
                            let want = s.iter().position(|&c| one(c));
                            assert_eq!(
                                find(s, eight, one),
                                want,
                                "{b:#x} at {at} in {start}..{end}"
                            );
                        }
                    }
                    buf[at] = b'a';
                    buf[later] = b'a';
                }
            }
            // Bytes just above and below the control range, high bytes, all in one word.
            let w = [0x1f, 0x20, 0x21, 0x7f, 0x80, 0xff, 0x0a, 0x0d];
            assert_eq!(find(&w, eight, one), w.iter().position(|&c| one(c)));
        }
    }

    /// Bytes of `body` the JSON lexer saw, fed whole.
    fn lexed(body: &[u8]) -> usize {
        let mut s = UsageScanner::new(ScanMode::Sse);
        s.feed(body);
        match &s.inner {
            Inner::Sse(sse) => sse.json.lexed,
            _ => unreachable!("an SSE scanner"),
        }
    }

    /// The data of events named for a type without usage is never lexed: what the lexer sees
    /// of the docs' stream is exactly the data of its `message_start` and `message_delta`
    /// (counted here from the fixture's lines, independently of the scanner).
    #[test]
    fn events_named_without_usage_are_not_lexed() {
        let mut want = 0;
        for block in DOCS_SSE.split("\n\n") {
            let named = |n: &str| block.lines().any(|l| l == format!("event: {n}"));
            if named("message_start") || named("message_delta") {
                want += block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .map(str::len)
                    .sum::<usize>();
            }
        }
        assert!(
            want > 0 && want < DOCS_SSE.len() / 2,
            "fixture: {want} of {}",
            DOCS_SSE.len()
        );
        assert_eq!(lexed(DOCS_SSE.as_bytes()), want);
        // The same stream without `event:` lines is lexed whole (the names are what save it).
        let unnamed: String = DOCS_SSE
            .lines()
            .filter(|l| !l.starts_with("event:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(lexed(unnamed.as_bytes()) > want);
        let t = scan_all_ways(ScanMode::Sse, DOCS_SSE.as_bytes());
        assert_eq!(t.outcome, Outcome::Complete);
    }

    /// An ignored event's data is not read, so its malformation does not mark the stream; the
    /// same data unnamed (so lexed) does.
    #[test]
    fn ignored_events_need_no_valid_data() {
        let good = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\n\n";
        for name in ["ping", "content_block_delta", "message_start_and_more"] {
            let body = format!(
                "event: {name}\ndata: {{not json, \"usage\":{{\"output_tokens\":9\n\n{good}"
            );
            let t = scan_all_ways(ScanMode::Sse, body.as_bytes());
            assert_eq!(
                (t.output, t.outcome),
                (Some(4), Outcome::Complete),
                "{name}"
            );
        }
        let body = format!("data: {{not json\n\n{good}");
        let t = scan_all_ways(ScanMode::Sse, body.as_bytes());
        assert_eq!((t.output, t.outcome), (Some(4), Outcome::Malformed));
    }

    /// An event with two `event:` lines is confused, whatever they say; data before a name
    /// that rules the event out does not count either.
    #[test]
    fn events_named_twice_or_late_are_handled() {
        let data = "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n";
        let count = |body: String| scan_all_ways(ScanMode::Sse, body.as_bytes()).output;
        assert_eq!(count(format!("event: message_delta\n{data}\n")), Some(5));
        assert_eq!(count(format!("{data}event: message_delta\n\n")), Some(5));
        assert_eq!(
            count(format!(
                "event: message_delta\nevent: message_delta\n{data}\n"
            )),
            None
        );
        assert_eq!(
            count(format!("event: ping\nevent: message_delta\n{data}\n")),
            None
        );
        assert_eq!(
            count(format!("event: message_delta\n{data}event: ping\n\n")),
            None
        );
        assert_eq!(count(format!("{data}event: ping\n\n")), None);
        // Empty and `message` names are the default type: the data decides.
        assert_eq!(count(format!("event:\n{data}\n")), Some(5));
        assert_eq!(count(format!("event: message\n{data}\n")), Some(5));
    }

    #[test]
    fn truncated_bodies_report_what_came_before() {
        let t = scan(
            ScanMode::Sse,
            &MOCK_SSE.as_bytes()[..MOCK_SSE.find("event: message_delta").unwrap() + 30],
        );
        assert_eq!(
            (figures(&t), t.outcome),
            (
                (
                    Some("claude-sonnet-4-5"),
                    [Some(12), Some(1), Some(0), Some(0)]
                ),
                Outcome::Truncated
            )
        );
        let body = r#"{"model":"m","usage":{"input_tokens":12,"output_tokens":7},"content":[{"type":"text","text":"cut he"#;
        let t = scan(ScanMode::Json, body.as_bytes());
        assert_eq!(
            (figures(&t), t.outcome),
            (
                (Some("m"), [Some(12), Some(7), None, None]),
                Outcome::Truncated
            )
        );
        // Malformed after the usage: what came before still counts (JSON mode).
        let t = scan(ScanMode::Json, br#"{"usage":{"input_tokens":12}} junk"#);
        assert_eq!((t.input, t.outcome), (Some(12), Outcome::Malformed));
        // An empty body, and a fresh stream.
        assert_eq!(scan(ScanMode::Json, b"").outcome, Outcome::Truncated);
        assert_eq!(scan(ScanMode::Sse, b"").outcome, Outcome::Complete);
    }

    #[test]
    fn nesting_is_bounded() {
        let nest = |n: usize| {
            format!(
                "{{\"content\":{}{},\"usage\":{{\"input_tokens\":8}}}}",
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let t = scan(ScanMode::Json, nest(MAX_DEPTH - 2).as_bytes());
        assert_eq!((t.input, t.outcome), (Some(8), Outcome::Complete));
        let t = scan(ScanMode::Json, nest(MAX_DEPTH).as_bytes());
        assert_eq!((t.input, t.outcome), (None, Outcome::Malformed));
        // Mismatched closers, after a value and right after the opener.
        for bad in [
            &b"{\"a\":1]"[..],
            b"[1}",
            b"{\"a\":[1}}",
            b"{\"a\":[}]",
            b"[{]}",
        ] {
            assert_eq!(scan(ScanMode::Json, bad).outcome, Outcome::Malformed);
        }
        let t = scan(
            ScanMode::Json,
            br#"{"c":[{"d":1]},"usage":{"input_tokens":8}}"#,
        );
        assert_eq!((t.input, t.outcome), (None, Outcome::Malformed));
    }

    #[test]
    fn the_mode_comes_from_the_head() {
        let mode =
            |h: &[(&str, &str)]| ScanMode::from_headers(h.iter().map(|(n, v)| (*n, v.as_bytes())));
        assert_eq!(
            mode(&[("content-type", "text/event-stream; charset=utf-8")]),
            ScanMode::Sse
        );
        assert_eq!(
            mode(&[("Content-Type", " Text/Event-Stream ")]),
            ScanMode::Sse
        );
        assert_eq!(
            mode(&[("content-type", "application/json")]),
            ScanMode::Json
        );
        assert_eq!(
            mode(&[
                ("Content-Type", "application/JSON;charset=UTF-8"),
                ("content-encoding", "identity"),
                ("transfer-encoding", "Chunked"),
            ]),
            ScanMode::Json
        );
        let ct = ScanMode::Unscanned(UnscannedReason::ContentType);
        let enc = ScanMode::Unscanned(UnscannedReason::Encoded);
        assert_eq!(mode(&[]), ct);
        assert_eq!(mode(&[("content-type", "text/plain")]), ct);
        assert_eq!(mode(&[("content-type", "application/jsonl")]), ct);
        assert_eq!(mode(&[("content-type", "text/event-streamx")]), ct);
        assert_eq!(
            mode(&[
                ("content-type", "application/json"),
                ("content-type", "text/html")
            ]),
            ct
        );
        assert_eq!(
            mode(&[
                ("content-type", "application/json"),
                ("content-type", "application/json")
            ]),
            ScanMode::Json
        );
        for (name, value) in [
            ("content-encoding", "gzip"),
            ("Content-Encoding", "identity, br"),
            ("content-encoding", "zstd"),
            ("transfer-encoding", "gzip, chunked"),
        ] {
            assert_eq!(
                mode(&[("content-type", "text/event-stream"), (name, value)]),
                enc,
                "{value}"
            );
        }
        let mut off = UsageScanner::new(enc);
        off.feed(MOCK_SSE.as_bytes());
        assert_eq!(
            off.usage(),
            Usage::Unscanned {
                reason: UnscannedReason::Encoded
            }
        );
        assert_eq!(UnscannedReason::Encoded.to_string(), "encoded");
    }

    /// Counts heap allocations made by the current thread, for the no-allocation check.
    mod alloc_count {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static COUNT: Cell<usize> = const { Cell::new(0) };
        }

        pub fn count() -> usize {
            COUNT.try_with(Cell::get).unwrap_or(0)
        }

        struct Counting;

        // SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
        // const-initialised thread-local Cell, which never allocates or registers a destructor.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = COUNT.try_with(|c| c.set(c.get() + 1));
                // SAFETY: the caller's contract for `alloc` is passed on as is.
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: `ptr` came from `System.alloc` above with this layout.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        #[global_allocator]
        static GLOBAL: Counting = Counting;
    }

    /// The known-name shortcut takes exactly the lines it names, whole, and nothing longer,
    /// shorter or cut; the stream gives what the general steps give (byte by byte).
    #[test]
    fn known_event_lines_are_taken_exactly() {
        for (k, named) in KNOWN_EVENTS {
            let name = std::str::from_utf8(k).unwrap();
            // The type the table gives is the one the general steps read from the name.
            assert_eq!(named, EventType::of_name(Some(k)), "{name}");
            for end in ["\n", "\r", "\r\n"] {
                let line = format!("event: {name}{end}data: x");
                let want = Some((7 + k.len(), named));
                assert_eq!(known_event_line(line.as_bytes()), want, "{line:?}");
            }
            for other in [
                format!("event: {name}x\n"),
                format!("event: {name}"),
                format!("event:{name}\n"),
                format!("event:  {name}\n"),
                format!("event: {}\n", &name[..name.len() - 1]),
            ] {
                assert_eq!(known_event_line(other.as_bytes()), None, "{other:?}");
            }
        }
        let t = scan_all_ways(ScanMode::Sse, MOCK_SSE.as_bytes());
        assert_eq!(
            figures(&t),
            (
                Some("claude-sonnet-4-5"),
                [Some(12), Some(7), Some(0), Some(0)]
            )
        );
        // An event named message_delta whose data says otherwise does not count.
        let body = "event: message_delta\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\n\n";
        assert_eq!(scan_all_ways(ScanMode::Sse, body.as_bytes()).input, None);
    }

    /// A whole event named for a type without usage is passed in one step exactly to the end
    /// of its blank line; anything else (a type with usage, a CR, a cut, an unknown name) is
    /// left to the general steps; and a stream gives what the general steps give.
    #[test]
    fn whole_ignored_events_are_passed_exactly() {
        let ev = "event: content_block_delta\ndata: {\"type\":\"x\"}\nid: 7\n\n";
        let mut s = ev.to_string();
        s.push_str("event: ping\n");
        assert_eq!(whole_ignored_event(s.as_bytes()), Some(ev.len()));
        let ping = "event: ping\n\n";
        assert_eq!(whole_ignored_event(ping.as_bytes()), Some(ping.len()));
        // Any line ends, the blank line's whole: CR LF, a lone CR (then the next event's
        // first byte), mixed.
        for (whole, then) in [
            (
                "event: content_block_delta\r\ndata: {}\r\n\r\n",
                "event: ping",
            ),
            ("event: content_block_delta\ndata: {}\r\n\r\n", ""),
            ("event: content_block_delta\ndata: {}\n\r\n", "data"),
            ("event: content_block_delta\rdata: {}\r\r", "event: ping"),
            ("event: ping\r\n\n", "\n"),
        ] {
            let s = format!("{whole}{then}");
            assert_eq!(
                whole_ignored_event(s.as_bytes()),
                Some(whole.len()),
                "{s:?}"
            );
        }
        for other in [
            "event: message_start\ndata: {}\n\n",
            "event: message_delta\ndata: {}\n\n",
            "event: content_block_delta\ndata: {}\r\n\r",
            "event: content_block_delta\r",
            "event: content_block_delta\ndata: {}\r",
            "event: content_block_delta\ndata: {}\n",
            "event: content_block_delta\ndata: {}",
            "event: content_block_delta",
            "event: content_block_deltas\ndata: {}\n\n",
            "event:ping\n\n",
            "data: {}\n\n",
        ] {
            assert_eq!(whole_ignored_event(other.as_bytes()), None, "{other:?}");
        }
        // Ignored events around one that counts, the counted one after an `id:` line and a
        // ping that is not first in its event: the same figures whole, split and by bytes.
        let crlf = ev.replace('\n', "\r\n");
        let body = format!(
            "{ev}{ping}id: 1\nevent: message_start\ndata: {}\n\nid: 2\nevent: ping\n\n{crlf}{ev}",
            r#"{"type":"message_start","message":{"model":"m","usage":{"input_tokens":5}}}"#
        );
        let t = scan_all_ways(ScanMode::Sse, body.as_bytes());
        assert_eq!(figures(&t), (Some("m"), [Some(5), None, None, None]));
        assert_eq!(t.outcome, Outcome::Complete);
    }

    /// A restarted scanner (one per proxy connection, reused request after request) reports
    /// only what the new body says, whatever the last one left half done.
    #[test]
    fn a_restarted_scanner_forgets_the_last_body() {
        let fresh = scan(ScanMode::Sse, MOCK_SSE.as_bytes());
        let json = br#"{"model":"m","usage":{"input_tokens":7,"output_tokens":8}}"#;
        for (mode, before) in [
            (ScanMode::Sse, NEWER_SSE.as_bytes()),
            (ScanMode::Sse, &NEWER_SSE.as_bytes()[..NEWER_SSE.len() / 2]),
            (ScanMode::Sse, &DOCS_SSE.as_bytes()[..200]),
            (ScanMode::Json, &json[..30]),
            (ScanMode::Unscanned(UnscannedReason::Encoded), &json[..]),
        ] {
            let mut s = UsageScanner::new(mode);
            s.feed(before);
            assert_ne!(s.usage(), Usage::Scanned(fresh), "fixture {mode:?}");
            s.restart(ScanMode::Sse);
            s.feed(MOCK_SSE.as_bytes());
            assert_eq!(s.usage(), Usage::Scanned(fresh), "after {mode:?}");
            s.restart(ScanMode::Json);
            s.feed(json);
            assert_eq!(s.usage(), Usage::Scanned(scan(ScanMode::Json, json)));
            s.restart(ScanMode::Unscanned(UnscannedReason::ContentType));
            assert_eq!(
                s.usage(),
                Usage::Unscanned {
                    reason: UnscannedReason::ContentType
                }
            );
        }
    }

    #[test]
    fn scanning_never_allocates_and_stays_small() {
        let mut sse = MOCK_SSE.repeat(200).into_bytes();
        sse.extend_from_slice(NEWER_SSE.as_bytes());
        let json = format!(
            "{{\"content\":[{}],\"model\":\"m\",\"usage\":{{\"input_tokens\":1}}}}",
            vec!["{\"text\":\"x\\u00e9\\\"\",\"n\":[1.5e3,-2,null,true]}"; 500].join(",")
        );
        let before = alloc_count::count();
        let mut s = UsageScanner::new(ScanMode::Sse);
        for piece in sse.chunks(7) {
            s.feed(piece);
        }
        let sse_usage = s.usage();
        let mut j = UsageScanner::new(ScanMode::Json);
        for piece in json.as_bytes().chunks(13) {
            j.feed(piece);
        }
        let json_usage = j.usage();
        assert_eq!(alloc_count::count(), before, "the scanner allocated");
        // And the scans really ran (the count check is not vacuous).
        let Usage::Scanned(t) = sse_usage else {
            panic!()
        };
        assert_eq!(
            (t.input, t.output, t.outcome),
            (Some(850), Some(47), Outcome::Complete)
        );
        let Usage::Scanned(t) = json_usage else {
            panic!()
        };
        assert_eq!((t.input, t.outcome), (Some(1), Outcome::Complete));
        assert!(
            std::mem::size_of::<UsageScanner>() <= 1024,
            "{} bytes per in-flight response",
            std::mem::size_of::<UsageScanner>()
        );
    }

    #[test]
    fn harness_runs_on_the_fixtures() {
        for fixture in [DOCS_SSE, MOCK_SSE, NEWER_SSE] {
            for ctl in [0u8, 2, 14, 254] {
                fuzz_harness(&[&[ctl][..], fixture.as_bytes()].concat());
            }
        }
        fuzz_harness(b"\x01{\"usage\":{\"input_tokens\":1}}");
        fuzz_harness(b"");
    }
}

#[cfg(test)]
mod props {
    //! Generated bodies against an oracle that evaluates the policy on the value tree the body
    //! was rendered from (not on the text), plus garbage and mutations that must never panic.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum J {
        Null,
        Bool(bool),
        Count(u64),
        /// Valid JSON numbers that are not token counts.
        NotCount(&'static str),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    const KEYS: [&str; 4] = [
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ];

    fn get<'a>(o: &'a [(String, J)], key: &str) -> Option<&'a J> {
        o.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn counts(v: Option<&J>) -> [Option<u64>; 4] {
        match v {
            Some(J::Obj(o)) => KEYS.map(|k| match get(o, k) {
                Some(J::Count(n)) => Some(*n),
                _ => None,
            }),
            _ => [None; 4],
        }
    }

    fn model(v: Option<&J>) -> Option<String> {
        let Some(J::Str(s)) = v else { return None };
        let mut m: String = s
            .chars()
            .map(|c| if ('!'..='~').contains(&c) { c } else { '?' })
            .collect();
        m.truncate(MODEL_CAP);
        Some(m)
    }

    type Expect = (Option<String>, [Option<u64>; 4]);

    fn expect_doc(doc: &J) -> Expect {
        match doc {
            J::Obj(o) => (model(get(o, "model")), counts(get(o, "usage"))),
            _ => (None, [None; 4]),
        }
    }

    fn expect_sse(events: &[(Option<String>, J)]) -> Expect {
        let (mut m, mut start, mut delta) = (None, [None; 4], [None; 4]);
        let merge = |dst: &mut [Option<u64>; 4], src: [Option<u64>; 4]| {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.or(*d);
            }
        };
        for (name, data) in events {
            let J::Obj(o) = data else { continue };
            let Some(J::Str(ty)) = get(o, "type") else {
                continue;
            };
            let name = name.as_deref().filter(|n| !n.is_empty() && *n != "message");
            if name.is_some_and(|n| n != ty) {
                continue;
            }
            match ty.as_str() {
                "message_start" => {
                    let msg = match get(o, "message") {
                        Some(J::Obj(msg)) => &msg[..],
                        _ => &[],
                    };
                    if let Some(x) = model(get(msg, "model")) {
                        m = Some(x);
                    }
                    merge(&mut start, counts(get(msg, "usage")));
                }
                "message_delta" => merge(&mut delta, counts(get(o, "usage"))),
                _ => {}
            }
        }
        let mut out = [None; 4];
        for i in 0..4 {
            out[i] = delta[i].or(start[i]);
        }
        (m, out)
    }

    /// Renders JSON text; `rng` picks escapes (any character may be written as `\uXXXX`) and
    /// `pretty` puts newlines between tokens, so SSE data can be split into several lines.
    struct Render {
        rng: u64,
        pretty: bool,
        out: String,
    }

    impl Render {
        fn coin(&mut self, one_in: u64) -> bool {
            self.rng = self
                .rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.rng >> 33).is_multiple_of(one_in)
        }

        fn gap(&mut self) {
            if self.pretty {
                self.out.push('\n');
                if self.coin(2) {
                    self.out.push_str("  ");
                }
            } else if self.coin(4) {
                let c = if self.coin(2) { ' ' } else { '\t' };
                self.out.push(c);
            }
        }

        fn string(&mut self, s: &str) {
            self.out.push('"');
            for c in s.chars() {
                match c {
                    '"' => self.out.push_str("\\\""),
                    '\\' => self.out.push_str("\\\\"),
                    '\n' => self.out.push_str("\\n"),
                    '/' if self.coin(3) => self.out.push_str("\\/"),
                    c if (c as u32) < 0x20 || self.coin(6) => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            let hex = format!("\\u{:04x}", u);
                            let hex = if self.coin(2) {
                                hex.to_uppercase().replace("\\U", "\\u")
                            } else {
                                hex
                            };
                            self.out.push_str(&hex);
                        }
                    }
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }

        fn value(&mut self, v: &J) {
            match v {
                J::Null => self.out.push_str("null"),
                J::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
                J::Count(n) => self.out.push_str(&n.to_string()),
                J::NotCount(t) => self.out.push_str(t),
                J::Str(s) => self.string(s),
                J::Arr(items) => {
                    self.out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            self.out.push(',');
                        }
                        self.gap();
                        self.value(item);
                    }
                    self.gap();
                    self.out.push(']');
                }
                J::Obj(entries) => {
                    self.out.push('{');
                    for (i, (k, item)) in entries.iter().enumerate() {
                        if i > 0 {
                            self.out.push(',');
                        }
                        self.gap();
                        self.string(k);
                        self.out.push(':');
                        if self.coin(3) {
                            self.out.push(' ');
                        }
                        self.value(item);
                    }
                    self.gap();
                    self.out.push('}');
                }
            }
        }
    }

    fn render(v: &J, rng: u64, pretty: bool) -> String {
        let mut r = Render {
            rng,
            pretty,
            out: String::new(),
        };
        r.value(v);
        r.out
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("usage".to_string()),
            Just("\"usage\":{\"input_tokens\":1}".to_string()),
            Just("\\".to_string()),
            Just("data: {\"type\":\"message_delta\"}\n\n".to_string()),
            Just("message_start".to_string()),
            Just("message_delta".to_string()),
            Just("claude-sonnet-4-5".to_string()),
            Just("a b\u{e9}\u{1F600}\u{0}\u{1f}".to_string()),
            Just("x".repeat(MODEL_CAP + 3)),
            "\\PC{0,12}",
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "usage", "model", "type", "message", "input_tokens", "output_tokens",
                "cache_read_input_tokens", "cache_creation_input_tokens", "content", "delta",
            ])
            .prop_map(String::from),
            1 => text(),
        ]
    }

    fn leaf() -> impl Strategy<Value = J> {
        prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            prop_oneof![0u64..100, Just(u64::MAX), any::<u64>()].prop_map(J::Count),
            prop::sample::select(vec![
                "-1",
                "-0",
                "1.5",
                "0.0",
                "2e3",
                "1E+2",
                "5e-1",
                "18446744073709551616",
                "99999999999999999999999",
            ])
            .prop_map(J::NotCount),
            text().prop_map(J::Str),
        ]
    }

    fn tree() -> impl Strategy<Value = J> {
        leaf().prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                prop::collection::vec((key(), inner), 0..6).prop_map(J::Obj),
            ]
        })
    }

    /// A usage object: mostly counts, sometimes not, with unknown and nested fields.
    fn usage() -> impl Strategy<Value = J> {
        let field = prop_oneof![
            4 => (prop::sample::select(KEYS.to_vec()), prop_oneof![4 => (0u64..1_000_000).prop_map(J::Count), 1 => leaf()]),
            1 => (prop::sample::select(vec!["server_tool_use", "cache_creation", "service_tier"]), tree()),
        ]
        .prop_map(|(k, v)| (k.to_string(), v));
        prop_oneof![
            6 => prop::collection::vec(field, 0..7).prop_map(J::Obj),
            1 => tree(),
        ]
    }

    fn entry(k: &'static str, v: impl Strategy<Value = J>) -> impl Strategy<Value = (String, J)> {
        v.prop_map(move |v| (k.to_string(), v))
    }

    fn model_value() -> impl Strategy<Value = J> {
        prop_oneof![5 => text().prop_map(J::Str), 1 => leaf()]
    }

    /// A non-streaming reply: the interesting keys (sometimes twice), a content array with
    /// lookalikes, and noise, in any order.
    fn document() -> impl Strategy<Value = J> {
        prop::collection::vec(
            prop_oneof![
                entry("model", model_value()),
                entry("usage", usage()),
                entry(
                    "content",
                    prop::collection::vec(tree(), 0..4).prop_map(J::Arr)
                ),
                (key(), tree()),
            ],
            0..7,
        )
        .prop_map(J::Obj)
    }

    fn event_type() -> impl Strategy<Value = J> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "message_start", "message_delta", "ping", "content_block_delta", "message_stop",
            ])
            .prop_map(|t| J::Str(t.to_string())),
            1 => leaf(),
        ]
    }

    /// One event's data and `event:` name.
    fn event() -> impl Strategy<Value = (Option<String>, J)> {
        let message = prop::collection::vec(
            prop_oneof![
                entry("model", model_value()),
                entry("usage", usage()),
                entry("content", tree()),
                (key(), tree()),
            ],
            0..6,
        )
        .prop_map(J::Obj);
        let data = prop::collection::vec(
            prop_oneof![
                3 => entry("type", event_type()),
                2 => entry("message", prop_oneof![4 => message, 1 => tree()]),
                2 => entry("usage", usage()),
                1 => (key(), tree()),
            ],
            0..6,
        )
        .prop_map(J::Obj);
        let name = prop_oneof![
            3 => Just(None),
            1 => prop::sample::select(vec![
                "", "message", "message_start", "message_delta", "ping", "message_start_and_more",
                "content_block_delta",
            ])
            .prop_map(|n| Some(n.to_string())),
        ];
        (name, prop_oneof![8 => data, 1 => tree()])
    }

    /// SSE framing choices.
    #[derive(Clone, Debug)]
    struct Framing {
        /// 0 LF, 1 CRLF, 2 CR, 3 mixed.
        eol: u8,
        space: bool,
        pretty: bool,
        comments: bool,
        bom: bool,
        rng: u64,
    }

    fn framing() -> impl Strategy<Value = Framing> {
        (
            0u8..4,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(|(eol, space, pretty, comments, bom, rng)| Framing {
                eol,
                space,
                pretty,
                comments,
                bom,
                rng,
            })
    }

    fn render_sse(events: &[(Option<String>, J)], f: &Framing) -> String {
        let mut out = String::new();
        let mut rng = f.rng;
        let mut last_cr = false;
        let mut roll = |n: u64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        // An empty line after a CR must not end in a lone LF: that would be the CR's CRLF.
        let mut line = |out: &mut String, text: &str, roll: &mut dyn FnMut(u64) -> u64| {
            out.push_str(text);
            let mut e = if f.eol == 3 { roll(3) as u8 } else { f.eol };
            if text.is_empty() && last_cr && e == 0 {
                e = 1;
            }
            out.push_str(["\n", "\r\n", "\r"][e as usize]);
            last_cr = e == 2;
        };
        if f.bom {
            out.push('\u{feff}');
        }
        for (i, (name, data)) in events.iter().enumerate() {
            if f.comments {
                line(&mut out, ": keep-alive", &mut roll);
            }
            if let Some(n) = name {
                line(
                    &mut out,
                    &format!("event:{}{n}", if f.space { " " } else { "" }),
                    &mut roll,
                );
            }
            if f.comments && i % 2 == 0 {
                line(&mut out, "id: 1", &mut roll);
            }
            let json = render(data, f.rng ^ i as u64, f.pretty);
            for l in json.split('\n') {
                line(
                    &mut out,
                    &format!("data:{}{l}", if f.space { " " } else { "" }),
                    &mut roll,
                );
            }
            line(&mut out, "", &mut roll);
        }
        out
    }

    fn check(
        mode: ScanMode,
        body: &[u8],
        cuts: &[usize],
        want: &Expect,
    ) -> Result<(), TestCaseError> {
        let mut s = UsageScanner::new(mode);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut at = 0;
        for c in cuts {
            s.feed(&body[at..c]);
            at = c;
        }
        s.feed(&body[at..]);
        let Usage::Scanned(t) = s.usage() else {
            return Err(TestCaseError::fail("not scanned"));
        };
        prop_assert_eq!(t.outcome, Outcome::Complete);
        prop_assert_eq!(t.model().map(String::from), want.0.clone());
        prop_assert_eq!([t.input, t.output, t.cache_read, t.cache_write], want.1);
        let mut whole = UsageScanner::new(mode);
        whole.feed(body);
        prop_assert_eq!(whole.usage(), s.usage());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn documents_give_what_the_oracle_says(
            doc in document(),
            rng in any::<u64>(),
            pretty in any::<bool>(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let body = render(&doc, rng, pretty);
            check(ScanMode::Json, body.as_bytes(), &cuts, &expect_doc(&doc))?;
        }

        #[test]
        fn streams_give_what_the_oracle_says(
            events in prop::collection::vec(event(), 0..8),
            f in framing(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let body = render_sse(&events, &f);
            check(ScanMode::Sse, body.as_bytes(), &cuts, &expect_sse(&events))?;
        }

        #[test]
        fn garbage_never_panics_and_agrees_with_splits(
            data in prop::collection::vec(any::<u8>(), 0..400),
        ) {
            fuzz_harness(&data);
        }

        #[test]
        fn mutated_bodies_never_panic_and_agree_with_splits(
            events in prop::collection::vec(event(), 1..4),
            f in framing(),
            ctl in any::<u8>(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let mut body = render_sse(&events, &f).into_bytes();
            if ctl & 1 == 1 {
                body = render(&events[0].1, f.rng, f.pretty).into_bytes();
            }
            for (at, byte, op) in edits {
                let at = at % (body.len() + 1);
                match op {
                    0 => body.insert(at, byte),
                    1 if at < body.len() => { body.remove(at); }
                    _ if at < body.len() => body[at] = byte,
                    _ => body.push(byte),
                }
            }
            fuzz_harness(&[&[ctl][..], &body].concat());
        }
    }
}
