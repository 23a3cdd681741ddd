//! `[[routes]]` into `Route`: names, references to listeners, upstreams and
//! rate limits resolved, the action chosen, and the retry policy.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_spanned::Spanned;

use super::positive;
use crate::config::Sink;
use crate::config::model::*;
use crate::config::schema::{CompressSpec, HeaderEditsSpec, RetryOnSpec, RetrySpec, RouteSpec, SplitSpec};
use crate::config::sections::{Names, Specs};

const MAX_TRIES: u32 = 10;
const DEFAULT_REPLAY_BYTES: u64 = 64 * 1024;

/// Every route that deserialized and has a valid action, in file order.
pub(super) fn routes(
    specs: &Specs,
    listeners: &[Listener],
    upstreams: &[Upstream],
    rate_limits: &[RateLimit],
    sink: &mut Sink,
) -> Vec<Route> {
    if specs.names.route_entries == 0 {
        sink.error(None, "at least one [[routes]] is needed");
    }
    let ids = Ids {
        listener_count: listeners.len(),
        listeners: listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.as_str(), ListenerId(i)))
            .collect(),
        upstreams: upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), UpstreamId(i)))
            .collect(),
        rate_limits: rate_limits
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.as_str(), RateLimitId(i)))
            .collect(),
        names: &specs.names,
    };
    let names = route_names(specs, sink);
    specs
        .routes
        .iter()
        .zip(names)
        .filter_map(|(section, name)| route(name, &section.spec, &section.span, &ids, sink))
        .collect()
}

/// Where names resolve to; `names` also knows sections that failed on their
/// own, which are not reported again as missing.
struct Ids<'a> {
    listener_count: usize,
    listeners: HashMap<&'a str, ListenerId>,
    upstreams: HashMap<&'a str, UpstreamId>,
    rate_limits: HashMap<&'a str, RateLimitId>,
    names: &'a Names,
}

/// Each route's name: its own, or `route<N>` (N its position); no two alike.
fn route_names(specs: &Specs, sink: &mut Sink) -> Vec<String> {
    let defaults: HashMap<String, usize> = (specs.routes.iter().enumerate())
        .filter(|(_, r)| r.spec.name.is_none())
        .map(|(i, _)| (format!("route{i}"), i))
        .collect();
    let mut explicit_names = HashSet::new();
    let mut names = Vec::new();
    for (i, section) in specs.routes.iter().enumerate() {
        let Some(explicit) = &section.spec.name else {
            names.push(format!("route{i}"));
            continue;
        };
        let name = explicit.get_ref();
        if name.is_empty() {
            sink.error(Some(explicit.span()), "a route name cannot be empty");
        } else if !explicit_names.insert(name.as_str()) {
            sink.error(Some(explicit.span()), format!("duplicate route name `{name}`"));
        } else if let Some(unnamed) = defaults.get(name) {
            sink.error(
                Some(explicit.span()),
                format!("route name `{name}` is already the name of routes[{unnamed}], which has none of its own"),
            );
        }
        names.push(name.clone());
    }
    names
}

fn route(
    name: String,
    r: &RouteSpec,
    span: &Option<std::ops::Range<usize>>,
    ids: &Ids,
    sink: &mut Sink,
) -> Option<Route> {
    let listeners = match &r.listeners {
        None => (0..ids.listener_count).map(ListenerId).collect(),
        Some(list) => {
            if list.is_empty() {
                sink.error(
                    span.clone(),
                    "`listeners` is empty: leave it out to serve every listener",
                );
            }
            list.iter()
                .filter_map(|l| resolve(l, &ids.listeners, &ids.names.listeners, "listener", sink))
                .collect()
        }
    };
    let path_prefix = r.path_prefix.as_ref().map_or("/", |p| p.get_ref().as_str());
    if !path_prefix.starts_with('/') {
        sink.error(
            r.path_prefix.as_ref().map(|p| p.span()),
            "path_prefix must start with `/`",
        );
    }
    if let Some(p) = &r.rewrite_prefix
        && !p.get_ref().starts_with('/')
    {
        sink.error(Some(p.span()), "rewrite_prefix must start with `/`");
    }
    let rate_limit = r
        .rate_limit
        .as_ref()
        .and_then(|limit| resolve(limit, &ids.rate_limits, &ids.names.rate_limits, "rate limit", sink));
    let connect_timeout = positive(
        r.connect_timeout.as_ref(),
        Duration::from_secs(5),
        "connect_timeout",
        sink,
    );
    let read_timeout = positive(r.read_timeout.as_ref(), Duration::from_secs(60), "read_timeout", sink);
    let retry = retry(r.retry.as_ref(), sink);
    let action = action(r, span, ids, sink)?;
    Some(Route {
        name,
        listeners,
        host: r.host.clone().map_or(HostMatch::Any, |h| h.0),
        path_prefix: path_prefix.to_string(),
        headers: r.headers.0.clone(),
        action,
        rewrite_prefix: r.rewrite_prefix.as_ref().map(|p| p.get_ref().clone()),
        rate_limit,
        connect_timeout,
        read_timeout,
        retry,
        request_headers: edits(r.request_headers.as_ref()),
        response_headers: edits(r.response_headers.as_ref()),
        compress: compress(r.compress.as_ref(), sink),
    })
}

