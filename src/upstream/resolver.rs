//! Re-resolution of servers given by host name, on a thread of its own
//! (`fulcrum-dns`), never on the request path. Each host name is asked again
//! when its TTL runs out, but at least every `global.dns_refresh` and at most
//! once a second; a change of addresses is written into the server's
//! `Endpoints` and its idle connections to addresses that went away are
//! closed. A failed resolution keeps the last good addresses.
//!
//! The thread re-reads the current snapshot at least once a second, so
//! servers added by a reload or the admin API are found without being
//! registered; [`ResolverHandle::resolve_new`] resolves them at once, for
//! whoever wants them usable before a snapshot goes live (start-up, reload).
//!
//! Lookups go to `global.resolver` when set, else to the system's DNS
//! configuration (`/etc/resolv.conf`, `/etc/hosts`) through hickory, which
//! reports TTLs; a name hickory cannot resolve from the system configuration
//! is tried with the system's own resolver (`getaddrinfo`, no TTL).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::endpoint::Outcome;
use super::health::now_ms;
use super::{ServerState, UpstreamPool};
use crate::server::Shared;

/// How often the snapshot is re-read for servers that are new.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Never ask for the same name more often than this.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// While a lookup runs its name is not due; this outlasts any lookup.
const LOOKUP_BUDGET: Duration = Duration::from_secs(60);
/// Per query to a `global.resolver`, and tries per lookup.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;

/// Asks the resolver thread for work. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResolverHandle {
    requests: mpsc::UnboundedSender<Request>,
}

/// The receiving end, handed to [`start`].
#[derive(Debug)]
pub struct Inbox(mpsc::UnboundedReceiver<Request>);

#[derive(Debug)]
struct Request {
    servers: Vec<(String, Arc<ServerState>)>,
    done: std::sync::mpsc::Sender<()>,
}

/// A handle and the inbox for the thread that [`start`] runs.
pub fn channel() -> (ResolverHandle, Inbox) {
    let (requests, inbox) = mpsc::unbounded_channel();
    (ResolverHandle { requests }, Inbox(inbox))
}

impl ResolverHandle {
    /// Resolves now every server of `upstreams` whose host name has never
    /// resolved (IP literals and resolved names cost nothing). Wait on the
    /// result to have them usable before the snapshot holding them goes live.
    pub fn resolve_new(&self, upstreams: &[UpstreamPool]) -> Pending {
        let servers: Vec<_> = upstreams
            .iter()
            .flat_map(|u| u.servers.iter().map(move |s| (u.name.clone(), s.clone())))
            .filter(|(_, s)| s.endpoints.named().is_some() && !s.endpoints.is_resolved())
            .collect();
        if servers.is_empty() {
            return Pending(None);
        }
        let (done, waiter) = std::sync::mpsc::channel();
        // A thread that is gone leaves the waiter disconnected: `wait` returns.
        let _ = self.requests.send(Request { servers, done });
        Pending(Some(waiter))
    }
}

/// The answer to [`ResolverHandle::resolve_new`].
#[derive(Debug)]
pub struct Pending(Option<std::sync::mpsc::Receiver<()>>);

impl Pending {
    /// Blocks until every name had its first try (whatever the result) or
    /// `timeout` passes; true in the first case.
    pub fn wait(self, timeout: Duration) -> bool {
        match self.0 {
            None => true,
            Some(waiter) => waiter.recv_timeout(timeout).is_ok(),
        }
    }
}

/// Starts the resolver thread; it stops when `shutdown` turns true.
pub fn start(
    shared: Arc<Shared>,
    inbox: Inbox,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("fulcrum-dns".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(error) => {
                tracing::error!(%error, "cannot start the DNS runtime");
                return;
            }
        };
        runtime.block_on(run(shared, inbox.0, shutdown));
        // A getaddrinfo call still blocking must not hold up the exit.
        runtime.shutdown_background();
    })
}

