//! Listening sockets and the accept loop. Every worker gets its own socket on
//! each listener address (`SO_REUSEPORT`), so the kernel spreads connections
//! over workers and no accept lock is shared across cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::Semaphore;

use super::closing::Closing;
use super::per_ip::{PerIp, PerIpGuard};
use super::proxy_protocol::{self, Header};
use super::{ConnTracker, ListenerSlot, Shared};
use crate::observe::metrics::ListenerStats;
use crate::proxy::ClientInfo;
use std::future::Future;

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
    /// Raised when the listener closes: at shutdown, or when a reload
    /// removes it. Its connections close gracefully then.
    pub closing: Arc<Closing>,
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

/// The client's address on a `proxy_protocol` listener: the one its PROXY
/// header carries (the peer's for a LOCAL header). `None`: no valid header
/// in time (closed).
async fn proxied_peer(
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    listener: &crate::config::Listener,
    stats: &ListenerStats,
) -> Option<SocketAddr> {
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
fn admit(client: SocketAddr, per_ip: &Arc<PerIp>, stats: &ListenerStats) -> Option<PerIpGuard> {
    match per_ip.try_enter(client.ip()) {
        Some(guard) => Some(guard),
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
        closing,
    } = l;
    let listener = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "cannot register listening socket");
            return;
        }
    };
    if closing.is_raised() {
        return;
    }
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = closing.raised() => return,
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
            () = closing.raised() => return,
        };
        let guard = tracker.enter();
        stats.total.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        let held = Held {
            _permit: permit,
            _per_ip: None,
            _conn: guard,
            stats: stats.clone(),
        };
        let mut accepted = Accepted {
            stream,
            peer,
            slot,
            held,
        };
        let snapshot = shared.snapshot.load_full();
        let Some(id) = snapshot.listener_id(slot) else { continue };
        let listener = &snapshot.config.listeners[id.0];
        if role == Role::Proxy && !listener.proxy_protocol {
            // Spawned as it is: the task of an idle connection is no larger
            // than what `conn::serve` makes.
            if let Some(connection) = serve(accepted, listener, &per_ip, &shared, &closing) {
                tokio::spawn(connection);
            }
            continue;
        }
        let (shared, per_ip, closing) = (shared.clone(), per_ip.clone(), closing.clone());
        tokio::spawn(async move {
            let listener = &snapshot.config.listeners[id.0];
            if listener.proxy_protocol {
                let (stream, stats) = (&mut accepted.stream, &accepted.held.stats);
                let Some(peer) = proxied_peer(stream, accepted.peer, listener, stats).await else {
                    return;
                };
                accepted.peer = peer;
            }
            match role {
                // A task of its own, the one a connection without the header
                // gets; this one, sized for the header read, ends here.
                Role::Proxy => {
                    if let Some(connection) = serve(accepted, listener, &per_ip, &shared, &closing) {
                        tokio::spawn(connection);
                    }
                }
                Role::Redirect { https_port } => {
                    let Accepted {
                        stream, peer, mut held, ..
                    } = accepted;
                    let Some(guard) = admit(peer, &per_ip, &held.stats) else {
                        return;
                    };
                    held._per_ip = Some(guard);
                    super::redirect::serve(stream, https_port, listener, &closing).await;
                    drop(held);
                }
            }
        });
    }
}

/// An accepted connection, counted, before it has been admitted.
struct Accepted {
    stream: tokio::net::TcpStream,
    /// The client's address.
    peer: SocketAddr,
    slot: ListenerSlot,
    held: Held,
}

/// The connection served through the proxy, once `max_connections_per_ip`
/// admits it (`None`: refused, closed).
fn serve(
    accepted: Accepted,
    listener: &crate::config::Listener,
    per_ip: &Arc<PerIp>,
    shared: &Arc<Shared>,
    closing: &Arc<Closing>,
) -> Option<impl Future<Output = ()> + Send + 'static + use<>> {
    let Accepted {
        stream,
        peer,
        slot,
        mut held,
    } = accepted;
    held._per_ip = Some(admit(peer, per_ip, &held.stats)?);
    let mut client = ClientInfo::new(slot, peer, Box::new(held));
    client.tls = listener.tls.is_some();
    Some(super::conn::serve(
        stream,
        Arc::new(client),
        listener,
        shared.clone(),
        closing.clone(),
    ))
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
