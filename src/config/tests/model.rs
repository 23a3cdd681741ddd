//! Whole files into the model: every key mapped, every default filled in.

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use super::*;

pub(super) const FULL: &str = r#"
[global]
workers = 2
admin_listen = "127.0.0.1:9900"
shutdown_grace = "1m30s"
access_log = "off"
log_level = "debug"
resolver = "127.0.0.1:5353"
dns_refresh = "10s"

[[listeners]]
name = "web"
listen = "0.0.0.0:8080"
max_connections = 500
max_connections_per_ip = 0
request_header_timeout = "5s"
keepalive_timeout = "30s"
max_header_size = "16k"
max_body_size = 1048576
expose_upstream = true
proxy_protocol = false

[[listeners]]
name = "internal"
listen = "[::1]:8081"

[[routes]]
name = "api"
listeners = ["web"]
host = "API.example.com"
path_prefix = "/api/"
headers = { "X-Canary" = "1" }
upstream = "app"
rewrite_prefix = "/v1/"
connect_timeout = "250ms"
read_timeout = "10s"
retry = { tries = 3, on = ["http_502", "error"], timeout = "10s", replay_body = "1k" }
request_headers = { set = { "X-Env" = "${TOKEN}" }, remove = ["X-Debug"] }
response_headers = { set = { "Strict-Transport-Security" = "max-age=31536000" }, remove = ["Server"] }

[[routes]]
host = "*.Example.com"
respond = { status = 503, body = "maintenance\n" }

[upstreams.app]
balance = "hash"
hash_key = "cookie:session"
sticky = { cookie = "FULCRUM_AFFINITY", max_age = "1h" }
keepalive = 8
keepalive_timeout = "30s"
max_fails = 3
fail_timeout = "20s"
slow_start = "30s"
retry_budget = "10%"
servers = [
  { address = "127.0.0.1:9001", weight = 1 },
  { address = "app2.internal:3000", weight = 2 },
  { address = "127.0.0.1:9009", backup = true },
  { address = "127.0.0.1:9010", max_requests = 100 },
]

[upstreams.app.health_check]
path = "/health"
interval = "5s"
timeout = "2s"
healthy_threshold = 1
unhealthy_threshold = 4
expect_status = "200-299"

[upstreams.spare]
servers = [ { address = "10.0.0.1:80" } ]
"#;

