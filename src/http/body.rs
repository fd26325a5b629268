//! Body framing: a state machine that tracks where a message body ends while the caller
//! forwards the original bytes unchanged. It never produces decoded bytes.

use super::request::BodyLength;

/// A malformed or oversized body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// The chunked encoding is malformed; says which part.
    BadChunk(&'static str),
    /// The body is larger than the limit given to [`BodyFramer::with_max`].
    TooLarge { max: u64 },
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FramingError::BadChunk(what) => write!(f, "malformed chunked body: {what}"),
            FramingError::TooLarge { max } => write!(f, "body larger than {max} bytes"),
        }
    }
}

/// Chunk extensions and trailer sections are bounded so a peer cannot make us scan forever
/// without making progress on the body; both stay far below the proxy's 64 KiB buffers, so an
/// incomplete line always fits while the framer waits for its end.
const MAX_CHUNK_EXT: u32 = 4096;
const MAX_TRAILERS: u32 = 16 * 1024;
/// Bytes of a trailer field name kept for the name check (longer names are none of ours).
const NAME_KEEP: usize = 24;

/// Where in a chunk-size line's extensions we are (RFC 9112 section 7.1.1:
/// `chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`,
/// `chunk-ext-val = token / quoted-string`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExtPos {
    /// After the size digits, in BWS: only `;` (or more BWS) may follow.
    AfterSize,
    /// After `;`, before the name.
    BeforeName,
    Name,
    /// After a name, in BWS: `=`, `;` or the end of the line.
    AfterName,
    /// After `=`, before the value.
    BeforeValue,
    Token,
    Quoted,
    /// After a backslash inside a quoted string.
    QuotedPair,
    /// After a value, in BWS: `;` or the end of the line.
    AfterValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits of a chunk size (`digits == 0`: at the start of the line).
    Size {
        value: u64,
        digits: u8,
    },
    /// Past the size digits: BWS and extensions, until CR.
    Ext {
        value: u64,
        at: ExtPos,
        len: u32,
    },
    /// Saw CR after the size line; LF must follow.
    SizeLf {
        value: u64,
    },
    /// Chunk data still to pass.
    Data {
        remaining: u64,
    },
    /// Chunk data ended; CR must follow.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart {
        total: u32,
    },
    /// In a trailer field name; the first bytes are kept, lowercased with `_` read as `-`.
    TrailerName {
        total: u32,
        name: [u8; NAME_KEEP],
        len: u8,
    },
    /// In a trailer field value.
    TrailerValue {
        total: u32,
    },
    TrailerLf {
        total: u32,
    },
    /// Saw the final CR; LF ends the body.
    EndLf,
}

impl Chunk {
    /// States at which every byte consumed so far belongs to a complete, validated unit (a
    /// whole size line, a whole trailer line, chunk data): the bytes before them may be
    /// forwarded. Inside a line nothing is released until the line is known to be valid.
    fn is_release_point(self) -> bool {
        matches!(
            self,
            Chunk::Size { digits: 0, .. }
                | Chunk::Data { .. }
                | Chunk::DataCr
                | Chunk::TrailerStart { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length {
        remaining: u64,
    },
    Chunked(Chunk),
    /// The body runs until the peer closes (responses only).
    UntilClose,
    Done,
}

/// Tracks one message body. Feed it the bytes that follow the head with [`advance`]; it
/// reports how many of them may be forwarded.
///
/// [`advance`]: BodyFramer::advance
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyFramer {
    state: State,
    max: Option<u64>,
    data_total: u64,
}

/// `tchar` (RFC 9110 section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `qdtext` (RFC 9110 section 5.6.4): HTAB, SP, VCHAR except `"` and `\`, obs-text.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}

/// A field-value byte: HTAB, SP, VCHAR, obs-text (no NUL or other control).
fn is_field_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff)
}

/// Field names a trailer may not carry (RFC 9110 section 6.5.1 and this proxy's own rules):
/// credentials, framing, routing and hop-by-hop fields, and content metadata a recipient
/// could apply to the body it already processed. `name` is lowercased with `_` as `-`, so
/// look-alikes count.
fn forbidden_trailer(name: &[u8], full_len: usize) -> bool {
    if name.starts_with(b"proxy-") {
        return true;
    }
    if full_len > name.len() {
        return false;
    }
    const NAMES: [&[u8]; 17] = [
        b"authorization",
        b"x-api-key",
        b"cookie",
        b"set-cookie",
        b"www-authenticate",
        b"content-length",
        b"transfer-encoding",
        b"content-encoding",
        b"content-type",
        b"content-range",
        b"host",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
    ];
    NAMES.contains(&name)
}

impl BodyFramer {
    pub fn none() -> BodyFramer {
        BodyFramer {
            state: State::Done,
            max: None,
            data_total: 0,
        }
    }

