//! Upstreams at run time: each server's shared state (in-flight count,
//! health, latency, addresses, pooled connections), the per-worker balancing
//! state, and the retry budget.

pub mod checker;
pub mod endpoint;
pub mod h1;
pub mod health;
mod pool;
pub mod resolver;
pub(crate) mod sweeper;

pub use pool::{ConnectError, PooledConn};

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::balance::{Balancer, Candidate};
use crate::config;
use crate::observe::metrics::{FailureKind, ServerStats};
use crate::server::worker;
use endpoint::Endpoints;
use health::{PassiveHealth, PeakEwma};

/// One server of an upstream, shared by every worker thread.
#[derive(Debug)]
pub struct ServerState {
    /// `host:port` as configured; also its identity across reloads.
    pub address: String,
    // The settings below are atomics so that a reload or an admin call can
    // change them in place while the server keeps its state.
    weight: AtomicU32,
    backup: AtomicBool,
    /// 0: no limit.
    max_requests: AtomicU32,
    /// Taken out of rotation by the admin API (`drain`), until `enable`.
    drained: AtomicBool,
    /// Requests currently being forwarded to this server.
    active: AtomicUsize,
    pub passive: PassiveHealth,
    /// The verdict of active health checks (up until a check says otherwise).
    checked_up: AtomicBool,
    /// When active checks last brought the server back (`u64::MAX`: never).
    checked_up_since_ms: AtomicU64,
    slow_start_ms: AtomicU64,
    pub latency: PeakEwma,
    pub stats: ServerStats,
    /// Where connections go; a host name's addresses change at run time.
    pub endpoints: Endpoints,
    pool: pool::ConnPool,
}

impl ServerState {
    pub fn new(server: &config::Server, upstream: &config::Upstream, workers: usize) -> Self {
        ServerState {
            address: server.address.clone(),
            weight: AtomicU32::new(server.weight),
            backup: AtomicBool::new(server.backup),
            max_requests: AtomicU32::new(server.max_requests.unwrap_or(0)),
            drained: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            passive: PassiveHealth::new(lone_server_max_fails(upstream), upstream.fail_timeout),
            checked_up: AtomicBool::new(true),
            checked_up_since_ms: AtomicU64::new(u64::MAX),
            slow_start_ms: AtomicU64::new(slow_start_ms(upstream)),
            latency: PeakEwma::default(),
            stats: ServerStats::default(),
            endpoints: Endpoints::new(&server.address),
            pool: pool::ConnPool::new(
                server.address.clone(),
                upstream.keepalive,
                upstream.keepalive_timeout,
                workers,
            ),
        }
    }

    /// Takes the settings of `server` (same address) from a new config,
    /// keeping health, latency, counters and pooled connections.
    pub fn reconfigure(&self, server: &config::Server, upstream: &config::Upstream) {
        debug_assert_eq!(self.address, server.address);
        self.weight.store(server.weight, Ordering::Relaxed);
        self.backup.store(server.backup, Ordering::Relaxed);
        self.max_requests
            .store(server.max_requests.unwrap_or(0), Ordering::Relaxed);
        self.slow_start_ms.store(slow_start_ms(upstream), Ordering::Relaxed);
        self.passive
            .reconfigure(lone_server_max_fails(upstream), upstream.fail_timeout);
        self.pool.reconfigure(upstream.keepalive, upstream.keepalive_timeout);
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn backup(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }

    pub fn max_requests(&self) -> Option<u32> {
        match self.max_requests.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// `drain` (true) or `enable` (false) from the admin API. Enabling also
    /// forgets passive failures: an operator's word beats a stale verdict.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
        if !drained {
            self.passive.reset();
        }
    }

    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether it may take new requests: not drained, and healthy.
    pub fn is_up(&self, now_ms: u64) -> bool {
        !self.drained() && self.is_healthy(now_ms)
    }

    /// What the health checks (active and passive) say, drain aside; a host
    /// name that never resolved has no address and counts as down.
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        self.checked_up.load(Ordering::Relaxed) && self.passive.is_up(now_ms) && self.endpoints.is_resolved()
    }

    pub fn checked_up(&self) -> bool {
        self.checked_up.load(Ordering::Relaxed)
    }

    /// Records an active health-check verdict change; logs the transition.
    pub fn set_checked_up(&self, up: bool, upstream: &str) {
        if self.checked_up.swap(up, Ordering::Relaxed) == up {
            return;
        }
        if up {
            self.checked_up_since_ms.store(health::now_ms(), Ordering::Relaxed);
            tracing::info!(upstream, server = %self.address, "health check passed: server up");
        } else {
            tracing::warn!(upstream, server = %self.address, "health check failed: server down");
        }
    }

