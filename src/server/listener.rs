//! Listening sockets and the accept loop. Every worker gets its own socket on
//! each listener address (`SO_REUSEPORT`), so the kernel spreads connections
//! over workers and no accept lock is shared across cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{Semaphore, watch};

use super::per_ip::{PerIp, PerIpGuard};
use super::proxy_protocol::{self, Header};
use super::{ConnTracker, ListenerSlot, Shared};
use crate::observe::metrics::ListenerStats;
use crate::proxy::ClientInfo;

/// What connections accepted on a socket get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The listener itself: the proxy.
    Proxy,
    /// The listener's `redirect_http_from`: a 308 to https on this port.
    Redirect { https_port: u16 },
}

/// One worker's share of a listener: its socket and what it needs to serve.
#[derive(Debug)]
pub(crate) struct WorkerListener {
    pub slot: ListenerSlot,
    pub role: Role,
    pub socket: std::net::TcpListener,
    /// `max_connections`, shared by every worker: beyond it accepting pauses
    /// and new connections wait in the kernel backlog.
    pub slots: Arc<Semaphore>,
    pub stats: Arc<ListenerStats>,
    /// `max_connections_per_ip`.
    pub per_ip: Arc<PerIp>,
    /// Turns true (or is dropped) when the listener closes: at shutdown, or
    /// when a reload removes it. Its connections close gracefully then.
    pub stop: watch::Receiver<bool>,
}

/// What an accepted connection holds until it (and any tunnel it became)
/// is gone.
struct Held {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _per_ip: Option<PerIpGuard>,
    _conn: super::ConnGuard,
    stats: Arc<ListenerStats>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client's address: the peer's, or on a `proxy_protocol` listener the
/// one its PROXY header carries. `None`: no valid header in time (closed).
async fn stream_peer(
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    listener: &crate::config::Listener,
    stats: &ListenerStats,
) -> Option<SocketAddr> {
    if !listener.proxy_protocol {
        return Some(peer);
    }
    match proxy_protocol::read(stream, listener.request_header_timeout).await {
        Ok(Header::Proxied(client)) => Some(client),
        Ok(Header::Local) => Some(peer),
        Err(error) => {
            stats.refused_proxy_protocol.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, %error, "no valid PROXY protocol header: connection closed");
            None
        }
    }
}

/// `max_connections_per_ip` for the client's address: over its limit, the
/// connection is closed before anything is read from it.
fn admit(client: Option<SocketAddr>, per_ip: &Arc<PerIp>, stats: &ListenerStats) -> Option<(SocketAddr, PerIpGuard)> {
    let client = client?;
    match per_ip.try_enter(client.ip()) {
        Some(guard) => Some((client, guard)),
        None => {
            stats.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%client, "max_connections_per_ip reached: connection refused");
            None
        }
    }
}

/// Binds `addr` `workers` times. With port 0, the first bind picks the port
/// and the others join it.
pub(crate) fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let mut sockets = Vec::with_capacity(workers);
    let mut bound = addr;
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(bound), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&bound.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        bound = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok((bound, sockets))
}

/// Accepts connections on one worker's socket until the listener stops.
pub(super) async fn accept_loop(l: WorkerListener, shared: Arc<Shared>, tracker: Arc<ConnTracker>) {
    let WorkerListener {
        slot,
        role,
        socket,
        slots,
        stats,
        per_ip,
        mut stop,
    } = l;
    let listener = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "cannot register listening socket");
            return;
        }
    };
    if *stop.borrow_and_update() {
        return;
    }
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // At the limit, this worker stops accepting until a slot frees: the
        // connection in hand waits, and the others wait in the backlog. Taking
        // the slot only with a connection in hand keeps a worker with nothing
        // to accept from holding a slot another worker needs.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        let stop = stop.clone();
        let guard = tracker.enter();
        let stats = stats.clone();
        stats.total.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        let per_ip = per_ip.clone();
        tokio::spawn(async move {
            let snapshot = shared.snapshot.load_full();
            let Some(id) = snapshot.listener_id(slot) else {
                stats.active.fetch_sub(1, Ordering::Relaxed);
                return;
            };
            let listener = &snapshot.config.listeners[id.0];
            let mut held = Held {
                _permit: permit,
                _per_ip: None,
                _conn: guard,
                stats,
            };
            let Some(peer) = admit(
                stream_peer(&mut stream, peer, listener, &held.stats).await,
                &per_ip,
                &held.stats,
            ) else {
                return;
            };
            held._per_ip = Some(peer.1);
            match role {
                Role::Proxy => {
                    let mut client = ClientInfo::new(slot, peer.0, Box::new(held));
                    client.tls = listener.tls.is_some();
                    super::conn::serve(stream, client, listener, shared.clone(), stop).await;
                }
                Role::Redirect { https_port } => {
                    // Boxed: its HTTP connection would otherwise make every
                    // connection task of the worker as large as itself.
                    Box::pin(super::redirect::serve(stream, https_port, listener, stop)).await;
                    drop(held);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted sockets inherit TCP_NODELAY from the listening one (Linux
    /// copies the option at accept), so connections need no setsockopt of
    /// their own: one system call less per connection.
    #[test]
    fn accepted_connections_inherit_nodelay() {
        let (addr, sockets) = bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        sockets[0].set_nonblocking(false).unwrap();
        let (accepted, _) = sockets[0].accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
