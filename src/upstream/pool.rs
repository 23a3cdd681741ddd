//! Keep-alive connections to one server, pooled per worker thread: a worker
//! only ever touches its own slot, so the lock in it is never contended.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ServerState;
use crate::body::RequestBody;
use crate::server::worker::{self, PerWorker};

/// Why no connection to a server could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {address} timed out")]
    Timeout { address: String },
    #[error("connect to {address} failed")]
    Io {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {address} failed")]
    Handshake {
        address: String,
        #[source]
        source: hyper::Error,
    },
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

#[derive(Debug)]
pub(super) struct ConnPool {
    address: String,
    /// Set when the address is an IP literal; host names resolve per connect.
    socket_addr: Option<SocketAddr>,
    max_idle: AtomicUsize,
    idle_timeout_ms: AtomicU64,
    idle: Box<[PerWorker<Mutex<Vec<Idle>>>]>,
}

impl ConnPool {
    pub(super) fn new(address: String, max_idle: usize, idle_timeout: Duration, workers: usize) -> Self {
        ConnPool {
            socket_addr: address.parse().ok(),
            address,
            max_idle: AtomicUsize::new(max_idle),
            idle_timeout_ms: AtomicU64::new(idle_timeout.as_millis() as u64),
            idle: (0..workers.max(1))
                .map(|_| PerWorker::new(Mutex::new(Vec::new())))
                .collect(),
        }
    }

    /// New `keepalive` settings from a reload; idle connections stay.
    pub(super) fn reconfigure(&self, max_idle: usize, idle_timeout: Duration) {
        self.max_idle.store(max_idle, Ordering::Relaxed);
        self.idle_timeout_ms
            .store(idle_timeout.as_millis() as u64, Ordering::Relaxed);
    }

    fn slot(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[worker::current() % self.idle.len()]
    }

    fn take_idle(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        // Newest first: the warmest connection is the least likely to have
        // been closed by the server.
        let idle_timeout = Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed));
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < idle_timeout && !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    pub(super) async fn checkout(server: &Arc<ServerState>, timeout: Duration) -> Result<PooledConn, ConnectError> {
        let pool = &server.pool;
        while let Some(mut sender) = pool.take_idle() {
            // A connection whose last response just ended becomes ready as
            // soon as its task has seen the end; it cannot stay pending.
            if sender.ready().await.is_ok() {
                return Ok(PooledConn {
                    sender,
                    server: server.clone(),
                    reused: true,
                });
            }
        }
        Self::open_fresh(server, timeout).await
    }

    pub(super) async fn open_fresh(server: &Arc<ServerState>, timeout: Duration) -> Result<PooledConn, ConnectError> {
        let pool = &server.pool;
        let sender = tokio::time::timeout(timeout, pool.open())
            .await
            .map_err(|_| ConnectError::Timeout {
                address: pool.address.clone(),
            })??;
        Ok(PooledConn {
            sender,
            server: server.clone(),
            reused: false,
        })
    }

    /// A new connection that can switch protocols (WebSockets): never a
    /// pooled one, since the switch takes it over.
    pub(super) async fn open_upgradable(
        server: &Arc<ServerState>,
        timeout: Duration,
    ) -> Result<PooledConn, ConnectError> {
        let pool = &server.pool;
        let sender = tokio::time::timeout(timeout, pool.open_with(true))
            .await
            .map_err(|_| ConnectError::Timeout {
                address: pool.address.clone(),
            })??;
        Ok(PooledConn {
            sender,
            server: server.clone(),
            reused: false,
        })
    }

    async fn open(&self) -> Result<SendRequest<RequestBody>, ConnectError> {
        self.open_with(false).await
    }

    async fn open_with(&self, upgrades: bool) -> Result<SendRequest<RequestBody>, ConnectError> {
        let io_err = |source| ConnectError::Io {
            address: self.address.clone(),
            source,
        };
        let stream = match self.socket_addr {
            Some(addr) => TcpStream::connect(addr).await.map_err(io_err)?,
            None => TcpStream::connect(self.address.as_str()).await.map_err(io_err)?,
        };
        stream.set_nodelay(true).map_err(io_err)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake {
                address: self.address.clone(),
                source,
            })?;
        tokio::spawn(async move {
            let ended = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn put_back(&self, sender: SendRequest<RequestBody>) {
        let max_idle = self.max_idle.load(Ordering::Relaxed);
        if sender.is_closed() || max_idle == 0 {
            return;
        }
        let mut idle = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        while idle.len() >= max_idle {
            // Keep the newest; the oldest is the closest to its idle timeout.
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}

/// A connection checked out of a server's pool for one request.
#[derive(Debug)]
pub struct PooledConn {
    pub sender: SendRequest<RequestBody>,
    server: Arc<ServerState>,
    /// Whether it had served a request before (a reused connection the server
    /// closed meanwhile fails differently from a fresh one).
    pub reused: bool,
}

impl PooledConn {
    /// Returns the connection to the pool once its response has been read to
    /// the end; a connection dropped instead is closed.
    pub fn release(self) {
        self.server.pool.put_back(self.sender);
    }
}
