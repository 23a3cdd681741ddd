//! Our own HTTP/1.1 server connection, for plain and TLS clients alike:
//! reads request heads (`httparse`, zero-copy into `http` types), runs the
//! proxy's `handle` for each inside the connection's own task, streams the
//! request body to it with backpressure, and writes the response head with
//! the first body bytes in one write. Keep-alive, pipelining, `100
//! Continue`, upgrades handed to a tunnel, the header and keep-alive
//! timeouts and graceful shutdown all live here.
//!
//! On a plain listener the first bytes may instead be the HTTP/2 preface
//! (prior knowledge): the connection is then handed back for HTTP/2.
//!
//! Memory: between requests (and before the first) a connection holds its
//! socket, its timer and this task; the read buffer exists only while bytes
//! are waiting to be parsed, and nothing is kept for writing (see `write`).
//! What a request needs is boxed for the request's time, so it is not part
//! of the task an idle connection keeps.

mod body;
mod decode;
pub(crate) mod encode;
mod exchange;
mod parse;
mod write;

pub use body::BodyStream;

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::Shared;
use super::closing::Closing;
use super::conn::{Deadline, Limits};
use super::preface::{self, Protocol, Rewind};
use crate::proxy::ClientInfo;
use crate::proxy::tunnel::TunnelIo;
use exchange::After;
use parse::{Head, HeadError};
use write::Outbox;

/// The first read of a request head: most heads fit, so most requests take
/// one read system call and no buffer growth.
const FIRST_READ_BYTES: usize = 4096;
/// Most bytes discarded while closing after an error, so that the answer is
/// not lost to a reset for unread input (nginx's lingering close).
const LINGER_BYTES: usize = 1024 * 1024;

/// Whether the first bytes may be the HTTP/2 preface instead of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prior {
    /// A plain listener: HTTP/2 with prior knowledge is welcome.
    MaybeHttp2,
    /// TLS, where ALPN chose HTTP/1.1.
    Http1Only,
}

/// A plain connection that opened with the HTTP/2 preface, handed back with
/// what HTTP/2 needs to take it over; `io` replays the bytes read so far.
pub(super) struct Http2Prior<I> {
    pub io: Rewind<I>,
    pub client: Arc<ClientInfo>,
    pub limits: Limits,
    pub shared: Arc<Shared>,
    pub closing: Arc<Closing>,
}

/// Serves HTTP/1 on `io` until the client closes, a timeout passes, an
/// upgrade hands the connection to a tunnel, or shutdown drains it; or,
/// with `Prior::MaybeHttp2`, returns it when it opens with the HTTP/2
/// preface. The first head is due by `head_deadline`.
#[allow(clippy::too_many_arguments)]
pub(super) fn serve<I>(
    io: I,
    timer: Deadline,
    head_deadline: Instant,
    prior: Prior,
    limits: Limits,
    client: Arc<ClientInfo>,
    shared: Arc<Shared>,
    closing: Arc<Closing>,
) -> impl Future<Output = Option<Http2Prior<I>>> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn {
        io,
        read: BytesMut::new(),
        eof: false,
        out: Outbox::default(),
        timer,
        limits,
        closing,
    };
    let wait = match prior {
        Prior::MaybeHttp2 => Wait::Preface(head_deadline),
        Prior::Http1Only => Wait::Head(head_deadline),
    };
    conn.run(wait, client, shared)
}

/// One client connection's state between and during requests.
struct Conn<I> {
    io: I,
    /// Bytes read and not yet parsed; holds no memory while idle.
    read: BytesMut,
    /// The client closed its side.
    eof: bool,
    out: Outbox,
    timer: Deadline,
    limits: Limits,
    closing: Arc<Closing>,
}

/// What the wait for the next head is bound by.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// A new plain connection: the first bytes, due by then, are a head or
    /// the HTTP/2 preface.
    Preface(Instant),
    /// Between requests: up to `keepalive_timeout` from when the wait
    /// began (set on the first wait that finds nothing to read).
    Idle(Option<Instant>),
    /// A head has begun (or the connection is new): due by then.
    Head(Instant),
}

