//! What the upstream and the client see of a forwarded request: forwarding
//! headers, request ids, hop-by-hop removal, and upstream connection reuse.

mod support;

use std::sync::atomic::Ordering;

use support::{Config, Conn, Fulcrum, backends, get_with, request};

fn one_upstream(addr: std::net::SocketAddr) -> String {
    Config::app(&[addr]).upstream("keepalive = 8").toml()
}

#[tokio::test]
async fn upstream_sees_forwarding_headers_and_no_hop_by_hop_ones() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&one_upstream(b[0].addr));
    let resp = get_with(
        lb.addr("web"),
        "/echo",
        &[
            ("host", "shop.example.com"),
            ("x-forwarded-for", "203.0.113.7"),
            // What a client says of itself is replaced, never passed on
            // beside ours.
            ("x-real-ip", "198.51.100.66"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["host"], "shop.example.com");
    for gone in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    let id = resp.header("x-request-id").expect("client gets the request id");
    assert_eq!(h["x-request-id"], id, "upstream and client see the same id");
    assert_eq!(id.len(), 32);
    assert_eq!(resp.header("x-upstream"), None, "expose_upstream is off by default");
}

#[tokio::test]
async fn a_route_edits_the_forwarding_headers_like_any_other() {
    let b = backends(&["app"]).await;
    let config = Config::app(&[b[0].addr]).route(
        r#"request_headers = { set = { "X-Forwarded-Proto" = "https", "X-Env" = "prod" }, remove = ["X-Real-IP", "X-Debug"] }"#,
    );
    let lb = Fulcrum::start(&config.toml());
    let resp = get_with(
        lb.addr("web"),
        "/echo",
        &[
            ("x-real-ip", "198.51.100.66"),
            ("x-debug", "1"),
            ("x-forwarded-proto", "http"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200);
    let h = &resp.json()["headers"];
    assert_eq!(h["x-forwarded-proto"], "https", "set once, to the route's value: {h}");
    assert_eq!(h["x-env"], "prod");
    for gone in ["x-real-ip", "x-debug"] {
        assert!(h.get(gone).is_none(), "{gone} was removed by the route: {h}");
    }
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "the others are still added: {h}");
    assert_eq!(h["x-request-id"], resp.header("x-request-id").unwrap());
}

#[tokio::test]
async fn a_sane_client_request_id_is_kept_and_a_bad_one_replaced() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&one_upstream(b[0].addr));
    let kept = get_with(lb.addr("web"), "/echo", &[("x-request-id", "trace-abc-123")]).await;
    assert_eq!(kept.header("x-request-id"), Some("trace-abc-123"));
    let echo: serde_json::Value = serde_json::from_slice(&kept.body).unwrap();
    assert_eq!(echo["headers"]["x-request-id"], "trace-abc-123");
    let replaced = get_with(lb.addr("web"), "/echo", &[("x-request-id", "no spaces allowed")]).await;
    let id = replaced.header("x-request-id").unwrap();
    assert_ne!(id, "no spaces allowed");
    assert_eq!(id.len(), 32);
}

#[tokio::test]
async fn thousands_of_requests_reuse_a_handful_of_upstream_connections() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&one_upstream(b[0].addr));
    let web = lb.addr("web");
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::open(web).await;
            for _ in 0..500 {
                let resp = conn.send(request("GET", "/").body(Default::default()).unwrap()).await;
                assert_eq!(resp.status, 200);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let stats = &b[0].stats;
    assert_eq!(stats.requests.load(Ordering::Relaxed), 2000);
    let opened = stats.connections.load(Ordering::Relaxed);
    assert!(opened <= 8, "2000 requests opened {opened} upstream connections");
}

#[tokio::test]
async fn large_post_body_reaches_the_upstream_intact() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&one_upstream(b[0].addr));
    let body = vec![b'x'; 3 * 1024 * 1024];
    let mut conn = Conn::open(lb.addr("web")).await;
    let resp = conn.send(request("POST", "/echo").body(body.into()).unwrap()).await;
    assert_eq!(resp.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(echo["body_bytes"], 3 * 1024 * 1024);
    assert_eq!(echo["method"], "POST");
}
