//! Changing a running balancer: reloads (SIGHUP, `POST /api/reload`) and the
//! admin API's edits of upstreams. Every change builds a new snapshot off to
//! the side from a new config, carrying over the state of what both have in
//! common, and swaps it in atomically; requests in flight finish on the
//! snapshot they started with. Listeners that a reload adds are bound before
//! the swap (a bind failure changes nothing); listeners it removes close
//! after it, gracefully. One change at a time.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, mpsc, watch};

use super::closing::Closing;
use super::listener::{self, Role, WorkerListener};
use super::per_ip::PerIp;
use super::{ListenerSlot, Shared, Snapshot, WorkerCommand};
use crate::config::{self, Config, ConfigErrors};
use crate::observe::access_log::{self, AccessLog};
use crate::observe::metrics::{ListenerStats, UnroutedStats};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload from (the config was given inline)")]
    NoSource,
    #[error("invalid config, nothing changed:\n{0}")]
    Invalid(ConfigErrors),
    #[error("cannot apply the config, nothing changed: {0}")]
    Bind(String),
}

/// A listener with its sockets handed to the workers.
#[derive(Debug)]
struct Running {
    slot: ListenerSlot,
    name: String,
    /// As configured (port 0 stays 0); with the name, its identity.
    listen: SocketAddr,
    /// As bound.
    addr: SocketAddr,
    max_connections: usize,
    slots: Arc<Semaphore>,
    stats: Arc<ListenerStats>,
    per_ip: Arc<PerIp>,
    /// Raised when the listener closes (removed by a reload, shutdown, or
    /// this dropped): its accept loops stop, its connections finish.
    closing: Arc<Closing>,
    /// A TLS listener's `redirect_http_from`: part of its identity, bound
    /// and closed with it.
    redirect: Option<Redirect>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.closing.raise();
    }
}

/// The plain listener that answers a TLS listener's http:// requests with
/// a 308. It has limits of its own and is not a listener in the metrics.
#[derive(Debug)]
struct Redirect {
    /// As configured.
    listen: SocketAddr,
    /// As bound.
    addr: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
    slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
}

#[derive(Debug)]
struct State {
    /// In the order of the current config's listeners.
    listeners: Vec<Running>,
    next_slot: u32,
}

/// The one place that changes the running configuration.
#[derive(Debug)]
pub struct Control {
    shared: Arc<Shared>,
    workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
    state: Mutex<State>,
}

/// A listener bound for a config but not yet handed to the workers.
struct Bound {
    running: Running,
    sockets: Vec<std::net::TcpListener>,
    closing: Arc<Closing>,
}

