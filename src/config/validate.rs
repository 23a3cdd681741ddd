//! From the file's sections to the model: defaults filled in, names resolved
//! to ids, and every rule checked, each failure recorded at its position.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, StatusCode};

use super::model::*;
use super::schema::{BalanceSpec, HeaderEditsSpec, RetryOnSpec, RetrySpec};
use super::{Sink, Specs, unbuilt};

const MAX_WORKERS: usize = 1024;
const DEFAULT_REPLAY_BYTES: u64 = 64 * 1024;

/// Builds the model, or `None` when something was wrong (then `sink` says what).
pub(super) fn validate(specs: Specs, sink: &mut Sink) -> Option<Config> {
    let errors_before = sink_len(sink);
    let global = global(&specs, sink);
    let listeners = listeners(&specs, sink);
    let upstreams = upstreams(&specs, sink);
    let listener_ids: HashMap<&str, ListenerId> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), ListenerId(i)))
        .collect();
    let upstream_ids: HashMap<&str, UpstreamId> = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name.as_str(), UpstreamId(i)))
        .collect();
    let routes = routes(&specs, &listener_ids, &upstream_ids, sink);
    for (_, span, _) in &specs.rate_limits {
        unbuilt::rate_limit(span.clone(), sink);
    }
    if let Some((span, _)) = &specs.redis {
        unbuilt::redis(span.clone(), sink);
    }
    if !specs.complete || sink_len(sink) > errors_before {
        return None;
    }
    Some(Config {
        global,
        listeners,
        routes,
        upstreams,
        source: None,
    })
}

fn sink_len(sink: &Sink) -> usize {
    sink.errors.len()
}

fn global(specs: &Specs, sink: &mut Sink) -> Global {
    let g = &specs.global;
    unbuilt::global(g, sink);
    let workers = match &g.workers {
        Some(w) if *w.get_ref() > MAX_WORKERS => {
            sink.error(Some(w.span()), format!("workers must be at most {MAX_WORKERS}"));
            1
        }
        Some(w) if *w.get_ref() > 0 => *w.get_ref(),
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    Global {
        workers,
        shutdown_grace: g.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
        log_level: g.log_level.clone(),
        access_log: AccessLog::Off,
        access_log_format: AccessLogFormat::Json,
        admin_listen: g.admin_listen.as_ref().map(|a| a.get_ref().0),
        admin_token: None,
    }
}

fn listeners(specs: &Specs, sink: &mut Sink) -> Vec<Listener> {
    if specs.names.listeners.is_empty() && specs.listeners.is_empty() {
        sink.error(None, "at least one [[listeners]] is needed");
    }
    let mut names: HashMap<String, ()> = HashMap::new();
    let mut addrs: HashMap<std::net::SocketAddr, ()> = HashMap::new();
    let mut out = Vec::new();
    for (span, l) in &specs.listeners {
        unbuilt::listener(l, span.clone(), sink);
        let name = l.name.get_ref().clone();
        if name.is_empty() {
            sink.error(Some(l.name.span()), "a listener name cannot be empty");
        }
        if names.insert(name.clone(), ()).is_some() {
            sink.error(Some(l.name.span()), format!("duplicate listener name `{name}`"));
        }
        let listen = l.listen.get_ref().0;
        if listen.port() != 0 && addrs.insert(listen, ()).is_some() {
            sink.error(
                Some(l.listen.span()),
                format!("another listener already listens on {listen}"),
            );
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
            name,
            listen,
            max_connections,
            max_connections_per_ip: 0,
            request_header_timeout: l.request_header_timeout.map_or(Duration::from_secs(10), |d| d.0),
            keepalive_timeout: l.keepalive_timeout.map_or(Duration::from_secs(75), |d| d.0),
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
            max_body_bytes: l.max_body_size.map_or(100 << 20, |s| s.0),
            expose_upstream: l.expose_upstream.unwrap_or(false),
            proxy_protocol: false,
        });
    }
    out
}

