//! Upstreams at run time: each server's shared state (in-flight count, pooled
//! connections) and the per-worker balancing state.

mod pool;

pub use pool::{ConnectError, PooledConn};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::balance::{Balancer, Candidate};
use crate::config;
use crate::server::worker;

/// One server of an upstream, shared by every worker thread.
#[derive(Debug)]
pub struct ServerState {
    /// `host:port` as configured; also its identity across reloads.
    pub address: String,
    pub weight: u32,
    /// Requests currently being forwarded to this server.
    active: AtomicUsize,
    pool: pool::ConnPool,
}

impl ServerState {
    pub fn new(server: &config::Server, upstream: &config::Upstream, workers: usize) -> Self {
        ServerState {
            address: server.address.clone(),
            weight: server.weight,
            active: AtomicUsize::new(0),
            pool: pool::ConnPool::new(
                server.address.clone(),
                upstream.keepalive,
                upstream.keepalive_timeout,
                workers,
            ),
        }
    }

    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// A ready connection to this server: a pooled idle one, else a new one.
    pub async fn connect(self: &Arc<Self>, timeout: Duration) -> Result<PooledConn, ConnectError> {
        pool::ConnPool::checkout(self, timeout).await
    }

    /// A new connection, bypassing the idle ones.
    pub async fn connect_fresh(self: &Arc<Self>, timeout: Duration) -> Result<PooledConn, ConnectError> {
        pool::ConnPool::open_fresh(self, timeout).await
    }
}

/// Counts one in-flight request on a server for as long as it lives.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ServerState>);

impl ActiveGuard {
    pub fn new(server: Arc<ServerState>) -> Self {
        server.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(server)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream's servers plus the balancing state, kept per worker so that
/// picking never contends across cores (as nginx keeps it per process).
#[derive(Debug)]
pub struct UpstreamPool {
    pub name: String,
    pub servers: Vec<Arc<ServerState>>,
    balancers: Box<[worker::PerWorker<Mutex<Balancer>>]>,
}

impl UpstreamPool {
    pub fn new(upstream: &config::Upstream, workers: usize) -> Self {
        let servers = upstream
            .servers
            .iter()
            .map(|s| Arc::new(ServerState::new(s, upstream, workers)))
            .collect::<Vec<_>>();
        let balancers = (0..workers.max(1))
            .map(|_| worker::PerWorker::new(Mutex::new(Balancer::new(upstream.balance, servers.len()))))
            .collect();
        UpstreamPool {
            name: upstream.name.clone(),
            servers,
            balancers,
        }
    }

    /// The server for the next request, or `None` when no server can take it.
    pub fn pick(&self) -> Option<&Arc<ServerState>> {
        let mut candidates = [Candidate {
            weight: 1,
            eligible: false,
        }; 16];
        let mut heap;
        let candidates: &mut [Candidate] = if self.servers.len() <= candidates.len() {
            &mut candidates[..self.servers.len()]
        } else {
            heap = vec![
                Candidate {
                    weight: 1,
                    eligible: false
                };
                self.servers.len()
            ];
            &mut heap
        };
        for (c, s) in candidates.iter_mut().zip(&self.servers) {
            *c = Candidate {
                weight: s.weight,
                eligible: true,
            };
        }
        let slot = &self.balancers[worker::current() % self.balancers.len()];
        let index = slot.lock().unwrap_or_else(|e| e.into_inner()).pick(candidates)?;
        self.servers.get(index)
    }
}
