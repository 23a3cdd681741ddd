//! The streaming encoder: compresses a response body frame by frame, never
//! holding more than one upstream frame's worth of output, and flushes
//! whenever the upstream has nothing more ready so a slow stream still
//! reaches the client as it goes.

use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::buf::Writer;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::Encoding;
use crate::body::{BodyError, ResponseBody};

/// gzip level: zlib's default, a good ratio at on-the-fly speed.
pub const GZIP_LEVEL: u32 = 6;
/// Brotli quality: 5 compresses better than gzip 6 at a similar speed;
/// 11 (the library's default) is for static files compressed once.
pub const BROTLI_QUALITY: u32 = 5;
/// Brotli window, 2^19 = 512 KiB: ngx_brotli's default, enough for the
/// distances in text and bounded per stream.
pub const BROTLI_WINDOW_BITS: u32 = 19;
/// Brotli's own staging buffer between the encoder and our output.
const BROTLI_BUFFER_BYTES: usize = 4096;

// The encoder lives inside a `CompressedBody`, itself boxed once per
// response: boxing the larger variant again would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Encoder {
    Gzip(flate2::write::GzEncoder<Writer<BytesMut>>),
    Br(brotli::CompressorWriter<Writer<BytesMut>>),
}

impl Encoder {
    fn new(encoding: Encoding) -> Encoder {
        let out = BytesMut::new().writer();
        match encoding {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL))),
            Encoding::Br => Encoder::Br(brotli::CompressorWriter::new(
                out,
                BROTLI_BUFFER_BYTES,
                BROTLI_QUALITY,
                BROTLI_WINDOW_BITS,
            )),
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Br(e) => e.write_all(data),
        }
    }

    /// Ends the current block so that everything written so far can be
    /// decoded (gzip: a sync flush, 4–5 bytes; brotli: an empty metablock).
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Br(e) => e.flush(),
        }
    }

    /// Whatever compressed bytes are ready, without copying.
    fn take_output(&mut self) -> Bytes {
        let out = match self {
            Encoder::Gzip(e) => e.get_mut().get_mut(),
            Encoder::Br(e) => e.get_mut().get_mut(),
        };
        out.split().freeze()
    }

    /// Writes the stream's end (gzip trailer, brotli last metablock) and
    /// returns the last bytes.
    fn finish(self) -> std::io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Br(e) => e.into_inner(),
        };
        Ok(out.into_inner().freeze())
    }
}

/// A response body compressed as it streams.
pub struct CompressedBody<B = ResponseBody> {
    inner: B,
    /// `None` once the stream is finished (or failed).
    encoder: Option<Encoder>,
    /// Input was written since the last flush.
    unflushed: bool,
    /// The upstream's trailers, sent after the compressed data.
    trailers: Option<HeaderMap>,
}

impl<B: std::fmt::Debug> std::fmt::Debug for CompressedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressedBody")
            .field("inner", &self.inner)
            .field("finished", &self.encoder.is_none())
            .finish_non_exhaustive()
    }
}