fn upstreams(specs: &Specs, sink: &mut Sink) -> Vec<Upstream> {
    let mut out = Vec::new();
    for (name, span, u) in &specs.upstreams {
        if let Some(b) = &u.balance
            && *b.get_ref() == BalanceSpec::Hash
            && u.hash_key.is_none()
        {
            sink.error(Some(b.span()), "balance = \"hash\" needs a `hash_key`");
        }
        if let Some(k) = &u.hash_key
            && u.balance.as_ref().map(|b| *b.get_ref()) != Some(BalanceSpec::Hash)
        {
            sink.error(Some(k.span()), "`hash_key` is only used with balance = \"hash\"");
        }
        if let Some(hc_ref) = &u.health_check {
            for t in [&hc_ref.healthy_threshold, &hc_ref.unhealthy_threshold]
                .into_iter()
                .flatten()
            {
                if *t.get_ref() == 0 {
                    sink.error(Some(t.span()), "thresholds must be at least 1");
                }
            }
            let timeout = hc_ref.timeout.map_or(Duration::from_secs(2), |d| d.0);
            let interval = hc_ref.interval.map_or(Duration::from_secs(5), |d| d.0);
            if timeout > interval {
                sink.error(span.clone(), "health_check.timeout must not exceed its interval");
            }
            if hc_ref.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                sink.error(span.clone(), "health_check.path must start with `/`");
            }
        }
        let servers_spec = u.servers.get_ref();
        if servers_spec.is_empty() {
            sink.error(Some(u.servers.span()), format!("upstream `{name}` has no servers"));
        }
        let mut seen: HashMap<&str, ()> = HashMap::new();
        let mut servers = Vec::new();
        for s in servers_spec {
            let address = s.address.get_ref().0.as_str();
            if seen.insert(address, ()).is_some() {
                sink.error(
                    Some(s.address.span()),
                    format!("duplicate server {address} in upstream `{name}`"),
                );
            }
            let weight = s.weight.as_ref().map_or(1, |w| *w.get_ref());
            if weight == 0 {
                sink.error(s.weight.as_ref().map(|w| w.span()), "weight must be at least 1");
            }
            let max_requests = s.max_requests.as_ref().map(|m| *m.get_ref());
            if max_requests == Some(0) {
                sink.error(
                    s.max_requests.as_ref().map(|m| m.span()),
                    "max_requests must be at least 1",
                );
            }
            servers.push(Server {
                address: address.to_string(),
                weight: weight.max(1),
                backup: s.backup.as_ref().is_some_and(|b| *b.get_ref()),
                max_requests,
            });
        }
        if !servers.is_empty() && servers.iter().all(|s| s.backup) {
            sink.error(
                Some(u.servers.span()),
                format!("upstream `{name}` has only backup servers"),
            );
        }
        let hash_key = u.hash_key.as_ref().and_then(|k| match hash_key(&k.get_ref().0) {
            Ok(key) => Some(key),
            Err(message) => {
                sink.error(Some(k.span()), message);
                None
            }
        });
        out.push(Upstream {
            name: name.clone(),
            balance: match u.balance.as_ref().map(|b| *b.get_ref()) {
                None | Some(BalanceSpec::RoundRobin) => Balance::RoundRobin,
                Some(BalanceSpec::LeastConn) => Balance::LeastConn,
                Some(BalanceSpec::IpHash) => Balance::IpHash,
                Some(BalanceSpec::Hash) => Balance::Hash,
                Some(BalanceSpec::Random) => Balance::Random,
                Some(BalanceSpec::Ewma) => Balance::Ewma,
            },
            hash_key,
            // nginx's defaults: one failure takes a server out for 10 s.
            max_fails: u.max_fails.as_ref().map_or(1, |m| *m.get_ref()),
            fail_timeout: u
                .fail_timeout
                .as_ref()
                .map_or(Duration::from_secs(10), |d| d.get_ref().0),
            retry_budget_percent: match &u.retry_budget {
                None => 20,
                Some(b) => match b.get_ref().strip_suffix('%').and_then(|p| p.trim().parse::<u32>().ok()) {
                    Some(p) if p <= 100 => p,
                    _ => {
                        sink.error(
                            Some(b.span()),
                            format!(
                                "invalid retry_budget {:?}: expected a percentage like \"20%\"",
                                b.get_ref()
                            ),
                        );
                        20
                    }
                },
            },
            slow_start: u.slow_start.as_ref().map(|d| d.get_ref().0).filter(|d| !d.is_zero()),
            health_check: u.health_check.as_ref().map(|hc| HealthCheck {
                path: hc.path.clone().unwrap_or_else(|| "/".to_string()),
                host: hc.host.clone(),
                interval: hc.interval.map_or(Duration::from_secs(5), |d| d.0),
                timeout: hc.timeout.map_or(Duration::from_secs(2), |d| d.0),
                healthy_threshold: hc.healthy_threshold.as_ref().map_or(2, |t| *t.get_ref()).max(1),
                unhealthy_threshold: hc.unhealthy_threshold.as_ref().map_or(3, |t| *t.get_ref()).max(1),
                expect_status: hc.expect_status.clone().map_or((200, 399), |s| s.0),
            }),
            sticky: u.sticky.as_ref().and_then(|st| {
                let spec = st.get_ref();
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if spec.cookie.is_empty() || !spec.cookie.bytes().all(token) {
                    sink.error(Some(st.span()), format!("invalid cookie name {:?}", spec.cookie));
                    return None;
                }
                Some(Sticky {
                    cookie: spec.cookie.clone(),
                    max_age: spec.max_age.map(|d| d.0),
                })
            }),
            keepalive: u.keepalive.unwrap_or(64),
            keepalive_timeout: u.keepalive_timeout.map_or(Duration::from_secs(60), |d| d.0),
            servers,
        });
    }
    out
}