#[test]
fn a_full_file_becomes_the_model() {
    let config = parse_ok(FULL);
    assert_eq!(summary(&config), "ok: 2 listeners, 2 routes, 2 upstreams (5 servers)");
    assert_eq!(config.global.workers, 2);
    assert_eq!(config.global.shutdown_grace, Duration::from_secs(90));
    assert_eq!(config.global.admin_listen, Some("127.0.0.1:9900".parse().unwrap()));
    assert_eq!(config.global.log_level.as_deref(), Some("debug"));
    assert_eq!(config.global.access_log, AccessLog::Off);
    assert_eq!(config.global.resolver, Some("127.0.0.1:5353".parse().unwrap()));
    assert_eq!(config.global.dns_refresh, Duration::from_secs(10));

    let web = &config.listeners[0];
    assert_eq!(web.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(web.max_connections, 500);
    assert_eq!(web.request_header_timeout, Duration::from_secs(5));
    assert_eq!(web.keepalive_timeout, Duration::from_secs(30));
    assert_eq!(web.max_header_bytes, 16 * 1024);
    assert_eq!(web.max_body_bytes, 1 << 20);
    assert!(web.expose_upstream && !web.proxy_protocol);

    let api = &config.routes[0];
    assert_eq!(api.name, "api");
    assert_eq!(api.listeners, vec![ListenerId(0)]);
    assert_eq!(api.host, HostMatch::Exact("api.example.com".into()));
    assert_eq!(api.path_prefix, "/api/");
    assert_eq!(
        api.headers,
        vec![(HeaderName::from_static("x-canary"), HeaderValue::from_static("1"))]
    );
    assert!(matches!(api.action, RouteAction::Upstream(UpstreamId(0))));
    assert_eq!(api.rewrite_prefix.as_deref(), Some("/v1/"));
    assert_eq!(api.connect_timeout, Duration::from_millis(250));
    assert_eq!(api.read_timeout, Duration::from_secs(10));
    let retry = api.retry.as_ref().unwrap();
    assert_eq!(
        (retry.tries, retry.timeout, retry.replay_max_bytes),
        (3, Some(Duration::from_secs(10)), 1024)
    );
    assert!(retry.on.error && retry.on.http_502 && !retry.on.timeout && !retry.on.http_503);
    assert_eq!(
        api.request_headers.set,
        vec![(HeaderName::from_static("x-env"), HeaderValue::from_static("s3cret"))]
    );
    assert_eq!(api.request_headers.remove, vec![HeaderName::from_static("x-debug")]);
    assert_eq!(api.response_headers.remove, vec![HeaderName::from_static("server")]);

    let fallback = &config.routes[1];
    assert_eq!(fallback.name, "route1");
    assert_eq!(fallback.listeners, vec![ListenerId(0), ListenerId(1)]);
    assert_eq!(fallback.host, HostMatch::Wildcard(".example.com".into()));
    assert!(matches!(
        &fallback.action,
        RouteAction::Respond { status, body } if *status == StatusCode::SERVICE_UNAVAILABLE && body == "maintenance\n"
    ));

    let app = &config.upstreams[0];
    assert_eq!((app.name.as_str(), app.balance), ("app", Balance::Hash));
    assert_eq!(app.hash_key, Some(HashKey::Cookie("session".into())));
    assert_eq!(
        app.sticky,
        Some(Sticky {
            cookie: "FULCRUM_AFFINITY".into(),
            max_age: Some(Duration::from_secs(3600))
        })
    );
    assert_eq!((app.keepalive, app.keepalive_timeout), (8, Duration::from_secs(30)));
    assert_eq!((app.max_fails, app.fail_timeout), (3, Duration::from_secs(20)));
    assert_eq!(
        (app.slow_start, app.retry_budget_percent),
        (Some(Duration::from_secs(30)), 10)
    );
    assert_eq!(
        app.health_check,
        Some(HealthCheck {
            path: "/health".into(),
            host: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy_threshold: 1,
            unhealthy_threshold: 4,
            expect_status: (200, 299),
        })
    );
    let servers: Vec<_> = app
        .servers
        .iter()
        .map(|s| (s.address.as_str(), s.weight, s.backup, s.max_requests))
        .collect();
    assert_eq!(
        servers,
        vec![
            ("127.0.0.1:9001", 1, false, None),
            ("app2.internal:3000", 2, false, None),
            ("127.0.0.1:9009", 1, true, None),
            ("127.0.0.1:9010", 1, false, Some(100)),
        ]
    );
}

#[test]
fn omitted_keys_take_their_defaults() {
    let config = parse_ok(BASE);
    assert!(config.global.workers >= 1);
    assert_eq!(config.global.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.global.access_log, AccessLog::Off);
    assert_eq!(config.global.admin_listen, None);
    assert_eq!(config.global.resolver, None);
    assert_eq!(config.global.dns_refresh, Duration::from_secs(5));
    let l = &config.listeners[0];
    assert_eq!((l.max_connections, l.max_connections_per_ip), (10_000, 0));
    assert_eq!(l.request_header_timeout, Duration::from_secs(10));
    assert_eq!(l.keepalive_timeout, Duration::from_secs(75));
    assert_eq!((l.max_header_bytes, l.max_body_bytes), (32 * 1024, 100 << 20));
    let r = &config.routes[0];
    assert_eq!(
        (r.name.as_str(), r.path_prefix.as_str(), &r.host),
        ("route0", "/", &HostMatch::Any)
    );
    assert_eq!(
        (r.connect_timeout, r.read_timeout),
        (Duration::from_secs(5), Duration::from_secs(60))
    );
    let u = &config.upstreams[0];
    assert_eq!(
        (u.balance, u.keepalive, u.keepalive_timeout),
        (Balance::RoundRobin, 64, Duration::from_secs(60))
    );
    assert_eq!(u.servers[0].weight, 1);
    assert_eq!(config.source, None);
}

#[test]
fn sub_tables_are_read_like_inline_tables() {
    let text = format!("{BASE}[routes.retry]\ntries = 3\n[upstreams.app.sticky]\ncookie = \"lb\"\n");
    let config = parse_ok(&text);
    assert_eq!(config.routes[0].retry.as_ref().map(|r| r.tries), Some(3));
    assert_eq!(
        config.upstreams[0].sticky.as_ref().map(|s| s.cookie.as_str()),
        Some("lb")
    );
    let text = format!("{BASE}[routes.retry]\ntries = 0\n");
    assert_error(&text, "0\n", "routes[0].retry.tries", "between 1 and 10");
}
