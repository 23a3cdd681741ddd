//! Keep-alive connections to one server, pooled per worker thread: a worker
//! only ever touches its own slot, so the lock in it is not contended (the
//! resolver thread takes it only when a host name's addresses change).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ServerState;
use super::endpoint::Endpoints;
use super::h1::Conn;
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
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
    peer: SocketAddr,
    /// The server's address generation when `peer` was last known current.
    generation: u64,
}

#[derive(Debug)]
pub(super) struct ConnPool {
    address: String,
    max_idle: AtomicUsize,
    idle_timeout_ms: AtomicU64,
    idle: Box<[PerWorker<Mutex<VecDeque<Idle>>>]>,
}

impl ConnPool {
    pub(super) fn new(address: String, max_idle: usize, idle_timeout: Duration, workers: usize) -> Self {
        ConnPool {
            address,
            max_idle: AtomicUsize::new(max_idle),
            idle_timeout_ms: AtomicU64::new(idle_timeout.as_millis() as u64),
            idle: (0..workers.max(1))
                .map(|_| PerWorker::new(Mutex::new(VecDeque::new())))
                .collect(),
        }
    }

    /// New `keepalive` settings from a reload; idle connections stay.
    pub(super) fn reconfigure(&self, max_idle: usize, idle_timeout: Duration) {
        self.max_idle.store(max_idle, Ordering::Relaxed);
        self.idle_timeout_ms
            .store(idle_timeout.as_millis() as u64, Ordering::Relaxed);
    }

    fn slot(&self) -> &Mutex<VecDeque<Idle>> {
        &self.idle[worker::current() % self.idle.len()]
    }

    /// The newest usable idle connection at `now`; one to an address the
    /// server no longer has is closed, even before the resolver's sweep gets
    /// to it.
    fn take_idle(&self, endpoints: &Endpoints, now: Instant) -> Option<Idle> {
        let current = endpoints.generation();
        let mut idle = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        // Newest first: the warmest connection is the least likely to have
        // been closed by the server.
        let idle_timeout = Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed));
        while let Some(mut idle_conn) = idle.pop_back() {
            let usable = now.saturating_duration_since(idle_conn.since) < idle_timeout && idle_conn.conn.is_usable();
            if usable && (idle_conn.generation == current || endpoints.contains(idle_conn.peer)) {
                return Some(Idle {
                    generation: current,
                    ..idle_conn
                });
            }
        }
        None
    }

    /// An idle connection (`now` is the time, which the caller has just
    /// read), or a new one.
    pub(super) async fn checkout(
        server: &Arc<ServerState>,
        timeout: Duration,
        now: Instant,
    ) -> Result<PooledConn, ConnectError> {
        let pool = &server.pool;
        if let Some(idle) = pool.take_idle(&server.endpoints, now) {
            return Ok(PooledConn {
                conn: idle.conn,
                server: server.clone(),
                reused: true,
                peer: idle.peer,
                generation: idle.generation,
            });
        }
        Self::open_fresh(server, timeout).await
    }

    pub(super) async fn open_fresh(server: &Arc<ServerState>, timeout: Duration) -> Result<PooledConn, ConnectError> {
        let pool = &server.pool;
        // Read before connecting: a change meanwhile only costs a check on release.
        let generation = server.endpoints.generation();
        let (conn, peer) = tokio::time::timeout(timeout, pool.open(&server.endpoints))
            .await
            .map_err(|_| ConnectError::Timeout {
                address: pool.address.clone(),
            })??;
        Ok(PooledConn {
            conn,
            server: server.clone(),
            reused: false,
            peer,
            generation,
        })
    }

    async fn open(&self, endpoints: &Endpoints) -> Result<(Conn, SocketAddr), ConnectError> {
        let io_err = |source| ConnectError::Io {
            address: self.address.clone(),
            source,
        };
        let (stream, peer) = endpoints.connect().await.map_err(io_err)?;
        stream.set_nodelay(true).map_err(io_err)?;
        Ok((Conn::new(stream), peer))
    }

    fn put_back(&self, conn: Conn, peer: SocketAddr, generation: u64, endpoints: &Endpoints, now: Instant) {
        let max_idle = self.max_idle.load(Ordering::Relaxed);
        if max_idle == 0 {
            return;
        }
        let mut idle = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the slot's lock, which `retain_peers` also takes
        // after a change: a connection to an address that went away is
        // either refused here or swept there.
        let current = endpoints.generation();
        if current != generation && !endpoints.contains(peer) {
            return;
        }
        // Oldest first: those past the idle timeout are closed now, not
        // left holding a socket the server has probably closed already.
        let idle_timeout = Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed));
        while idle
            .front()
            .is_some_and(|oldest| idle.len() >= max_idle || now.duration_since(oldest.since) >= idle_timeout)
        {
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            since: now,
            peer,
            generation: current,
        });
    }

    /// Closes this worker's idle connections that are past the idle timeout
    /// at `now`, or that the server has closed (or sent stray bytes on)
    /// since; returns how many. Only the owning worker may call it: it polls
    /// sockets registered with that worker's reactor.
    pub(super) fn sweep(&self, now: Instant) -> usize {
        let idle_timeout = Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed));
        let mut idle = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        let before = idle.len();
        idle.retain_mut(|idle_conn| {
            now.saturating_duration_since(idle_conn.since) < idle_timeout && idle_conn.conn.is_usable()
        });
        before - idle.len()
    }

    /// Closes every idle connection of this worker's (its server has left
    /// the config); returns how many.
    pub(super) fn close_idle(&self) -> usize {
        let mut idle = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        let closed = idle.len();
        idle.clear();
        closed
    }

    /// Closes the idle connections (of every worker) whose peer `keep`
    /// rejects. Called by the resolver when a host name's addresses change.
    pub(super) fn retain_peers(&self, keep: impl Fn(SocketAddr) -> bool) -> usize {
        let mut closed = 0;
        for slot in self.idle.iter() {
            let mut idle = slot.lock().unwrap_or_else(|e| e.into_inner());
            let before = idle.len();
            idle.retain(|conn| keep(conn.peer));
            closed += before - idle.len();
        }
        closed
    }
}

