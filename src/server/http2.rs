//! HTTP/2 from clients (ALPN `h2` on TLS, prior knowledge on plain
//! listeners): every stream is its own request through the proxy, balanced
//! on its own; flow control per stream, so a client that reads one response
//! slowly holds back only that stream; GOAWAY when the connection goes idle
//! or the balancer shuts down.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::Shared;
use super::closing::Closing;
use super::conn::Limits;
use crate::body::{BodyError, ClientBody};
use crate::observe::access_log::LoggedBody;
use crate::proxy::{self, ClientInfo};

/// Streams a client may have open at once (nginx's default too).
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// How much of a request body a client may send ahead on one stream before
/// the upstream has taken it.
const STREAM_WINDOW_BYTES: u32 = 256 * 1024;
/// The same over all of a connection's streams: larger than one stream's,
/// so a few stalled uploads do not stop the others; it also bounds what one
/// connection can make the balancer buffer.
const CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// Serves HTTP/2 on `io` (the preface not yet read) until the client
/// closes, the connection has been idle too long, or shutdown has drained
/// it; each stream a request through the proxy.
pub(super) async fn serve<I>(io: I, client: Arc<ClientInfo>, limits: Limits, shared: Arc<Shared>, closing: Arc<Closing>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = InFlight::enter(&activity);
            let client = client.clone();
            let shared = shared.clone();
            // Boxed: hyper moves each stream's future several times (into its
            // stream state, to the executor, into a task, and tokio again
            // when the task finishes); the proxy's future is ~5 KiB, a
            // pointer is not. The box is allocated before the future is made
            // so that it is built in place: `Box::pin(async { .. })` built it
            // on the stack and copied all 5 KiB, twice.
            let slot = Box::new_uninit();
            Box::into_pin(Box::write(slot, async move {
                let response = proxy::handle(req.map(ClientBody::Hyper), proxy::Carried::MAYBE, &client, &shared).await;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _guard: guard }))
            }))
        })
    };
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut idle = IdleWatch::new(activity, limits);
    let timer = tokio::time::sleep_until(idle.next_check);
    tokio::pin!(timer);
    let mut closed = std::pin::pin!(closing.raised());
    let mut draining = closing.is_raised();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "HTTP/2 client connection ended with an error");
                }
                return;
            }
            () = closed.as_mut(), if !draining => {
                draining = true;
                // GOAWAY: streams already open finish, no new ones start.
                conn.as_mut().graceful_shutdown();
            }
            () = &mut timer, if !draining => {
                if idle.has_been_idle() {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    timer.as_mut().reset(idle.next_check);
                }
            }
        }
    }
}

/// What the requests on an HTTP/2 connection are doing, as its idle watch
/// needs to know.
#[derive(Debug, Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// Bumped when a response is done: the connection went back to idle.
    finished: AtomicUsize,
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
struct TrackedBody {
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

/// Decides when an HTTP/2 connection has had nothing to do for long enough:
/// `request_header_timeout` before its first request, `keepalive_timeout`
/// after. Checked once per period (so idleness is noticed between one and
/// two periods after the last response) rather than timed on every request.
struct IdleWatch {
    activity: Arc<Activity>,
    keepalive_timeout: std::time::Duration,
    /// `activity.finished` at the previous check.
    seen_finished: usize,
    next_check: Instant,
}

impl IdleWatch {
    fn new(activity: Arc<Activity>, limits: Limits) -> Self {
        IdleWatch {
            activity,
            keepalive_timeout: limits.keepalive_timeout,
            seen_finished: 0,
            next_check: Instant::now() + limits.header_timeout,
        }
    }

    /// True when no request was in flight or finished since the previous
    /// check; otherwise schedules the next one.
    fn has_been_idle(&mut self) -> bool {
        let finished = self.activity.finished.load(Ordering::Relaxed);
        if self.activity.in_flight.load(Ordering::Acquire) == 0 && finished == self.seen_finished {
            return true;
        }
        self.seen_finished = finished;
        self.next_check = Instant::now() + self.keepalive_timeout;
        false
    }
}
