//! Canary splits and header routing: weighted shares between upstreams,
//! canary users kept on the canary by their affinity cookie, a header that
//! selects the canary, and the switch done by a reload.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use support::{Conn, Fulcrum, backends, request};

fn config(stable: SocketAddr, canary: SocketAddr, weights: (u32, u32), sticky: bool) -> String {
    let sticky = if sticky {
        "sticky = { cookie = \"FULCRUM_AFFINITY\" }"
    } else {
        ""
    };
    format!(
        r#"
[global]
admin_listen = "127.0.0.1:0"
admin_token = "t"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
name = "canary-header"
headers = {{ "X-Canary" = "1" }}
upstream = "canary"
[[routes]]
name = "app"
split = [ {{ upstream = "stable", weight = {} }}, {{ upstream = "canary", weight = {} }} ]
[upstreams.stable]
{sticky}
servers = [ {{ address = "{stable}" }} ]
[upstreams.canary]
{sticky}
servers = [ {{ address = "{canary}" }} ]
"#,
        weights.0, weights.1
    )
}

/// Sends `n` GETs over `clients` keep-alive connections with `headers`.
async fn send_many(web: SocketAddr, n: usize, clients: usize, headers: &'static [(&'static str, &'static str)]) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let share = n / clients + usize::from(c < n % clients);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(web).await;
            for _ in 0..share {
                let mut req = request("GET", "/");
                for (name, value) in headers {
                    req = req.header(*name, *value);
                }
                let resp = conn.send(req.body(Bytes::new()).unwrap()).await;
                assert_eq!(resp.status, 200, "{}", resp.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn ten_thousand_requests_follow_a_90_10_split_within_two_percent() {
    let b = backends(&["stable", "canary"]).await;
    let lb = Fulcrum::start(&config(b[0].addr, b[1].addr, (90, 10), false));
    send_many(lb.addr("web"), 10_000, 8, &[]).await;
    let stable = b[0].stats.requests.load(Ordering::Relaxed) as f64;
    let canary = b[1].stats.requests.load(Ordering::Relaxed) as f64;
    assert_eq!(stable + canary, 10_000.0);
    let share = canary / 10_000.0;
    assert!(
        (share - 0.10).abs() <= 0.02,
        "canary got {:.2} % of the requests",
        share * 100.0
    );

    // Both upstreams show in the metrics under the route.
    let metrics = support::get(lb.addr("admin"), "/metrics").await.text();
    for upstream in ["stable", "canary"] {
        let needle = format!("fulcrum_requests_total{{route=\"app\",upstream=\"{upstream}\"");
        assert!(metrics.contains(&needle), "no {needle} in:\n{metrics}");
    }
}

#[tokio::test]
async fn the_canary_header_selects_the_canary_only() {
    let b = backends(&["stable", "canary"]).await;
    let lb = Fulcrum::start(&config(b[0].addr, b[1].addr, (90, 10), false));
    send_many(lb.addr("web"), 200, 4, &[("X-Canary", "1")]).await;
    assert_eq!(b[0].stats.requests.load(Ordering::Relaxed), 0);
    assert_eq!(b[1].stats.requests.load(Ordering::Relaxed), 200);
}

#[tokio::test]
async fn a_client_with_an_affinity_cookie_stays_on_its_side_of_the_split() {
    let b = backends(&["stable", "canary"]).await;
    let lb = Fulcrum::start(&config(b[0].addr, b[1].addr, (50, 50), true));
    let web = lb.addr("web");
    // Fresh clients until one lands on each side; then each keeps its side.
    let mut cookies: HashMap<String, String> = HashMap::new();
    for _ in 0..200 {
        if cookies.len() == 2 {
            break;
        }
        let resp = Conn::open(web)
            .await
            .send(request("GET", "/").body(Bytes::new()).unwrap())
            .await;
        let cookie = resp
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("a first visit gets an affinity cookie")
            .to_string();
        cookies.insert(resp.text().trim().to_string(), cookie);
    }
    assert_eq!(
        cookies.len(),
        2,
        "200 fresh clients all landed on one side: {cookies:?}"
    );
    for (side, cookie) in &cookies {
        let mut conn = Conn::open(web).await;
        for _ in 0..50 {
            let req = request("GET", "/")
                .header("cookie", cookie.as_str())
                .body(Bytes::new())
                .unwrap();
            let resp = conn.send(req).await;
            assert_eq!(resp.text().trim(), side, "a pinned client changed sides");
            assert!(resp.header("set-cookie").is_none(), "a pinned client keeps its cookie");
        }
    }
}

#[tokio::test]
async fn a_reload_switches_the_canary_off() {
    let b = backends(&["stable", "canary"]).await;
    let lb = Fulcrum::start(&config(b[0].addr, b[1].addr, (50, 50), false));
    let web = lb.addr("web");
    send_many(web, 100, 2, &[]).await;
    assert!(b[1].stats.requests.load(Ordering::Relaxed) > 0);

    lb.write_config(&config(b[0].addr, b[1].addr, (100, 0), false));
    let req = request("POST", "/api/reload")
        .header("authorization", "Bearer t")
        .body(Bytes::new())
        .unwrap();
    let resp = Conn::open(lb.addr("admin")).await.send(req).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let canary_before = b[1].stats.requests.load(Ordering::Relaxed);
    send_many(web, 500, 4, &[]).await;
    assert_eq!(b[1].stats.requests.load(Ordering::Relaxed), canary_before);
}
