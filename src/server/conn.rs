//! One client connection: TLS (when the listener has it), the protocol
//! (HTTP/1.1 by our own codec in `h1`, or HTTP/2 through hyper, by ALPN or
//! prior knowledge), over a socket whose reads enforce the first head's
//! deadline.
//!
//! Memory: the task of an idle connection is a plain listener's HTTP/1
//! codec waiting (before its first request too) or, on a TLS listener, the
//! wait for the client's first bytes; everything else (a TLS session, an
//! HTTP/2 connection, a request) is boxed when it begins, so the task of
//! every connection is not as large as the largest of them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::closing::Closing;
use super::h1::{self, Prior};
use super::{Shared, http2};
use crate::config::Listener;
use crate::proxy::ClientInfo;

/// A listener's limits, as its connections apply them; copied when a
/// connection is accepted, so it keeps them across reloads.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
}

impl Limits {
    fn of(listener: &Listener) -> Self {
        Limits {
            header_timeout: listener.request_header_timeout,
            keepalive_timeout: listener.keepalive_timeout,
            max_header_bytes: listener.max_header_bytes,
        }
    }
}

/// Serves one accepted connection until it closes or shutdown has drained
/// it. The future is made whole here (no `async fn` around it), since an
/// `async fn` keeps its arguments for its whole life, in every idle
/// connection's task.
pub(super) fn serve(
    stream: TcpStream,
    client: Arc<ClientInfo>,
    listener: &Listener,
    shared: Arc<Shared>,
    closing: Arc<Closing>,
) -> impl Future<Output = ()> + Send + 'static + use<> {
    // TCP_NODELAY comes from the listening socket (inherited at accept).
    let limits = Limits::of(listener);
    if let Some(tls) = &listener.tls {
        let io = TimedIo::new(stream, limits.header_timeout);
        let tls = tls.server_config.clone();
        return Either::Left(serve_tls(io, tls, client, limits, shared, closing));
    }
    let due = Instant::now() + limits.header_timeout;
    let http1 = h1::serve(
        stream,
        Deadline::new(due),
        due,
        Prior::MaybeHttp2,
        limits,
        client,
        shared,
        closing,
    );
    Either::Right(http1.then(|prior| match prior {
        // Boxed: the task of every plain connection need not have room for
        // an HTTP/2 connection.
        Some(h2c) => Either::Left(Box::pin(http2::serve(
            h2c.io,
            h2c.client,
            h2c.limits,
            h2c.shared,
            h2c.closing,
        ))),
        None => Either::Right(std::future::ready(())),
    }))
}

/// A TLS connection: nothing is allocated for its session until the client
/// has sent something (within the header timeout).
// Not an `async fn`, which would keep its arguments twice (see `serve`).
#[allow(clippy::manual_async_fn)]
fn serve_tls(
    mut io: TimedIo,
    tls: Arc<rustls::ServerConfig>,
    client: Arc<ClientInfo>,
    limits: Limits,
    shared: Arc<Shared>,
    closing: Arc<Closing>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        if let Err(error) = io.readable().await {
            tracing::debug!(%error, client = %client.peer, "client connection ended before a request");
            return;
        }
        // Boxed: an idle connection's task need not have room for a TLS session.
        Box::pin(serve_tls_session(io, tls, client, limits, shared, closing)).await;
    }
}

