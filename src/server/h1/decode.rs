//! Request bodies off the wire: a `Content-Length` count, or the chunked
//! coding as `http1::chunked` decodes it for both our codecs. Data is split
//! off the connection's read buffer without a copy. A chunked body out of
//! shape stops the body and closes the connection, since after it the
//! next request's start cannot be trusted.

use bytes::BytesMut;

use crate::http1::chunked::{ChunkError, ChunkedDecoder};
use crate::http1::{Decoded, split_counted};

/// Where a request body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decoder {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl Decoder {
    pub(super) fn chunked() -> Self {
        Decoder::Chunked(ChunkedDecoder::new())
    }

    /// Bytes the body still has, when known: sizes the next read.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Chunked(_) => None,
        }
    }

    /// Takes what it can of the body from the front of `buf`.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        match self {
            Decoder::Length(0) => Ok(Decoded::Done),
            Decoder::Length(left) => Ok(split_counted(left, buf).map_or(Decoded::NeedMore, Decoded::Data)),
            Decoder::Chunked(chunked) => chunked.decode(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn length_body_stops_at_its_length() {
        let mut decoder = Decoder::Length(5);
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"hel"))));
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::NeedMore));
        buf.extend_from_slice(b"loGET");
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"lo"))));
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Done));
        assert_eq!(&buf[..], b"GET");
    }

    #[test]
    fn chunked_body_stops_at_its_end() {
        let mut decoder = Decoder::chunked();
        let mut buf = BytesMut::from(&b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\nGET"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"abc"))));
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Done));
        assert_eq!(&buf[..], b"GET");
        assert_eq!(decoder.remaining(), None);
    }
}
