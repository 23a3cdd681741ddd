//! Our own HTTP/1.1 server connection, for plain and TLS clients alike:
//! reads request heads (`httparse`, zero-copy into `http` types), runs the
//! proxy's `handle` for each inside the connection's own task, streams the
//! request body to it with backpressure, and writes the response head with
//! the first body bytes in one write. Keep-alive, pipelining, `100
//! Continue`, upgrades handed to a tunnel, the header and keep-alive
//! timeouts and graceful shutdown all live here.
//!
//! Memory: between requests a connection holds its socket, its timer and
//! this task; the read buffer exists only while bytes are waiting to be
//! parsed, and nothing is kept for writing (see `write`).

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
use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;
use super::conn::Deadline;
use super::preface::Rewind;
use crate::config::Listener;
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

/// The listener's limits, as the connection applies them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    keepalive_timeout: Duration,
    max_header_bytes: usize,
}

/// Serves HTTP/1 on `io` until the client closes, a timeout passes, an
/// upgrade hands the connection to a tunnel, or shutdown drains it. `first`
/// holds bytes already read; the first head is due by `head_deadline`.
#[allow(clippy::too_many_arguments)]
pub(super) fn serve<I>(
    io: I,
    first: BytesMut,
    timer: Deadline,
    head_deadline: Instant,
    listener: &Listener,
    client: Arc<ClientInfo>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Built here rather than inside the future: an async fn keeps its
    // arguments for its whole life, and this future is most of the task an
    // idle connection holds.
    let conn = Conn {
        io,
        read: first,
        eof: false,
        out: Outbox::default(),
        timer,
        limits: Limits {
            header_timeout: listener.request_header_timeout,
            keepalive_timeout: listener.keepalive_timeout,
            max_header_bytes: listener.max_header_bytes,
        },
        shutdown,
    };
    conn.run(Wait::Head(head_deadline), client, shared)
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
    shutdown: watch::Receiver<bool>,
}

/// What the wait for the next head is bound by.
#[derive(Debug, Clone, Copy)]
enum Wait {
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
    Closed,
    Refused(HeadError),
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn<I> {
    async fn run(mut self, mut wait: Wait, client: Arc<ClientInfo>, shared: Arc<Shared>) {
        // Resolves once shutdown starts. Kept in the task for the
        // connection's life, so that waiting idle costs no registration per
        // request and no allocation of its own.
        let mut shutdown = self.shutdown.clone();
        let mut stop = std::pin::pin!(async move {
            // A dropped sender means the balancer is going away too.
            let _ = shutdown.wait_for(|&stopping| stopping).await;
        });
        let mut refused = None;
        let linger = loop {
            let head = match std::future::poll_fn(|cx| self.poll_head(cx, &mut wait, stop.as_mut())).await {
                Next::Head(head) => head,
                Next::Closed => break false,
                Next::Refused(error) => {
                    refused = Some(error);
                    break true;
                }
            };
            // Boxed: what a request needs (the proxy's future too) is not
            // part of the task an idle connection keeps.
            match Box::pin(self.exchange(head, &client, &shared)).await {
                After::KeepAlive => {
                    if self.read.is_empty() {
                        // Idle with nothing pipelined: hold no buffer while waiting.
                        self.read = BytesMut::new();
                    }
                    self.out.release();
                    wait = Wait::Idle(None);
                }
                After::Close { linger } => break linger,
                After::Abort => return,
                After::Upgrade(switch) => {
                    let Conn { io, read, .. } = self;
                    let io: Box<dyn TunnelIo> = Box::new(Rewind::new(read.freeze(), io));
                    // The tunnel may have given up meanwhile; the connection then just closes.
                    let _ = switch.send(io);
                    return;
                }
            }
        };
        if let Some(error) = refused {
            tracing::debug!(%error, client = %client.peer, "request head refused");
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
            if !self.read.is_empty() {
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
                        Wait::Head(at) | Wait::Idle(Some(at)) => *at,
                        Wait::Idle(None) => {
                            let at = Instant::now() + self.limits.keepalive_timeout;
                            *wait = Wait::Idle(Some(at));
                            at
                        }
                    };
                    if let Wait::Idle(_) = wait
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
        *self.shutdown.borrow()
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
