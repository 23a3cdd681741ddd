//! Closes idle pooled connections that only hold a descriptor: those the
//! server has closed (its own keep-alive timeout, a restart) and those past
//! the upstream's `keepalive_timeout`, even when no request comes to take
//! them. nginx notices at once, through a read handler on every cached
//! connection; here each worker sweeps its own pool slots once a second, so
//! a request pays nothing for it (no task, clock read or lock more) and a
//! socket is only polled by the worker whose reactor it is registered with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use crate::server::{Shared, worker};

/// How often a worker sweeps: about the longest a connection the server
/// closed stays open on our side.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Sweeps the calling worker's idle connections every `SWEEP_INTERVAL`, for
/// as long as its runtime runs, in the servers of the current snapshot.
pub async fn run(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let snapshot = shared.snapshot.load();
        let now = Instant::now();
        let closed: usize = snapshot
            .upstreams
            .iter()
            .flat_map(|u| &u.servers)
            .map(|server| server.pool.sweep(now))
            .sum();
        if closed > 0 {
            tracing::debug!(worker = worker::current(), closed, "idle upstream connections closed");
        }
    }
}