impl Control {
    /// Binds the listeners of `config`, builds the first snapshot and hands
    /// each worker its sockets through `workers`.
    pub(super) fn start(
        config: Config,
        workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
    ) -> anyhow::Result<(Arc<Control>, Arc<Shared>)> {
        let mut state = State {
            listeners: Vec::new(),
            next_slot: 0,
        };
        let plan = plan_listeners(&config, &mut state, workers.len()).map_err(|e| anyhow::anyhow!(e))?;
        let access_log = AccessLog::start(&config.global)?;
        let snapshot = Snapshot::build(Arc::new(config), &plan.slots, None);
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            listener_stats: Mutex::new(Vec::new()),
            unrouted: UnroutedStats::default(),
            access_log,
            reloads: Default::default(),
            tunnels: Default::default(),
            generation,
        });
        let control = Arc::new(Control {
            shared: shared.clone(),
            workers,
            state: Mutex::new(state),
        });
        let mut state = control.lock();
        control.hand_out(&mut state, plan);
        drop(state);
        Ok((control, shared))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The bound address of each listener, by name, in config order.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.lock().listeners.iter().map(|l| (l.name.clone(), l.addr)).collect()
    }

    /// Re-reads the config file the running config came from and applies
    /// it. On any error the running config stays as it was. Counts the
    /// outcome in the metrics.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let source = self.shared.snapshot.load().config.source.clone();
        let result = match &source {
            None => Err(ReloadError::NoSource),
            Some(path) => config::load(path)
                .map_err(ReloadError::Invalid)
                .and_then(|c| self.apply(c)),
        };
        let outcome = usize::from(result.is_err());
        self.shared.reloads[outcome].fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(summary) => tracing::info!(%summary, "config reloaded"),
            Err(error) => tracing::error!("reload failed: {error}"),
        }
        result
    }

    /// Swaps in a new config, as a reload does: runtime changes made through
    /// the admin API are dropped, drained servers come back.
    pub fn apply(&self, mut config: Config) -> Result<String, ReloadError> {
        let mut state = self.lock();
        let workers = self.workers.len();
        if config.global.workers != 0 && config.global.workers != workers {
            tracing::warn!(
                running = workers,
                configured = config.global.workers,
                "`workers` changes only with a restart"
            );
        }
        config.global.workers = workers;
        access_log::warn_if_changed(self.shared.access_log.as_ref(), &config.global);
        let plan = plan_listeners(&config, &mut state, workers).map_err(ReloadError::Bind)?;
        let summary = config::summary(&config).trim_start_matches("ok: ").to_string();
        let previous = self.shared.snapshot.load_full();
        let snapshot = Snapshot::build(Arc::new(config), &plan.slots, Some(&previous));
        for u in &snapshot.upstreams {
            for s in &u.servers {
                s.set_drained(false);
            }
        }
        self.shared.install(snapshot);
        let removed = self.hand_out(&mut state, plan);
        for r in removed {
            tracing::info!(listener = %r.name, addr = %r.addr, "listener closed by reload");
            r.closing.raise();
        }
        Ok(summary)
    }

    /// Applies an edit of the current config (the admin API's): builds and
    /// swaps a new snapshot, keeping every listener.
    pub fn edit<T, E>(&self, edit: impl FnOnce(&mut Config) -> Result<T, E>) -> Result<T, E> {
        let state = self.lock();
        let previous = self.shared.snapshot.load_full();
        let mut config = Config::clone(&previous.config);
        let out = edit(&mut config)?;
        let slots: Vec<ListenerSlot> = state.listeners.iter().map(|l| l.slot).collect();
        self.shared
            .install(Snapshot::build(Arc::new(config), &slots, Some(&previous)));
        Ok(out)
    }

    /// Closes every listener: no new connections; open ones finish gracefully.
    pub(super) fn stop_listeners(&self) {
        for l in &self.lock().listeners {
            l.closing.raise();
        }
    }

    /// Records the listeners of the config just installed, hands the new
    /// ones to the workers, and returns the ones no longer in it.
    fn hand_out(&self, state: &mut State, plan: Plan) -> Vec<Running> {
        let mut all: Vec<Running> = std::mem::take(&mut state.listeners);
        for mut b in plan.bound {
            tracing::info!(listener = %b.running.name, addr = %b.running.addr, "listening");
            if let Some(r) = &mut b.running.redirect {
                let name = format!("{}-redirect", b.running.name);
                tracing::info!(listener = %name, addr = %r.addr, "listening");
                // Unregistered stats: redirects are not proxied traffic.
                let stats = Arc::new(ListenerStats::default());
                for (socket, worker) in std::mem::take(&mut r.sockets).into_iter().zip(&self.workers) {
                    let _ = worker.send(WorkerCommand::Listen(WorkerListener {
                        slot: b.running.slot,
                        role: Role::Redirect {
                            https_port: b.running.addr.port(),
                        },
                        socket,
                        slots: r.slots.clone(),
                        stats: stats.clone(),
                        per_ip: r.per_ip.clone(),
                        closing: b.closing.clone(),
                    }));
                }
            }
            for (socket, worker) in b.sockets.into_iter().zip(&self.workers) {
                let _ = worker.send(WorkerCommand::Listen(WorkerListener {
                    slot: b.running.slot,
                    role: Role::Proxy,
                    socket,
                    slots: b.running.slots.clone(),
                    stats: b.running.stats.clone(),
                    per_ip: b.running.per_ip.clone(),
                    closing: b.closing.clone(),
                }));
            }
            all.push(b.running);
        }
        let mut current: Vec<Option<Running>> = Vec::new();
        current.resize_with(plan.slots.len(), || None);
        let mut removed = Vec::new();
        for l in all {
            match plan.slots.iter().position(|s| *s == l.slot) {
                Some(i) => current[i] = Some(l),
                None => removed.push(l),
            }
        }
        state.listeners = current.into_iter().flatten().collect();
        let stats = state
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.stats.clone()))
            .collect();
        *self.shared.listener_stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        removed
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How the listeners of a new config map onto running ones.
struct Plan {
    /// The slot of each listener of the config, in config order.
    slots: Vec<ListenerSlot>,
    /// The listeners bound for it, not yet handed to the workers.
    bound: Vec<Bound>,
}