async fn run(shared: Arc<Shared>, mut requests: mpsc::UnboundedReceiver<Request>, mut shutdown: watch::Receiver<bool>) {
    let mut lookups = Lookups::default();
    let mut tasks = JoinSet::new();
    loop {
        let snapshot = shared.snapshot.load_full();
        let (resolver, refresh) = (snapshot.config.global.resolver, snapshot.config.global.dns_refresh);
        let now = now_ms();
        let mut wake_at = now + SCAN_INTERVAL.as_millis() as u64;
        for upstream in &snapshot.upstreams {
            for server in &upstream.servers {
                let Some(named) = server.endpoints.named() else {
                    continue;
                };
                let due = named.next_due_ms();
                if due > now {
                    wake_at = wake_at.min(due);
                    continue;
                }
                named.set_next_due_ms(now + LOOKUP_BUDGET.as_millis() as u64);
                let lookup = lookups.get(resolver);
                tasks.spawn(refresh_server(upstream.name.clone(), server.clone(), lookup, refresh));
            }
        }
        // Not kept while waiting: a replaced snapshot is freed at once.
        drop(snapshot);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wake_at - now)) => {}
            Some(request) = requests.recv() => {
                let lookup = lookups.get(resolver);
                let busy_until = now_ms() + LOOKUP_BUDGET.as_millis() as u64;
                for (_, server) in &request.servers {
                    if let Some(named) = server.endpoints.named() {
                        named.set_next_due_ms(busy_until);
                    }
                }
                tasks.spawn(async move {
                    let each = request.servers.into_iter().map(|(upstream, server)| {
                        refresh_server(upstream, server, lookup.clone(), refresh)
                    });
                    futures_util::future::join_all(each).await;
                    let _ = request.done.send(());
                });
            }
            Some(_) = tasks.join_next() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// One lookup of a server's host name, applied to its endpoints and logged.
async fn refresh_server(upstream: String, server: Arc<ServerState>, lookup: Arc<Lookup>, refresh: Duration) {
    let Some(named) = server.endpoints.named() else { return };
    let answer = lookup.resolve(&named.host, named.port).await;
    let (outcome, ttl, error) = match answer {
        Ok(answer) if !answer.addrs.is_empty() => (named.update(Some(answer.addrs)), answer.ttl, None),
        Ok(_) => (named.update(None), None, Some("no addresses in the answer".to_string())),
        Err(error) => (named.update(None), None, Some(error)),
    };
    let interval = next_interval(ttl, named.failures(), refresh);
    named.set_next_due_ms(now_ms() + interval.as_millis() as u64);
    let server_name = server.address.as_str();
    match outcome {
        Outcome::First(addrs) => {
            tracing::info!(upstream, server = server_name, addresses = ?addrs, "server resolved");
        }
        Outcome::Changed { old, new } => {
            let closed = server.close_stale_connections();
            tracing::info!(upstream, server = server_name, old = ?old, new = ?new, closed_idle = closed, "server addresses changed");
        }
        Outcome::Same { recovered: true } => {
            tracing::info!(upstream, server = server_name, "DNS resolution works again");
        }
        Outcome::Same { recovered: false } => {}
        Outcome::Failed { first } => {
            let error = error.unwrap_or_default();
            if !first {
                tracing::debug!(upstream, server = server_name, error, "DNS resolution still failing");
            } else if server.endpoints.is_resolved() {
                tracing::warn!(upstream, server = server_name, error, retry_in = ?interval, "DNS resolution failed; keeping the last good addresses");
            } else {
                tracing::warn!(upstream, server = server_name, error, retry_in = ?interval, "cannot resolve server; it stays down until it resolves");
            }
        }
    }
}

/// When to ask again: after the TTL, within [1 s, `refresh`]; after a
/// failure, 1 s doubling with each failure in a row, up to `refresh`.
pub fn next_interval(ttl: Option<Duration>, failures: u32, refresh: Duration) -> Duration {
    let most = refresh.max(MIN_INTERVAL);
    let wanted = if failures > 0 {
        MIN_INTERVAL.saturating_mul(1 << (failures - 1).min(16))
    } else {
        ttl.unwrap_or(most)
    };
    wanted.clamp(MIN_INTERVAL, most)
}

/// What a lookup found.
#[derive(Debug)]
struct Answer {
    addrs: Vec<SocketAddr>,
    /// `None`: no TTL known (the system resolver gives none).
    ttl: Option<Duration>,
}

