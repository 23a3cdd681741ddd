//! Sticky cookies and request replay: a client is pinned to a server by an
//! opaque cookie that every instance honours, and re-pinned when its server
//! goes away; a small request body is sent again on a retry.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{Config, Conn, Fulcrum, backends, get_with, request};

fn sticky_config(servers: &[SocketAddr]) -> String {
    Config::app(servers)
        .upstream(r#"sticky = { cookie = "FULCRUM_AFFINITY", max_age = "1h" }"#)
        .toml()
}

/// The affinity cookie a response sets, as `NAME=value`.
fn affinity(resp: &support::Resp) -> Option<String> {
    let set = resp
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("FULCRUM_AFFINITY="))?;
    Some(set.split(';').next()?.to_string())
}

#[tokio::test]
async fn a_client_is_pinned_by_cookie_across_instances_and_repinned_when_its_server_goes() {
    let b = backends(&["a", "b", "c"]).await;
    let addrs: Vec<SocketAddr> = b.iter().map(|b| b.addr).collect();
    let lb = Fulcrum::start(&sticky_config(&addrs));
    let other_instance = Fulcrum::start(&sticky_config(&addrs));

    let first = get_with(lb.addr("web"), "/", &[]).await;
    let cookie = affinity(&first).expect("the first answer sets the affinity cookie");
    let pinned = first.header("x-backend").unwrap().to_string();
    assert!(
        !cookie.contains("127.0.0.1"),
        "the cookie must not reveal the address: {cookie}"
    );
    assert!(first.headers["set-cookie"].to_str().unwrap().contains("Max-Age=3600"));

    for instance in [&lb, &other_instance] {
        for _ in 0..10 {
            let resp = get_with(instance.addr("web"), "/", &[("cookie", &cookie)]).await;
            assert_eq!(resp.header("x-backend"), Some(pinned.as_str()));
            assert_eq!(affinity(&resp), None, "no new cookie while the pin holds");
        }
    }

    let index = ["a", "b", "c"].iter().position(|n| *n == pinned).unwrap();
    b[index].shutdown();
    let moved = get_with(lb.addr("web"), "/", &[("cookie", &cookie)]).await;
    assert_eq!(moved.status, 200, "the request is re-balanced, not failed");
    let new_home = moved.header("x-backend").unwrap().to_string();
    assert_ne!(new_home, pinned);
    let new_cookie = affinity(&moved).expect("a fresh cookie names the new server");
    for _ in 0..5 {
        let resp = get_with(lb.addr("web"), "/", &[("cookie", &new_cookie)]).await;
        assert_eq!(resp.header("x-backend"), Some(new_home.as_str()));
    }
}

/// Answers every request with 503 and closes, counting what it saw.
async fn always_503() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let reply = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    let _ = stream.write_all(reply).await;
                }
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn a_small_body_is_sent_again_on_retry() {
    let (failing, hits) = always_503().await;
    let b = backends(&["good"]).await;
    let lb = Fulcrum::start(
        &Config::app(&[failing, b[0].addr])
            .global("workers = 1")
            .route(r#"retry = { tries = 2, on = ["error", "http_503"] }"#)
            .upstream("max_fails = 0")
            .toml(),
    );
    let mut conn = Conn::open(lb.addr("web")).await;
    for _ in 0..4 {
        let resp = conn
            .send(request("PUT", "/echo").body(vec![b'p'; 1000].into()).unwrap())
            .await;
        assert_eq!(resp.status, 200);
        let echo = resp.json();
        assert_eq!(echo["body_bytes"], 1000, "the retried request carried its body");
        assert_eq!(echo["method"], "PUT");
    }
    assert!(
        hits.load(Ordering::Relaxed) >= 1,
        "the failing server was tried first at least once"
    );
}