    /// The weight to balance with (scaled by `WEIGHT_SCALE`): during
    /// `slow_start` after the server came back, it ramps from a tenth to full.
    fn effective_weight(&self, now_ms: u64) -> u32 {
        let full = self.weight().saturating_mul(WEIGHT_SCALE);
        let slow_start_ms = self.slow_start_ms.load(Ordering::Relaxed);
        if slow_start_ms == 0 {
            return full;
        }
        let back_since = self
            .passive
            .up_since_ms()
            .max(match self.checked_up_since_ms.load(Ordering::Relaxed) {
                u64::MAX => 0,
                t => t,
            });
        if back_since == 0 || now_ms < back_since {
            return full;
        }
        let elapsed = now_ms - back_since;
        if elapsed >= slow_start_ms {
            return full;
        }
        let ramped = u64::from(full) * elapsed / slow_start_ms;
        (ramped as u32).max(full / 10).max(1)
    }

    fn at_capacity(&self) -> bool {
        self.max_requests()
            .is_some_and(|max| self.active_requests() >= max as usize)
    }

    /// Counts a failed attempt (connect error, timeout, or a status the
    /// route retries on); logs when it takes the server out.
    pub fn record_failure(&self, upstream: &str, kind: FailureKind) {
        self.stats.failure(kind);
        if self.passive.record_failure(health::now_ms()) {
            tracing::warn!(upstream, server = %self.address, "server marked down after consecutive failures");
        }
    }

    /// Counts an answer that is passed on (any status the route does not
    /// retry on): passive health, the latency estimate, the dashboard's
    /// counters and latency histogram.
    /// A response with `status` came `latency` after the request went, at
    /// `at` (a time the caller has read anyway).
    pub fn record_success(&self, latency: Duration, status: u16, at: Instant) {
        self.passive.record_success();
        self.latency.observe(latency, health::ms_at(at));
        self.stats.response(status, latency);
    }

    /// A ready connection to this server: a pooled idle one, else a new one.
    /// A pooled connection, or a new one; `now` is the time, just read.
    pub async fn connect(self: &Arc<Self>, timeout: Duration, now: Instant) -> Result<PooledConn, ConnectError> {
        pool::ConnPool::checkout(self, timeout, now).await
    }

    /// Closes idle pooled connections to addresses the server no longer
    /// has; returns how many.
    pub fn close_stale_connections(&self) -> usize {
        self.pool.retain_peers(|peer| self.endpoints.contains(peer))
    }

    /// A new connection that can switch protocols (for an `Upgrade`).
    /// A new connection, bypassing the idle ones.
    pub async fn connect_fresh(self: &Arc<Self>, timeout: Duration) -> Result<PooledConn, ConnectError> {
        pool::ConnPool::open_fresh(self, timeout).await
    }
}

/// As nginx does, a lone server is never marked down: there is nowhere else
/// to send its traffic.
fn lone_server_max_fails(upstream: &config::Upstream) -> u32 {
    if upstream.servers.len() > 1 {
        upstream.max_fails
    } else {
        0
    }
}

fn slow_start_ms(upstream: &config::Upstream) -> u64 {
    upstream.slow_start.map_or(0, |d| d.as_millis() as u64)
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

/// Weights are scaled up so that slow start can give a fraction of weight 1.
const WEIGHT_SCALE: u32 = 16;

/// Why no server could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// Every server is down (or already tried by this request).
    Down,
    /// Servers are up but every one is at its `max_requests`.
    Busy,
}

/// Most servers an upstream can track per-request "already tried" for; an
/// upstream with more simply may retry on a server it tried.
const MAX_CANDIDATES_ON_STACK: usize = 32;

/// An upstream's servers plus the balancing state, kept per worker so that
/// picking never contends across cores (as nginx keeps it per process).
#[derive(Debug)]
pub struct UpstreamPool {
    pub name: String,
    pub kind: config::Balance,
    pub hash_key: Option<config::HashKey>,
    pub servers: Vec<Arc<ServerState>>,
    pub sticky: Option<config::Sticky>,
    /// Per server, the opaque value of its affinity cookie: a hash of its
    /// address, the same on every instance with the same config.
    sticky_tokens: Vec<String>,
    balancers: Box<[worker::PerWorker<Mutex<Balancer>>]>,
    pub retry_budget: Arc<RetryBudget>,
}

impl UpstreamPool {
    /// Builds the run-time upstream for a config. With `previous` (the same
    /// upstream in the config being replaced), servers with an address it
    /// already had keep their state (health, latency, counters, pooled
    /// connections) and take the new settings; so does the retry budget.
    pub fn new(upstream: &config::Upstream, workers: usize, previous: Option<&UpstreamPool>) -> Self {
        let servers = upstream
            .servers
            .iter()
            .map(|s| match previous.and_then(|p| p.server(&s.address)) {
                Some(kept) => {
                    kept.reconfigure(s, upstream);
                    kept.clone()
                }
                None => Arc::new(ServerState::new(s, upstream, workers)),
            })
            .collect::<Vec<_>>();
        let identities: Vec<(&str, u32)> = upstream
            .servers
            .iter()
            .map(|s| (s.address.as_str(), s.weight))
            .collect();
        let balancers = (0..workers.max(1))
            .map(|_| {
                let balancer = Balancer::new(upstream.balance, &identities, fastrand::u64(..));
                worker::PerWorker::new(Mutex::new(balancer))
            })
            .collect();
        let retry_budget = match previous {
            Some(p) if p.retry_budget.percent == upstream.retry_budget_percent => p.retry_budget.clone(),
            _ => Arc::new(RetryBudget::new(upstream.retry_budget_percent)),
        };
        UpstreamPool {
            name: upstream.name.clone(),
            kind: upstream.balance,
            hash_key: upstream.hash_key.clone(),
            sticky: upstream.sticky.clone(),
            sticky_tokens: upstream
                .servers
                .iter()
                .map(|s| format!("{:016x}", crate::balance::hash_key(s.address.as_bytes())))
                .collect(),
            servers,
            balancers,
            retry_budget,
        }
    }

