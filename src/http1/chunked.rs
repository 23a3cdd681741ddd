//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly: a size
//! line of hex digits, optional whitespace and extensions, then CRLF; the
//! data and its CRLF; after the last (zero) chunk, a trailer section ended
//! by an empty line. Extensions and trailers are bounded, checked and
//! dropped. Anything out of shape (a bare LF, a size that is not hex or
//! overflows, a missing CRLF, an overlong line) is an error, never a
//! guess: whoever reads the same bytes differently could be handed a
//! smuggled message, and after such an error the connection's next message
//! cannot be found.
//!
//! Pure: bytes in a buffer in, body data out, no I/O; data is split off
//! the buffer without a copy, and the framing around it is read from the
//! buffer in one pass, without stepping the buffer byte by byte.

use bytes::{Buf, BytesMut};

use super::{Decoded, split_counted};

/// Most bytes of a chunk-size line before its CRLF: the size, whitespace
/// and extensions together.
pub const MAX_SIZE_LINE_BYTES: u32 = 4096;
/// Most bytes of the trailer section, its line ends included.
pub const MAX_TRAILER_BYTES: u32 = 16 * 1024;

/// Why a chunked body could not be decoded. The connection it came on
/// cannot be used afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size overflows")]
    SizeOverflow,
    #[error("chunk size line too long")]
    SizeLineTooLong,
    #[error("invalid chunk extension")]
    Extension,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("invalid trailer section")]
    Trailers,
    #[error("trailer section too large")]
    TrailersTooLarge,
}

/// A chunked body being decoded: where it is, between bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The hex size: its value so far, and the line's bytes so far (all
    /// digits, so none means no digit yet).
    Size {
        value: u64,
        line: u32,
    },
    /// Whitespace after the size (RFC 9112's BWS), before `;` or the CR.
    SizeSpace {
        value: u64,
        line: u32,
    },
    /// Inside the extensions, up to the CR.
    Extension {
        value: u64,
        line: u32,
    },
    /// The size line's CR was read; its LF must follow.
    SizeLf {
        value: u64,
    },
    /// Bytes left of the chunk's data.
    Data(u64),
    DataCr,
    DataLf,
    /// Inside the trailer section: at the start of a line or not, and its
    /// bytes so far.
    Trailer {
        line_start: bool,
        seen: u32,
    },
    /// The CR of a trailer line (`last`: of the empty line that ends them).
    TrailerLf {
        last: bool,
        seen: u32,
    },
    Done,
}

const FIRST_SIZE: State = State::Size { value: 0, line: 0 };

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: FIRST_SIZE }
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The whole body, trailers included, has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the next piece of the body from the front of `buf`, leaving
    /// what follows the body untouched. After the last data of a chunk,
    /// the framing already in `buf` is read too, so that when a body's end
    /// has arrived with its last data, `is_done` says so at once (an error
    /// found there comes with the next call).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        if !matches!(self.state, State::Data(_) | State::Done) {
            self.read_framing(buf)?;
        }
        match self.state {
            State::Done => Ok(Decoded::Done),
            State::Data(mut left) => {
                let Some(data) = split_counted(&mut left, buf) else {
                    return Ok(Decoded::NeedMore);
                };
                if left == 0 {
                    self.state = State::DataCr;
                    let _ = self.read_framing(buf);
                } else {
                    self.state = State::Data(left);
                }
                Ok(Decoded::Data(data))
            }
            _ => Ok(Decoded::NeedMore),
        }
    }

    /// Reads framing off the front of `buf` until a chunk's data or the
    /// body's end is reached, or `buf` runs out. On an error nothing is
    /// taken and the state stays as it was.
    fn read_framing(&mut self, buf: &mut BytesMut) -> Result<(), ChunkError> {
        let mut state = self.state;
        let mut used = 0;
        while used < buf.len() && !matches!(state, State::Data(_) | State::Done) {
            let (next, n) = read_part(state, &buf[used..])?;
            state = next;
            used += n;
        }
        self.state = state;
        buf.advance(used);
        Ok(())
    }
}

