//! WebSockets and any other HTTP/1.1 `Upgrade`: the upgrade request is routed
//! and balanced like any other; once the upstream answers 101, bytes are
//! copied both ways until either side closes (a half-close is passed on) or
//! nothing moves for the route's `read_timeout` (nginx's rule for proxied
//! WebSockets). A tunnel belongs to its client connection, not to a config
//! snapshot, so reloads never cut it; shutdown lets it run up to
//! `shutdown_grace`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, header};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ClientInfo;
use crate::upstream::health::now_ms;
use crate::upstream::{ActiveGuard, ServerState};

/// A byte stream a tunnel runs over: either side's connection once it has
/// switched protocols (with any bytes read past the switch put back in front).
pub trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelIo for T {}

type Switch = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn TunnelIo>>> + Send>>;

/// One side's connection, once its switch of protocols has completed: the
/// client's when its 101 has been written, the upstream's when its 101 has
/// been read. Whichever protocol code owns the connection makes one; it
/// travels in a response's extensions (hence `Clone`), and is taken once.
#[derive(Clone)]
pub struct Pending(Arc<Mutex<Option<Switch>>>);

impl Pending {
    pub fn new(switch: impl Future<Output = std::io::Result<Box<dyn TunnelIo>>> + Send + 'static) -> Self {
        Pending(Arc::new(Mutex::new(Some(Box::pin(switch)))))
    }

    /// A switch that cannot happen: the request's protocol has none.
    fn unavailable() -> Self {
        Pending::new(async { Err(std::io::Error::other("this protocol cannot switch")) })
    }

    /// The connection, once switched (an error if it never switches or was
    /// already taken).
    async fn switched(self) -> std::io::Result<Box<dyn TunnelIo>> {
        let switch = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match switch {
            Some(switch) => switch.await,
            None => Err(std::io::Error::other("connection already taken")),
        }
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tunnel::Pending")
    }
}

/// The client's side of an upgrade request: the switch its protocol code
/// announced in the request's extensions (HTTP/1.1 does; HTTP/2 forbids
/// `Upgrade`, so its requests never get this far).
pub(super) fn client_side<B>(req: &mut http::Request<B>) -> Pending {
    req.extensions_mut()
        .remove::<Pending>()
        .unwrap_or_else(Pending::unavailable)
}

/// Tunnels open now and ever, for the metrics.
#[derive(Debug, Default)]
pub struct TunnelStats {
    pub active: AtomicU64,
    pub total: AtomicU64,
}

/// The protocol a request asks to switch to, if any. The HTTP/1 codec keeps
/// `Upgrade` only when `Connection` has the `upgrade` option (and drops
/// every other hop-by-hop field); HTTP/2 forbids the field.
pub(super) fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(header::UPGRADE).cloned()
}

/// Puts back the two headers that ask the upstream to switch protocols
/// (hop-by-hop, so stripped with the others).
pub(super) fn ask_upstream(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Passes the upstream's answer to the switch on to the client.
pub(super) fn answer_client(headers: &mut HeaderMap, protocol: Option<HeaderValue>) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(protocol) = protocol {
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Runs the tunnel once both sides have switched: the client's connection
/// (`client`) and the upstream's (`upstream`). Counts it on the server, as
/// an in-flight request, for as long as it lives, so least_conn sees it.
pub(super) fn spawn(
    client: Pending,
    upstream: Pending,
    server: Arc<ServerState>,
    conn: Arc<ClientInfo>,
    stats: Arc<TunnelStats>,
    idle: Duration,
) {
    let active = ActiveGuard::new(server.clone());
    stats.total.fetch_add(1, Ordering::Relaxed);
    stats.active.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let (client_io, upstream_io) = tokio::join!(client.switched(), upstream.switched());
        match (client_io, upstream_io) {
            (Ok(c), Ok(u)) => {
                let last = Arc::new(AtomicU64::new(now_ms()));
                let mut c = Watched::new(c, last.clone());
                let mut u = Watched::new(u, last.clone());
                let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
                tokio::pin!(copy);
                let idle_ms = idle.as_millis() as u64;
                loop {
                    let quiet_for = now_ms().saturating_sub(last.load(Ordering::Relaxed));
                    if quiet_for >= idle_ms {
                        tracing::debug!(client = %conn.peer, server = %server.address, "tunnel idle: closed");
                        break;
                    }
                    let wait = Duration::from_millis(idle_ms - quiet_for);
                    tokio::select! {
                        result = &mut copy => {
                            if let Err(error) = result {
                                tracing::debug!(client = %conn.peer, %error, "tunnel ended with an error");
                            }
                            break;
                        }
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
            (c, u) => {
                tracing::debug!(
                    client = %conn.peer,
                    client_ok = c.is_ok(),
                    upstream_ok = u.is_ok(),
                    "upgrade did not complete"
                );
            }
        }
        stats.active.fetch_sub(1, Ordering::Relaxed);
        drop(active);
        drop(conn);
    });
}

/// An I/O object that stamps `last` whenever bytes move through it.
struct Watched<T> {
    inner: T,
    last: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    fn new(inner: T, last: Arc<AtomicU64>) -> Self {
        Watched { inner, last }
    }

    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
