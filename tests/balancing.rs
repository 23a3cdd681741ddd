//! Round-robin balancing end to end: real backends behind a real balancer.

mod support;

use std::sync::atomic::Ordering;

use support::{Config, Fulcrum, backends, get};

#[tokio::test]
async fn weights_5_1_1_interleave_exactly_over_700_requests() {
    let b = backends(&["a", "b", "c"]).await;
    let lb = Fulcrum::start(
        &Config::new()
            .global("workers = 1")
            .server(b[0].addr, "weight = 5")
            .server(b[1].addr, "weight = 1")
            .server(b[2].addr, "weight = 1")
            .toml(),
    );
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
    let lb = Fulcrum::start(
        &Config::app(&[b[0].addr, b[1].addr, b[2].addr])
            .global("workers = 2")
            .toml(),
    );
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