/// Each encoding at most once (serde already refused any but gzip and br);
/// an empty list is the same as none.
fn compress(spec: Option<&Spanned<Vec<Spanned<CompressSpec>>>>, sink: &mut Sink) -> Compress {
    let mut compress = Compress::default();
    let Some(spec) = spec else {
        return compress;
    };
    for encoding in spec.get_ref() {
        let (seen, name) = match encoding.get_ref() {
            CompressSpec::Gzip => (&mut compress.gzip, "gzip"),
            CompressSpec::Br => (&mut compress.br, "br"),
        };
        if *seen {
            sink.error(Some(encoding.span()), format!("`{name}` is listed twice"));
        }
        *seen = true;
    }
    compress
}

/// A reference to a named section; an error when the file has no such name.
fn resolve<T: Copy>(
    name: &Spanned<String>,
    ids: &HashMap<&str, T>,
    defined: &[String],
    what: &str,
    sink: &mut Sink,
) -> Option<T> {
    let id = ids.get(name.get_ref().as_str()).copied();
    if !defined.contains(name.get_ref()) {
        sink.error(Some(name.span()), format!("no {what} named `{}`", name.get_ref()));
    }
    id
}

/// Exactly one of `upstream`, `split` and `respond`.
fn action(r: &RouteSpec, span: &Option<std::ops::Range<usize>>, ids: &Ids, sink: &mut Sink) -> Option<RouteAction> {
    let given = [r.upstream.is_some(), r.split.is_some(), r.respond.is_some()];
    match given.iter().filter(|g| **g).count() {
        1 => {}
        0 => {
            sink.error(span.clone(), "a route needs one of `upstream`, `split` or `respond`");
            return None;
        }
        _ => {
            sink.error(
                span.clone(),
                "a route takes only one of `upstream`, `split` or `respond`",
            );
            return None;
        }
    }
    if let Some(upstream) = &r.upstream {
        return resolve(upstream, &ids.upstreams, &ids.names.upstreams, "upstream", sink).map(RouteAction::Upstream);
    }
    if let Some(split) = &r.split {
        return check_split(split, ids, sink).map(RouteAction::Split);
    }
    let respond = r.respond.as_ref()?.get_ref();
    let status = *respond.status.get_ref();
    match StatusCode::from_u16(status) {
        Ok(status) if (100..=599).contains(&status.as_u16()) => Some(RouteAction::Respond {
            status,
            body: Bytes::from(respond.body.clone()),
        }),
        _ => {
            sink.error(Some(respond.status.span()), "status must be between 100 and 599");
            None
        }
    }
}

/// Every upstream named once, known; weights may be 0 (a canary switched
/// off) but not all of them.
fn check_split(split: &Spanned<Vec<SplitSpec>>, ids: &Ids, sink: &mut Sink) -> Option<Vec<SplitTarget>> {
    if split.get_ref().is_empty() {
        sink.error(Some(split.span()), "split needs at least one upstream");
        return None;
    }
    let mut targets = Vec::new();
    let mut ok = true;
    for s in split.get_ref() {
        match resolve(&s.upstream, &ids.upstreams, &ids.names.upstreams, "upstream", sink) {
            Some(id) if targets.iter().any(|t: &SplitTarget| t.upstream == id) => {
                sink.error(
                    Some(s.upstream.span()),
                    format!("upstream `{}` appears twice in the split", s.upstream.get_ref()),
                );
                ok = false;
            }
            Some(id) => targets.push(SplitTarget {
                upstream: id,
                weight: *s.weight.get_ref(),
            }),
            None => ok = false,
        }
    }
    if ok && targets.iter().all(|t| t.weight == 0) {
        sink.error(Some(split.span()), "at least one split weight must be above 0");
        return None;
    }
    ok.then_some(targets)
}

fn edits(spec: Option<&HeaderEditsSpec>) -> HeaderEdits {
    spec.map_or_else(HeaderEdits::default, |spec| HeaderEdits {
        set: spec.set.0.clone(),
        remove: spec.remove.iter().map(|n| n.0.clone()).collect(),
    })
}

/// Without a `retry` table a route still tries a second server after a
/// connection error or timeout, as nginx's `proxy_next_upstream` does.
fn retry(spec: Option<&Spanned<RetrySpec>>, sink: &mut Sink) -> Option<Retry> {
    let default_on = RetryOn {
        error: true,
        timeout: true,
        ..RetryOn::default()
    };
    let Some(spec) = spec.map(Spanned::get_ref) else {
        return Some(Retry {
            tries: 2,
            on: default_on,
            timeout: None,
            replay_max_bytes: DEFAULT_REPLAY_BYTES,
        });
    };
    let tries = spec.tries.as_ref().map_or(2, |t| *t.get_ref());
    if let Some(t) = &spec.tries
        && !(1..=MAX_TRIES).contains(t.get_ref())
    {
        sink.error(Some(t.span()), format!("tries must be between 1 and {MAX_TRIES}"));
    }
    let on = spec.on.as_ref().map_or(default_on, |list| {
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
    });
    let timeout = spec
        .timeout
        .as_ref()
        .map(|t| positive(Some(t), Duration::from_secs(1), "timeout", sink));
    Some(Retry {
        tries: tries.clamp(1, MAX_TRIES),
        on,
        timeout,
        replay_max_bytes: spec.replay_body.map_or(DEFAULT_REPLAY_BYTES, |s| s.0),
    })
}