fn routes(
    specs: &Specs,
    listener_ids: &HashMap<&str, ListenerId>,
    upstream_ids: &HashMap<&str, UpstreamId>,
    sink: &mut Sink,
) -> Vec<Route> {
    if specs.routes.is_empty() && specs.complete {
        sink.error(None, "at least one [[routes]] is needed");
    }
    let names = &specs.names;
    let mut route_names: HashMap<String, ()> = HashMap::new();
    let mut out = Vec::new();
    for (index, (span, r)) in specs.routes.iter().enumerate() {
        unbuilt::route(r, sink);
        let name = match &r.name {
            Some(n) => {
                if route_names.insert(n.get_ref().clone(), ()).is_some() {
                    sink.error(Some(n.span()), format!("duplicate route name `{}`", n.get_ref()));
                }
                n.get_ref().clone()
            }
            None => format!("route{index}"),
        };
        let listeners = match &r.listeners {
            None => (0..listener_ids.len()).map(ListenerId).collect(),
            Some(list) => list
                .iter()
                .filter_map(|l| {
                    let id = listener_ids.get(l.get_ref().as_str()).copied();
                    if !names.listeners.contains(l.get_ref()) {
                        sink.error(Some(l.span()), format!("no listener named `{}`", l.get_ref()));
                    }
                    id
                })
                .collect(),
        };
        let path_prefix = match &r.path_prefix {
            Some(p) if !p.get_ref().starts_with('/') => {
                sink.error(Some(p.span()), "path_prefix must start with `/`");
                "/".to_string()
            }
            Some(p) => p.get_ref().clone(),
            None => "/".to_string(),
        };
        if let Some(p) = &r.rewrite_prefix
            && !p.get_ref().starts_with('/')
        {
            sink.error(Some(p.span()), "rewrite_prefix must start with `/`");
        }
        let mut headers = Vec::new();
        for (n, v) in &r.headers {
            match HeaderName::from_bytes(n.as_bytes()) {
                Ok(name) => headers.push((name, v.0.clone())),
                Err(_) => sink.error(span.clone(), format!("invalid header name {n:?} in `headers`")),
            }
        }
        let targets = [r.upstream.is_some(), r.split.is_some(), r.respond.is_some()];
        let action = match targets.iter().filter(|t| **t).count() {
            1 => action(r, upstream_ids, &names.upstreams, sink),
            0 => {
                sink.error(span.clone(), "a route needs one of `upstream`, `split` or `respond`");
                None
            }
            _ => {
                sink.error(
                    span.clone(),
                    "a route takes only one of `upstream`, `split` or `respond`",
                );
                None
            }
        };
        if let Some(rl) = &r.rate_limit
            && !names.rate_limits.contains(rl.get_ref())
        {
            sink.error(Some(rl.span()), format!("no rate limit named `{}`", rl.get_ref()));
        }
        let Some(action) = action else { continue };
        out.push(Route {
            name,
            listeners,
            host: r.host.clone().map_or(HostMatch::Any, |h| h.0),
            path_prefix,
            headers,
            action,
            rewrite_prefix: r.rewrite_prefix.as_ref().map(|p| p.get_ref().clone()),
            connect_timeout: r.connect_timeout.map_or(Duration::from_secs(5), |d| d.0),
            read_timeout: r.read_timeout.map_or(Duration::from_secs(60), |d| d.0),
            retry: retry(
                r.retry.as_ref().map(|r| r.get_ref()),
                sink,
                r.retry.as_ref().map(|r| r.span()),
            ),
            request_headers: edits(r.request_headers.as_ref(), span, sink),
            response_headers: edits(r.response_headers.as_ref(), span, sink),
        });
    }
    out
}

