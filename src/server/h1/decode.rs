//! Request bodies off the wire: a `Content-Length` count or the chunked
//! coding (RFC 9112 §7.1), decoded from the connection's read buffer without
//! copying the data. Chunk extensions and trailers are tolerated and
//! dropped; anything else out of shape stops the body and closes the
//! connection, since after it the next request's start cannot be trusted.

use bytes::{Buf, Bytes, BytesMut};

/// Most bytes one chunk-size line may spend on extensions.
const MAX_EXTENSION_BYTES: usize = 4096;
/// Most bytes the trailer section may have.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("chunk size overflows")]
    ChunkSizeOverflow,
    #[error("chunk extension too long or invalid")]
    Extension,
    #[error("chunk not followed by CRLF")]
    ChunkEnd,
    #[error("trailer section too long or invalid")]
    Trailers,
}

/// What one step of decoding gave.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    Data(Bytes),
    /// The buffer holds no more of the body; read more.
    NeedMore,
    /// The body is complete.
    End,
}

/// Where a body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decoder {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(Chunk),
}

/// The chunked decoder's state, between bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Reading the hex size: the value so far and whether a digit was seen.
    Size {
        value: u64,
        digits: bool,
    },
    /// Whitespace after the size, before `;` or the line end.
    SizeSpace {
        value: u64,
    },
    /// Inside the extensions, up to the line end.
    Extension {
        value: u64,
        seen: usize,
    },
    /// The size line's CR was read; its LF must follow.
    SizeLf {
        value: u64,
    },
    /// Bytes left of the chunk's data.
    Data(u64),
    DataCr,
    DataLf,
    /// Inside the trailer section: `at_line_start`, bytes seen so far.
    Trailer {
        at_line_start: bool,
        seen: usize,
    },
    /// The CR of a trailer line (or of the final empty line) was read.
    TrailerLf {
        last: bool,
        seen: usize,
    },
    Done,
}

impl Decoder {
    pub(super) fn chunked() -> Self {
        Decoder::Chunked(Chunk::Size {
            value: 0,
            digits: false,
        })
    }

    /// Bytes the body still has, when known: sizes the next read.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Chunked(_) => None,
        }
    }

    /// Takes what it can of the body from the front of `buf`.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        match self {
            Decoder::Length(0) => Ok(Decoded::End),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                Ok(Decoded::Data(buf.split_to(n).freeze()))
            }
            Decoder::Chunked(state) => decode_chunked(state, buf),
        }
    }
}

fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
    loop {
        if let Chunk::Data(left) = *state {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let left = left - n as u64;
            *state = if left == 0 { Chunk::DataCr } else { Chunk::Data(left) };
            return Ok(Decoded::Data(buf.split_to(n).freeze()));
        }
        if *state == Chunk::Done {
            return Ok(Decoded::End);
        }
        let Some(&byte) = buf.first() else {
            return Ok(Decoded::NeedMore);
        };
        buf.advance(1);
        *state = step(*state, byte)?;
    }
}

/// One byte of the framing around the data.
fn step(state: Chunk, byte: u8) -> Result<Chunk, DecodeError> {
    Ok(match state {
        Chunk::Size { value, digits } => match hex(byte) {
            Some(d) => {
                if value > u64::MAX >> 4 {
                    return Err(DecodeError::ChunkSizeOverflow);
                }
                Chunk::Size {
                    value: value << 4 | u64::from(d),
                    digits: true,
                }
            }
            None if !digits => return Err(DecodeError::ChunkSize),
            None => after_size(value, byte)?,
        },
        Chunk::SizeSpace { value } => after_size(value, byte)?,
        Chunk::Extension { value, seen } => match byte {
            b'\r' => Chunk::SizeLf { value },
            // Bare LF, or control characters, could be read otherwise by someone else.
            b'\t' | b' '..=b'~' | 0x80..=0xff if seen < MAX_EXTENSION_BYTES => {
                Chunk::Extension { value, seen: seen + 1 }
            }
            _ => return Err(DecodeError::Extension),
        },
        Chunk::SizeLf { value } => match byte {
            b'\n' if value == 0 => Chunk::Trailer {
                at_line_start: true,
                seen: 0,
            },
            b'\n' => Chunk::Data(value),
            _ => return Err(DecodeError::ChunkSize),
        },
        Chunk::DataCr => match byte {
            b'\r' => Chunk::DataLf,
            _ => return Err(DecodeError::ChunkEnd),
        },
        Chunk::DataLf => match byte {
            b'\n' => Chunk::Size {
                value: 0,
                digits: false,
            },
            _ => return Err(DecodeError::ChunkEnd),
        },
        Chunk::Trailer { at_line_start, seen } => {
            if seen >= MAX_TRAILER_BYTES {
                return Err(DecodeError::Trailers);
            }
            match byte {
                b'\r' => Chunk::TrailerLf {
                    last: at_line_start,
                    seen: seen + 1,
                },
                b'\t' | b' '..=b'~' | 0x80..=0xff => Chunk::Trailer {
                    at_line_start: false,
                    seen: seen + 1,
                },
                _ => return Err(DecodeError::Trailers),
            }
        }
        Chunk::TrailerLf { last, seen } => match byte {
            b'\n' if last => Chunk::Done,
            b'\n' => Chunk::Trailer {
                at_line_start: true,
                seen: seen + 1,
            },
            _ => return Err(DecodeError::Trailers),
        },
        // Data is taken in bulk and Done reads nothing: never stepped.
        Chunk::Data(_) | Chunk::Done => return Err(DecodeError::ChunkSize),
    })
}

