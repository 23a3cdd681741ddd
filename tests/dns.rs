//! Servers given by host name: resolved through DNS (here a test DNS server
//! with `global.resolver`), re-resolved as their TTL runs out, so a change of
//! address moves traffic without a reload; a failing DNS keeps the last good
//! addresses; a name that does not resolve at start leaves only its server
//! down; IP-literal servers never touch DNS.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fulcrum::backend::BackendHandle;
use support::dns::{DnsServer, Mode};
use support::{Config, Conn, Fulcrum, Resp, backends, get, request, wait_until, wait_until_async};

const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Generous: TTLs are 1 s, a silent DNS server takes a few timeouts to fail,
/// and the machine may be busy compiling.
const DEADLINE: Duration = Duration::from_secs(30);
const TOKEN: &str = "dns-test-token";
const KEEPING: &str = "DNS resolution failed; keeping the last good addresses";

/// Backend "a" on 127.0.0.1:P and "b" on 127.0.0.2:P: one port, so one
/// `app.test:P` can point at either through DNS alone.
fn twin_backends() -> (BackendHandle, BackendHandle) {
    for _ in 0..20 {
        let a = support::backend_at(SocketAddr::from((A_IP, 0)), "a").expect("bind backend a");
        if let Ok(b) = support::backend_at(SocketAddr::from((B_IP, a.addr.port())), "b") {
            return (a, b);
        }
    }
    panic!("no port was free on both 127.0.0.1 and 127.0.0.2");
}