/// How names are looked up.
struct Lookup {
    /// Through hickory; `None`: only `getaddrinfo` (hickory could not be
    /// set up).
    dns: Option<TokioResolver>,
    /// Whether `getaddrinfo` is also tried when hickory fails.
    fallback: bool,
}

impl Lookup {
    const GETADDRINFO: Lookup = Lookup {
        dns: None,
        fallback: true,
    };

    fn build(server: Option<SocketAddr>) -> Lookup {
        let Some(server) = server else {
            let built = TokioResolver::builder_tokio().and_then(|mut builder| {
                builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
                builder.build()
            });
            return match built {
                Ok(resolver) => Lookup {
                    dns: Some(resolver),
                    fallback: true,
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot read the system DNS configuration; resolving with getaddrinfo (no TTLs)");
                    Lookup::GETADDRINFO
                }
            };
        };
        let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
        for connection in &mut name_server.connections {
            connection.port = server.port();
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![name_server]);
        let mut options = ResolverOpts::default();
        options.timeout = QUERY_TIMEOUT;
        options.attempts = QUERY_ATTEMPTS;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // The configured server decides, as with nginx's `resolver`.
        options.use_hosts_file = ResolveHosts::Never;
        let builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).with_options(options);
        match builder.build() {
            Ok(resolver) => Lookup {
                dns: Some(resolver),
                fallback: false,
            },
            Err(error) => {
                tracing::error!(%error, resolver = %server, "cannot use the configured resolver; resolving with getaddrinfo");
                Lookup::GETADDRINFO
            }
        }
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Answer, String> {
        let Some(resolver) = &self.dns else {
            return system_lookup(host, port).await;
        };
        // We keep the answers and follow their TTLs ourselves; hickory's
        // cache would only hand back an answer older than `dns_refresh`.
        resolver.clear_cache();
        let error = match resolver.lookup_ip(host).await {
            Ok(found) => {
                return Ok(Answer {
                    addrs: found.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
                    ttl: Some(found.valid_until().saturating_duration_since(Instant::now())),
                });
            }
            Err(error) => error.to_string(),
        };
        if !self.fallback {
            return Err(error);
        }
        system_lookup(host, port)
            .await
            .map_err(|system| format!("{error}; getaddrinfo: {system}"))
    }
}

async fn system_lookup(host: &str, port: u16) -> Result<Answer, String> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(found) => Ok(Answer {
            addrs: found.collect(),
            ttl: None,
        }),
        Err(error) => Err(error.to_string()),
    }
}

/// The lookup for the current `global.resolver`, rebuilt when a reload
/// changes it.
#[derive(Default)]
struct Lookups {
    current: Option<(Option<SocketAddr>, Arc<Lookup>)>,
}

impl Lookups {
    fn get(&mut self, server: Option<SocketAddr>) -> Arc<Lookup> {
        match &self.current {
            Some((built_for, lookup)) if *built_for == server => lookup.clone(),
            _ => {
                let lookup = Arc::new(Lookup::build(server));
                self.current = Some((server, lookup.clone()));
                lookup
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_ttl_is_followed_within_one_second_and_dns_refresh() {
        let refresh = S(5);
        assert_eq!(next_interval(Some(S(3)), 0, refresh), S(3));
        assert_eq!(next_interval(Some(S(300)), 0, refresh), S(5));
        assert_eq!(next_interval(Some(Duration::ZERO), 0, refresh), S(1));
        assert_eq!(next_interval(Some(Duration::from_millis(400)), 0, refresh), S(1));
        assert_eq!(next_interval(None, 0, refresh), S(5), "no TTL: every dns_refresh");
    }

    #[test]
    fn failures_back_off_from_one_second_to_dns_refresh() {
        let refresh = S(30);
        let waits: Vec<_> = (1..=7).map(|n| next_interval(Some(S(300)), n, refresh)).collect();
        assert_eq!(waits, vec![S(1), S(2), S(4), S(8), S(16), S(30), S(30)]);
        assert_eq!(next_interval(None, u32::MAX, S(5)), S(5));
    }
}