/// What may follow a chunk size: spaces (RFC 9112's BWS), extensions, CRLF.
fn after_size(value: u64, byte: u8) -> Result<Chunk, DecodeError> {
    Ok(match byte {
        b' ' | b'\t' => Chunk::SizeSpace { value },
        b';' => Chunk::Extension { value, seen: 0 },
        b'\r' => Chunk::SizeLf { value },
        _ => return Err(DecodeError::ChunkSize),
    })
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

    /// Decodes `raw` fed in pieces of `step` bytes; the body, or the error.
    fn decode_in_pieces(raw: &[u8], step: usize) -> Result<(Vec<u8>, usize), DecodeError> {
        let mut decoder = Decoder::chunked();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok((body, fed - buf.len())),
                Decoded::NeedMore if fed == raw.len() => return Err(DecodeError::ChunkEnd),
                Decoded::NeedMore => {
                    let n = step.max(1).min(raw.len() - fed);
                    buf.extend_from_slice(&raw[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunks_with_extensions_and_trailers() {
        let raw = b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\nNEXT";
        for step in [1, 2, 7, raw.len()] {
            let (body, used) = decode_in_pieces(raw, step).unwrap();
            assert_eq!(body, b"hello world");
            assert_eq!(&raw[used..], b"NEXT", "step {step}");
        }
    }

    #[test]
    fn length_body_stops_at_its_length() {
        let mut decoder = Decoder::Length(5);
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"hel"))));
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::NeedMore));
        buf.extend_from_slice(b"loGET");
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"lo"))));
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::End));
        assert_eq!(&buf[..], b"GET");
    }

    #[test]
    fn bad_chunk_framing_is_refused() {
        let cases: [(&[u8], DecodeError); 9] = [
            (b"x\r\n", DecodeError::ChunkSize),
            (b"\r\n", DecodeError::ChunkSize),
            (b"-1\r\n", DecodeError::ChunkSize),
            (b"5\nhello\r\n0\r\n\r\n", DecodeError::ChunkSize),
            (b"1 2\r\n", DecodeError::ChunkSize),
            (b"10000000000000000\r\n", DecodeError::ChunkSizeOverflow),
            (b"5\r\nhelloX\r\n", DecodeError::ChunkEnd),
            (b"5;a\nb\r\n", DecodeError::Extension),
            (b"0\r\nX: 1\n\r\n", DecodeError::Trailers),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                decode_in_pieces(raw, raw.len()),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
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
    fn endless_extensions_and_trailers_are_bounded() {
        let mut raw = b"1;".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_EXTENSION_BYTES + 1));
        assert_eq!(decode_in_pieces(&raw, 512), Err(DecodeError::Extension));
        let mut raw = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILER_BYTES / 8 {
            raw.extend_from_slice(b"X: abc\r\n");
        }
        raw.extend_from_slice(b"X: abc\r\n\r\n");
        assert_eq!(decode_in_pieces(&raw, 512), Err(DecodeError::Trailers));
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

        /// Any well-formed encoding decodes to exactly its data, however the
        /// bytes arrive, and leaves what follows untouched.
        #[test]
        fn encoded_bodies_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            step in 1usize..64,
        ) {
            let mut raw = Vec::new();
            for c in &chunks {
                raw.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
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