// Returned once per request and taken apart at once: boxing the head would
// cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(Head),
    Http2,
    Closed,
    Refused(HeadError),
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn<I> {
    /// The connection's life. Not an `async fn`: that would keep its
    /// arguments twice (as arguments and as the locals they are moved
    /// into), and this future is most of the task an idle connection holds.
    #[allow(clippy::manual_async_fn)]
    fn run(
        mut self,
        mut wait: Wait,
        client: Arc<ClientInfo>,
        shared: Arc<Shared>,
    ) -> impl Future<Output = Option<Http2Prior<I>>> + Send + 'static {
        async move {
            let mut refused = None;
            let linger = {
                // Resolves once the listener closes. Kept in the task while
                // it serves requests, so that waiting idle costs no
                // registration per request and no allocation of its own.
                let closing = self.closing.clone();
                let mut stop = std::pin::pin!(closing.raised());
                loop {
                    let head = match std::future::poll_fn(|cx| self.poll_head(cx, &mut wait, stop.as_mut())).await {
                        Next::Head(head) => head,
                        Next::Http2 => {
                            let Conn {
                                io,
                                read,
                                limits,
                                closing,
                                ..
                            } = self;
                            return Some(Http2Prior {
                                io: Rewind::new(read.freeze(), io),
                                client,
                                limits,
                                shared,
                                closing,
                            });
                        }
                        Next::Closed => break false,
                        Next::Refused(error) => {
                            refused = Some(error);
                            break true;
                        }
                    };
                    // Boxed: what a request needs (the proxy's future too) is not
                    // part of the task an idle connection keeps. The box comes
                    // first and the future is written into it: `Box::pin` of
                    // the call built its ~6 KiB on the stack and copied them.
                    let exchange = Box::write(Box::new_uninit(), self.exchange(head, &client, &shared));
                    match Box::into_pin(exchange).await {
                        After::KeepAlive => {
                            if self.read.is_empty() {
                                // Idle with nothing pipelined: hold no buffer while waiting.
                                self.read = BytesMut::new();
                            }
                            self.out.release();
                            wait = Wait::Idle(None);
                        }
                        After::Close { linger } => break linger,
                        After::Abort => return None,
                        After::Upgrade(switch) => {
                            let Conn { io, read, .. } = self;
                            let io: Box<dyn TunnelIo> = Box::new(Rewind::new(read.freeze(), io));
                            // The tunnel may have given up meanwhile; the connection then just closes.
                            let _ = switch.send(io);
                            return None;
                        }
                    }
                }
            };
            if let Some(error) = &refused {
                tracing::debug!(%error, client = %client.peer, "request head refused");
            }
            // Boxed: it happens once, at the end, and would otherwise need
            // room of its own beside what the idle wait keeps.
            Box::pin(self.finish(refused, linger)).await;
            None
        }
    }

    /// Answers a refused head, if any, then closes.
    async fn finish(&mut self, refused: Option<HeadError>, linger: bool) {
        if let Some(error) = refused {
            self.refuse(error.status(), &error).await;
        }
        self.close(linger).await;
    }

    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        wait: &mut Wait,
        stop: Pin<&mut impl Future<Output = ()>>,
    ) -> Poll<Next> {
        let mut stop = stop;
        loop {
            if !self.read.is_empty()
                && let Wait::Preface(at) = *wait
            {
                match preface::classify(&self.read) {
                    Some(Protocol::Http2) => return Poll::Ready(Next::Http2),
                    Some(Protocol::Http1) => *wait = Wait::Head(at),
                    None => {}
                }
            }
            if !self.read.is_empty() && !matches!(wait, Wait::Preface(_)) {
                match parse::parse(&mut self.read, self.limits.max_header_bytes) {
                    Ok(Some(head)) => return Poll::Ready(Next::Head(head)),
                    Ok(None) => {}
                    Err(error) => return Poll::Ready(Next::Refused(error)),
                }
                if let Wait::Idle(_) = wait {
                    *wait = Wait::Head(Instant::now() + self.limits.header_timeout);
                }
            }
            if self.eof {
                return Poll::Ready(Next::Closed);
            }
            let room = (self.limits.max_header_bytes + 1)
                .saturating_sub(self.read.len())
                .max(1);
            match fill(&mut self.io, &mut self.read, cx, room) {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Next::Closed),
                Poll::Pending => {
                    let due = match wait {
                        Wait::Preface(at) | Wait::Head(at) | Wait::Idle(Some(at)) => *at,
                        Wait::Idle(None) => {
                            let at = Instant::now() + self.limits.keepalive_timeout;
                            *wait = Wait::Idle(Some(at));
                            at
                        }
                    };
                    // Nothing received yet: shutdown closes the connection.
                    if let Wait::Idle(_) | Wait::Preface(_) = wait
                        && self.read.is_empty()
                        && stop.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Next::Closed);
                    }
                    if self.timer.poll_until(cx, due).is_ready() {
                        return Poll::Ready(Next::Closed);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        self.closing.is_raised()
    }

    /// Answers a request the codec refuses with `status`, in plain text
    /// saying `why`, within the header timeout.
    async fn refuse(&mut self, status: http::StatusCode, why: &(dyn std::fmt::Display + Sync)) {
        let due = Instant::now() + self.limits.header_timeout;
        let mut sent = false;
        let _ = std::future::poll_fn(|cx| {
            if !sent {
                sent = true;
                let queued = write::with_scratch(|scratch| {
                    encode::refusal(scratch, status, why);
                    self.out.send(&mut self.io, cx, scratch, bytes::Bytes::new(), b"")
                });
                if let Err(e) = queued {
                    return Poll::Ready(Err(e));
                }
            }
            if self.timer.poll_until(cx, due).is_ready() {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            ready!(self.out.poll_drain(&mut self.io, cx))?;
            Pin::new(&mut self.io).poll_flush(cx)
        })
        .await;
    }

    /// Ends the connection: what is queued goes out, then the write side
    /// closes; with `linger`, input the client is still sending is read
    /// and dropped for a while, so the kernel does not answer it with a
    /// reset that could destroy the response before the client reads it.
    async fn close(&mut self, linger: bool) {
        let due = Instant::now() + self.limits.header_timeout.min(Duration::from_secs(5));
        let mut shut = false;
        let mut discarded = 0;
        std::future::poll_fn(|cx| {
            if self.timer.poll_until(cx, due).is_ready() {
                return Poll::Ready(());
            }
            if !shut {
                if ready!(self.out.poll_drain(&mut self.io, cx)).is_err() {
                    return Poll::Ready(());
                }
                if ready!(Pin::new(&mut self.io).poll_shutdown(cx)).is_err() {
                    return Poll::Ready(());
                }
                shut = true;
            }
            if !linger || self.eof {
                return Poll::Ready(());
            }
            let mut scrap = [MaybeUninit::<u8>::uninit(); 4096];
            loop {
                let mut buf = ReadBuf::uninit(&mut scrap);
                match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                    Ok(()) if !buf.filled().is_empty() && discarded < LINGER_BYTES => {
                        discarded += buf.filled().len();
                    }
                    _ => return Poll::Ready(()),
                }
            }
        })
        .await;
    }
}

