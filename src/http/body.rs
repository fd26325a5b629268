//! Body framing: a state machine that tracks where a message body ends while the caller
//! forwards the original bytes unchanged. It never produces decoded bytes.

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
/// without making progress on the body.
const MAX_CHUNK_EXT: u32 = 4096;
const MAX_TRAILERS: u32 = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// Inside `;ext` after the size, until CR.
    Ext {
        value: u64,
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
    /// Inside a trailer line.
    Trailer {
        total: u32,
    },
    TrailerLf {
        total: u32,
    },
    /// Saw the final CR; LF ends the body.
    EndLf,
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
/// reports how many of them belong to the body.
///
/// [`advance`]: BodyFramer::advance
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyFramer {
    state: State,
    max: Option<u64>,
    data_total: u64,
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

    pub fn from_request(body: super::BodyLength, max: u64) -> BodyFramer {
        match body {
            super::BodyLength::None => BodyFramer::none(),
            super::BodyLength::Length(n) => BodyFramer::length(n),
            super::BodyLength::Chunked => BodyFramer::chunked().with_max(max),
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

    /// Consumes the body bytes at the start of `input` and returns how many there were. When
    /// the result is less than `input.len()`, the body ended and the rest belongs to whatever
    /// follows.
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::UntilClose => return Ok(input.len()),
                State::Length { remaining } => {
                    let take = remaining.min((input.len() - i) as u64);
                    i += take as usize;
                    let left = remaining - take;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length { remaining: left }
                    };
                }
                State::Chunked(Chunk::Data { remaining }) => {
                    let take = remaining.min((input.len() - i) as u64);
                    i += take as usize;
                    let left = remaining - take;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data { remaining: left }
                    });
                }
                State::Chunked(c) => {
                    self.state = self.chunk_byte(c, input[i])?;
                    i += 1;
                }
            }
        }
        Ok(i)
    }

    fn chunk_byte(&mut self, c: Chunk, b: u8) -> Result<State, FramingError> {
        use Chunk::*;
        let next = match c {
            Size { value, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 16 {
                        return Err(FramingError::BadChunk("chunk size too long"));
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Size {
                        value: (value << 4) | d,
                        digits: digits + 1,
                    }
                }
                b';' if digits > 0 => Ext { value, len: 0 },
                b'\r' if digits > 0 => SizeLf { value },
                _ => return Err(FramingError::BadChunk("invalid chunk size line")),
            },
            Ext { value, len } => match b {
                b'\r' => SizeLf { value },
                b'\n' => return Err(FramingError::BadChunk("bare LF in chunk extension")),
                b if (b < 0x20 && b != b'\t') || b == 0x7f => {
                    return Err(FramingError::BadChunk(
                        "control character in chunk extension",
                    ));
                }
                _ if len >= MAX_CHUNK_EXT => {
                    return Err(FramingError::BadChunk("chunk extension too long"));
                }
                _ => Ext {
                    value,
                    len: len + 1,
                },
            },
            SizeLf { value } => {
                if b != b'\n' {
                    return Err(FramingError::BadChunk("chunk size line not ended by CRLF"));
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
                    return Err(FramingError::BadChunk("chunk data not followed by CRLF"));
                }
                DataLf
            }
            DataLf => {
                if b != b'\n' {
                    return Err(FramingError::BadChunk("chunk data not followed by CRLF"));
                }
                Size {
                    value: 0,
                    digits: 0,
                }
            }
            TrailerStart { total } => match b {
                b'\r' => EndLf,
                b'\n' => return Err(FramingError::BadChunk("bare LF in trailer section")),
                b' ' | b'\t' => return Err(FramingError::BadChunk("obs-fold in trailer section")),
                _ => Trailer { total: total + 1 },
            },
            Trailer { total } => match b {
                _ if total >= MAX_TRAILERS => {
                    return Err(FramingError::BadChunk("trailer section too long"));
                }
                b'\r' => TrailerLf { total },
                b'\n' => return Err(FramingError::BadChunk("bare LF in trailer section")),
                _ => Trailer { total: total + 1 },
            },
            TrailerLf { total } => {
                if b != b'\n' {
                    return Err(FramingError::BadChunk("bare CR in trailer section"));
                }
                TrailerStart { total }
            }
            EndLf => {
                if b != b'\n' {
                    return Err(FramingError::BadChunk("chunked body not ended by CRLF"));
                }
                return Ok(State::Done);
            }
        };
        Ok(State::Chunked(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in the given piece sizes; returns total consumed, or the error.
    fn feed(
        mut f: BodyFramer,
        input: &[u8],
        pieces: &[usize],
    ) -> Result<(usize, bool), FramingError> {
        let mut pos = 0;
        let mut sizes = pieces.iter().cycle();
        while pos < input.len() {
            let n = (*sizes.next().unwrap()).max(1).min(input.len() - pos);
            let used = f.advance(&input[pos..pos + n])?;
            pos += used;
            if used < n {
                break;
            }
        }
        Ok((pos, f.is_done()))
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
            let r = feed(BodyFramer::chunked(), b, &[1]);
            assert!(
                matches!(r, Err(FramingError::BadChunk(_))),
                "{:?} -> {r:?}",
                String::from_utf8_lossy(b)
            );
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
}
