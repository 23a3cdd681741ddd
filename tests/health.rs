//! Active health checks and slow start: a server whose `/health` fails is
//! taken out after `unhealthy_threshold` checks and brought back after
//! `healthy_threshold`, then ramps up its share over `slow_start`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::{Config, Conn, Fulcrum, backends, request};

async fn who_answers(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut conn = Conn::open(addr).await;
    let mut counts = HashMap::new();
    for _ in 0..n {
        let resp = conn.send(request("GET", "/").body(Default::default()).unwrap()).await;
        assert_eq!(resp.status, 200);
        *counts
            .entry(resp.header("x-backend").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    counts
}

async fn set_health(addr: SocketAddr, path: &str) {
    let mut conn = Conn::open(addr).await;
    let resp = conn.send(request("POST", path).body(Default::default()).unwrap()).await;
    assert_eq!(resp.status, 200);
}

fn config(a: SocketAddr, b: SocketAddr, slow_start: &str) -> String {
    Config::app(&[a, b])
        .global("workers = 1")
        .upstream("max_fails = 0")
        .upstream(slow_start)
        .sections(
            r#"
            [upstreams.app.health_check]
            path = "/health"
            interval = "100ms"
            timeout = "80ms"
            healthy_threshold = 2
            unhealthy_threshold = 2
            expect_status = "200-299"
            "#,
        )
        .toml()
}

#[tokio::test]
async fn failing_health_endpoint_takes_a_server_out_and_back() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(&config(b[0].addr, b[1].addr, ""));
    let web = lb.addr("web");
    assert!(who_answers(web, 20).await.contains_key("a"), "both serve while healthy");

    set_health(b[0].addr, "/health/fail").await;
    support::wait_until_async("a is taken out", Duration::from_secs(10), || async {
        !who_answers(web, 20).await.contains_key("a")
    })
    .await;
    // Out means out: a steady stream sees only b.
    assert_eq!(who_answers(web, 100).await.get("b"), Some(&100));

    set_health(b[0].addr, "/health/ok").await;
    support::wait_until_async("a is brought back", Duration::from_secs(10), || async {
        who_answers(web, 20).await.contains_key("a")
    })
    .await;
    let logs = lb.logs();
    assert_eq!(
        logs.matches("health check failed: server down").count(),
        1,
        "log transitions only:\n{logs}"
    );
    assert_eq!(
        logs.matches("health check passed: server up").count(),
        1,
        "log transitions only:\n{logs}"
    );
}

#[tokio::test]
async fn a_recovered_server_ramps_up_over_slow_start() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(&config(b[0].addr, b[1].addr, r#"slow_start = "3s""#));
    let web = lb.addr("web");
    set_health(b[0].addr, "/health/fail").await;
    support::wait_until_async("a is taken out", Duration::from_secs(10), || async {
        !who_answers(web, 20).await.contains_key("a")
    })
    .await;
    set_health(b[0].addr, "/health/ok").await;
    support::wait_until_async("a is back", Duration::from_secs(10), || async {
        who_answers(web, 10).await.contains_key("a")
    })
    .await;
    // Just back: a starts near a tenth of its weight, well below an even share.
    let early = who_answers(web, 100).await;
    let early_a = early.get("a").copied().unwrap_or(0);
    assert!(
        early_a < 35,
        "a got {early_a} of 100 right after coming back: {early:?}"
    );
    // After slow_start the split is even again.
    support::wait_until_async("a reaches its full share", Duration::from_secs(15), || async {
        let later = who_answers(web, 100).await;
        later.get("a").copied().unwrap_or(0) >= 45
    })
    .await;
}
