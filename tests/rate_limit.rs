//! Local rate limits, end to end: a burst at once, then the rate; 429 with
//! a truthful `Retry-After`; the upstream never sees a refused request; keys
//! by client IP, header and cookie; other routes untouched.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use support::{Conn, Fulcrum, Resp, backends, get, get_with, request};

/// The value of the series written exactly as `series`, 0 when absent.
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn get_req(path: &str) -> http::Request<Bytes> {
    request("GET", path).body(Bytes::new()).expect("a valid request")
}

/// A 429 as SPEC §3 has it: `Retry-After` in whole seconds and a plain-text
/// body naming the request id.
fn assert_rate_limited(resp: &Resp) -> u64 {
    assert_eq!(resp.status, 429, "{}", resp.text());
    let id = resp.header("x-request-id").expect("429 names its request id");
    let text = resp.text();
    assert!(text.starts_with("429 Too Many Requests: rate limited"), "{text}");
    assert!(text.contains(id), "{text}");
    resp.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {:?}", resp.headers))
}

#[tokio::test]
async fn a_burst_passes_at_once_then_the_rate_and_other_routes_are_untouched() {
    let b = backends(&["limited", "free"]).await;
    let lb = Fulcrum::start(&format!(
        r#"
[global]
workers = 2
admin_listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
name = "limited"
path_prefix = "/limited/"
rewrite_prefix = "/"
upstream = "limited"
rate_limit = "ten"
[[routes]]
name = "free"
path_prefix = "/free/"
rewrite_prefix = "/"
upstream = "free"
[upstreams.limited]
servers = [ {{ address = "{limited}" }} ]
[upstreams.free]
servers = [ {{ address = "{free}" }} ]
[rate_limits.ten]
rate = "10/s"
burst = 5
"#,
        limited = b[0].addr,
        free = b[1].addr
    ));
    let web = lb.addr("web");

    // 50 connections ready first, so that the requests really leave together.
    let mut conns = join_all((0..50).map(|_| Conn::open(web))).await;
    let mut free_conns = join_all((0..10).map(|_| Conn::open(web))).await;
    let started = Instant::now();
    let (burst, free) = tokio::join!(
        join_all(conns.iter_mut().map(|c| c.send(get_req("/limited/")))),
        join_all(free_conns.iter_mut().map(|c| c.send(get_req("/free/")))),
    );
    let burst_secs = started.elapsed().as_secs_f64();
    let admitted = burst.iter().filter(|r| r.status == 200).count();
    // Exactly the burst, unless the 50 took so long that the rate let more
    // in meanwhile (10 per second, counted from before the first was sent).
    assert!(
        admitted >= 5 && admitted as f64 <= 5.0 + (10.0 * burst_secs).floor(),
        "{admitted} of 50 admitted in {burst_secs:.3} s"
    );
    for resp in burst.iter().filter(|r| r.status != 200) {
        assert_eq!(assert_rate_limited(resp), 1, "the next slot is at most 100 ms away");
    }
    assert!(free.iter().all(|r| r.status == 200), "the unlimited route is untouched");

    // Then about 10/s: four clients ask 200 times a second in all, for 3 s.
    let admitted_later = Arc::new(AtomicUsize::new(0));
    let limited_later = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(3);
    let clients = conns.drain(..4).map(|mut conn| {
        let (admitted, limited) = (admitted_later.clone(), limited_later.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < deadline {
                tick.tick().await;
                let resp = conn.send(get_req("/limited/")).await;
                match resp.status.as_u16() {
                    200 => admitted.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        assert_rate_limited(&resp);
                        limited.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
    });
    join_all(clients).await;
    let total_secs = started.elapsed().as_secs_f64();
    let total = admitted + admitted_later.load(Ordering::Relaxed);
    let most = 5.0 + (10.0 * total_secs).floor();
    eprintln!("burst: {admitted} of 50 in {burst_secs:.3} s; in all {total} in {total_secs:.2} s");
    // The clients ask far above the rate the whole time; a stall shorter
    // than the burst's worth (0.5 s) loses nothing. Three quarters allows
    // for a loaded machine.
    let least = 0.75 * (5.0 + 10.0 * (total_secs - burst_secs));
    assert!(
        total as f64 <= most && total as f64 >= least,
        "{total} admitted in {total_secs:.2} s; expected {least:.0}..={most}"
    );

    assert_eq!(
        b[0].stats.requests.load(Ordering::Relaxed),
        total as u64,
        "the upstream saw only admitted requests"
    );
    assert_eq!(b[1].stats.requests.load(Ordering::Relaxed), 10);
    let limited = 50 - admitted + limited_later.load(Ordering::Relaxed);
    let metrics = get(lb.addr("admin"), "/metrics").await.text();
    assert_eq!(
        metric(&metrics, "fulcrum_rate_limited_total{route=\"limited\"}"),
        limited as f64,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "fulcrum_rate_limited_total{route=\"free\"}"), 0.0);
    assert!(
        metrics.contains("fulcrum_rate_limited_total{route=\"free\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn retry_after_counts_whole_seconds_to_the_next_free_slot() {
    let lb = Fulcrum::start(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
respond = { status = 200, body = "ok" }
rate_limit = "slow"
[rate_limits.slow]
rate = "6/m"
"#,
    );
    let web = lb.addr("web");
    let first = Instant::now();
    assert_eq!(get(web, "/").await.status, 200);
    let resp = get_with(web, "/", &[("x-request-id", "my-request-42")]).await;
    let elapsed = first.elapsed().as_secs_f64();
    let retry_after = assert_rate_limited(&resp);
    assert!(resp.text().contains("my-request-42"), "{}", resp.text());
    // The next slot is 10 s after the first request: never announced early,
    // and rounded up by less than a second.
    assert!(
        retry_after as f64 >= (10.0 - elapsed).ceil() && retry_after <= 10,
        "Retry-After {retry_after} after {elapsed:.3} s"
    );
}

async fn statuses(web: SocketAddr, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get_with(web, path, headers).await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn keys_by_header_and_cookie_and_requests_without_one_share_a_bucket() {
    let lb = Fulcrum::start(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
path_prefix = "/api/"
respond = { status = 200, body = "api" }
rate_limit = "per_key"
[[routes]]
path_prefix = "/app/"
respond = { status = 200, body = "app" }
rate_limit = "per_session"
[rate_limits.per_key]
rate = "1/m"
burst = 2
key = "header:X-Api-Key"
[rate_limits.per_session]
rate = "1/m"
burst = 2
key = "cookie:sid"
"#,
    );
    let web = lb.addr("web");
    let limited = vec![200, 200, 429];
    assert_eq!(statuses(web, "/api/", &[("x-api-key", "alice")], 3).await, limited);
    assert_eq!(statuses(web, "/api/", &[("x-api-key", "bob")], 3).await, limited);
    // Without the header: one shared bucket, not one each, not unlimited.
    assert_eq!(statuses(web, "/api/", &[], 3).await, limited);
    assert_eq!(statuses(web, "/api/", &[("x-other", "1")], 1).await, vec![429]);

    let cookie = |sid: &'static str| [("cookie", sid)];
    assert_eq!(statuses(web, "/app/", &cookie("theme=dark; sid=s1"), 3).await, limited);
    assert_eq!(statuses(web, "/app/", &cookie("sid=s2"), 3).await, limited);
    assert_eq!(statuses(web, "/app/", &cookie("theme=dark"), 3).await, limited);
    // Each route has its own limit: alice's key is spent on /api/ only.
    assert_eq!(
        statuses(web, "/app/", &[("x-api-key", "alice"), ("cookie", "sid=s3")], 1).await,
        vec![200]
    );
}

/// A reload keeps the buckets of a limit whose settings did not change (a
/// client cannot reset its limit by waiting for a deploy), and a changed
/// limit starts afresh with its new settings.
#[tokio::test]
async fn a_reload_keeps_unchanged_limits_buckets_and_applies_changed_ones() {
    let config = |body: &str, burst: u32| {
        format!(
            r#"
[global]
admin_listen = "127.0.0.1:0"
admin_token = "rl-token"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
respond = {{ status = 200, body = "{body}" }}
rate_limit = "slow"
[rate_limits.slow]
rate = "1/m"
burst = {burst}
"#
        )
    };
    let lb = Fulcrum::start(&config("one", 2));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));
    assert_eq!(statuses(web, "/", &[], 3).await, vec![200, 200, 429]);

    let reload = || async {
        let req = request("POST", "/api/reload")
            .header("authorization", "Bearer rl-token")
            .body(Bytes::new())
            .expect("a valid request");
        let resp = Conn::open(admin).await.send(req).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    };
    lb.write_config(&config("two", 2));
    reload().await;
    let resp = get(web, "/").await;
    assert_eq!(
        resp.status,
        429,
        "the spent bucket survived the reload: {}",
        resp.text()
    );

    lb.write_config(&config("three", 3));
    reload().await;
    let resp = get(web, "/").await;
    assert_eq!((resp.status.as_u16(), resp.text()), (200, "three".to_string()));
    assert_eq!(statuses(web, "/", &[], 3).await, vec![200, 200, 429]);
    let metrics = get(admin, "/metrics").await.text();
    assert_eq!(
        metric(&metrics, "fulcrum_rate_limited_total{route=\"route0\"}"),
        3.0,
        "the counter carried over: {metrics}"
    );
}
