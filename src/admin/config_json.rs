//! `GET /api/config`: the effective configuration (the file as loaded, plus
//! the admin API's changes since), as JSON in the file's vocabulary, with
//! secrets redacted.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{
    AccessLog, Balance, Config, HashKey, HeaderEdits, HealthCheck, HostMatch, LimitKey, LimitStore, Listener,
    RateLimit, Redis, RedisOnError, Route, RouteAction, Upstream,
};

const REDACTED: &str = "<redacted>";

pub(super) fn config(config: &Config) -> Value {
    let g = &config.global;
    json!({
        "source": config.source.as_ref().map(|p| p.display().to_string()),
        "global": {
            "workers": g.workers,
            "shutdown_grace": duration(g.shutdown_grace),
            "log_level": g.log_level,
            "access_log": match &g.access_log {
                AccessLog::Off => "off".to_string(),
                AccessLog::Stdout => "stdout".to_string(),
                AccessLog::File(path) => path.display().to_string(),
            },
            "access_log_format": format!("{:?}", g.access_log_format).to_lowercase(),
            "admin_listen": g.admin_listen.map(|a| a.to_string()),
            "admin_token": g.admin_token.as_ref().map(|_| REDACTED),
        },
        "listeners": config.listeners.iter().map(listener).collect::<Vec<_>>(),
        "routes": config.routes.iter().map(|r| route(config, r)).collect::<Vec<_>>(),
        "upstreams": config.upstreams.iter().map(|u| (u.name.clone(), upstream(u))).collect::<serde_json::Map<_, _>>(),
        "rate_limits": config.rate_limits.iter().map(|l| (l.name.clone(), rate_limit(l))).collect::<serde_json::Map<_, _>>(),
        "redis": config.redis.as_ref().map(redis),
    })
}

fn listener(l: &Listener) -> Value {
    json!({
        "name": l.name,
        "listen": l.listen.to_string(),
        "max_connections": l.max_connections,
        "max_connections_per_ip": l.max_connections_per_ip,
        "request_header_timeout": duration(l.request_header_timeout),
        "keepalive_timeout": duration(l.keepalive_timeout),
        "max_header_size": l.max_header_bytes,
        "max_body_size": l.max_body_bytes,
        "expose_upstream": l.expose_upstream,
        "proxy_protocol": l.proxy_protocol,
        "tls": l.tls.as_ref().map(|t| json!({
            "certificates": t.certificates.iter().map(|c| json!({
                "cert": c.cert.display().to_string(),
                "key": c.key.display().to_string(),
            })).collect::<Vec<_>>(),
            "redirect_http_from": t.redirect_http_from.map(|a| a.to_string()),
        })),
    })
}

fn route(config: &Config, r: &Route) -> Value {
    let mut out = json!({
        "name": r.name,
        "listeners": r.listeners.iter().map(|id| config.listeners[id.0].name.clone()).collect::<Vec<_>>(),
        "host": match &r.host {
            HostMatch::Any => None,
            HostMatch::Exact(h) => Some(h.clone()),
            HostMatch::Wildcard(suffix) => Some(format!("*{suffix}")),
        },
        "path_prefix": r.path_prefix,
        "headers": r.headers.iter().map(|(n, v)| (n.to_string(), Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()))).collect::<serde_json::Map<_, _>>(),
        "rewrite_prefix": r.rewrite_prefix,
        "connect_timeout": duration(r.connect_timeout),
        "read_timeout": duration(r.read_timeout),
        "retry": r.retry.as_ref().map(|retry| json!({
            "tries": retry.tries,
            "on": retry_on(&retry.on),
            "timeout": retry.timeout.map(duration),
            "replay_body": retry.replay_max_bytes,
        })),
        "request_headers": header_edits(&r.request_headers),
        "response_headers": header_edits(&r.response_headers),
        "rate_limit": r.rate_limit.map(|id| config.rate_limits[id.0].name.clone()),
        "compress": compress(r.compress),
    });
    match &r.action {
        RouteAction::Upstream(id) => out["upstream"] = Value::from(config.upstreams[id.0].name.clone()),
        RouteAction::Split(targets) => {
            out["split"] = targets
                .iter()
                .map(|t| json!({ "upstream": config.upstreams[t.upstream.0].name, "weight": t.weight }))
                .collect();
        }
        RouteAction::Respond { status, body } => {
            out["respond"] = json!({ "status": status.as_u16(), "body": String::from_utf8_lossy(body) });
        }
    }
    out
}

