//! Listening sockets and the accept loop. Every worker gets its own socket on
//! each listener address (`SO_REUSEPORT`), so the kernel spreads connections
//! over workers and no accept lock is shared across cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{Semaphore, watch};

use super::{ConnTracker, Shared};
use crate::config::ListenerId;
use crate::proxy::ClientInfo;

/// What connections accepted on a socket get.
#[derive(Debug, Clone, Copy)]
pub(super) enum Role {
    /// The listener itself: the proxy.
    Proxy,
    /// The listener's `redirect_http_from`: a 308 to https on this port.
    Redirect { https_port: u16 },
}

/// One configured listener (or its redirect listener), bound once per worker.
#[derive(Debug)]
pub(super) struct BoundListener {
    pub id: ListenerId,
    pub role: Role,
    pub name: String,
    pub addr: SocketAddr,
    /// One socket per worker, taken by that worker when it starts.
    pub sockets: Vec<std::net::TcpListener>,
    /// `max_connections`, shared by every worker: beyond it accepting pauses
    /// and new connections wait in the kernel backlog.
    pub slots: Arc<Semaphore>,
}

/// Binds `addr` `workers` times. With port 0, the first bind picks the port
/// and the others join it.
pub(super) fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
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

/// Accepts connections on one worker's socket until shutdown.
pub(super) async fn accept_loop(
    socket: std::net::TcpListener,
    id: ListenerId,
    role: Role,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    tracker: Arc<ConnTracker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "cannot register listening socket");
            return;
        }
    };
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
            _ = shutdown.changed() => return,
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
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let guard = tracker.enter();
        let stats = match role {
            Role::Proxy => shared.listener_stats.get(id.0).map(|(_, s)| s.clone()),
            Role::Redirect { .. } => None,
        };
        if let Some(stats) = &stats {
            stats.total.fetch_add(1, Ordering::Relaxed);
            stats.active.fetch_add(1, Ordering::Relaxed);
        }
        tokio::spawn(async move {
            let snapshot = shared.snapshot.load_full();
            let Some(listener) = snapshot.config.listeners.get(id.0) else {
                return;
            };
            match role {
                Role::Proxy => {
                    let mut client = ClientInfo::new(id, peer);
                    client.tls = listener.tls.is_some();
                    super::conn::serve(stream, client, listener, shared.clone(), shutdown).await;
                }
                Role::Redirect { https_port } => super::redirect::serve(stream, https_port, listener, shutdown).await,
            }
            if let Some(stats) = stats {
                stats.active.fetch_sub(1, Ordering::Relaxed);
            }
            drop(permit);
            drop(guard);
        });
    }
}
