//! The running balancer: binds listeners, starts one single-threaded runtime
//! per worker thread, holds the current snapshot, and shuts down gracefully.

mod conn;
mod listener;
pub mod snapshot;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore, watch};

use crate::config::{Config, ListenerId};
use crate::observe::metrics::{ListenerStats, UnroutedStats};
use crate::upstream::resolver::{self, ResolverHandle};
pub use snapshot::Snapshot;

/// State every worker shares.
#[derive(Debug)]
pub struct Shared {
    /// The current configuration; a request loads it once.
    pub snapshot: ArcSwap<Snapshot>,
    /// Connection counts per listener (by name, in config order).
    pub listener_stats: Vec<(String, Arc<ListenerStats>)>,
    /// Requests that matched no route.
    pub unrouted: UnroutedStats,
    /// The DNS thread: a snapshot with servers given by host name should be
    /// passed to `resolve_new` before it is installed.
    pub resolver: ResolverHandle,
}

/// Counts live client connections so that shutdown can wait for them.
#[derive(Debug, Default)]
pub(crate) struct ConnTracker {
    live: AtomicUsize,
    idle: Notify,
}

pub(crate) struct ConnGuard(Arc<ConnTracker>);

impl ConnTracker {
    fn enter(self: &Arc<Self>) -> ConnGuard {
        self.live.fetch_add(1, Ordering::Relaxed);
        ConnGuard(self.clone())
    }

    async fn all_closed(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// How long start-up waits for host names in `servers` to resolve.
const STARTUP_DNS_WAIT: Duration = Duration::from_secs(5);

/// A started balancer: listeners bound, workers running.
pub struct Server {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    addrs: Vec<(String, std::net::SocketAddr)>,
    grace: Duration,
}

impl Server {
    /// Binds every listener and starts the workers. Fails without side
    /// effects left behind if any listener cannot be bound.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        let config = Arc::new(config);
        let workers = config.global.workers.max(1);
        let mut bound = Vec::with_capacity(config.listeners.len());
        for (i, l) in config.listeners.iter().enumerate() {
            let (addr, sockets) = listener::bind(l.listen, workers)
                .with_context(|| format!("cannot listen on {} (listener {})", l.listen, l.name))?;
            bound.push(listener::BoundListener {
                id: ListenerId(i),
                name: l.name.clone(),
                addr,
                sockets,
                slots: Arc::new(Semaphore::new(l.max_connections.min(Semaphore::MAX_PERMITS))),
            });
        }
        let admin_socket = match config.global.admin_listen {
            Some(addr) => {
                Some(std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} (admin)"))?)
            }
            None => None,
        };
        let grace = config.global.shutdown_grace;
        let listener_stats = bound
            .iter()
            .map(|b| (b.name.clone(), Arc::new(ListenerStats::default())))
            .collect();
        let (resolver, dns_inbox) = resolver::channel();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::build(config)),
            listener_stats,
            unrouted: UnroutedStats::default(),
            resolver,
        });
        let (shutdown, _) = watch::channel(false);
        let dns_thread =
            resolver::start(shared.clone(), dns_inbox, shutdown.subscribe()).context("cannot start the DNS thread")?;
        // As HAProxy's `init-addr last,libc,none`: a name that does not
        // resolve in time leaves its server down, not the balancer.
        let resolved = shared
            .resolver
            .resolve_new(&shared.snapshot.load().upstreams)
            .wait(STARTUP_DNS_WAIT);
        if !resolved {
            tracing::warn!(waited = ?STARTUP_DNS_WAIT, "DNS still resolving; starting with those servers down");
        }
        let addrs = bound.iter().map(|b| (b.name.clone(), b.addr)).collect();
        let health_checker = {
            let snapshot = shared.snapshot.load();
            let checks: Vec<_> = snapshot
                .config
                .upstreams
                .iter()
                .map(|u| u.health_check.clone())
                .collect();
            crate::upstream::checker::start(&snapshot.upstreams, &checks, shutdown.subscribe())
                .context("cannot start the health-check thread")?
        };

        let mut per_worker: Vec<Vec<(ListenerId, std::net::TcpListener, Arc<Semaphore>)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for b in bound {
            tracing::info!(listener = %b.name, addr = %b.addr, "listening");
            for (w, socket) in b.sockets.into_iter().enumerate() {
                per_worker[w].push((b.id, socket, b.slots.clone()));
            }
        }
        let mut handles = Vec::with_capacity(workers);
        for (index, sockets) in per_worker.into_iter().enumerate() {
            let shared = shared.clone();
            let rx = shutdown.subscribe();
            let handle = std::thread::Builder::new()
                .name(format!("fulcrum-worker-{index}"))
                .spawn(move || run_worker(index, sockets, shared, rx, grace))
                .context("cannot start a worker thread")?;
            handles.push(handle);
        }
        handles.extend(health_checker);
        handles.push(dns_thread);
        if let Some(socket) = admin_socket {
            let addr = socket.local_addr().context("cannot read the admin address")?;
            let handle = crate::admin::start(socket, shared.clone(), shutdown.subscribe())
                .context("cannot start the admin thread")?;
            handles.push(handle);
            tracing::info!(listener = "admin", %addr, "listening");
        }
        tracing::info!(workers, "ready");
        Ok(Server {
            shared,
            shutdown,
            workers: handles,
            addrs,
            grace,
        })
    }

    /// The bound address of each listener, by name, in config order.
    pub fn addrs(&self) -> &[(String, std::net::SocketAddr)] {
        &self.addrs
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets in-flight requests finish (up to
    /// `shutdown_grace`), and returns when every worker has stopped.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        tracing::info!(grace = ?self.grace, "shutting down");
        for handle in self.workers {
            let _ = handle.join();
        }
        tracing::info!("stopped");
    }
}

fn run_worker(
    index: usize,
    sockets: Vec<(ListenerId, std::net::TcpListener, Arc<Semaphore>)>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    worker::enter(index);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, worker = index, "cannot start worker runtime");
            return;
        }
    };
    let tracker = Arc::new(ConnTracker::default());
    runtime.block_on(async {
        for (id, socket, slots) in sockets {
            tokio::spawn(listener::accept_loop(
                socket,
                id,
                slots,
                shared.clone(),
                tracker.clone(),
                shutdown.clone(),
            ));
        }
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        if tokio::time::timeout(grace, tracker.all_closed()).await.is_err() {
            tracing::warn!(
                worker = index,
                open = tracker.live.load(Ordering::Relaxed),
                "shutdown_grace passed; closing the remaining connections"
            );
        }
    });
}