/// A connection checked out of a server's pool for one request.
#[derive(Debug)]
pub struct PooledConn {
    pub conn: Conn,
    server: Arc<ServerState>,
    /// Whether it had served a request before (a reused connection the server
    /// closed meanwhile fails differently from a fresh one).
    pub reused: bool,
    /// The address it is connected to.
    peer: SocketAddr,
    /// The server's address generation when `peer` was known current.
    generation: u64,
}

impl PooledConn {
    /// Returns the connection to the pool once its response has been read to
    /// the end; a connection dropped instead is closed.
    /// `now` is when its last response ended, as near as the caller knows
    /// without reading the clock (idle time counts from then).
    pub fn release(self, now: Instant) {
        let server = &self.server;
        server
            .pool
            .put_back(self.conn, self.peer, self.generation, &server.endpoints, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A pool with one idle connection, and the server's end of it.
    async fn one_idle(idle_timeout: Duration) -> (ConnPool, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoints = Endpoints::new(&addr.to_string());
        let pool = ConnPool::new(addr.to_string(), 8, idle_timeout, 1);
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        pool.put_back(Conn::new(ours.unwrap()), addr, 0, &endpoints, Instant::now());
        (pool, theirs.unwrap().0)
    }

    #[tokio::test]
    async fn sweep_keeps_a_live_connection_until_its_idle_timeout() {
        let (pool, _server) = one_idle(Duration::from_secs(60)).await;
        let now = Instant::now();
        assert_eq!(pool.sweep(now), 0);
        assert_eq!(pool.sweep(now + Duration::from_secs(59)), 0);
        assert_eq!(pool.sweep(now + Duration::from_secs(60)), 1);
        assert_eq!(pool.slot().lock().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn sweep_closes_a_connection_the_server_closed() {
        let (pool, mut server) = one_idle(Duration::from_secs(60)).await;
        server.shutdown().await.unwrap();
        // The close reaches the pool once this runtime's reactor has seen it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.sweep(Instant::now()) == 0 {
            assert!(Instant::now() < deadline, "the sweep never saw the close");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let read = tokio::time::timeout(Duration::from_secs(10), server.read(&mut [0u8; 1])).await;
        assert_eq!(read.expect("our end stayed open").unwrap(), 0);
    }
}
