//! Response bodies as HTTP/1.1 delimits them (RFC 9112 §6.3, §7.1): by a
//! length, by chunks, or by the connection's end. Pure: bytes in a buffer
//! in, body data out, no I/O; data is split off the buffer without a copy.

use bytes::{Buf, Bytes, BytesMut};

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, a 1xx, 204 or 304.
    Empty,
    Length(u64),
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// Why a body could not be decoded. The connection is unusable afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk size line too long")]
    ChunkSizeTooLong,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("trailer section too large")]
    TrailersTooLarge,
    #[error("connection closed before the body ended")]
    Truncated,
}

/// What a decode step found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete piece: read more.
    NeedMore,
    /// The body has ended; what is left in the buffer is not part of it.
    Done,
}

/// Longest chunk-size line accepted (size, extensions, CRLF).
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted (trailers are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    /// Trailer lines, with how many bytes of them have gone by.
    Trailers(usize),
    UntilClose,
    Done,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of body still to come, when known exactly.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = n.min(buf.len() as u64);
                    let rest = n - take;
                    self.state = if rest == 0 { State::Done } else { State::Length(rest) };
                    return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, DecodeError::ChunkSizeTooLong)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = n.min(buf.len() as u64);
                    let rest = n - take;
                    self.state = if rest == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(rest)
                    };
                    return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                }
                State::ChunkDataEnd => {
                    match buf.first() {
                        None => return Ok(Decoded::NeedMore),
                        Some(b'\n') => buf.advance(1),
                        Some(b'\r') => match buf.get(1) {
                            None => return Ok(Decoded::NeedMore),
                            Some(b'\n') => buf.advance(2),
                            Some(_) => return Err(DecodeError::ChunkEnd),
                        },
                        Some(_) => return Err(DecodeError::ChunkEnd),
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let room = MAX_TRAILERS.saturating_sub(seen);
                    let Some(line) = take_line(buf, room, DecodeError::TrailersTooLarge)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.state = if line.is_empty() {
                        State::Done
                    } else {
                        State::Trailers(seen + line.len() + 2)
                    };
                }
            }
        }
    }

    /// The connection ended: fine only for a body delimited by its end.
    pub fn eof(&mut self) -> Result<(), DecodeError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(DecodeError::Truncated),
        }
    }
}

/// Splits one line (without its CRLF or bare LF) off the front of `buf`, or
/// `None` when no line end has arrived yet; a line longer than `max` fails.
fn take_line(buf: &mut BytesMut, max: usize, too_long: DecodeError) -> Result<Option<BytesMut>, DecodeError> {
    match buf.iter().take(max.saturating_add(2)).position(|&b| b == b'\n') {
        Some(end) => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.len() > max {
                return Err(too_long);
            }
            Ok(Some(line))
        }
        None if buf.len() > max.saturating_add(1) => Err(too_long),
        None => Ok(None),
    }
}

/// The size of a chunk from its line: hex digits, then optional
/// whitespace and `;extensions`, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(DecodeError::ChunkSize);
    }
    let rest = &line[digits..];
    let rest = &rest[rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(DecodeError::ChunkSize);
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(digit))
            .ok_or(DecodeError::ChunkSize)?;
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes all of `input` (fed in pieces of `step` bytes) to the body
    /// and what is left after it.
    fn run(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>, bool), DecodeError> {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Done => {
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&input[fed..]);
                    return Ok((body, rest, true));
                }
                Decoded::NeedMore if fed < input.len() => {
                    let end = (fed + step.max(1)).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
                Decoded::NeedMore => {
                    decoder.eof()?;
                    return Ok((body, buf.to_vec(), false));
                }
            }
        }
    }

    #[test]
    fn length_stops_at_the_length_and_leaves_the_rest() {
        let (body, rest, done) = run(Framing::Length(5), b"helloHTTP/1.1", 3).unwrap();
        assert_eq!(
            (body.as_slice(), rest.as_slice(), done),
            (&b"hello"[..], &b"HTTP/1.1"[..], true)
        );
        assert_eq!(run(Framing::Length(10), b"short", 2), Err(DecodeError::Truncated));
    }

    #[test]
    fn chunked_with_extensions_trailers_and_bare_lf() {
        let input = b"5;name=v\r\nhello\r\n6 \r\n world\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 7, 100] {
            let (body, rest, done) = run(Framing::Chunked, input, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            assert_eq!(rest, b"NEXT");
            assert!(done);
        }
    }

    #[test]
    fn chunked_rejects_what_could_smuggle_or_overflow() {
        for bad in [
            &b"x\r\n"[..],
            b"-1\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5 junk\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
        ] {
            assert!(
                run(Framing::Chunked, bad, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b'1'; 5000];
        assert_eq!(run(Framing::Chunked, &long, 1000), Err(DecodeError::ChunkSizeTooLong));
        assert_eq!(run(Framing::Chunked, b"5\r\nhel", 100), Err(DecodeError::Truncated));
    }

    #[test]
    fn until_close_ends_at_eof_and_empty_is_done_at_once() {
        let (body, _, done) = run(Framing::UntilClose, b"all of it", 4).unwrap();
        assert_eq!((body.as_slice(), done), (&b"all of it"[..], false));
        let mut decoder = Decoder::new(Framing::Empty);
        assert!(decoder.is_done());
        assert_eq!(decoder.decode(&mut BytesMut::from(&b"x"[..])), Ok(Decoded::Done));
    }

    proptest! {
        #[test]
        fn chunked_round_trips_any_chunks_fed_in_any_steps(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 0..8),
            step in 1usize..40,
        ) {
            let mut input = Vec::new();
            for chunk in &chunks {
                input.extend_from_slice(format!("{:X}\r\n", chunk.len()).as_bytes());
                input.extend_from_slice(chunk);
                input.extend_from_slice(b"\r\n");
            }
            input.extend_from_slice(b"0\r\n\r\n");
            let (body, rest, done) = run(Framing::Chunked, &input, step).unwrap();
            prop_assert_eq!(body, chunks.concat());
            prop_assert!(rest.is_empty() && done);
        }

        #[test]
        fn chunked_never_panics_on_garbage(input in proptest::collection::vec(any::<u8>(), 0..200), step in 1usize..20) {
            let _ = run(Framing::Chunked, &input, step);
        }
    }
}