/// Reads more of a request head from the client into `read`, growing it
/// by up to `want` bytes. An empty `read` that holds no memory is filled
/// from a stack buffer first: a connection with nothing to say never gets a
/// buffer.
fn fill<I: AsyncRead + Unpin>(
    io: &mut I,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    if read.capacity() == 0 {
        let mut scratch = [MaybeUninit::<u8>::uninit(); FIRST_READ_BYTES];
        let mut buf = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        if n > 0 {
            *read = BytesMut::with_capacity(FIRST_READ_BYTES.max(n));
            read.extend_from_slice(buf.filled());
        }
        return Poll::Ready(Ok(n));
    }
    if read.capacity() == read.len() {
        read.reserve(want.min(read.len().max(FIRST_READ_BYTES)));
    }
    std::pin::pin!(io.read_buf(read)).poll(cx)
}

/// Reads more of a request body into `read`, with room for `want` bytes
/// when little is left (a body is read in large pieces, not head-sized ones).
fn fill_body<I: AsyncRead + Unpin>(
    io: &mut I,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < want.min(FIRST_READ_BYTES) {
        read.reserve(want);
    }
    std::pin::pin!(io.read_buf(read)).poll(cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn waiting_for_a_request_holds_no_buffer() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut read = BytesMut::new();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(fill(&mut server, &mut read, &mut cx, 8192).is_pending());
        assert_eq!(read.capacity(), 0, "nothing allocated while nothing came");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let n = std::future::poll_fn(|cx| fill(&mut server, &mut read, cx, 8192))
            .await
            .unwrap();
        assert_eq!(n, 18);
        assert_eq!(&read[..], b"GET / HTTP/1.1\r\n\r\n");
        assert!(read.capacity() >= FIRST_READ_BYTES);
    }

    #[tokio::test]
    async fn a_head_grows_its_buffer_only_up_to_the_limit() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&[b'a'; 20_000]).await.unwrap();
        let mut read = BytesMut::new();
        let limit = 10_000;
        while read.len() <= limit {
            let room = (limit + 1).saturating_sub(read.len()).max(1);
            std::future::poll_fn(|cx| fill(&mut server, &mut read, cx, room))
                .await
                .unwrap();
        }
        assert!(read.capacity() < 2 * limit, "{}", read.capacity());
    }
}