/// Matches the listeners of `config` with the running ones (same name,
/// address and redirect address: kept, with `max_connections` adjusted) and
/// binds the others. On a bind failure nothing new stays bound.
fn plan_listeners(config: &Config, state: &mut State, workers: usize) -> Result<Plan, String> {
    let mut plan = Plan {
        slots: Vec::with_capacity(config.listeners.len()),
        bound: Vec::new(),
    };
    let mut resizes = Vec::new();
    for l in &config.listeners {
        let redirect_from = l.tls.as_ref().and_then(|t| t.redirect_http_from);
        if let Some(i) = state.listeners.iter().position(|r| {
            r.name == l.name && r.listen == l.listen && r.redirect.as_ref().map(|r| r.listen) == redirect_from
        }) {
            resizes.push((i, l.max_connections));
            state.listeners[i].per_ip.set_limit(l.max_connections_per_ip);
            plan.slots.push(state.listeners[i].slot);
            continue;
        }
        let (addr, sockets) = listener::bind(l.listen, workers)
            .map_err(|e| format!("cannot listen on {} (listener {}): {e}", l.listen, l.name))?;
        let max_connections = l.max_connections.min(Semaphore::MAX_PERMITS);
        let redirect = match redirect_from {
            Some(from) => {
                let (addr, sockets) = listener::bind(from, workers).map_err(|e| {
                    format!(
                        "cannot listen on {from} (listener {}'s redirect_http_from): {e}",
                        l.name
                    )
                })?;
                Some(Redirect {
                    listen: from,
                    addr,
                    sockets,
                    slots: Arc::new(Semaphore::new(max_connections)),
                    per_ip: Arc::new(PerIp::new(l.max_connections_per_ip)),
                })
            }
            None => None,
        };
        let closing = Arc::new(Closing::default());
        let slot = ListenerSlot(state.next_slot);
        state.next_slot += 1;
        plan.slots.push(slot);
        plan.bound.push(Bound {
            running: Running {
                slot,
                name: l.name.clone(),
                listen: l.listen,
                addr,
                max_connections,
                slots: Arc::new(Semaphore::new(max_connections)),
                stats: Arc::new(ListenerStats::default()),
                per_ip: Arc::new(PerIp::new(l.max_connections_per_ip)),
                closing: closing.clone(),
                redirect,
            },
            sockets,
            closing,
        });
    }
    for (i, max_connections) in resizes {
        resize(&mut state.listeners[i], max_connections);
    }
    Ok(plan)
}

/// Applies a new `max_connections` to a kept listener. Lowering it takes
/// effect as connections close (permits in use cannot be taken back).
fn resize(running: &mut Running, max_connections: usize) {
    let max_connections = max_connections.min(Semaphore::MAX_PERMITS);
    if max_connections > running.max_connections {
        running.slots.add_permits(max_connections - running.max_connections);
    } else if max_connections < running.max_connections {
        let mut to_forget = running.max_connections - max_connections;
        to_forget -= running.slots.forget_permits(to_forget);
        if to_forget > 0 {
            // Takes back the rest as connections close, then forgets them.
            let slots = running.slots.clone();
            let take_back = async move {
                if let Ok(permits) = slots.acquire_many_owned(to_forget as u32).await {
                    permits.forget();
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(take_back)),
                Err(_) => tracing::warn!(
                    listener = %running.name,
                    "max_connections lowered; it takes full effect only after a restart"
                ),
            }
        }
    }
    running.max_connections = max_connections;
}
