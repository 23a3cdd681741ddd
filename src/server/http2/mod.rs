//! HTTP/2 from clients (ALPN `h2` on TLS, prior knowledge on plain
//! listeners): every stream is its own request through the proxy, balanced
//! on its own; flow control per stream, so a client that reads one response
//! slowly holds back only that stream; GOAWAY when the connection goes idle
//! or the balancer shuts down.
//!
//! Built on the `h2` crate directly. A connection is one task: it drives
//! the connection's frames and polls its streams' work, each stream woken
//! on its own (a `FuturesUnordered`). Spawning a task per stream, as hyper's
//! server does, cost a task allocation, scheduling and a copy of the stream's
//! state per request.

mod stream;

pub use stream::RequestStream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::Shared;
use super::closing::Closing;
use super::conn::Limits;
use crate::proxy::ClientInfo;

/// Streams a client may have open at once (nginx's default too).
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// How much of a request body a client may send ahead on one stream before
/// the upstream has taken it.
const STREAM_WINDOW_BYTES: u32 = 256 * 1024;
/// The same over all of a connection's streams: larger than one stream's,
/// so a few stalled uploads do not stop the others; it also bounds what one
/// connection can make the balancer buffer.
const CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// Response data a connection may hold for clients that read slowly.
const MAX_SEND_BUFFER_BYTES: usize = 400 * 1024;
/// Streams a client may make us reset for its errors before the connection
/// is closed (a client that only provokes errors costs work for nothing).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Serves HTTP/2 on `io` (the preface not yet read) until the client
/// closes, the connection has been idle too long, or shutdown has drained
/// it; each stream a request through the proxy.
pub(super) async fn serve<I>(io: I, client: Arc<ClientInfo>, limits: Limits, shared: Arc<Shared>, closing: Arc<Closing>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_send_buffer_size(MAX_SEND_BUFFER_BYTES)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout(limits.header_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            tracing::debug!(%error, client = %client.peer, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %client.peer, "HTTP/2 handshake not done within request_header_timeout");
            return;
        }
    };
    // Boxed, each built in place: the proxy's future is ~5 KiB, and the set
    // would otherwise copy it into its own allocation.
    let mut streams = FuturesUnordered::new();
    let mut idle = IdleWatch::new(&limits);
    let mut timer = std::pin::pin!(tokio::time::sleep_until(idle.next_check));
    let mut closed = std::pin::pin!(closing.raised());
    let mut draining = closing.is_raised();
    if draining {
        conn.graceful_shutdown();
    }
    std::future::poll_fn(|cx| {
        loop {
            // The streams first, so that what they queue goes out when the
            // connection is polled next, in this same turn.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                idle.finished += 1;
            }
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let (client, shared) = (client.clone(), shared.clone());
                    let work: Pin<Box<_>> = Box::into_pin(Box::write(
                        Box::new_uninit(),
                        stream::serve(req, respond, client, shared),
                    ));
                    streams.push(work);
                    continue;
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "HTTP/2 client connection ended with an error");
                    return Poll::Ready(());
                }
                // Closed, or drained after GOAWAY.
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => {}
            }
            if draining {
                return Poll::Pending;
            }
            if closed.as_mut().poll(cx).is_ready() {
                // GOAWAY: streams already open finish, no new ones start.
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
            if timer.as_mut().poll(cx).is_ready() {
                if idle.has_been_idle(streams.len()) {
                    draining = true;
                    conn.graceful_shutdown();
                } else {
                    timer.as_mut().reset(idle.next_check);
                }
                continue;
            }
            return Poll::Pending;
        }
    })
    .await;
}

/// Decides when an HTTP/2 connection has had nothing to do for long enough:
/// `request_header_timeout` before its first request, `keepalive_timeout`
/// after. Checked once per period (so idleness is noticed between one and
/// two periods after the last response) rather than timed on every request.
struct IdleWatch {
    keepalive_timeout: Duration,
    /// Streams finished so far, and as of the previous check.
    finished: u64,
    seen_finished: u64,
    next_check: Instant,
}

impl IdleWatch {
    fn new(limits: &Limits) -> Self {
        IdleWatch {
            keepalive_timeout: limits.keepalive_timeout,
            finished: 0,
            seen_finished: 0,
            next_check: Instant::now() + limits.header_timeout,
        }
    }

    /// True when no stream was open or finished since the previous check;
    /// otherwise schedules the next one.
    fn has_been_idle(&mut self, open: usize) -> bool {
        if open == 0 && self.finished == self.seen_finished {
            return true;
        }
        self.seen_finished = self.finished;
        self.next_check = Instant::now() + self.keepalive_timeout;
        false
    }
}