/// `app` with `servers` (addresses or `name:port`), resolved by `dns`.
fn config(dns: &DnsServer, servers: &[impl std::fmt::Display]) -> String {
    Config::app(servers)
        .global(&format!(r#"resolver = "{}""#, dns.addr))
        .global(r#"admin_listen = "127.0.0.1:0""#)
        .global(&format!(r#"admin_token = "{TOKEN}""#))
        .toml()
}

async fn api_reload(admin: SocketAddr) -> Resp {
    let req = request("POST", "/api/reload")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Bytes::new())
        .unwrap();
    Conn::open(admin).await.send(req).await
}

/// The backend that answered `GET /` on a fresh connection.
async fn who(web: SocketAddr) -> String {
    let resp = get(web, "/").await;
    assert_eq!(resp.status, 200, "GET / failed: {}", resp.text());
    resp.header("x-backend").unwrap_or("?").to_string()
}

#[tokio::test]
async fn traffic_follows_a_dns_change_without_a_reload() {
    let dns = DnsServer::start();
    let (a, b) = twin_backends();
    dns.set("app.test", &[A_IP]);
    let lb = Fulcrum::start(&config(&dns, &[format!("app.test:{}", a.addr.port())]));
    let web = lb.addr("web");
    for _ in 0..10 {
        assert_eq!(who(web).await, "a");
    }

    dns.set("app.test", &[B_IP]);
    wait_until_async("traffic to move to b", DEADLINE, || async { who(web).await == "b" }).await;
    // Logged once the pooled connections to a are closed.
    wait_until("the change to be logged", DEADLINE, || {
        lb.logs().contains("server addresses changed")
    })
    .await;
    let a_before = a.stats.requests.load(Ordering::SeqCst);
    for _ in 0..30 {
        assert_eq!(who(web).await, "b");
    }
    assert_eq!(
        a.stats.requests.load(Ordering::SeqCst),
        a_before,
        "no request reaches the old address, not even over a pooled connection"
    );

    let state = get(lb.addr("admin"), "/api/upstreams").await.json();
    let server = &state["upstreams"][0]["servers"][0];
    assert_eq!(server["resolved"], serde_json::json!([b.addr.to_string()]));
    assert_eq!(server["state"], "up");
}

#[tokio::test]
async fn failed_resolution_keeps_the_last_good_addresses() {
    let dns = DnsServer::start();
    let (a, _b) = twin_backends();
    dns.set("app.test", &[A_IP]);
    let lb = Fulcrum::start(&config(&dns, &[format!("app.test:{}", a.addr.port())]));
    let web = lb.addr("web");
    assert_eq!(who(web).await, "a");

    dns.set_mode(Mode::ServFail);
    wait_until("the SERVFAIL to be logged", DEADLINE, || lb.logs().contains(KEEPING)).await;
    for _ in 0..20 {
        assert_eq!(who(web).await, "a");
    }
    // More failed tries (an A and an AAAA query each) are not logged again.
    let asked = dns.queries();
    wait_until("two more tries", DEADLINE, || dns.queries() >= asked + 4).await;
    dns.set_mode(Mode::Answer);
    wait_until("the recovery to be logged", DEADLINE, || {
        lb.logs().contains("DNS resolution works again")
    })
    .await;
    assert_eq!(lb.logs().matches(KEEPING).count(), 1, "one warning per failure spell");

    // A DNS server that stops answering is a failure too, after timeouts.
    dns.set_mode(Mode::Silent);
    wait_until("the silence to be logged", DEADLINE, || {
        lb.logs().matches(KEEPING).count() == 2
    })
    .await;
    for _ in 0..20 {
        assert_eq!(who(web).await, "a");
    }
}

#[tokio::test]
async fn a_name_that_does_not_resolve_at_start_leaves_only_its_server_down() {
    let dns = DnsServer::start();
    let b = backends(&["literal", "named"]).await;
    let servers = [b[0].addr.to_string(), format!("app.test:{}", b[1].addr.port())];
    let lb = Fulcrum::start(&config(&dns, &servers));
    let web = lb.addr("web");
    assert!(
        lb.logs()
            .contains("cannot resolve server; it stays down until it resolves"),
        "the unresolved server is reported at start; log:\n{}",
        lb.logs()
    );
    for _ in 0..10 {
        assert_eq!(who(web).await, "literal");
    }

    dns.set("app.test", &[A_IP]);
    wait_until_async("the named server to get traffic", DEADLINE, || async {
        who(web).await == "named"
    })
    .await;
    assert_eq!(
        dns.names_asked(),
        vec!["app.test".to_string()],
        "IP literals are never resolved"
    );
}

#[tokio::test]
async fn a_host_name_added_by_a_reload_resolves_and_one_kept_keeps_its_addresses() {
    let dns = DnsServer::start();
    let b = backends(&["literal", "named"]).await;
    dns.set("app.test", &[A_IP]);
    let literal = b[0].addr.to_string();
    let named = format!("app.test:{}", b[1].addr.port());
    let lb = Fulcrum::start(&config(&dns, &[&literal]));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));
    assert_eq!(who(web).await, "literal");
    assert!(dns.names_asked().is_empty(), "no host name, no DNS");

    lb.write_config(&config(&dns, &[&literal, &named]));
    let reload = api_reload(admin).await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    wait_until_async("the added host name to get traffic", DEADLINE, || async {
        who(web).await == "named"
    })
    .await;

    // With DNS failing, a reload that keeps the server (and drops the
    // other) must not lose its addresses: it serves from the first request.
    dns.set_mode(Mode::ServFail);
    lb.write_config(&config(&dns, &[&named]));
    let reload = api_reload(admin).await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    for _ in 0..10 {
        assert_eq!(who(web).await, "named");
    }
}

#[tokio::test]
async fn without_a_resolver_setting_the_system_configuration_is_used() {
    let b = backends(&["local"]).await;
    // `localhost` is 127.0.0.1 and ::1; the backend listens on the first
    // only, so this also shows a refusing address being skipped.
    let lb = Fulcrum::start(&Config::app(&[format!("localhost:{}", b[0].addr.port())]).toml());
    let web = lb.addr("web");
    for _ in 0..10 {
        assert_eq!(who(web).await, "local");
    }
    assert!(lb.logs().contains("server resolved"), "log:\n{}", lb.logs());
}