    pub fn length(n: u64) -> BodyFramer {
        let state = if n == 0 {
            State::Done
        } else {
            State::Length { remaining: n }
        };
        BodyFramer {
            state,
            max: None,
            data_total: 0,
        }
    }

    pub fn chunked() -> BodyFramer {
        BodyFramer {
            state: State::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            }),
            max: None,
            data_total: 0,
        }
    }

    pub fn until_close() -> BodyFramer {
        BodyFramer {
            state: State::UntilClose,
            max: None,
            data_total: 0,
        }
    }

    /// Limits the total chunk data (Content-Length is checked by the head parser).
    pub fn with_max(mut self, max: u64) -> BodyFramer {
        self.max = Some(max);
        self
    }

    pub fn from_request(body: BodyLength, max: u64) -> BodyFramer {
        match body {
            BodyLength::None => BodyFramer::none(),
            BodyLength::Length(n) => BodyFramer::length(n),
            BodyLength::Chunked => BodyFramer::chunked().with_max(max),
        }
    }

    /// True once the whole body (including a chunked trailer section) has passed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True when only the peer closing can end this body.
    pub fn is_until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Validates the body bytes at the start of `input` and returns how many of them may be
    /// forwarded now. A chunk-size line or trailer line is counted only once it is complete
    /// and valid, so a refused line never leaves in part. When the result is less than
    /// `input.len()`, either the body ended ([`is_done`](Self::is_done); the rest belongs to
    /// whatever follows) or the rest is the start of a line: call again with more bytes
    /// appended.
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        self.run(input, true, &mut |_| {})
    }

    /// [`advance`](Self::advance), also handing `on_data` the payload inside the released
    /// bytes, in order: for a chunked body only the chunk data (no size lines, no trailers),
    /// otherwise the body bytes themselves. Borrowed slices of `input`, never copied; each
    /// payload byte is handed over exactly once, since data is released as soon as it passes
    /// (an incomplete line that is fed again never holds data).
    pub fn advance_payload(
        &mut self,
        input: &[u8],
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, FramingError> {
        self.run(input, true, on_data)
    }

    /// Moves past `input`, a prefix of what [`advance`](Self::advance) has just released
    /// (when the writer took fewer bytes than released). Unlike `advance` it may stop inside
    /// a line, whose remaining bytes `advance` then checks again.
    pub fn skip_validated(&mut self, input: &[u8]) -> Result<(), FramingError> {
        let n = self.run(input, false, &mut |_| {})?;
        debug_assert_eq!(n, input.len(), "skip_validated past the body's end");
        Ok(())
    }

    fn run(
        &mut self,
        input: &[u8],
        release_whole_lines: bool,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, FramingError> {
        let mut cur = *self;
        let mut released = 0;
        let mut i = 0;
        while i < input.len() {
            match cur.state {
                State::Done => break,
                State::UntilClose => {
                    on_data(&input[i..]);
                    i = input.len();
                }
                State::Length { remaining } => {
                    let take = remaining.min((input.len() - i) as u64);
                    on_data(&input[i..i + take as usize]);
                    i += take as usize;
                    let left = remaining - take;
                    cur.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length { remaining: left }
                    };
                }
                State::Chunked(Chunk::Data { remaining }) => {
                    let take = remaining.min((input.len() - i) as u64);
                    on_data(&input[i..i + take as usize]);
                    i += take as usize;
                    let left = remaining - take;
                    cur.state = State::Chunked(if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data { remaining: left }
                    });
                }
                State::Chunked(c) => {
                    cur.state = cur.chunk_byte(c, input[i])?;
                    i += 1;
                }
            }
            let release = match cur.state {
                State::Chunked(c) => !release_whole_lines || c.is_release_point(),
                _ => true,
            };
            if release {
                *self = cur;
                released = i;
            }
        }
        Ok(released)
    }

    fn chunk_byte(&mut self, c: Chunk, b: u8) -> Result<State, FramingError> {
        use Chunk::*;
        let bad = |what| Err(FramingError::BadChunk(what));
        let next = match c {
            Size { value, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 16 {
                        return bad("chunk size too long");
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Size {
                        value: (value << 4) | d,
                        digits: digits + 1,
                    }
                }
                b';' | b' ' | b'\t' if digits > 0 => {
                    let at = if b == b';' {
                        ExtPos::BeforeName
                    } else {
                        ExtPos::AfterSize
                    };
                    Ext { value, at, len: 1 }
                }
                b'\r' if digits > 0 => SizeLf { value },
                _ => return bad("invalid chunk size line"),
            },
            Ext { value, at, len } => {
                if len >= MAX_CHUNK_EXT {
                    return bad("chunk extension too long");
                }
                let ws = b == b' ' || b == b'\t';
                let next = match (at, b) {
                    (ExtPos::Quoted, b'"') => ExtPos::AfterValue,
                    (ExtPos::Quoted, b'\\') => ExtPos::QuotedPair,
                    (ExtPos::Quoted, b) if is_qdtext(b) => ExtPos::Quoted,
                    (ExtPos::Quoted, b'\r') => {
                        return bad("unterminated quoted string in chunk extension");
                    }
                    (ExtPos::Quoted, _) => return bad("invalid byte in a quoted chunk extension"),
                    (ExtPos::QuotedPair, b) if is_field_byte(b) => ExtPos::Quoted,
                    (ExtPos::QuotedPair, _) => {
                        return bad("invalid quoted-pair in chunk extension");
                    }
                    // The line may end after a name or a value (or after BWS following them).
                    (
                        ExtPos::Name | ExtPos::AfterName | ExtPos::Token | ExtPos::AfterValue,
                        b'\r',
                    ) => {
                        return Ok(State::Chunked(SizeLf { value }));
                    }
                    (
                        ExtPos::Name
                        | ExtPos::AfterName
                        | ExtPos::Token
                        | ExtPos::AfterValue
                        | ExtPos::AfterSize,
                        b';',
                    ) => ExtPos::BeforeName,
                    (ExtPos::AfterSize | ExtPos::BeforeName | ExtPos::BeforeValue, _) if ws => at,
                    (ExtPos::Name | ExtPos::AfterName, _) if ws => ExtPos::AfterName,
                    (ExtPos::Token | ExtPos::AfterValue, _) if ws => ExtPos::AfterValue,
                    (ExtPos::BeforeName | ExtPos::Name, b) if is_tchar(b) => ExtPos::Name,
                    (ExtPos::Name | ExtPos::AfterName, b'=') => ExtPos::BeforeValue,
                    (ExtPos::BeforeValue, b'"') => ExtPos::Quoted,
                    (ExtPos::BeforeValue | ExtPos::Token, b) if is_tchar(b) => ExtPos::Token,
                    (_, b'\n') => return bad("bare LF in chunk size line"),
                    (_, b'\r') => return bad("chunk extension without a name or value"),
                    _ => return bad("chunk extension does not follow the RFC 9112 grammar"),
                };
                Ext {
                    value,
                    at: next,
                    len: len + 1,
                }
            }
            SizeLf { value } => {
                if b != b'\n' {
                    return bad("chunk size line not ended by CRLF");
                }
                if value == 0 {
                    TrailerStart { total: 0 }
                } else {
                    let total = self.data_total.saturating_add(value);
                    if let Some(max) = self.max
                        && total > max
                    {
                        return Err(FramingError::TooLarge { max });
                    }
                    self.data_total = total;
                    Data { remaining: value }
                }
            }
            Data { .. } => unreachable!("data bytes are taken in bulk by advance"),
            DataCr => {
                if b != b'\r' {
                    return bad("chunk data not followed by CRLF");
                }
                DataLf
            }
            DataLf => {
                if b != b'\n' {
                    return bad("chunk data not followed by CRLF");
                }
                Size {
                    value: 0,
                    digits: 0,
                }
            }
            TrailerStart { total } => match b {
                b'\r' => EndLf,
                b'\n' => return bad("bare LF in trailer section"),
                b' ' | b'\t' => return bad("obs-fold in trailer section"),
                b':' => return bad("trailer field without a name"),
                b if is_tchar(b) => {
                    let mut name = [0u8; NAME_KEEP];
                    name[0] = fold(b);
                    TrailerName {
                        total: total + 1,
                        name,
                        len: 1,
                    }
                }
                _ => return bad("invalid byte in a trailer field name"),
            },
            TrailerName { total, name, len } => {
                if total >= MAX_TRAILERS {
                    return bad("trailer section too long");
                }
                match b {
                    b':' => {
                        let kept = (len as usize).min(NAME_KEEP);
                        if forbidden_trailer(&name[..kept], len as usize) {
                            return bad(
                                "a trailer field that trailers may not carry (credential, \
                                 framing, routing, hop-by-hop or content metadata)",
                            );
                        }
                        TrailerValue { total: total + 1 }
                    }
                    b' ' | b'\t' => return bad("whitespace in or after a trailer field name"),
                    b'\r' | b'\n' => return bad("trailer line without a colon"),
                    b if is_tchar(b) => {
                        let mut name = name;
                        if (len as usize) < NAME_KEEP {
                            name[len as usize] = fold(b);
                        }
                        TrailerName {
                            total: total + 1,
                            name,
                            len: len.saturating_add(1),
                        }
                    }
                    _ => return bad("invalid byte in a trailer field name"),
                }
            }
            TrailerValue { total } => match b {
                _ if total >= MAX_TRAILERS => return bad("trailer section too long"),
                b'\r' => TrailerLf { total },
                b if is_field_byte(b) => TrailerValue { total: total + 1 },
                _ => return bad("control character in a trailer field value"),
            },
            TrailerLf { total } => {
                if b != b'\n' {
                    return bad("bare CR in trailer section");
                }
                TrailerStart { total }
            }
            EndLf => {
                if b != b'\n' {
                    return bad("chunked body not ended by CRLF");
                }
                return Ok(State::Done);
            }
        };
        Ok(State::Chunked(next))
    }
}

