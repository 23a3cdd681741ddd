//! One client connection: TLS (when the listener has it), the protocol
//! (HTTP/1.1, or HTTP/2 by ALPN or prior knowledge), and hyper's state machine
//! over a socket whose reads enforce the slow-loris and keep-alive timeouts,
//! with graceful close on shutdown.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::preface::{self, Protocol};
use super::{Shared, http2};
use crate::body::{BodyError, ClientBody};
use crate::config::Listener;
use crate::observe::access_log::LoggedBody;
use crate::proxy::{self, ClientInfo};

/// Serves one accepted connection until it closes or shutdown has drained it.
pub(super) async fn serve(
    stream: TcpStream,
    client: ClientInfo,
    listener: &Listener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    // TCP_NODELAY comes from the listening socket (inherited at accept).
    let activity = Arc::new(Activity::default());
    let mut io = TimedIo::new(
        stream,
        activity.clone(),
        listener.request_header_timeout,
        listener.keepalive_timeout,
    );
    // No buffer is allocated for a connection until it has something to
    // say: an idle new connection costs its socket and this small task.
    if let Err(error) = io.readable().await {
        tracing::debug!(%error, client = %client.peer, "client connection ended before a request");
        return;
    }
    let peer = client.peer;
    let client = Arc::new(client);
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = InFlight::enter(&activity);
            let client = client.clone();
            let shared = shared.clone();
            async move {
                let response = proxy::handle(req.map(ClientBody::Hyper), &client, &shared).await;
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    // The socket becomes a tunnel with its own idle timeout.
                    guard.0.tunnel.store(true, Ordering::Release);
                }
                Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _guard: guard }))
            }
        })
    };
    let Some(tls) = &listener.tls else {
        match preface::sniff(io).await {
            Ok((Protocol::Http1, io)) => Box::pin(serve_http1(io, service, listener, peer, shutdown)).await,
            Ok((Protocol::Http2, mut io)) => {
                io.get_mut().pass_through();
                Box::pin(http2::serve(io, service, listener, &activity, shutdown)).await;
            }
            Err(error) => tracing::debug!(%error, client = %peer, "client connection ended before a request"),
        }
        return;
    };
    // The handshake gets the time a request head would: a client that
    // connects and says nothing cannot hold a connection slot for long.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
    let accept = Box::pin(acceptor.accept(io));
    let mut stream = match tokio::time::timeout(listener.request_header_timeout, accept).await {
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
        Box::pin(http2::serve(stream, service, listener, &activity, shutdown)).await;
    } else {
        io.restart_head();
        Box::pin(serve_http1(stream, service, listener, peer, shutdown)).await;
    }
}

/// HTTP/1.1 with keep-alive until the client, a timeout or shutdown ends it.
async fn serve_http1<I, S>(
    io: I,
    service: S,
    listener: &Listener,
    peer: std::net::SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = TrackedBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .max_header_size(listener.max_header_bytes)
        .header_read_timeout(None);
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    let mut draining = *shutdown.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, client = %peer, "client connection ended with an error");
                }
                return;
            }
            changed = shutdown.changed(), if !draining => {
                draining = true;
                if changed.is_err() || *shutdown.borrow() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What the requests on a connection are doing, as the socket reads need to know.
#[derive(Debug, Default)]
pub(super) struct Activity {
    pub(super) in_flight: AtomicUsize,
    /// Bumped when a response is done: the connection went back to idle.
    pub(super) finished: AtomicUsize,
    /// A read that found the connection busy waits here to be told when the
    /// last response is done, so the keep-alive clock starts on time.
    idle_waiter: AtomicWaker,
    /// Set once a response switched protocols: the socket is a tunnel now,
    /// and the HTTP timeouts no longer apply to its reads.
    tunnel: AtomicBool,
}

/// Counts a request as in flight on its connection until its response body
/// is dropped (written out or abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
        if self.0.in_flight.fetch_sub(1, Ordering::Release) == 1 {
            self.0.idle_waiter.wake();
        }
    }
}