    /// The server with this address, if the upstream has it.
    pub fn server(&self, address: &str) -> Option<&Arc<ServerState>> {
        self.servers.iter().find(|s| s.address == address)
    }

    /// The server an affinity cookie names, if it can take the request now.
    pub fn sticky_server(&self, token: &[u8]) -> Option<usize> {
        let index = self.sticky_tokens.iter().position(|t| t.as_bytes() == token)?;
        let now = health::now_ms();
        let primary_up = self.servers.iter().any(|s| !s.backup() && s.is_up(now));
        let s = &self.servers[index];
        let in_tier = if primary_up { !s.backup() } else { s.backup() };
        (in_tier && s.is_up(now) && !s.at_capacity()).then_some(index)
    }

    /// The affinity cookie's value for server `index`.
    pub fn sticky_token(&self, index: usize) -> &str {
        &self.sticky_tokens[index]
    }

    /// The server for the next try at `now` (just read): primaries while
    /// any is up, backups only when none is. `tried` lists servers this
    /// request already used.
    pub fn pick(
        &self,
        key: Option<u64>,
        tried: &[usize],
        now: Instant,
    ) -> Result<(usize, &Arc<ServerState>), NoServer> {
        let now = health::ms_at(now);
        let primary_up = self.servers.iter().any(|s| !s.backup() && s.is_up(now));
        let mut on_stack = [Candidate {
            weight: 1,
            eligible: false,
            in_flight: 0,
            latency_us: 1.0,
        }; MAX_CANDIDATES_ON_STACK];
        let mut on_heap;
        let candidates: &mut [Candidate] = if self.servers.len() <= MAX_CANDIDATES_ON_STACK {
            &mut on_stack[..self.servers.len()]
        } else {
            on_heap = vec![on_stack[0]; self.servers.len()];
            &mut on_heap
        };
        let mut any_up_untried = false;
        for (i, (c, s)) in candidates.iter_mut().zip(&self.servers).enumerate() {
            let in_tier = if primary_up { !s.backup() } else { s.backup() };
            let usable = in_tier && s.is_up(now) && !tried.contains(&i);
            any_up_untried |= usable;
            *c = Candidate {
                weight: s.effective_weight(now),
                eligible: usable && !s.at_capacity(),
                in_flight: u32::try_from(s.active_requests()).unwrap_or(u32::MAX),
                // Only ewma reads it; the estimate costs an exp() per server.
                latency_us: if self.kind == config::Balance::Ewma {
                    s.latency.latency_us(now)
                } else {
                    1.0
                },
            };
        }
        let slot = &self.balancers[worker::current() % self.balancers.len()];
        let picked = slot.lock().unwrap_or_else(|e| e.into_inner()).pick(candidates, key);
        match picked.and_then(|i| self.servers.get(i).map(|s| (i, s))) {
            Some(found) => Ok(found),
            None if any_up_untried => Err(NoServer::Busy),
            None => Err(NoServer::Down),
        }
    }
}

/// Bounds retries to a share of recent traffic so that a brown-out cannot
/// become a retry storm: each request deposits a share of a retry, each retry
/// withdraws one; a small reserve lets a quiet upstream still retry.
#[derive(Debug)]
pub struct RetryBudget {
    /// In thousandths of a retry.
    balance_milli: AtomicI64,
    /// What each request adds: `percent` × 10 thousandths.
    deposit_milli: i64,
    percent: u32,
}

impl RetryBudget {
    const RESERVE_MILLI: i64 = 10_000; // 10 retries to start with
    const MAX_MILLI: i64 = 100_000;

    pub fn new(percent: u32) -> Self {
        RetryBudget {
            balance_milli: AtomicI64::new(Self::RESERVE_MILLI),
            deposit_milli: i64::from(percent) * 10,
            percent,
        }
    }

    pub fn deposit(&self) {
        let b = self.balance_milli.fetch_add(self.deposit_milli, Ordering::Relaxed);
        if b > Self::MAX_MILLI {
            self.balance_milli.store(Self::MAX_MILLI, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget, or says there is none.
    pub fn try_withdraw(&self) -> bool {
        if self.balance_milli.fetch_sub(1_000, Ordering::Relaxed) >= 1_000 {
            return true;
        }
        self.balance_milli.fetch_add(1_000, Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_allows_a_fifth_of_traffic_beyond_the_reserve() {
        let budget = RetryBudget::new(20);
        let mut granted = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.try_withdraw() {
                granted += 1;
            }
        }
        // Every request asked for a retry: 10 from the reserve + 20 % of 1000.
        assert!((205..=212).contains(&granted), "granted {granted}");
    }
}
