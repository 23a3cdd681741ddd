//! Re-resolution of servers given by host name, on a thread of its own
//! (`fulcrum-dns`), never on the request path. Each host name is asked again
//! when its TTL runs out, but at least every `global.dns_refresh` and at most
//! once a second; a change of addresses is written into the server's
//! `Endpoints` and its idle connections to addresses that went away are
//! closed. A failed resolution keeps the last good addresses.
//!
//! The thread follows the current snapshot (woken by every swap, through
//! `Shared::generation`), so servers added by a reload or the admin API are
//! resolved as soon as they appear, without being registered; until their
//! first answer they count as down. State lives in each server's
//! `Endpoints`, which a reload carries over with the server.
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
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::ServerState;
use super::endpoint::Outcome;
use super::health::now_ms;
use crate::server::Shared;

/// Never ask for the same name more often than this.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// While a lookup runs its name is not due; this outlasts any lookup.
const LOOKUP_BUDGET: Duration = Duration::from_secs(60);
/// Per query to a `global.resolver`, and tries per lookup.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;

/// Signalled when the first round of lookups at start has ended, whatever
/// the answers.
#[derive(Debug)]
pub struct FirstRound(std::sync::mpsc::Receiver<()>);

impl FirstRound {
    /// Blocks until every host name of the first snapshot had its first try
    /// or `timeout` passes; true in the first case.
    pub fn wait(self, timeout: Duration) -> bool {
        match self.0.recv_timeout(timeout) {
            Ok(()) => true,
            // The thread is gone: nothing left to wait for.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => true,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
        }
    }
}

/// Starts the resolver thread; it stops when `shutdown` turns true. With no
/// host name in any snapshot it only wakes on snapshot swaps.
pub fn start(
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(std::thread::JoinHandle<()>, FirstRound)> {
    let (first_done, first_round) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name("fulcrum-dns".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(error) => {
                tracing::error!(%error, "cannot start the DNS runtime");
                return;
            }
        };
        runtime.block_on(run(shared, first_done, shutdown));
        // A getaddrinfo call still blocking must not hold up the exit.
        runtime.shutdown_background();
    })?;
    Ok((thread, FirstRound(first_round)))
}

async fn run(shared: Arc<Shared>, first_done: std::sync::mpsc::Sender<()>, mut shutdown: watch::Receiver<bool>) {
    let mut lookups = Lookups::default();
    let mut generation = shared.generation.subscribe();
    let mut tasks = JoinSet::new();
    generation.borrow_and_update();
    let (first, mut wake_at) = due_lookups(&shared, &mut lookups);
    tasks.spawn(async move {
        futures_util::future::join_all(first).await;
        let _ = first_done.send(());
    });
    loop {
        let sleep_ms = wake_at.saturating_sub(now_ms());
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
            changed = generation.changed() => if changed.is_err() { return },
            // A finished lookup has set when its name is due again.
            Some(_) = tasks.join_next() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
        generation.borrow_and_update();
        let (due, next) = due_lookups(&shared, &mut lookups);
        for lookup in due {
            tasks.spawn(lookup);
        }
        wake_at = next;
    }
}

/// The lookups of the current snapshot's host names that are due (each
/// marked as running), and when the next one falls due (`health::now_ms`
/// time; an hour on when no host name is waiting, as swaps wake the thread).
fn due_lookups(
    shared: &Shared,
    lookups: &mut Lookups,
) -> (Vec<impl std::future::Future<Output = ()> + Send + 'static>, u64) {
    let snapshot = shared.snapshot.load();
    let global = &snapshot.config.global;
    let now = now_ms();
    // Far, but not so far that adding it to `now` could overflow.
    let mut wake_at = now + Duration::from_secs(3600).as_millis() as u64;
    let mut due = Vec::new();
    for upstream in &snapshot.upstreams {
        for server in &upstream.servers {
            let Some(named) = server.endpoints.named() else {
                continue;
            };
            let at = named.next_due_ms();
            if at > now {
                wake_at = wake_at.min(at);
                continue;
            }
            named.set_next_due_ms(now + LOOKUP_BUDGET.as_millis() as u64);
            let lookup = lookups.get(global.resolver);
            due.push(refresh_server(
                upstream.name.clone(),
                server.clone(),
                lookup,
                global.dns_refresh,
            ));
        }
    }
    (due, wake_at)
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
