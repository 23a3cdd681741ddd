//! Our HTTP/1.1 client for upstream connections. A request is written and
//! its response read by the task serving the client's request itself: no
//! connection task, no channels, one write and (usually) one read per
//! proxied request. The connection, with its read buffer, travels with the
//! response body and goes back to the pool when the body has been read.

mod decode;
mod head;

pub use decode::{DecodeError, Decoded, Decoder, Framing};

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, header};
use http_body::Body;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::body::{BodyError, RequestBody};
use crate::http1::advance_written;
use crate::server::preface::Rewind;

/// What is read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// A request body in memory up to this size goes out in the head's write.
const INLINE_BODY: usize = 16 * 1024;

/// One HTTP/1.1 connection to a server.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// A request head being written.
    out: Vec<u8>,
    /// The timer for answers that take too long, kept from one exchange to
    /// the next (see `poll_deadline`).
    timer: Option<Pin<Box<Sleep>>>,
}

/// A response head, and how its body is delimited.
#[derive(Debug)]
pub struct Head {
    pub parts: http::response::Parts,
    pub framing: Framing,
    /// Whether the connection can carry another request after this body.
    pub reusable: bool,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("upstream I/O failed")]
    Io(#[source] io::Error),
    #[error("upstream closed the connection before answering")]
    Closed,
    #[error("upstream sent a malformed response: {0}")]
    Malformed(&'static str),
    #[error("request body failed")]
    Body(#[source] BodyError),
    #[error("upstream did not answer within read_timeout")]
    TimedOut,
}

/// An exchange that failed, and whether the request can go again as it is
/// (nothing of its body was consumed and no byte of an answer came).
#[derive(Debug)]
pub struct Failed {
    pub error: SendError,
    pub replayable: bool,
    /// Some of the request reached the socket (the server may have seen it).
    pub reached: bool,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: BytesMut::new(),
            out: Vec::new(),
            timer: None,
        }
    }

    /// Whether an idle connection still looks usable: no event has come in
    /// since its last response (a close, or stray bytes), checked without a
    /// system call unless one has.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends `req` (its body streamed, or from memory) and reads the
    /// response head. `req` is only borrowed, and a body held in memory is
    /// written from where it is, never taken: such a request is still whole
    /// after a failed try, and a retry sends it again as it is.
    /// `added` fields go in the head after the request's own, and replace
    /// any of them with the same name.
    /// The whole exchange must be done by `deadline`, or it fails with
    /// `SendError::TimedOut`.
    pub async fn send(
        &mut self,
        req: &mut Request<RequestBody>,
        added: &[(HeaderName, HeaderValue)],
        deadline: Instant,
    ) -> Result<Head, Failed> {
        let head_only = req.method() == Method::HEAD;
        let plan = write_head(&mut self.out, req, added);
        let mut exchange = Exchange {
            written: 0,
            plan,
            body_touched: false,
            answer_seen: false,
            done_writing: false,
            reached: false,
            data: Bytes::new(),
            tail: b"",
        };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = exchange.poll(self, req.body_mut(), head_only, cx) {
                return Poll::Ready(done);
            }
            ready!(self.poll_deadline(deadline, cx));
            exchange.fail(SendError::TimedOut)
        })
        .await
    }

    /// Ready once `deadline` has passed. The timer is not reset for every
    /// exchange, which would take it out of the runtime's timer wheel and put
    /// it back each time: one set for an earlier deadline is left to fire
    /// early, and only then moved to the deadline of the exchange under way
    /// (nginx's lazy timers do the same). On a busy connection that is about
    /// one reset per `read_timeout` instead of one per request.
    fn poll_deadline(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
    }

    /// Hands the connection over to a tunnel after a 101, with whatever the
    /// server sent past its head put back in front.
    pub(crate) fn into_switched(self) -> Rewind<TcpStream> {
        Rewind::new(self.buf.freeze(), self.stream)
    }

    /// Reads more of the response into the buffer: `Ready(Ok(0))` at the end
    /// of the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // Room for a whole read every time. With only what was left after
        // the last response (down to 1 KiB, as this was), a 4 KiB response
        // came in two reads about half the time, and went to the client in
        // two writes: 2.5 writes per request where nginx makes 2, each
        // costing microseconds in the kernel. The buffer's earlier responses
        // have usually been written and dropped by now, so this reclaims it
        // in place rather than allocating.
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

/// How the request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyPlan {
    /// Nothing more than the head (a body in memory was put into it).
    None,
    /// Streamed as it comes, its length declared in the head.
    Length,
    /// Streamed in chunks.
    Chunked,
}