/// The TLS handshake, then HTTP/2 or HTTP/1.1 as ALPN chose.
async fn serve_tls_session(
    io: TimedIo,
    tls: Arc<rustls::ServerConfig>,
    client: Arc<ClientInfo>,
    limits: Limits,
    shared: Arc<Shared>,
    closing: Arc<Closing>,
) {
    let peer = client.peer;
    // The handshake gets the time a request head would: a client that
    // connects and says nothing cannot hold a connection slot for long.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut stream = match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%error, client = %peer, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "TLS handshake not done within request_header_timeout");
            return;
        }
    };
    let (io, session) = stream.get_mut();
    if session.alpn_protocol() == Some(crate::tls::ALPN_H2) {
        io.pass_through();
        http2::serve(stream, client, limits, shared, closing).await;
    } else {
        // The first head is due a header timeout after the handshake.
        let due = Instant::now() + limits.header_timeout;
        let Some(timer) = io.take_timer() else { return };
        let http1 = h1::serve(stream, timer, due, Prior::Http1Only, limits, client, shared, closing);
        // Only a plain connection is handed back for HTTP/2.
        let _ = http1.await;
    }
}

/// The client socket until a protocol takes it over: its reads fail once
/// the first request head (or TLS handshake) is overdue, so a client that
/// connects and trickles bytes cannot hold the connection. HTTP/1 then
/// takes the timer and keeps its own timeouts; HTTP/2 watches idleness.
pub(super) struct TimedIo {
    stream: TcpStream,
    /// When the head is due; `None` once timeouts are kept elsewhere.
    due: Option<Instant>,
    timer: Option<Deadline>,
}

impl TimedIo {
    pub(super) fn new(stream: TcpStream, header_timeout: Duration) -> Self {
        let due = Instant::now() + header_timeout;
        TimedIo {
            stream,
            due: Some(due),
            timer: Some(Deadline::new(due)),
        }
    }

    /// Stops enforcing timeouts: for protocols that keep their own.
    pub(super) fn pass_through(&mut self) {
        self.due = None;
    }

    /// The timer, for the protocol that keeps the timeouts from now on.
    pub(super) fn take_timer(&mut self) -> Option<Deadline> {
        self.due = None;
        self.timer.take()
    }

    /// Waits until the client has sent something (or closed), within the
    /// request-header deadline, without reading anything. Asks the socket
    /// (a peek) rather than trusting readiness: tokio takes an accepted
    /// socket to be readable before anything has come.
    async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut byte = [std::mem::MaybeUninit::uninit()];
            // An error shows itself again on the first read.
            if self.stream.poll_peek(cx, &mut ReadBuf::uninit(&mut byte)).is_ready() {
                return Poll::Ready(Ok(()));
            }
            match self.poll_due(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing received within request_header_timeout",
                ))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match (self.due, &mut self.timer) {
            (Some(due), Some(timer)) => timer.poll_until(cx, due),
            _ => Poll::Pending,
        }
    }
}

/// One timer for a connection's successive deadlines, re-armed lazily: a
/// deadline later than the one armed waits for the early firing instead of
/// touching the timer wheel, so a busy keep-alive connection rarely does.
/// Where it is armed is the sleep's own deadline: nothing kept beside it.
pub(super) struct Deadline(Pin<Box<Sleep>>);

impl Deadline {
    pub(super) fn new(at: Instant) -> Self {
        Deadline(Box::pin(tokio::time::sleep_until(at)))
    }

    /// Ready once `at` has passed.
    pub(super) fn poll_until(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        let sleep = &mut self.0;
        loop {
            if sleep.deadline() > at {
                sleep.as_mut().reset(at);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= at {
                return Poll::Ready(());
            }
            // Fired early for a deadline that has since moved later.
            sleep.as_mut().reset(at);
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => match this.poll_due(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request header not received within request_header_timeout",
                ))),
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size<F>(_: impl FnOnce(TcpStream, Arc<ClientInfo>, &Listener, Arc<Shared>, Arc<Closing>) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What `serve` makes is the whole task of a plain connection, idle
    /// ones included: growing it grows every idle connection, so it is
    /// pinned here. tokio adds about 100 bytes and rounds the task up to a
    /// multiple of 128: up to ~400 bytes, the task takes 512.
    #[test]
    fn the_task_of_an_idle_connection_stays_small() {
        let bytes = output_size(serve);
        assert!(bytes <= 400, "{bytes} bytes");
    }
}
