//! From the file's sections to the model: defaults filled in, names resolved
//! to ids, and every rule checked, each failure recorded at its position.

mod limits;
mod routes;
mod tls;
mod upstreams;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_spanned::Spanned;

use super::Sink;
use super::model::*;
use super::schema::{AccessLogFormatSpec, GlobalSpec};
use super::sections::Specs;
use super::units::DurationStr;

const MAX_WORKERS: usize = 1024;

/// Builds the model, or `None` when something was wrong (then `sink` says what).
/// Relative file paths (certificates) are resolved against `base_dir`.
pub(super) fn validate(specs: Specs, base_dir: &Path, sink: &mut Sink) -> Option<Config> {
    let errors_before = sink.len();
    let global = global(&specs.global, sink);
    let listeners = listeners(&specs, base_dir, sink);
    let upstreams = upstreams::upstreams(&specs.upstreams, sink);
    let rate_limits = limits::rate_limits(&specs, sink);
    let redis = limits::redis(&specs, sink);
    let routes = routes::routes(&specs, &listeners, &upstreams, &rate_limits, sink);
    if !specs.complete || sink.len() > errors_before {
        return None;
    }
    Some(Config {
        global,
        listeners,
        routes,
        upstreams,
        rate_limits,
        redis,
        source: None,
    })
}

