//! One client connection: TLS (when the listener has it), the protocol
//! (HTTP/1.1 by our own codec in `h1`, or HTTP/2 through hyper, by ALPN or
//! prior knowledge), over a socket whose reads enforce the first head's
//! deadline.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::preface::{self, Protocol};
use super::{Shared, h1, http2};
use crate::body::{BodyError, ClientBody};
use crate::config::Listener;
use crate::observe::access_log::LoggedBody;
use crate::proxy::{self, ClientInfo};

/// Serves one accepted connection until it closes or shutdown has drained it.
pub(super) fn serve<'a>(
    stream: TcpStream,
    client: ClientInfo,
    listener: &'a Listener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'a {
    // TCP_NODELAY comes from the listening socket (inherited at accept).
    // Made before the future, which would otherwise keep room for the
    // arguments as well as for what they become, in every idle connection.
    let io = TimedIo::new(stream, listener.request_header_timeout);
    serve_io(io, Arc::new(client), listener, shared, shutdown)
}

async fn serve_io(
    mut io: TimedIo,
    client: Arc<ClientInfo>,
    listener: &Listener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    // No buffer is allocated for a connection until it has something to
    // say: an idle new connection costs its socket and this small task.
    if let Err(error) = io.readable().await {
        tracing::debug!(%error, client = %client.peer, "client connection ended before a request");
        return;
    }
    if let Some(tls) = &listener.tls {
        // Boxed: a plain connection's task need not have room for a TLS session.
        return Box::pin(serve_tls(io, tls, client, listener, shared, shutdown)).await;
    }
    let sniffed = preface::sniff(io).await;
    let (protocol, first, mut io) = match sniffed {
        Ok(sniffed) => sniffed,
        Err(error) => {
            tracing::debug!(%error, client = %client.peer, "client connection ended before a request");
            return;
        }
    };
    if protocol == Protocol::Http2 {
        io.pass_through();
        let io = preface::Rewind::new(first.freeze(), io);
        return Box::pin(serve_http2(io, client, listener, shared, shutdown)).await;
    }
    let (stream, timer, due) = io.into_parts();
    h1::serve(stream, first, timer, due, listener, client, shared, shutdown).await;
}

/// TLS, then HTTP/2 or HTTP/1.1 as ALPN chose.
async fn serve_tls(
    io: TimedIo,
    tls: &crate::config::ListenerTls,
    client: Arc<ClientInfo>,
    listener: &Listener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let peer = client.peer;
    // The handshake gets the time a request head would: a client that
    // connects and says nothing cannot hold a connection slot for long.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
    let mut stream = match tokio::time::timeout(listener.request_header_timeout, acceptor.accept(io)).await {
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
        serve_http2(stream, client, listener, shared, shutdown).await;
    } else {
        // The first head is due a header timeout after the handshake.
        let due = Instant::now() + listener.request_header_timeout;
        let Some(timer) = io.take_timer() else { return };
        h1::serve(
            stream,
            bytes::BytesMut::new(),
            timer,
            due,
            listener,
            client,
            shared,
            shutdown,
        )
        .await;
    }
}

/// HTTP/2 through hyper, each stream a request through the proxy.
async fn serve_http2<I>(
    io: I,
    client: Arc<ClientInfo>,
    listener: &Listener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = InFlight::enter(&activity);
            let client = client.clone();
            let shared = shared.clone();
            async move {
                let response = proxy::handle(req.map(ClientBody::Hyper), &client, &shared).await;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _guard: guard }))
            }
        })
    };
    http2::serve(io, service, listener, &activity, shutdown).await;
}

/// What the requests on an HTTP/2 connection are doing, as its idle watch
/// needs to know.
#[derive(Debug, Default)]
pub(super) struct Activity {
    pub(super) in_flight: AtomicUsize,
    /// Bumped when a response is done: the connection went back to idle.
    pub(super) finished: AtomicUsize,
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
        self.0.in_flight.fetch_sub(1, Ordering::Release);
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

    /// The socket, its timer and when the first head is due.
    pub(super) fn into_parts(self) -> (TcpStream, Deadline, Instant) {
        let due = self.due.unwrap_or_else(Instant::now);
        let timer = self.timer.unwrap_or_else(|| Deadline::new(due));
        (self.stream, timer, due)
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
