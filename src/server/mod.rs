//! The running balancer: starts one single-threaded runtime per worker
//! thread, holds the current snapshot, and shuts down gracefully. Listeners
//! and reloads are managed by `control`.

mod closing;
mod conn;
pub mod control;
pub(crate) mod h1;
pub(crate) mod http2;
mod listener;
mod per_ip;
pub(crate) mod preface;
mod proxy_protocol;
mod redirect;
pub mod snapshot;
pub mod worker;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::{Notify, mpsc, watch};

use crate::config::Config;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{ListenerStats, UnroutedStats};
pub use control::{Control, ReloadError};
pub use snapshot::{ListenerSlot, Snapshot};

/// State every worker shares.
#[derive(Debug)]
pub struct Shared {
    /// The current configuration; a request loads it once.
    pub snapshot: ArcSwap<Snapshot>,
    /// Connection counts of the running listeners, by name, in config order.
    /// Only reloads write it and only the admin listener reads it.
    pub listener_stats: Mutex<Vec<(String, Arc<ListenerStats>)>>,
    /// Requests that matched no route.
    pub unrouted: UnroutedStats,
    /// `None` when `global.access_log` is off.
    pub access_log: Option<AccessLog>,
    /// `fulcrum_config_reloads_total`: [ok, error].
    pub reloads: [AtomicU64; 2],
    /// WebSocket (and other `Upgrade`) tunnels.
    pub tunnels: Arc<crate::proxy::tunnel::TunnelStats>,
    /// Bumped after every snapshot swap, so that background tasks (health
    /// checks, DNS re-resolution) follow the servers of the current snapshot.
    pub generation: watch::Sender<u64>,
}

impl Shared {
    /// Installs a new snapshot and tells the background tasks.
    pub(crate) fn install(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.generation.send_modify(|g| *g += 1);
    }
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
    control: Arc<Control>,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    grace: Duration,
}

impl Server {
    /// Binds every listener and starts the workers. Fails without side
    /// effects left behind if any listener cannot be bound.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        let mut config = config;
        let workers = config.global.workers.max(1);
        config.global.workers = workers;
        let admin_socket = match config.global.admin_listen {
            Some(addr) => {
                Some(std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} (admin)"))?)
            }
            None => None,
        };
        let grace = config.global.shutdown_grace;
        let (shutdown, _) = watch::channel(false);
        let (commands, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let (control, shared) = Control::start(config, commands)?;

        let mut threads = Vec::with_capacity(workers + 3);
        let (dns_thread, first_round) = crate::upstream::resolver::start(shared.clone(), shutdown.subscribe())
            .context("cannot start the DNS thread")?;
        threads.push(dns_thread);
        // As HAProxy's `init-addr last,libc,none`: a name that does not
        // resolve in time leaves its server down, not the balancer.
        if !first_round.wait(STARTUP_DNS_WAIT) {
            tracing::warn!(waited = ?STARTUP_DNS_WAIT, "DNS still resolving; starting with those servers down");
        }

        for (index, commands) in receivers.into_iter().enumerate() {
            let shared = shared.clone();
            let rx = shutdown.subscribe();
            let handle = std::thread::Builder::new()
                .name(format!("fulcrum-worker-{index}"))
                .spawn(move || run_worker(index, commands, shared, rx, grace))
                .context("cannot start a worker thread")?;
            threads.push(handle);
        }
        threads.push(
            crate::upstream::checker::start(shared.clone(), shutdown.subscribe())
                .context("cannot start the health-check thread")?,
        );
        if let Some(socket) = admin_socket {
            let addr = socket.local_addr().context("cannot read the admin address")?;
            let handle = crate::admin::start(socket, control.clone(), shutdown.subscribe())
                .context("cannot start the admin thread")?;
            threads.push(handle);
            tracing::info!(listener = "admin", %addr, "listening");
        }
        tracing::info!(workers, "ready");
        Ok(Server {
            control,
            shutdown,
            threads,
            grace,
        })
    }

    /// The bound address of each listener, by name, in config order.
    pub fn addrs(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.control.addrs()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        self.control.shared()
    }

    /// Reloads and admin changes go through here.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Stops accepting, lets in-flight requests finish (up to
    /// `shutdown_grace`), and returns when every worker has stopped.
    pub fn shutdown(self) {
        self.control.stop_listeners();
        let _ = self.shutdown.send(true);
        tracing::info!(grace = ?self.grace, "shutting down");
        for handle in self.threads {
            let _ = handle.join();
        }
        if let Some(log) = &self.control.shared().access_log {
            log.close();
        }
        tracing::info!("stopped");
    }
}

/// What the control side asks of a worker.
pub(crate) enum WorkerCommand {
    /// Start accepting on this worker's socket of a (new) listener.
    Listen(listener::WorkerListener),
}

fn run_worker(
    index: usize,
    mut commands: mpsc::UnboundedReceiver<WorkerCommand>,
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
        tokio::spawn(crate::upstream::sweeper::run(shared.clone()));
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(WorkerCommand::Listen(l)) => {
                        tokio::spawn(listener::accept_loop(l, shared.clone(), tracker.clone()));
                    }
                    None => break,
                },
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow_and_update() {
                        break;
                    }
                }
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