/// Reads what it can of the part of the framing `state` is in from the
/// front of `bytes` (not empty): a run of digits, whitespace, extension or
/// trailer text in one go, with the byte that ends it. Gives the state
/// after them and how many bytes that took.
fn read_part(state: State, bytes: &[u8]) -> Result<(State, usize), ChunkError> {
    match state {
        State::Size { mut value, line } => {
            for (i, &byte) in bytes.iter().enumerate() {
                let Some(digit) = hex(byte) else {
                    let line = size_line(line, i)?;
                    if line == 0 {
                        return Err(ChunkError::Size);
                    }
                    return Ok((after_size(value, line, byte)?, i + 1));
                };
                if value >> 60 != 0 {
                    return Err(ChunkError::SizeOverflow);
                }
                value = value << 4 | u64::from(digit);
            }
            Ok((
                State::Size {
                    value,
                    line: size_line(line, bytes.len())?,
                },
                bytes.len(),
            ))
        }
        State::SizeSpace { value, line } => {
            let n = bytes.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
            let line = size_line(line, n)?;
            match bytes.get(n) {
                None => Ok((State::SizeSpace { value, line }, n)),
                Some(&byte) => Ok((after_size(value, line, byte)?, n + 1)),
            }
        }
        State::Extension { value, line } => {
            let n = text_run(bytes);
            let line = size_line(line, n)?;
            match bytes.get(n) {
                None => Ok((State::Extension { value, line }, n)),
                Some(b'\r') => Ok((State::SizeLf { value }, n + 1)),
                // A bare LF or a control character could be read otherwise by someone else.
                Some(_) => Err(ChunkError::Extension),
            }
        }
        State::SizeLf { value } => match bytes[0] {
            b'\n' if value == 0 => Ok((
                State::Trailer {
                    line_start: true,
                    seen: 0,
                },
                1,
            )),
            b'\n' => Ok((State::Data(value), 1)),
            _ => Err(ChunkError::Size),
        },
        State::DataCr => match bytes {
            [b'\r', b'\n', ..] => Ok((FIRST_SIZE, 2)),
            [b'\r'] => Ok((State::DataLf, 1)),
            _ => Err(ChunkError::DataEnd),
        },
        State::DataLf => match bytes[0] {
            b'\n' => Ok((FIRST_SIZE, 1)),
            _ => Err(ChunkError::DataEnd),
        },
        State::Trailer { line_start, seen } => {
            let n = text_run(bytes);
            let seen = trailers(seen, n)?;
            let line_start = line_start && n == 0;
            match bytes.get(n) {
                None => Ok((State::Trailer { line_start, seen }, n)),
                Some(b'\r') => Ok((
                    State::TrailerLf {
                        last: line_start,
                        seen: trailers(seen, 1)?,
                    },
                    n + 1,
                )),
                Some(_) => Err(ChunkError::Trailers),
            }
        }
        State::TrailerLf { last, seen } => match bytes[0] {
            b'\n' => {
                let seen = trailers(seen, 1)?;
                let next = if last {
                    State::Done
                } else {
                    State::Trailer { line_start: true, seen }
                };
                Ok((next, 1))
            }
            _ => Err(ChunkError::Trailers),
        },
        // Data is split off in bulk, and Done reads nothing.
        State::Data(_) | State::Done => Ok((state, 0)),
    }
}

/// What may follow a chunk size: whitespace, extensions, the CR.
fn after_size(value: u64, line: u32, byte: u8) -> Result<State, ChunkError> {
    Ok(match byte {
        b' ' | b'\t' => State::SizeSpace {
            value,
            line: size_line(line, 1)?,
        },
        b';' => State::Extension {
            value,
            line: size_line(line, 1)?,
        },
        b'\r' => State::SizeLf { value },
        _ => return Err(ChunkError::Size),
    })
}

/// A size line of `line` bytes and `n` more, within its bound.
fn size_line(line: u32, n: usize) -> Result<u32, ChunkError> {
    within(line, n, MAX_SIZE_LINE_BYTES).ok_or(ChunkError::SizeLineTooLong)
}

/// A trailer section of `seen` bytes and `n` more, within its bound.
fn trailers(seen: u32, n: usize) -> Result<u32, ChunkError> {
    within(seen, n, MAX_TRAILER_BYTES).ok_or(ChunkError::TrailersTooLarge)
}

fn within(count: u32, n: usize, max: u32) -> Option<u32> {
    u32::try_from(n)
        .ok()
        .and_then(|n| count.checked_add(n))
        .filter(|&total| total <= max)
}