/// Writes the request head into `out`, its fields then the `added` ones
/// (which replace its fields of the same names), with a body held in memory
/// after it when it is small; says how the rest of the body goes.
fn write_head(out: &mut Vec<u8>, req: &Request<RequestBody>, added: &[(HeaderName, HeaderValue)]) -> BodyPlan {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri().path_and_query().map_or("/", |pq| pq.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The lengths of the added names, one bit each: most fields are told
    // apart from them by length alone.
    let added_lengths = added.iter().fold(0u64, |bits, (name, _)| {
        bits | 1u64.checked_shl(name.as_str().len() as u32).unwrap_or(0)
    });
    let mut has_length = false;
    for (name, value) in req.headers() {
        let text = name.as_str();
        // Framing is ours to state; `Expect` is answered by us, not passed on.
        if name == header::CONTENT_LENGTH {
            has_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING || name == header::EXPECT {
            continue;
        }
        if 1u64.checked_shl(text.len() as u32).unwrap_or(0) & added_lengths != 0
            && added.iter().any(|(ours, _)| ours == name)
        {
            continue;
        }
        field(out, text, value);
    }
    for (name, value) in added {
        field(out, name.as_str(), value);
    }
    let declared = has_length || matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    let (plan, inline): (BodyPlan, Option<&Bytes>) = match req.body() {
        RequestBody::Full(data) => {
            let len = data.as_ref().map_or(0, Bytes::len);
            if len > 0 || declared {
                content_length(out, len as u64);
            }
            match data {
                Some(d) if d.len() > INLINE_BODY => (BodyPlan::Length, None),
                Some(d) => (BodyPlan::None, Some(d)),
                None => (BodyPlan::None, None),
            }
        }
        stream => match stream.size_hint().exact() {
            Some(0) if stream.is_end_stream() => {
                if declared {
                    content_length(out, 0);
                }
                (BodyPlan::None, None)
            }
            Some(len) => {
                content_length(out, len);
                (BodyPlan::Length, None)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                (BodyPlan::Chunked, None)
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    if let Some(data) = inline {
        out.extend_from_slice(data);
    }
    plan
}

fn field(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn content_length(out: &mut Vec<u8>, len: u64) {
    out.extend_from_slice(b"content-length: ");
    crate::server::h1::encode::decimal(out, len);
    out.extend_from_slice(b"\r\n");
}

/// The state of one request/response exchange on a connection.
struct Exchange {
    /// Bytes of `Conn::out` written so far.
    written: usize,
    plan: BodyPlan,
    /// A frame of a streamed body has been taken: it cannot be sent again.
    body_touched: bool,
    answer_seen: bool,
    done_writing: bool,
    reached: bool,
    /// A piece of body being written after `Conn::out`, and what follows it
    /// (the CRLF that ends a chunk).
    data: Bytes,
    tail: &'static [u8],
}

impl Exchange {
    fn fail(&self, error: SendError) -> Poll<Result<Head, Failed>> {
        let replayable = !self.body_touched && !self.answer_seen;
        Poll::Ready(Err(Failed {
            error,
            replayable,
            reached: self.reached,
        }))
    }

    fn poll(
        &mut self,
        conn: &mut Conn,
        body: &mut RequestBody,
        head_only: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Head, Failed>> {
        if !self.done_writing {
            match self.poll_write(conn, body, cx) {
                Poll::Ready(Ok(())) => self.done_writing = true,
                Poll::Ready(Err(error)) => {
                    // A server may answer early and close (a 413, say): its
                    // answer counts more than the failed write.
                    if !matches!(error, SendError::Io(_)) {
                        return self.fail(error);
                    }
                    return match self.poll_read_head(conn, head_only, cx) {
                        Poll::Ready(Ok(mut head)) => {
                            head.reusable = false;
                            Poll::Ready(Ok(head))
                        }
                        _ => self.fail(error),
                    };
                }
                Poll::Pending => {}
            }
        }
        match ready!(self.poll_read_head(conn, head_only, cx)) {
            Ok(mut head) => {
                // An answer before the whole request went out ends the
                // request there; the connection cannot be reused.
                head.reusable &= self.done_writing;
                Poll::Ready(Ok(head))
            }
            Err(error) => self.fail(error),
        }
    }

    /// Writes the head, then the body, until done or blocked.
    fn poll_write(
        &mut self,
        conn: &mut Conn,
        body: &mut RequestBody,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            ready!(self.poll_flush_out(conn, cx)).map_err(SendError::Io)?;
            if self.plan == BodyPlan::None {
                return Poll::Ready(Ok(()));
            }
            if let RequestBody::Full(data) = body {
                // A large body in memory: written from where it is.
                self.data = data.clone().unwrap_or_default();
                self.plan = BodyPlan::None;
                continue;
            }
            let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
            self.body_touched = true;
            match frame {
                None => {
                    if self.plan == BodyPlan::Chunked {
                        conn.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.plan = BodyPlan::None;
                }
                Some(Err(error)) => return Poll::Ready(Err(SendError::Body(error))),
                Some(Ok(frame)) => {
                    // Trailers of a client's request are not passed on.
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    if self.plan == BodyPlan::Chunked {
                        crate::server::h1::encode::chunk_size(&mut conn.out, data.len());
                        self.tail = b"\r\n";
                    }
                    self.data = data;
                }
            }
        }
    }

    /// Writes what is queued (`out`, then `data`, then `tail`) with as few
    /// system calls as the socket allows; body data is never copied.
    fn poll_flush_out(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let head = &conn.out[self.written..];
            if head.is_empty() && self.data.is_empty() && self.tail.is_empty() {
                conn.out.clear();
                self.written = 0;
                return Poll::Ready(Ok(()));
            }
            let slices = [IoSlice::new(head), IoSlice::new(&self.data), IoSlice::new(self.tail)];
            let n = ready!(Pin::new(&mut conn.stream).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.reached = true;
            self.written += advance_written(n, head.len(), &mut self.data, &mut self.tail);
        }
    }

    fn poll_read_head(
        &mut self,
        conn: &mut Conn,
        head_only: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Head, SendError>> {
        loop {
            if !conn.buf.is_empty() {
                self.answer_seen = true;
                if let Some(head) = head::parse(&mut conn.buf, head_only).map_err(SendError::Malformed)? {
                    return Poll::Ready(Ok(head));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if conn.buf.is_empty() => return Poll::Ready(Err(SendError::Closed)),
                Ok(0) => return Poll::Ready(Err(SendError::Malformed("connection closed inside the head"))),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(SendError::Io(error))),
            }
        }
    }
}