fn compress(c: crate::config::Compress) -> Vec<&'static str> {
    [(c.br, "br"), (c.gzip, "gzip")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
}

fn retry_on(on: &crate::config::RetryOn) -> Vec<&'static str> {
    [
        (on.error, "error"),
        (on.timeout, "timeout"),
        (on.http_502, "http_502"),
        (on.http_503, "http_503"),
        (on.http_504, "http_504"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect()
}

fn header_edits(edits: &HeaderEdits) -> Value {
    json!({
        "set": edits.set.iter().map(|(n, v)| (n.to_string(), Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()))).collect::<serde_json::Map<_, _>>(),
        "remove": edits.remove.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn upstream(u: &Upstream) -> Value {
    json!({
        "balance": match u.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::IpHash => "ip_hash",
            Balance::Hash => "hash",
            Balance::Random => "random",
            Balance::Ewma => "ewma",
        },
        "hash_key": u.hash_key.as_ref().map(|k| match k {
            HashKey::ClientIp => "client_ip".to_string(),
            HashKey::Header(name) => format!("header:{name}"),
            HashKey::Cookie(name) => format!("cookie:{name}"),
            HashKey::Path => "path".to_string(),
            HashKey::Query(name) => format!("query:{name}"),
        }),
        "sticky": u.sticky.as_ref().map(|s| json!({ "cookie": s.cookie, "max_age": s.max_age.map(duration) })),
        "keepalive": u.keepalive,
        "keepalive_timeout": duration(u.keepalive_timeout),
        "max_fails": u.max_fails,
        "fail_timeout": duration(u.fail_timeout),
        "retry_budget": format!("{}%", u.retry_budget_percent),
        "slow_start": u.slow_start.map(duration),
        "health_check": u.health_check.as_ref().map(health_check),
        "servers": u.servers.iter().map(|s| json!({
            "address": s.address,
            "weight": s.weight,
            "backup": s.backup,
            "max_requests": s.max_requests,
        })).collect::<Vec<_>>(),
    })
}

fn health_check(h: &HealthCheck) -> Value {
    json!({
        "path": h.path,
        "host": h.host,
        "interval": duration(h.interval),
        "timeout": duration(h.timeout),
        "healthy_threshold": h.healthy_threshold,
        "unhealthy_threshold": h.unhealthy_threshold,
        "expect_status": format!("{}-{}", h.expect_status.0, h.expect_status.1),
    })
}

fn rate_limit(l: &RateLimit) -> Value {
    // The file's unit is gone; the largest one that keeps the count whole.
    let per = |secs: f64| l.rate_per_sec * secs;
    let rate = [("s", 1.0), ("m", 60.0), ("h", 3600.0)]
        .into_iter()
        .find(|(_, secs)| (per(*secs) - per(*secs).round()).abs() < 1e-6)
        .map_or_else(
            || format!("{}/h", per(3600.0)),
            |(unit, secs)| format!("{}/{unit}", per(secs).round()),
        );
    json!({
        "rate": rate,
        "burst": l.burst,
        "key": match &l.key {
            LimitKey::ClientIp => "client_ip".to_string(),
            LimitKey::Header(name) => format!("header:{name}"),
            LimitKey::Cookie(name) => format!("cookie:{name}"),
        },
        "store": match l.store {
            LimitStore::Local => "local",
            LimitStore::Redis => "redis",
        },
        "max_keys": l.max_keys,
    })
}

fn redis(r: &Redis) -> Value {
    json!({
        "url": redact_url_password(&r.url),
        "on_error": match r.on_error {
            RedisOnError::Allow => "allow",
            RedisOnError::Deny => "deny",
        },
        "timeout": duration(r.timeout),
    })
}

/// `redis://user:secret@host` → `redis://user:<redacted>@host`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            // Without a colon the one name might be the secret: hide it all.
            match rest[..at].split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:{REDACTED}{}", &rest[at..]),
                None => format!("{scheme}://{REDACTED}{}", &rest[at..]),
            }
        }
        None => url.to_string(),
    }
}

/// As the file writes it: `250ms`, `30s`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_never_show() {
        assert_eq!(
            redact_url_password("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url_password("redis://:hunter2@cache:6379/0"),
            "redis://:<redacted>@cache:6379/0"
        );
        assert_eq!(
            redact_url_password("redis://app:p@ss@cache:6379"),
            "redis://app:<redacted>@cache:6379"
        );
        assert_eq!(redact_url_password("redis://secret@cache"), "redis://<redacted>@cache");
    }
}
