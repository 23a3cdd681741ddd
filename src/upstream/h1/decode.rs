//! Response bodies as HTTP/1.1 delimits them (RFC 9112 §6.3): by a length,
//! by chunks (decoded by `http1::chunked`, as the server codec decodes
//! request bodies), or by the connection's end. Pure: bytes in a buffer
//! in, body data out, no I/O; data is split off the buffer without a copy.

use bytes::BytesMut;

pub use crate::http1::Decoded;
use crate::http1::chunked::{ChunkError, ChunkedDecoder};
use crate::http1::split_counted;

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
    #[error("malformed chunked body")]
    Chunked(#[from] ChunkError),
    #[error("connection closed before the body ended")]
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
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
            Framing::Chunked => State::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
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
        match &mut self.state {
            State::Done => Ok(Decoded::Done),
            State::Length(left) => {
                let Some(data) = split_counted(left, buf) else {
                    return Ok(Decoded::NeedMore);
                };
                if *left == 0 {
                    self.state = State::Done;
                }
                Ok(Decoded::Data(data))
            }
            State::Chunked(chunked) => {
                let decoded = chunked.decode(buf)?;
                // Its end may be read with its last data: known at once.
                if chunked.is_done() {
                    self.state = State::Done;
                }
                Ok(decoded)
            }
            State::UntilClose if buf.is_empty() => Ok(Decoded::NeedMore),
            State::UntilClose => Ok(Decoded::Data(buf.split().freeze())),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes all of `input` (fed in pieces of `step` bytes, then the
    /// connection's end) to the body, what is left after it, and whether
    /// the body ended before the connection did.
    fn run(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>, bool), DecodeError> {
        let mut decoder = Decoder::new(framing);
        match crate::http1::feed_in_pieces(input, step, |buf| decoder.decode(buf))? {
            (body, Some(used)) => Ok((body, input[used..].to_vec(), true)),
            (body, None) => {
                decoder.eof()?;
                Ok((body, Vec::new(), false))
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
    fn chunked_ends_at_its_last_chunk_and_fails_when_cut_or_malformed() {
        let input = b"5;name=v\r\nhello\r\n6 \r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for step in [1, 7, 100] {
            let (body, rest, done) = run(Framing::Chunked, input, step).unwrap();
            assert_eq!(
                (body.as_slice(), rest.as_slice(), done),
                (&b"hello world"[..], &b"NEXT"[..], true)
            );
        }
        assert_eq!(run(Framing::Chunked, b"5\r\nhel", 100), Err(DecodeError::Truncated));
        assert_eq!(
            run(Framing::Chunked, b"5\r\nhello\n0\r\n\r\n", 100),
            Err(DecodeError::Chunked(ChunkError::DataEnd))
        );
    }

    #[test]
    fn until_close_ends_at_eof_and_empty_is_done_at_once() {
        let (body, _, done) = run(Framing::UntilClose, b"all of it", 4).unwrap();
        assert_eq!((body.as_slice(), done), (&b"all of it"[..], false));
        let mut decoder = Decoder::new(Framing::Empty);
        assert!(decoder.is_done());
        assert_eq!(decoder.decode(&mut BytesMut::from(&b"x"[..])), Ok(Decoded::Done));
    }
}
