//! The body types that flow through the proxy: a client's request body on its
//! way upstream (size-limited, streamed) and a response body on its way to the
//! client (an upstream stream, or a short body made here, either possibly
//! compressed on the way).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::compress::CompressedBody;
use crate::upstream::h1::{DecodeError, Decoded, Decoder, Framing};
use crate::upstream::{ActiveGuard, PooledConn};

/// Why a body stream stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {limit_bytes} bytes")]
    TooLarge { limit_bytes: u64 },
    #[error("upstream sent nothing for {0:?}")]
    UpstreamTimeout(Duration),
    #[error("HTTP/2 stream failed")]
    Http2(#[source] h2::Error),
    #[error("client body failed: {0}")]
    Client(String),
    #[error("upstream body read failed")]
    UpstreamIo(#[source] std::io::Error),
    #[error("upstream body malformed")]
    UpstreamFraming(#[source] DecodeError),
    #[error("response compression failed")]
    Compress(#[source] std::io::Error),
}

/// A client's request body as the protocol that received it hands it over.
#[derive(Debug)]
pub enum ClientBody {
    /// From an HTTP/2 stream.
    Http2(crate::server::http2::RequestStream),
    /// From our own HTTP/1 connection.
    Http1(crate::server::h1::BodyStream),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut *self {
            ClientBody::Http2(inner) => Pin::new(inner).poll_frame(cx),
            ClientBody::Http1(inner) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Http2(inner) => inner.is_end_stream(),
            ClientBody::Http1(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Http2(inner) => inner.size_hint(),
            ClientBody::Http1(inner) => inner.size_hint(),
        }
    }
}

/// A request body forwarded upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed, failing once it passes `limit_bytes`
    /// (chunked bodies have no length to check up front).
    Stream {
        inner: ClientBody,
        limit_bytes: u64,
        seen_bytes: u64,
    },
    /// A body held in memory (none, or a small one).
    Full(Option<Bytes>),
}

impl RequestBody {
    pub fn limited(inner: ClientBody, limit_bytes: u64) -> Self {
        RequestBody::Stream {
            inner,
            limit_bytes,
            seen_bytes: 0,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut *self {
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Stream {
                inner,
                limit_bytes,
                seen_bytes,
            } => {
                let frame = match ready!(Pin::new(inner).poll_frame(cx)) {
                    None => return Poll::Ready(None),
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Some(Ok(frame)) => frame,
                };
                if let Some(data) = frame.data_ref() {
                    *seen_bytes += data.len() as u64;
                    if *seen_bytes > *limit_bytes {
                        return Poll::Ready(Some(Err(BodyError::TooLarge {
                            limit_bytes: *limit_bytes,
                        })));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(data) => data.is_none(),
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            RequestBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// A response body sent to the client.
#[derive(Debug)]
pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    /// Compressed on the way (a route's `compress`).
    Compressed(Box<CompressedBody>),
}

impl ResponseBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(data.into()))
    }

    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut *self {
            ResponseBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::Compressed(body) => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(data) => data.is_none(),
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Compressed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Compressed(body) => body.size_hint(),
        }
    }
}

/// An upstream response body, read straight off its connection: hands the
/// connection back to the pool when the body has been read to the end (and
/// the server keeps it open), and fails when the upstream goes quiet for
/// longer than the route's `read_timeout`.
#[derive(Debug)]
pub struct UpstreamBody {
    conn: Option<PooledConn>,
    decoder: Decoder,
    /// The connection may carry another request once this body is read.
    reusable: bool,
    read_timeout: Duration,
    /// When the response head came: a body that never waited for the
    /// server ends then, as far as the pool's idle time is concerned.
    answered: std::time::Instant,
    /// Armed only while waiting: most small bodies never need a timer.
    idle_timer: Option<Pin<Box<Sleep>>>,
    _active: ActiveGuard,
}

impl UpstreamBody {
    pub fn new(
        conn: PooledConn,
        framing: Framing,
        reusable: bool,
        (read_timeout, answered): (Duration, std::time::Instant),
        active: ActiveGuard,
    ) -> Self {
        let mut body = UpstreamBody {
            conn: Some(conn),
            decoder: Decoder::new(framing),
            reusable,
            read_timeout,
            answered,
            idle_timer: None,
            _active: active,
        };
        if body.decoder.is_done() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
        {
            // A body that had to wait (it armed the timer) ended later: the
            // clock says when.
            let ended = match self.idle_timer {
                None => self.answered,
                Some(_) => std::time::Instant::now(),
            };
            conn.release(ended);
        }
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            if this.decoder.is_done() {
                this.release();
                return Poll::Ready(None);
            }
            // Gone after a failure: nothing more comes.
            let Some(pooled) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(pooled.conn.buf()) {
                Err(error) => return this.fail(BodyError::UpstreamFraming(error)),
                Ok(Decoded::Done) => continue,
                Ok(Decoded::Data(data)) => {
                    if let Some(timer) = &mut this.idle_timer {
                        timer.as_mut().reset(tokio::time::Instant::now() + this.read_timeout);
                    }
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::NeedMore) => {}
            }
            match pooled.conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    // Only a body delimited by the close may end here.
                    this.reusable = false;
                    if let Err(error) = this.decoder.eof() {
                        return this.fail(BodyError::UpstreamFraming(error));
                    }
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => return this.fail(BodyError::UpstreamIo(error)),
                Poll::Pending => {
                    let read_timeout = this.read_timeout;
                    let timer = this
                        .idle_timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(read_timeout)));
                    return match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => this.fail(BodyError::UpstreamTimeout(read_timeout)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
