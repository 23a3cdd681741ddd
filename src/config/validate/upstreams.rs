//! `[upstreams.NAME]` into `Upstream`: balancing, passive and active health,
//! affinity and the server list.

use std::collections::HashSet;
use std::time::Duration;

use serde_spanned::Spanned;

use super::positive;
use crate::config::Sink;
use crate::config::model::*;
use crate::config::schema::{BalanceSpec, HealthCheckSpec, ServerSpec, StickySpec, UpstreamSpec};
use crate::config::sections::Named;
use crate::config::units::cookie_name;

const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;

/// Every upstream that deserialized, in file order (their index is their `UpstreamId`).
pub(super) fn upstreams(specs: &[Named<UpstreamSpec>], sink: &mut Sink) -> Vec<Upstream> {
    specs.iter().map(|u| upstream(&u.name, &u.spec, sink)).collect()
}

fn upstream(name: &str, u: &UpstreamSpec, sink: &mut Sink) -> Upstream {
    let balance = balance(u.balance.as_ref().map(|b| *b.get_ref()));
    match (&u.balance, &u.hash_key) {
        (Some(b), None) if balance == Balance::Hash => {
            sink.error(Some(b.span()), "balance = \"hash\" needs a `hash_key`");
        }
        (_, Some(k)) if balance != Balance::Hash => {
            sink.error(Some(k.span()), "`hash_key` is only used with balance = \"hash\"");
        }
        _ => {}
    }
    Upstream {
        name: name.to_string(),
        balance,
        hash_key: u.hash_key.as_ref().map(|k| k.get_ref().0.clone()),
        // nginx's defaults: one failure takes a server out for 10 s.
        max_fails: u.max_fails.as_ref().map_or(1, |m| *m.get_ref()),
        fail_timeout: u
            .fail_timeout
            .as_ref()
            .map_or(Duration::from_secs(10), |d| d.get_ref().0),
        retry_budget_percent: u
            .retry_budget
            .as_ref()
            .map_or(DEFAULT_RETRY_BUDGET_PERCENT, |b| retry_budget(b, sink)),
        slow_start: u.slow_start.as_ref().map(|d| d.get_ref().0).filter(|d| !d.is_zero()),
        health_check: u.health_check.as_ref().map(|hc| health_check(hc.get_ref(), sink)),
        sticky: u.sticky.as_ref().and_then(|s| sticky(s.get_ref(), sink)),
        keepalive: u.keepalive.unwrap_or(64),
        keepalive_timeout: u.keepalive_timeout.map_or(Duration::from_secs(60), |d| d.0),
        servers: servers(name, &u.servers, sink),
    }
}

fn balance(spec: Option<BalanceSpec>) -> Balance {
    match spec {
        None | Some(BalanceSpec::RoundRobin) => Balance::RoundRobin,
        Some(BalanceSpec::LeastConn) => Balance::LeastConn,
        Some(BalanceSpec::IpHash) => Balance::IpHash,
        Some(BalanceSpec::Hash) => Balance::Hash,
        Some(BalanceSpec::Random) => Balance::Random,
        Some(BalanceSpec::Ewma) => Balance::Ewma,
    }
}

/// `"20%"`: retries may add at most this share to the requests sent.
fn retry_budget(budget: &Spanned<String>, sink: &mut Sink) -> u32 {
    let text = budget.get_ref();
    match text.strip_suffix('%').and_then(|p| p.trim().parse::<u32>().ok()) {
        Some(percent) if percent <= 100 => percent,
        _ => {
            sink.error(
                Some(budget.span()),
                format!("invalid retry_budget {text:?}: expected a percentage from \"0%\" to \"100%\""),
            );
            DEFAULT_RETRY_BUDGET_PERCENT
        }
    }
}

fn health_check(hc: &HealthCheckSpec, sink: &mut Sink) -> HealthCheck {
    for threshold in [&hc.healthy_threshold, &hc.unhealthy_threshold].into_iter().flatten() {
        if *threshold.get_ref() == 0 {
            sink.error(Some(threshold.span()), "thresholds must be at least 1");
        }
    }
    let interval = positive(hc.interval.as_ref(), Duration::from_secs(5), "interval", sink);
    let timeout = positive(hc.timeout.as_ref(), Duration::from_secs(2), "timeout", sink);
    if timeout > interval {
        let span = hc.timeout.as_ref().or(hc.interval.as_ref()).map(|d| d.span());
        sink.error(
            span,
            format!("timeout ({timeout:?}) must not exceed the interval ({interval:?})"),
        );
    }
    let path = hc.path.as_ref().map_or("/", |p| p.get_ref().as_str());
    if !path.starts_with('/') {
        sink.error(
            hc.path.as_ref().map(|p| p.span()),
            "the health check path must start with `/`",
        );
    }
    HealthCheck {
        path: path.to_string(),
        host: hc.host.clone(),
        interval,
        timeout,
        healthy_threshold: hc.healthy_threshold.as_ref().map_or(2, |t| *t.get_ref()).max(1),
        unhealthy_threshold: hc.unhealthy_threshold.as_ref().map_or(3, |t| *t.get_ref()).max(1),
        expect_status: hc.expect_status.map_or((200, 399), |s| s.0),
    }
}

fn sticky(spec: &StickySpec, sink: &mut Sink) -> Option<Sticky> {
    let cookie = spec.cookie.get_ref();
    match cookie_name("sticky.cookie", cookie) {
        Ok(cookie) => Some(Sticky {
            cookie,
            max_age: spec.max_age.map(|d| d.0),
        }),
        Err(message) => {
            sink.error(Some(spec.cookie.span()), message);
            None
        }
    }
}

fn servers(upstream: &str, specs: &Spanned<Vec<ServerSpec>>, sink: &mut Sink) -> Vec<Server> {
    if specs.get_ref().is_empty() {
        sink.error(Some(specs.span()), format!("upstream `{upstream}` has no servers"));
    }
    let mut seen = HashSet::new();
    let mut servers = Vec::new();
    for s in specs.get_ref() {
        let address = s.address.get_ref().0.as_str();
        if !seen.insert(address) {
            sink.error(
                Some(s.address.span()),
                format!("duplicate server {address} in upstream `{upstream}`"),
            );
        }
        let weight = s.weight.as_ref().map_or(1, |w| *w.get_ref());
        if let Some(w) = &s.weight
            && *w.get_ref() == 0
        {
            sink.error(Some(w.span()), "weight must be at least 1");
        }
        let max_requests = s.max_requests.as_ref().map(|m| *m.get_ref());
        if let Some(m) = &s.max_requests
            && *m.get_ref() == 0
        {
            sink.error(Some(m.span()), "max_requests must be at least 1");
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
            Some(specs.span()),
            format!("upstream `{upstream}` has only backup servers"),
        );
    }
    servers
}