/// A name byte as the name check sees it: lowercase, `_` as `-`.
fn fold(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` as a socket would deliver it, in pieces of the given sizes, keeping what
    /// the framer did not release for the next call (as the proxy's buffer does). Returns the
    /// bytes released and whether the body ended, or the error.
    fn feed(
        mut f: BodyFramer,
        input: &[u8],
        pieces: &[usize],
    ) -> Result<(usize, bool), FramingError> {
        let (released, done, _) = feed_log(&mut f, input, pieces)?;
        Ok((released, done))
    }

    /// Like [`feed`], also returning the offsets at which bytes were released.
    fn feed_log(
        f: &mut BodyFramer,
        input: &[u8],
        pieces: &[usize],
    ) -> Result<(usize, bool, Vec<usize>), FramingError> {
        let mut released = 0;
        let mut arrived = 0;
        let mut marks = Vec::new();
        let mut sizes = pieces.iter().cycle();
        while arrived < input.len() && !f.is_done() {
            arrived += (*sizes.next().unwrap()).max(1).min(input.len() - arrived);
            let n = f.advance(&input[released..arrived])?;
            released += n;
            if n > 0 {
                marks.push(released);
            }
        }
        Ok((released, f.is_done(), marks))
    }

    /// Fed a byte at a time, `input` is refused as a malformed chunked body.
    fn assert_bad_chunk(input: &[u8]) {
        let r = feed(BodyFramer::chunked(), input, &[1]);
        assert!(
            matches!(r, Err(FramingError::BadChunk(_))),
            "{:?} -> {r:?}",
            String::from_utf8_lossy(input)
        );
    }

    const CHUNKED: &[u8] =
        b"5\r\nhello\r\n1A;name=\"v\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";

    #[test]
    fn chunked_end_found_whole_bytewise_and_split() {
        let mut input = CHUNKED.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for pieces in [&[usize::MAX][..], &[1], &[2, 3], &[7, 1, 13]] {
            assert_eq!(
                feed(BodyFramer::chunked(), &input, pieces),
                Ok((CHUNKED.len(), true)),
                "{pieces:?}"
            );
        }
    }

    #[test]
    fn length_body_ends_exactly() {
        let input = b"0123456789rest";
        for pieces in [&[usize::MAX][..], &[1], &[3]] {
            assert_eq!(feed(BodyFramer::length(10), input, pieces), Ok((10, true)));
        }
        let mut f = BodyFramer::length(10);
        assert_eq!(f.advance(b"0123"), Ok(4));
        assert!(!f.is_done());
        assert!(BodyFramer::length(0).is_done());
        assert!(BodyFramer::none().is_done());
    }

    #[test]
    fn until_close_takes_everything() {
        let mut f = BodyFramer::until_close();
        assert_eq!(f.advance(b"abc"), Ok(3));
        assert!(f.is_until_close() && !f.is_done());
    }

    #[test]
    fn malformed_chunked_is_refused() {
        let bad: &[&[u8]] = &[
            b"x\r\n",
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\r\r",
            b" 5\r\n",
            b"5 \r\n",
            b"-5\r\n",
            b"11111111111111111\r\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\n\rX",
            b"5;a\nb\r\n",
        ];
        for b in bad {
            assert_bad_chunk(b);
        }
    }

    #[test]
    fn chunked_size_limit() {
        let f = BodyFramer::chunked().with_max(8);
        assert_eq!(
            feed(f, b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n", &[4]),
            Ok((23, true))
        );
        assert_eq!(
            feed(f, b"5\r\nhello\r\n4\r\nabcd\r\n", &[4]),
            Err(FramingError::TooLarge { max: 8 })
        );
        assert_eq!(
            feed(f, b"ffffffffffffffff\r\n", &[4]),
            Err(FramingError::TooLarge { max: 8 })
        );
    }

    /// RFC 9112 section 7.1.1: token names, token or quoted-string values, BWS around `;`
    /// and `=`.
    #[test]
    fn chunk_extensions_follow_the_grammar() {
        let good: &[&[u8]] = &[
            b"5;a\r\n",
            b"5;a=b\r\n",
            b"5;a=b;c=d;e\r\n",
            b"5 ;a\r\n",
            b"5\t; a = b ; c\r\n",
            b"5;a=\"\"\r\n",
            b"5;a=\"v w;x=y\"\r\n",
            b"5;a=\"q\\\"uote\\\\\"\r\n",
            b"5;a=\"\xc3\xa9\"\r\n",
            b"5;n!#$%&'*+-.^_`|~=v!#$\r\n",
            b"5;a=b \r\n",
            b"5;a \r\n",
        ];
        for g in good {
            let mut line = g.to_vec();
            line.extend_from_slice(b"hello\r\n0\r\n\r\n");
            for pieces in [&[usize::MAX][..], &[1], &[3]] {
                assert_eq!(
                    feed(BodyFramer::chunked(), &line, pieces),
                    Ok((line.len(), true)),
                    "{:?} {pieces:?}",
                    String::from_utf8_lossy(g)
                );
            }
        }
        let bad: &[&[u8]] = &[
            b"5;a=\"unbalanced\r\n",
            b"5;a=\"x\"y\r\n",
            b"5;a=b c\r\n",
            b"5;a=\r\n",
            b"5;=b\r\n",
            b"5;\r\n",
            b"5;;a\r\n",
            b"5 \r\n",
            b"5 a\r\n",
            b"5;a b\r\n",
            b"5;a=b=c\r\n",
            b"5;a=\"\x01\"\r\n",
            b"5;a=\"\x7f\"\r\n",
            b"5;a=\"\\\x01\"\r\n",
            b"5;a\x00\r\n",
            b"5;a=(b)\r\n",
            b"5;a=b,c\r\n",
            b"5;a=\"x\r\n\"\r\n",
            b"5;a\rb\r\n",
            b"5;a\n",
        ];
        for b in bad {
            assert_bad_chunk(b);
            let r = feed(BodyFramer::chunked(), b, &[usize::MAX]);
            assert!(matches!(r, Err(FramingError::BadChunk(_))), "{b:?}");
        }
        let mut long = b"5;a=".to_vec();
        long.resize(4200, b'x');
        assert!(feed(BodyFramer::chunked(), &long, &[100]).is_err());
    }

    /// Issue 10 item 12: trailers follow the header field rules, and credential, framing and
    /// hop-by-hop fields (and their underscore look-alikes) are refused.
    #[test]
    fn trailers_follow_the_field_rules() {
        let good: &[&[u8]] = &[
            b"X-T: 1\r\n",
            b"X-T:1\r\n",
            b"X-Checksum: sha256=abc \t\r\n",
            b"A: 1\r\nB: \xc3\xa9\r\n",
            b"X-Empty:\r\n",
            b"Server-Timing: total;dur=1\r\n",
        ];
        for t in good {
            let mut body = b"0\r\n".to_vec();
            body.extend_from_slice(t);
            body.extend_from_slice(b"\r\n");
            for pieces in [&[usize::MAX][..], &[1]] {
                assert_eq!(
                    feed(BodyFramer::chunked(), &body, pieces),
                    Ok((body.len(), true)),
                    "{:?}",
                    String::from_utf8_lossy(t)
                );
            }
        }
        let session = "bottle-SESSION";
        let bad: Vec<Vec<u8>> = [
            "X-T: a\x00b",
            "X-T: a\x01b",
            "X-T: a\x7fb",
            "X-T: a\rb",
            "no colon here",
            "X-T : 1",
            "X-T\t: 1",
            ": 1",
            " X-T: 1",
            "\tX-T: 1",
            "GET /v1/models HTTP/1.1",
            "X(T): 1",
            "X-T\x00: 1",
            &format!("Authorization: Bearer {session}"),
            &format!("authorization: {session}"),
            &format!("x-api-key: {session}"),
            &format!("X_Api_Key: {session}"),
            "Proxy-Authorization: Basic eA==",
            "proxy_authorization: x",
            "Proxy-Anything: x",
            "Cookie: a=b",
            "Set-Cookie: a=b",
            "Content-Length: 5",
            "Content_Length: 5",
            "Transfer-Encoding: chunked",
            "TRANSFER_ENCODING: chunked",
            "Host: evil",
            "Connection: close",
            "Keep-Alive: 1",
            "TE: trailers",
            "Trailer: X",
            "Upgrade: h2c",
            "Content-Type: text/plain",
            "Content-Encoding: gzip",
        ]
        .iter()
        .map(|t| {
            let mut body = b"0\r\n".to_vec();
            body.extend_from_slice(t.as_bytes());
            body.extend_from_slice(b"\r\n\r\n");
            body
        })
        .collect();
        for b in &bad {
            let r = feed(BodyFramer::chunked(), b, &[1]);
            assert!(
                matches!(r, Err(FramingError::BadChunk(_))),
                "{:?} -> {r:?}",
                String::from_utf8_lossy(b)
            );
        }
        // A bare LF ends nothing: refused.
        assert!(feed(BodyFramer::chunked(), b"0\r\nX: 1\n\r\n", &[1]).is_err());
        let mut huge = b"0\r\nX: ".to_vec();
        huge.resize(17 * 1024, b'a');
        assert!(feed(BodyFramer::chunked(), &huge, &[512]).is_err());
    }

    /// Nothing of a line is released before the whole line is known to be valid: releases
    /// happen only at line boundaries and inside chunk data, and a refused trailer line
    /// releases none of its bytes, whatever the split.
    #[test]
    fn lines_are_released_whole() {
        let body = b"5;ext=\"v\"\r\nhello\r\n3\r\nabc\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n";
        // Ends of lines, and positions inside the two chunks' data (11..=16, 21..=24).
        let line_ends = [11, 18, 21, 26, 29, 37, 45, body.len()];
        let ok =
            |m: usize| line_ends.contains(&m) || (11..=16).contains(&m) || (21..=24).contains(&m);
        for pieces in [&[1usize][..], &[2], &[3, 5], &[7], &[usize::MAX]] {
            let mut f = BodyFramer::chunked();
            let (n, done, marks) = feed_log(&mut f, body, pieces).unwrap();
            assert_eq!((n, done), (body.len(), true), "{pieces:?}");
            for m in &marks {
                assert!(ok(*m), "released up to {m} with {pieces:?}");
            }
        }
        for bad_trailer in ["Authorization: Bearer x", "GET /v1/x HTTP/1.1", "X-T: \x01"] {
            let mut body = b"3\r\nabc\r\n0\r\n".to_vec();
            let before = body.len();
            body.extend_from_slice(bad_trailer.as_bytes());
            body.extend_from_slice(b"\r\n\r\n");
            for piece in 1..body.len() {
                let mut f = BodyFramer::chunked();
                let mut released = 0;
                let mut arrived = 0;
                let mut err = false;
                while arrived < body.len() {
                    arrived = (arrived + piece).min(body.len());
                    match f.advance(&body[released..arrived]) {
                        Ok(n) => released += n,
                        Err(_) => {
                            err = true;
                            break;
                        }
                    }
                    assert!(
                        released <= before,
                        "trailer bytes released: {bad_trailer:?}"
                    );
                }
                assert!(err, "{bad_trailer:?} accepted with pieces of {piece}");
            }
        }
    }

    /// A writer that takes only part of what was released: `skip_validated` moves the framer
    /// to that point, even inside a line, and the rest is released on the next call.
    #[test]
    fn partial_writes_inside_a_line() {
        let body = b"3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for take in 1..end {
            let mut f = BodyFramer::chunked();
            let mut pos = 0;
            let mut rounds = 0;
            while !f.is_done() {
                let mut probe = f;
                let avail = probe.advance(&body[pos..]).unwrap();
                let n = avail.min(take);
                if n == avail {
                    f = probe;
                } else {
                    f.skip_validated(&body[pos..pos + n]).unwrap();
                }
                pos += n;
                rounds += 1;
                assert!(rounds < 100, "no progress with take {take}");
            }
            assert_eq!(pos, end, "take {take}");
        }
    }

    /// Feeds `input` in pieces as [`feed_log`] does, collecting what `advance_payload` hands
    /// over; returns the payload and the bytes released.
    fn payload_of(mut f: BodyFramer, input: &[u8], pieces: &[usize]) -> (Vec<u8>, usize) {
        let mut payload = Vec::new();
        let (mut released, mut arrived) = (0, 0);
        let mut sizes = pieces.iter().cycle();
        while arrived < input.len() && !f.is_done() {
            arrived += (*sizes.next().unwrap()).max(1).min(input.len() - arrived);
            let n = f
                .advance_payload(&input[released..arrived], &mut |d| {
                    payload.extend_from_slice(d)
                })
                .unwrap();
            released += n;
        }
        (payload, released)
    }

    /// The payload is the chunk data only, each byte once, however the input is split; the
    /// released count is what `advance` releases (same framing).
    #[test]
    fn advance_payload_hands_over_exactly_the_chunk_data() {
        let mut input = CHUNKED.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for pieces in [&[usize::MAX][..], &[1], &[2, 3], &[7, 1, 13], &[4, 9]] {
            let (payload, released) = payload_of(BodyFramer::chunked(), &input, pieces);
            assert_eq!(
                String::from_utf8_lossy(&payload),
                "helloabcdefghijklmnopqrstuvwxyz",
                "{pieces:?}"
            );
            assert_eq!(released, CHUNKED.len(), "{pieces:?}");
        }
        for pieces in [&[usize::MAX][..], &[1], &[3]] {
            let (payload, released) = payload_of(BodyFramer::length(10), b"0123456789rest", pieces);
            assert_eq!((payload.as_slice(), released), (&b"0123456789"[..], 10));
            let (payload, _) = payload_of(BodyFramer::until_close(), b"to the end", pieces);
            assert_eq!(payload, b"to the end");
        }
    }
}
