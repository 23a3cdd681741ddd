//! Round-robin balancing end to end: real backends behind a real balancer.

mod support;

use std::sync::atomic::Ordering;

use support::{Fulcrum, backends, get};

#[tokio::test]
async fn weights_5_1_1_interleave_exactly_over_700_requests() {
    let b = backends(&["a", "b", "c"]).await;
    let lb = Fulcrum::start(&format!(
        r#"
[global]
workers = 1
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
servers = [
  {{ address = "{}", weight = 5 }},
  {{ address = "{}", weight = 1 }},
  {{ address = "{}", weight = 1 }},
]
"#,
        b[0].addr, b[1].addr, b[2].addr
    ));
    let addr = lb.addr("web");
    let mut seen = String::new();
    for _ in 0..700 {
        let resp = get(addr, "/").await;
        assert_eq!(resp.status, 200);
        seen.push_str(resp.text().trim());
    }
    // nginx's smooth weighted round-robin: a a b a c a a, repeated.
    assert_eq!(seen, "aabacaa".repeat(100));
    assert_eq!(b[0].stats.requests.load(Ordering::Relaxed), 500);
    assert_eq!(b[1].stats.requests.load(Ordering::Relaxed), 100);
    assert_eq!(b[2].stats.requests.load(Ordering::Relaxed), 100);
}

#[tokio::test]
async fn every_worker_spreads_its_requests_over_all_servers() {
    let b = backends(&["a", "b", "c"]).await;
    let lb = Fulcrum::start(&format!(
        r#"
[global]
workers = 2
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
servers = [ {{ address = "{}" }}, {{ address = "{}" }}, {{ address = "{}" }} ]
"#,
        b[0].addr, b[1].addr, b[2].addr
    ));
    let addr = lb.addr("web");
    for _ in 0..300 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    let counts: Vec<u64> = b.iter().map(|b| b.stats.requests.load(Ordering::Relaxed)).collect();
    assert_eq!(counts.iter().sum::<u64>(), 300);
    // Each worker rotates on its own, so every server is within one pick per worker of a third.
    for c in &counts {
        assert!((97..=103).contains(c), "uneven spread {counts:?}");
    }
}