/// How many bytes at the front of `bytes` are field text (RFC 9110 §5.5:
/// HTAB, SP, visible ASCII, obs-text), what extensions and trailers hold.
fn text_run(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|&&b| b == b'\t' || (b >= b' ' && b != 0x7f))
        .count()
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `raw` fed in pieces of `step` bytes: the body and how many
    /// bytes of `raw` it took, or the error. Input that ends before the
    /// body does is `DataEnd`.
    fn decode_in_pieces(raw: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut decoder = ChunkedDecoder::new();
        match crate::http1::feed_in_pieces(raw, step, |buf| decoder.decode(buf))? {
            (body, Some(used)) => Ok((body, used)),
            (_, None) => Err(ChunkError::DataEnd),
        }
    }

    #[test]
    fn chunks_with_extensions_and_trailers_decode_however_they_arrive() {
        let raw = b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n1\t\r\n!\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\nNEXT";
        for step in [1, 2, 7, raw.len()] {
            let (body, used) = decode_in_pieces(raw, step).unwrap();
            assert_eq!(body, b"hello world!", "step {step}");
            assert_eq!(&raw[used..], b"NEXT", "step {step}");
        }
    }

    #[test]
    fn bad_chunk_framing_is_refused() {
        let cases: [(&[u8], ChunkError); 19] = [
            (b"x\r\n", ChunkError::Size),
            (b"\r\n", ChunkError::Size),
            (b"-1\r\n", ChunkError::Size),
            (b"+5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b" 5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"1 2\r\n", ChunkError::Size),
            (b"5 junk\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"10000000000000000\r\n", ChunkError::SizeOverflow),
            // A bare LF ends no line: not after the size, the data or a trailer.
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"5;a\nb\r\n", ChunkError::Extension),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::DataEnd),
            (b"0\r\nX: 1\n\r\n", ChunkError::Trailers),
            (b"0\r\n\n", ChunkError::Trailers),
            (b"5\r\nhello\r\n0\r\r\n", ChunkError::Size),
            (b"5\r\nhelloX\r\n", ChunkError::DataEnd),
            (b"5\r\nhelloXX0\r\n\r\n", ChunkError::DataEnd),
            (b"5;a\0b\r\n", ChunkError::Extension),
            (b"0\r\nX: \x01\r\n\r\n", ChunkError::Trailers),
        ];
        for (raw, expected) in cases {
            for step in [1, raw.len()] {
                assert_eq!(
                    decode_in_pieces(raw, step),
                    Err(expected),
                    "{:?} in pieces of {step}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
        // Leading zeros are still a valid (small) size.
        assert_eq!(
            decode_in_pieces(b"00000000000000000001\r\na\r\n0\r\n\r\n", 3)
                .unwrap()
                .0,
            b"a"
        );
    }

    #[test]
    fn endless_size_lines_and_trailers_are_bounded() {
        let max = MAX_SIZE_LINE_BYTES as usize;
        // A size of 1 with leading zeros, with whitespace, with an extension.
        let lines = [
            |n: usize| [vec![b'0'; n - 1], b"1".to_vec()].concat(),
            |n: usize| [b"1".to_vec(), vec![b' '; n - 1]].concat(),
            |n: usize| [b"1;".to_vec(), vec![b'a'; n - 2]].concat(),
        ];
        for line in lines {
            let mut raw = line(max);
            raw.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
            assert_eq!(decode_in_pieces(&raw, 512).unwrap().0, b"a", "{:?}", &raw[..8]);
            assert_eq!(decode_in_pieces(&line(max + 1), 512), Err(ChunkError::SizeLineTooLong));
        }
        // Trailers of exactly the bound, line ends included, and one byte more.
        let mut raw = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILER_BYTES / 8 - 1 {
            raw.extend_from_slice(b"X: abc\r\n");
        }
        raw.extend_from_slice(b"X: a\r\n\r\n");
        assert!(decode_in_pieces(&raw, 512).is_ok());
        raw.insert(raw.len() - 4, b'a');
        assert_eq!(decode_in_pieces(&raw, 512), Err(ChunkError::TrailersTooLarge));
    }

    #[test]
    fn the_end_is_known_with_the_last_data_when_it_is_there() {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nNEXT"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Data("abc".into())));
        assert!(decoder.is_done());
        assert_eq!(&buf[..], b"NEXT");
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Done));
        // A framing error after the data comes with the next call.
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"3\r\nabcXY"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Data("abc".into())));
        assert_eq!(decoder.decode(&mut buf), Err(ChunkError::DataEnd));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random input never panics, and never yields more data than it held.
        #[test]
        fn random_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..400), step in 1usize..50) {
            if let Ok((body, used)) = decode_in_pieces(&raw, step) {
                prop_assert!(body.len() <= used);
            }
        }

        /// Any well-formed encoding (hex in either case) decodes to exactly
        /// its data, however the bytes arrive, and leaves what follows
        /// untouched.
        #[test]
        fn encoded_bodies_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 0..8),
            upper in any::<bool>(),
            step in 1usize..64,
        ) {
            let mut raw = Vec::new();
            for c in &chunks {
                let size = if upper { format!("{:X}\r\n", c.len()) } else { format!("{:x}\r\n", c.len()) };
                raw.extend_from_slice(size.as_bytes());
                raw.extend_from_slice(c);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"0\r\n\r\nPOST /next");
            let (body, used) = decode_in_pieces(&raw, step).unwrap();
            prop_assert_eq!(body, chunks.concat());
            prop_assert_eq!(&raw[used..], b"POST /next");
        }

        /// Corrupting one framing byte of a valid body either fails or
        /// still decodes at most what the corrupted bytes hold: the decoder
        /// never reads past the end it was given into the next message.
        #[test]
        fn corruption_never_reads_past_the_end(
            data in proptest::collection::vec(any::<u8>(), 1..30),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut raw = format!("{:x}\r\n", data.len()).into_bytes();
            raw.extend_from_slice(&data);
            raw.extend_from_slice(b"\r\n0\r\n\r\n");
            let i = at.index(raw.len());
            raw[i] = byte;
            if let Ok((body, used)) = decode_in_pieces(&raw, 7) {
                prop_assert!(used <= raw.len());
                prop_assert!(body.len() < used);
            }
        }
    }
}
