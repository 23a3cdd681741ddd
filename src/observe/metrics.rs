//! Request metrics with the Prometheus names of SPEC §5, kept in atomics so
//! that recording costs a few relaxed increments and no lock; rendered in the
//! Prometheus text format by the admin listener.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::latency::LatencyHistogram;
use crate::server::Shared;
use crate::upstream::health::now_ms;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The status class index: 0 = 2xx (and 1xx), 1 = 3xx, 2 = 4xx, 3 = 5xx.
fn class(status: u16) -> usize {
    match status {
        300..=399 => 1,
        400..=499 => 2,
        500.. => 3,
        _ => 0,
    }
}

const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Why an attempt on a server failed, for `fulcrum_upstream_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Connect = 0,
    Timeout = 1,
    Status = 2,
    Reset = 3,
}

const FAILURE_KINDS: [&str; 4] = ["connect", "timeout", "status", "reset"];

/// Counters of one server, shared by every worker.
#[derive(Debug, Default)]
pub struct ServerStats {
    failures: [AtomicU64; 4],
    checks: [AtomicU64; 2],
    /// Answers the proxy passed on (any status), and how many were 5xx.
    responses: AtomicU64,
    responses_5xx: AtomicU64,
    /// Time to the response head of those answers.
    pub latency: LatencyHistogram,
}

impl ServerStats {
    pub fn failure(&self, kind: FailureKind) {
        self.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn health_check(&self, passed: bool) {
        self.checks[usize::from(!passed)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an answer that was passed on, with its time to the head.
    pub fn response(&self, status: u16, latency: Duration) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.responses_5xx.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(latency);
    }

    /// Attempts sent to this server: answers plus failed attempts.
    pub fn requests_total(&self) -> u64 {
        self.responses.load(Ordering::Relaxed) + self.failures_total()
    }

    /// Attempts that failed (connect, timeout, reset, a status the route
    /// retries on) or were answered with a 5xx.
    pub fn errors_total(&self) -> u64 {
        self.responses_5xx.load(Ordering::Relaxed) + self.failures_total()
    }

    fn failures_total(&self) -> u64 {
        self.failures.iter().map(|f| f.load(Ordering::Relaxed)).sum()
    }
}

/// Counters of one route: responses by upstream, server and status class,
/// retries, and the time to the response head by upstream. Every counter
/// sits behind an `Arc` so that a reload can hand it to the new snapshot:
/// counters never go back.
#[derive(Debug)]
pub struct RouteStats {
    /// One entry per upstream the route forwards to (several for a split).
    upstreams: Box<[UpstreamRows]>,
    /// Answers that came from no server (respond routes, 503, 413, ...).
    local: Arc<ClassCounts>,
    /// Their timing (label `upstream=""`).
    local_totals: Arc<Timing>,
    retries: Arc<AtomicU64>,
    rate_limited: Arc<AtomicU64>,
}

type ClassCounts = [AtomicU64; 4];

/// A route's counters for one of its upstreams.
#[derive(Debug, Clone)]
struct UpstreamRows {
    name: String,
    /// Per server of the upstream, with its address.
    servers: Box<[(String, Arc<ClassCounts>)]>,
    timing: Arc<Timing>,
}

#[derive(Debug, Default)]
struct Timing {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Timing {
    fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

impl RouteStats {
    /// Records a request refused by the route's rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Stats for a route forwarding to `upstreams` (name, server addresses),
    /// taking over the counters `previous` (the same route in the config
    /// being replaced) has for the same upstreams and servers.
    pub fn new(upstreams: &[(&str, Vec<&str>)], previous: Option<&RouteStats>) -> Self {
        let rows = upstreams
            .iter()
            .map(|(name, servers)| {
                let old = previous.and_then(|p| p.upstreams.iter().find(|u| u.name == *name));
                UpstreamRows {
                    name: name.to_string(),
                    servers: servers
                        .iter()
                        .map(|address| {
                            let counts = old
                                .and_then(|o| o.servers.iter().find(|(a, _)| a == address))
                                .map_or_else(Default::default, |(_, c)| c.clone());
                            (address.to_string(), counts)
                        })
                        .collect(),
                    timing: old.map_or_else(Default::default, |o| o.timing.clone()),
                }
            })
            .collect();
        RouteStats {
            upstreams: rows,
            local: previous.map_or_else(Default::default, |p| p.local.clone()),
            local_totals: previous.map_or_else(Default::default, |p| p.local_totals.clone()),
            retries: previous.map_or_else(Default::default, |p| p.retries.clone()),
            rate_limited: previous.map_or_else(Default::default, |p| p.rate_limited.clone()),
        }
    }

    /// Records one answered request: `upstream` is the index of the
    /// route's upstream it went to, `server` the index of the server in it
    /// that answered (both `None` when no server answered).
    pub fn record(&self, upstream: Option<usize>, server: Option<usize>, status: u16, elapsed: Duration, retries: u32) {
        let rows = upstream.and_then(|u| self.upstreams.get(u));
        let counts = match (rows, server) {
            (Some(rows), Some(s)) => rows.servers.get(s).map_or(&self.local, |(_, c)| c),
            _ => &self.local,
        };
        counts[class(status)].fetch_add(1, Ordering::Relaxed);
        if retries > 0 {
            self.retries.fetch_add(u64::from(retries), Ordering::Relaxed);
        }
        rows.map_or(&self.local_totals, |r| &r.timing).record(elapsed);
    }
}

/// Requests that matched no route.
#[derive(Debug, Default)]
pub struct UnroutedStats {
    responses: [AtomicU64; 4],
}

impl UnroutedStats {
    pub fn record(&self, status: u16) {
        self.responses[class(status)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Connections of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    /// Closed at accept by `max_connections_per_ip`.
    pub refused_per_ip: AtomicU64,
    /// Closed for want of a valid PROXY protocol header.
    pub refused_proxy_protocol: AtomicU64,
}

/// The whole exposition, in Prometheus text format.
pub fn render(shared: &Shared) -> String {
    let snapshot = shared.snapshot.load();
    let listeners = shared.listener_stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (unrouted, reloads) = (&shared.unrouted, &shared.reloads);
    let mut out = String::with_capacity(4096);
    let now = now_ms();
    let config = &snapshot.config;

    out.push_str("# HELP fulcrum_requests_total Requests answered, by route, upstream, server and status class.\n");
    out.push_str("# TYPE fulcrum_requests_total counter\n");
    for (route, stats) in config.routes.iter().zip(&snapshot.route_stats) {
        let rows = stats
            .upstreams
            .iter()
            .flat_map(|u| {
                u.servers
                    .iter()
                    .map(move |(address, counts)| (u.name.as_str(), address.as_str(), counts))
            })
            .chain(std::iter::once(("", "", &stats.local)));
        for (upstream_name, server, counts) in rows {
            for (c, count) in counts.iter().enumerate() {
                let n = count.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "fulcrum_requests_total{{route=\"{}\",upstream=\"{upstream_name}\",server=\"{server}\",code=\"{}\"}} {n}",
                        route.name, CLASSES[c]
                    );
                }
            }
        }
    }
    for (c, count) in unrouted.responses.iter().enumerate() {
        let n = count.load(Ordering::Relaxed);
        if n > 0 {
            let _ = writeln!(
                out,
                "fulcrum_requests_total{{route=\"\",upstream=\"\",server=\"\",code=\"{}\"}} {n}",
                CLASSES[c]
            );
        }
    }

    out.push_str("# HELP fulcrum_request_duration_seconds Time to the response head.\n");
    out.push_str("# TYPE fulcrum_request_duration_seconds histogram\n");
    for (route, stats) in config.routes.iter().zip(&snapshot.route_stats) {
        let timings = stats
            .upstreams
            .iter()
            .map(|u| (u.name.as_str(), &u.timing))
            .chain(std::iter::once(("", &stats.local_totals)));
        for (upstream_name, timing) in timings {
            let count = timing.count.load(Ordering::Relaxed);
            if upstream_name.is_empty() && count == 0 && !stats.upstreams.is_empty() {
                continue;
            }
            let labels = format!("route=\"{}\",upstream=\"{upstream_name}\"", route.name);
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&timing.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "fulcrum_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "fulcrum_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let sum = timing.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "fulcrum_request_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "fulcrum_request_duration_seconds_count{{{labels}}} {count}");
        }
    }

    out.push_str("# HELP fulcrum_retries_total Retries, by route.\n# TYPE fulcrum_retries_total counter\n");
    for (route, stats) in config.routes.iter().zip(&snapshot.route_stats) {
        let _ = writeln!(
            out,
            "fulcrum_retries_total{{route=\"{}\"}} {}",
            route.name,
            stats.retries.load(Ordering::Relaxed)
        );
    }

    out.push_str(
        "# HELP fulcrum_rate_limited_total Requests answered 429 by the route's rate limit.\n\
         # TYPE fulcrum_rate_limited_total counter\n",
    );
    for (route, stats) in config.routes.iter().zip(&snapshot.route_stats) {
        let _ = writeln!(
            out,
            "fulcrum_rate_limited_total{{route=\"{}\"}} {}",
            route.name,
            stats.rate_limited.load(Ordering::Relaxed)
        );
    }
    if let Some(redis) = snapshot.limits.redis() {
        out.push_str(
            "# HELP fulcrum_redis_up Whether Redis answers every worker that uses it.\n\
             # TYPE fulcrum_redis_up gauge\n",
        );
        let _ = writeln!(out, "fulcrum_redis_up {}", u8::from(redis.is_up()));
        out.push_str(
            "# HELP fulcrum_redis_errors_total Requests whose rate limit Redis could not check (answered by on_error).\n\
             # TYPE fulcrum_redis_errors_total counter\n",
        );
        let _ = writeln!(out, "fulcrum_redis_errors_total {}", redis.errors());
    }

    out.push_str("# HELP fulcrum_upstream_server_up Whether the server takes traffic.\n# TYPE fulcrum_upstream_server_up gauge\n");
    for u in &snapshot.upstreams {
        for s in &u.servers {
            let _ = writeln!(
                out,
                "fulcrum_upstream_server_up{{upstream=\"{}\",server=\"{}\"}} {}",
                u.name,
                s.address,
                u8::from(s.is_up(now))
            );
        }
    }
    out.push_str(
        "# HELP fulcrum_upstream_active_requests Requests in flight.\n# TYPE fulcrum_upstream_active_requests gauge\n",
    );
    for u in &snapshot.upstreams {
        for s in &u.servers {
            let _ = writeln!(
                out,
                "fulcrum_upstream_active_requests{{upstream=\"{}\",server=\"{}\"}} {}",
                u.name,
                s.address,
                s.active_requests()
            );
        }
    }
    out.push_str("# HELP fulcrum_upstream_failures_total Failed attempts, by kind.\n# TYPE fulcrum_upstream_failures_total counter\n");
    for u in &snapshot.upstreams {
        for s in &u.servers {
            for (k, kind) in FAILURE_KINDS.iter().enumerate() {
                let n = s.stats.failures[k].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "fulcrum_upstream_failures_total{{upstream=\"{}\",server=\"{}\",kind=\"{kind}\"}} {n}",
                    u.name, s.address
                );
            }
        }
    }
    out.push_str("# HELP fulcrum_health_checks_total Active health checks, by result.\n# TYPE fulcrum_health_checks_total counter\n");
    for u in &snapshot.upstreams {
        for s in &u.servers {
            for (i, result) in ["pass", "fail"].iter().enumerate() {
                let n = s.stats.checks[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "fulcrum_health_checks_total{{upstream=\"{}\",server=\"{}\",result=\"{result}\"}} {n}",
                    u.name, s.address
                );
            }
        }
    }
    out.push_str(
        "# HELP fulcrum_connections_active Open client connections.\n# TYPE fulcrum_connections_active gauge\n",
    );
    for (name, stats) in &listeners {
        let _ = writeln!(
            out,
            "fulcrum_connections_active{{listener=\"{name}\"}} {}",
            stats.active.load(Ordering::Relaxed)
        );
    }
    out.push_str(
        "# HELP fulcrum_connections_total Accepted client connections.\n# TYPE fulcrum_connections_total counter\n",
    );
    for (name, stats) in &listeners {
        let _ = writeln!(
            out,
            "fulcrum_connections_total{{listener=\"{name}\"}} {}",
            stats.total.load(Ordering::Relaxed)
        );
    }
    out.push_str(
        "# HELP fulcrum_connections_refused_total Connections closed at accept, by reason.\n# TYPE fulcrum_connections_refused_total counter\n",
    );
    for (name, stats) in &listeners {
        for (reason, value) in [
            ("per_ip", &stats.refused_per_ip),
            ("proxy_protocol", &stats.refused_proxy_protocol),
        ] {
            let _ = writeln!(
                out,
                "fulcrum_connections_refused_total{{listener=\"{name}\",reason=\"{reason}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
    for (name, help, kind, value) in [
        (
            "fulcrum_tunnels_active",
            "Open WebSocket/Upgrade tunnels.",
            "gauge",
            &shared.tunnels.active,
        ),
        (
            "fulcrum_tunnels_total",
            "WebSocket/Upgrade tunnels opened.",
            "counter",
            &shared.tunnels.total,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    out.push_str(
        "# HELP fulcrum_config_reloads_total Config reloads, by result.\n# TYPE fulcrum_config_reloads_total counter\n",
    );
    for (result, count) in ["ok", "error"].iter().zip(reloads) {
        let _ = writeln!(
            out,
            "fulcrum_config_reloads_total{{result=\"{result}\"}} {}",
            count.load(Ordering::Relaxed)
        );
    }
    out
}