impl<B> CompressedBody<B> {
    pub fn new(inner: B, encoding: Encoding) -> Self {
        CompressedBody {
            inner,
            encoder: Some(Encoder::new(encoding)),
            unflushed: false,
            trailers: None,
        }
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, BodyError>>>;

fn data(out: Bytes) -> Polled {
    Poll::Ready(Some(Ok(Frame::data(out))))
}

impl<B> Body for CompressedBody<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(input) => {
                        if let Err(e) = encoder.write(&input) {
                            this.encoder = None;
                            return Poll::Ready(Some(Err(BodyError::Compress(e))));
                        }
                        this.unflushed = true;
                        let out = encoder.take_output();
                        if !out.is_empty() {
                            return data(out);
                        }
                    }
                    Err(frame) => this.trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(e))) => {
                    this.encoder = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let finished = this.encoder.take().map(Encoder::finish);
                    match finished {
                        Some(Ok(out)) if !out.is_empty() => return data(out),
                        Some(Err(e)) => return Poll::Ready(Some(Err(BodyError::Compress(e)))),
                        _ => {}
                    }
                }
                Poll::Pending => {
                    // The upstream has nothing more for now: send what has
                    // been compressed so far instead of holding it back.
                    if this.unflushed {
                        this.unflushed = false;
                        if let Err(e) = encoder.flush() {
                            this.encoder = None;
                            return Poll::Ready(Some(Err(BodyError::Compress(e))));
                        }
                        let out = encoder.take_output();
                        if !out.is_empty() {
                            return data(out);
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that hands out `chunks` one per poll, answering `Pending`
    /// (and waking at once) between them when `stall` is set: the worst case
    /// for the encoder, which then flushes after every chunk.
    fn compress_chunks(encoding: Encoding, chunks: &[Bytes], stall: bool) -> Vec<u8> {
        let inner = Chunks {
            left: chunks.iter().rev().cloned().collect(),
            stall,
            stalled: false,
        };
        let mut body = CompressedBody::new(inner, encoding);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => out.extend_from_slice(frame.data_ref().expect("only data")),
                Poll::Ready(Some(Err(e))) => panic!("compression failed: {e}"),
                Poll::Ready(None) => return out,
                Poll::Pending => {}
            }
        }
    }

    fn decompress(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match encoding {
            Encoding::Gzip => {
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).unwrap();
            }
            Encoding::Br => {
                std::io::Read::read_to_end(&mut brotli::Decompressor::new(data, 4096), &mut out).unwrap();
            }
        };
        out
    }

    struct Chunks {
        /// In reverse order, popped from the end.
        left: Vec<Bytes>,
        stall: bool,
        stalled: bool,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
            if self.stall && !self.stalled {
                self.stalled = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.stalled = false;
            Poll::Ready(self.left.pop().map(|c| Ok(Frame::data(c))))
        }
    }

    /// JSON lines like an API's streamed output, `n` of them.
    fn json_lines(n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| {
                Bytes::from(format!(
                    "{{\"id\":{i},\"user\":\"user{}\",\"status\":\"active\",\"score\":{}}}\n",
                    i % 97,
                    i * 7 % 1000
                ))
            })
            .collect()
    }

    #[test]
    fn round_trips_and_flushing_each_small_chunk_keeps_a_good_ratio() {
        let chunks = json_lines(5000);
        let original: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        for encoding in [Encoding::Gzip, Encoding::Br] {
            let batched = compress_chunks(encoding, &chunks, false);
            let flushed = compress_chunks(encoding, &chunks, true);
            assert_eq!(decompress(encoding, &batched), original);
            assert_eq!(decompress(encoding, &flushed), original);
            let ratio = |n: usize| original.len() as f64 / n as f64;
            eprintln!(
                "{encoding:?}: {} bytes in {} chunks of ~{} bytes: {:.1}x when the upstream is fast, {:.1}x when it stalls after every chunk",
                original.len(),
                chunks.len(),
                original.len() / chunks.len(),
                ratio(batched.len()),
                ratio(flushed.len()),
            );
            assert!(
                ratio(batched.len()) > 5.0,
                "{encoding:?} batched ratio {}",
                ratio(batched.len())
            );
            // A flush per ~60-byte chunk costs a few bytes each, but the
            // stream must still shrink clearly.
            assert!(
                ratio(flushed.len()) > 2.0,
                "{encoding:?} flushed ratio {}",
                ratio(flushed.len())
            );
        }
    }

    #[test]
    fn an_empty_stream_is_a_valid_empty_encoding() {
        for encoding in [Encoding::Gzip, Encoding::Br] {
            let out = compress_chunks(encoding, &[], false);
            assert_eq!(decompress(encoding, &out), b"");
        }
    }
}
