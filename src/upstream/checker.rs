//! Active health checks: every `interval`, a GET of `path` on each server of
//! an upstream with a `health_check`. Checks run on a thread of their own,
//! never on the request path, and are spread over the interval so that the
//! servers are not all probed in the same millisecond. Only verdict changes
//! are logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::ServerState;
use crate::config::HealthCheck;
use crate::server::{Shared, Snapshot};

/// One server to watch.
struct Target {
    upstream: String,
    server: Arc<ServerState>,
    check: HealthCheck,
    /// Delay before the first probe: the server's slot in the interval.
    offset: Duration,
}

/// What identifies a running watch: the server (by identity, so that a
/// server carried over by a reload keeps its watch) and the check settings.
type WatchKey = (usize, String, HealthCheck);

/// Starts the checker thread. It watches the servers of the current
/// snapshot and follows every swap: servers that appear get a watch, those
/// that leave lose theirs. It stops when `shutdown` turns true.
pub fn start(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fulcrum-health".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(%error, "cannot start the health-check runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let mut generation = shared.generation.subscribe();
                let mut watches: HashMap<WatchKey, tokio::task::JoinHandle<()>> = HashMap::new();
                loop {
                    generation.borrow_and_update();
                    reconcile(&shared.snapshot.load(), &mut watches, &shutdown);
                    tokio::select! {
                        changed = generation.changed() => if changed.is_err() { break },
                        _ = shutdown.changed() => break,
                    }
                }
                for (_, task) in watches.drain() {
                    let _ = task.await;
                }
            });
        })
}

/// Starts and stops watches so that exactly the servers of `upstreams` with
/// a `health_check` are watched.
fn reconcile(
    snapshot: &Snapshot,
    watches: &mut HashMap<WatchKey, tokio::task::JoinHandle<()>>,
    shutdown: &watch::Receiver<bool>,
) {
    let mut wanted: HashMap<WatchKey, Target> = HashMap::new();
    for (upstream, config) in snapshot.upstreams.iter().zip(&snapshot.config.upstreams) {
        let Some(check) = &config.health_check else {
            // Checks turned off: nothing holds the server out any more.
            for server in &upstream.servers {
                server.set_checked_up(true, &upstream.name);
            }
            continue;
        };
        let n = upstream.servers.len() as u32;
        for (i, server) in upstream.servers.iter().enumerate() {
            let key = (Arc::as_ptr(server) as usize, upstream.name.clone(), check.clone());
            wanted.insert(
                key,
                Target {
                    upstream: upstream.name.clone(),
                    server: server.clone(),
                    check: check.clone(),
                    offset: check.interval * i as u32 / n.max(1),
                },
            );
        }
    }
    watches.retain(|key, task| {
        let keep = wanted.contains_key(key);
        if !keep {
            task.abort();
        }
        keep
    });
    for (key, target) in wanted {
        watches
            .entry(key)
            .or_insert_with(|| tokio::spawn(watch_server(target, shutdown.clone())));
    }
}

async fn watch_server(target: Target, mut shutdown: watch::Receiver<bool>) {
    let Target {
        upstream,
        server,
        check,
        offset,
    } = target;
    tokio::select! {
        _ = tokio::time::sleep(offset) => {}
        _ = shutdown.changed() => return,
    }
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let healthy = probe(&server, &check).await;
        server.stats.health_check(healthy);
        if healthy {
            passes += 1;
            fails = 0;
            if passes >= check.healthy_threshold {
                server.set_checked_up(true, &upstream);
            }
        } else {
            fails += 1;
            passes = 0;
            if fails >= check.unhealthy_threshold {
                server.set_checked_up(false, &upstream);
            }
        }
    }
}

/// One check over a fresh connection, to the address requests go to:
/// healthy when the status is in range within `timeout`.
async fn probe(server: &ServerState, check: &HealthCheck) -> bool {
    let address = server.address.as_str();
    let attempt = async {
        let (stream, _) = server.endpoints.connect().await.ok()?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        let driver = tokio::spawn(conn);
        let req = http::Request::get(check.path.as_str())
            .header(http::header::HOST, check.host.as_deref().unwrap_or(address))
            .header(http::header::USER_AGENT, "fulcrum-health-check")
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let status = sender.send_request(req).await.ok()?.status().as_u16();
        driver.abort();
        Some(status)
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(Some(status)) => (check.expect_status.0..=check.expect_status.1).contains(&status),
        _ => false,
    }
}