fn global(g: &GlobalSpec, sink: &mut Sink) -> Global {
    let workers = match g.workers.as_ref().map(|w| (*w.get_ref(), w.span())) {
        Some((n, span)) if n > MAX_WORKERS => {
            sink.error(Some(span), format!("workers must be at most {MAX_WORKERS}"));
            1
        }
        Some((n, _)) if n > 0 => n,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if let Some(level) = &g.log_level
        && let Err(e) = tracing_subscriber::EnvFilter::try_new(level.get_ref())
    {
        sink.error(
            Some(level.span()),
            format!("invalid log_level {:?}: {e}", level.get_ref()),
        );
    }
    if let Some(token) = &g.admin_token
        && token.get_ref().is_empty()
    {
        sink.error(Some(token.span()), "admin_token cannot be empty");
    }
    Global {
        workers,
        shutdown_grace: g.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
        log_level: g.log_level.as_ref().map(|l| l.get_ref().clone()),
        access_log: access_log(g, sink),
        access_log_format: match g.access_log_format.as_ref().map(|f| *f.get_ref()) {
            None | Some(AccessLogFormatSpec::Json) => AccessLogFormat::Json,
            Some(AccessLogFormatSpec::Combined) => AccessLogFormat::Combined,
        },
        admin_listen: g.admin_listen.as_ref().map(|a| a.get_ref().0),
        admin_token: g.admin_token.as_ref().map(|t| t.get_ref().clone()),
        resolver: g.resolver.as_ref().map(|r| r.get_ref().0),
        dns_refresh: dns_refresh(g.dns_refresh.as_ref(), sink),
    }
}

/// Shortest `dns_refresh`: resolving a name more often than once a second
/// only loads the DNS server.
const MIN_DNS_REFRESH: Duration = Duration::from_secs(1);

fn dns_refresh(value: Option<&Spanned<DurationStr>>, sink: &mut Sink) -> Duration {
    let default = Duration::from_secs(5);
    match value {
        None => default,
        Some(d) if d.get_ref().0 < MIN_DNS_REFRESH => {
            sink.error(Some(d.span()), "dns_refresh must be at least 1s");
            default
        }
        Some(d) => d.get_ref().0,
    }
}

/// `access_log`, off unless the file says otherwise. A file path must be
/// one that can be opened: its directory has to exist (the file itself is
/// created if missing) and it cannot be a directory. Relative paths are
/// taken from the working directory.
fn access_log(g: &GlobalSpec, sink: &mut Sink) -> AccessLog {
    let Some(spec) = &g.access_log else {
        return AccessLog::Off;
    };
    let log = spec.get_ref().0.clone();
    if let AccessLog::File(path) = &log {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        if path.is_dir() {
            sink.error(
                Some(spec.span()),
                format!("access_log {} is a directory, not a file", path.display()),
            );
        } else if !dir.is_dir() {
            sink.error(
                Some(spec.span()),
                format!(
                    "access_log {}: the directory {} does not exist",
                    path.display(),
                    dir.display()
                ),
            );
        }
    }
    log
}

fn listeners(specs: &Specs, base_dir: &Path, sink: &mut Sink) -> Vec<Listener> {
    if specs.names.listener_entries == 0 {
        sink.error(None, "at least one [[listeners]] is needed");
    }
    let mut names: HashMap<&str, ()> = HashMap::new();
    let mut addresses: Vec<SocketAddr> = Vec::new();
    let mut out = Vec::new();
    for section in &specs.listeners {
        let l = &section.spec;
        let name = l.name.get_ref();
        if name.is_empty() {
            sink.error(Some(l.name.span()), "a listener name cannot be empty");
        } else if names.insert(name, ()).is_some() {
            sink.error(Some(l.name.span()), format!("duplicate listener name `{name}`"));
        }
        let listen = l.listen.get_ref().0;
        claim_address(&mut addresses, listen, l.listen.span(), sink);
        let tls = l.tls.as_ref().and_then(|spec| tls::listener_tls(spec, base_dir, sink));
        if let Some(redirect) = l.tls.as_ref().and_then(|t| t.get_ref().redirect_http_from.as_ref()) {
            claim_address(&mut addresses, redirect.get_ref().0, redirect.span(), sink);
        }
        let max_connections = l.max_connections.as_ref().map_or(10_000, |m| *m.get_ref());
        if max_connections == 0 {
            sink.error(
                l.max_connections.as_ref().map(|m| m.span()),
                "max_connections must be at least 1",
            );
        }
        let max_header_bytes = l.max_header_size.as_ref().map_or(32 * 1024, |s| s.get_ref().0);
        if max_header_bytes < 1024 {
            sink.error(
                l.max_header_size.as_ref().map(|s| s.span()),
                "max_header_size must be at least 1k",
            );
        }
        out.push(Listener {
            name: name.clone(),
            listen,
            max_connections,
            max_connections_per_ip: l.max_connections_per_ip.as_ref().map_or(0, |m| *m.get_ref()),
            request_header_timeout: positive(
                l.request_header_timeout.as_ref(),
                Duration::from_secs(10),
                "request_header_timeout",
                sink,
            ),
            keepalive_timeout: l.keepalive_timeout.map_or(Duration::from_secs(75), |d| d.0),
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
            max_body_bytes: l.max_body_size.map_or(100 << 20, |s| s.0),
            expose_upstream: l.expose_upstream.unwrap_or(false),
            proxy_protocol: l.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref()),
            tls,
        });
    }
    out
}

/// Records that something listens on `addr`, or an error at `span` when an
/// earlier listener (or redirect listener) already does.
fn claim_address(addresses: &mut Vec<SocketAddr>, addr: SocketAddr, span: std::ops::Range<usize>, sink: &mut Sink) {
    // Port 0 asks the OS for a free port, so two of them never clash.
    if addr.port() == 0 {
        return;
    }
    if let Some(other) = addresses.iter().find(|other| overlaps(**other, addr)) {
        sink.error(
            Some(span),
            format!("{addr} overlaps {other}, where another listener already listens"),
        );
    }
    addresses.push(addr);
}

/// Two addresses on the same port clash when their IPs are equal or one is
/// the wildcard of the same family.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A duration that must not be zero (a zero timeout fails everything, a zero
/// interval spins), or `default` when absent.
fn positive(value: Option<&Spanned<DurationStr>>, default: Duration, key: &str, sink: &mut Sink) -> Duration {
    match value {
        None => default,
        Some(d) if d.get_ref().0.is_zero() => {
            sink.error(Some(d.span()), format!("{key} must be greater than 0"));
            default
        }
        Some(d) => d.get_ref().0,
    }
}