/// A response body that keeps its request counted as in flight.
pub(super) struct TrackedBody {
    inner: LoggedBody,
    _guard: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: the client may stay silent up to `keepalive_timeout`.
    Idle,
    /// A request head has started (or the connection is new): it must be
    /// complete within `request_header_timeout`.
    Head,
    /// A request is being served; its own timeouts apply.
    Busy,
    /// Timeouts are kept by someone else (HTTP/2 watches idleness itself):
    /// reads go straight through.
    Off,
}

/// The client socket, with the timeouts that only reads can see: a request
/// head that trickles in (slow loris) fails the read; an idle keep-alive
/// connection reads as closed. One timer per connection, re-armed lazily.
pub(super) struct TimedIo {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// `activity.finished` when last looked at.
    seen_finished: usize,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    phase: Phase,
    /// When the current phase's wait ends.
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// Where `timer` is set to fire; may be earlier than `deadline`.
    armed: Instant,
}

impl TimedIo {
    pub(super) fn new(
        stream: TcpStream,
        activity: Arc<Activity>,
        header_timeout: Duration,
        keepalive_timeout: Duration,
    ) -> Self {
        let deadline = Instant::now() + header_timeout;
        TimedIo {
            stream,
            activity,
            seen_finished: 0,
            header_timeout,
            keepalive_timeout,
            phase: Phase::Head,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            armed: deadline,
        }
    }

    /// Stops enforcing timeouts: for protocols that keep their own.
    pub(super) fn pass_through(&mut self) {
        self.phase = Phase::Off;
    }

    /// Starts the wait for a request head afresh (after a TLS handshake,
    /// which had a deadline of its own).
    pub(super) fn restart_head(&mut self) {
        self.phase = Phase::Head;
        self.deadline = Instant::now() + self.header_timeout;
    }

    /// Waits until the client has sent something (or closed), within the
    /// request-header deadline, without reading anything.
    async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            // An error shows itself again on the first read.
            if self.stream.poll_read_ready(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            match self.poll_deadline(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing received within request_header_timeout",
                ))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Polls the phase's deadline: `Ready` once it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.armed > self.deadline {
                self.armed = self.deadline;
                self.timer.as_mut().reset(self.deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            // Fired early for a deadline that has since moved later.
            self.armed = self.deadline;
            self.timer.as_mut().reset(self.deadline);
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Off {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.activity.in_flight.load(Ordering::Acquire) == 0 {
                    let finished = this.activity.finished.load(Ordering::Relaxed);
                    if this.phase != Phase::Head || finished != this.seen_finished {
                        // The first bytes of a new request head.
                        this.seen_finished = finished;
                        this.phase = Phase::Head;
                        this.deadline = Instant::now() + this.header_timeout;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.activity.tunnel.load(Ordering::Acquire) {
                    return Poll::Pending;
                }
                if this.activity.in_flight.load(Ordering::Acquire) > 0 {
                    this.phase = Phase::Busy;
                    this.activity.idle_waiter.register(cx.waker());
                    // The last response may have finished meanwhile.
                    if this.activity.in_flight.load(Ordering::Acquire) > 0 {
                        return Poll::Pending;
                    }
                }
                let finished = this.activity.finished.load(Ordering::Relaxed);
                if this.phase == Phase::Busy || finished != this.seen_finished {
                    // A response went out since we last looked: idle from now.
                    this.seen_finished = finished;
                    this.phase = Phase::Idle;
                    this.deadline = Instant::now() + this.keepalive_timeout;
                }
                match this.poll_deadline(cx) {
                    Poll::Pending => Poll::Pending,
                    // An idle keep-alive connection ends as if the client closed it.
                    Poll::Ready(()) if this.phase == Phase::Idle => Poll::Ready(Ok(())),
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request header not received within request_header_timeout",
                    ))),
                }
            }
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