fn action(
    r: &super::schema::RouteSpec,
    upstream_ids: &HashMap<&str, UpstreamId>,
    upstream_names: &[String],
    sink: &mut Sink,
) -> Option<RouteAction> {
    if let Some(u) = &r.upstream {
        let id = upstream_ids.get(u.get_ref().as_str()).copied();
        if !upstream_names.contains(u.get_ref()) {
            sink.error(Some(u.span()), format!("no upstream named `{}`", u.get_ref()));
        }
        return id.map(RouteAction::Upstream);
    }
    if let Some(split) = &r.split {
        for s in split.get_ref() {
            if !upstream_names.contains(s.upstream.get_ref()) {
                sink.error(
                    Some(s.upstream.span()),
                    format!("no upstream named `{}`", s.upstream.get_ref()),
                );
            }
            if *s.weight.get_ref() == 0 {
                sink.error(Some(s.weight.span()), "split weights must be at least 1");
            }
        }
        return None;
    }
    let respond = r.respond.as_ref()?;
    let spec = respond.get_ref();
    match StatusCode::from_u16(*spec.status.get_ref()) {
        Ok(status) if (100..=599).contains(&status.as_u16()) => Some(RouteAction::Respond {
            status,
            body: Bytes::from(spec.body.clone()),
        }),
        _ => {
            sink.error(Some(spec.status.span()), "status must be between 100 and 599");
            None
        }
    }
}

fn edits(spec: Option<&HeaderEditsSpec>, span: &Option<std::ops::Range<usize>>, sink: &mut Sink) -> HeaderEdits {
    let Some(spec) = spec else {
        return HeaderEdits::default();
    };
    let mut set = Vec::new();
    for (n, v) in &spec.set {
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(name) => set.push((name, v.0.clone())),
            Err(_) => sink.error(span.clone(), format!("invalid header name {n:?}")),
        }
    }
    HeaderEdits {
        set,
        remove: spec.remove.iter().map(|n| n.0.clone()).collect(),
    }
}

fn hash_key((kind, name): &(String, Option<String>)) -> Result<HashKey, String> {
    let named = |what: &str| {
        name.clone()
            .ok_or_else(|| format!("`{kind}` needs a name: `{kind}:NAME`"))
            .map(|n| (what.to_string(), n))
    };
    match kind.as_str() {
        "client_ip" if name.is_none() => Ok(HashKey::ClientIp),
        "path" if name.is_none() => Ok(HashKey::Path),
        "header" => {
            let (_, n) = named("header")?;
            HeaderName::from_bytes(n.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("invalid header name {n:?}"))
        }
        "cookie" => named("cookie").map(|(_, n)| HashKey::Cookie(n)),
        "query" => named("query").map(|(_, n)| HashKey::Query(n)),
        _ => Err(format!(
            "invalid hash_key `{kind}`: expected client_ip, header:NAME, cookie:NAME, path or query:NAME"
        )),
    }
}

/// Without a `retry` table a route still tries a second server after a
/// connection error or timeout, as nginx's `proxy_next_upstream` does.
fn retry(spec: Option<&RetrySpec>, sink: &mut Sink, span: Option<std::ops::Range<usize>>) -> Option<Retry> {
    let default_on = RetryOn {
        error: true,
        timeout: true,
        ..RetryOn::default()
    };
    let Some(spec) = spec else {
        return Some(Retry {
            tries: 2,
            on: default_on,
            timeout: None,
            replay_max_bytes: DEFAULT_REPLAY_BYTES,
        });
    };
    let tries = spec.tries.unwrap_or(2);
    if !(1..=10).contains(&tries) {
        sink.error(span, "retry.tries must be between 1 and 10");
    }
    let on = match &spec.on {
        None => default_on,
        Some(list) => {
            let mut on = RetryOn::default();
            for item in list {
                match item {
                    RetryOnSpec::Error => on.error = true,
                    RetryOnSpec::Timeout => on.timeout = true,
                    RetryOnSpec::Http502 => on.http_502 = true,
                    RetryOnSpec::Http503 => on.http_503 = true,
                    RetryOnSpec::Http504 => on.http_504 = true,
                }
            }
            on
        }
    };
    Some(Retry {
        tries: tries.clamp(1, 10),
        on,
        timeout: spec.timeout.map(|d| d.0),
        replay_max_bytes: spec.replay_body.map_or(DEFAULT_REPLAY_BYTES, |s| s.0),
    })
}
