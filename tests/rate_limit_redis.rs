//! Redis-shared rate limits, end to end against a real `redis-server`: two
//! Fulcrum processes enforce one limit together; Redis going away lets
//! requests through (`on_error = "allow"`) or answers 503 (`"deny"`), and a
//! Redis started again on the same port is used again without a restart.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use support::{Config, Conn, Fulcrum, RedisServer, backends, get, request, wait_until_async};

/// Long enough for a loaded machine; a healthy run needs well under a second.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);

/// The value of the series written exactly as `series`, 0 when absent.
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A config with one route limited by `[rate_limits.shared]` in Redis.
fn config(redis_url: &str, upstream: SocketAddr, rate: &str, burst: u32, on_error: &str) -> String {
    Config::app(&[upstream])
        .global("workers = 2")
        .global(r#"admin_listen = "127.0.0.1:0""#)
        .route(r#"name = "api""#)
        .route(r#"rate_limit = "shared""#)
        .sections(&format!(
            r#"
            [rate_limits.shared]
            rate = "{rate}"
            burst = {burst}
            key = "header:X-Tenant"
            store = "redis"
            [redis]
            url = "{redis_url}"
            on_error = "{on_error}"
            "#
        ))
        .toml()
}

fn tenant_req() -> http::Request<Bytes> {
    request("GET", "/")
        .header("x-tenant", "acme")
        .body(Bytes::new())
        .expect("a valid request")
}

async fn status(web: SocketAddr) -> u16 {
    match Conn::try_open(web).await {
        Ok(mut conn) => match conn.try_send(tenant_req()).await {
            Ok(resp) => resp.status.as_u16(),
            Err(_) => 0,
        },
        Err(_) => 0,
    }
}

#[tokio::test]
async fn two_instances_sharing_redis_admit_the_limit_together_not_twice() {
    let redis = RedisServer::start();
    let b = backends(&["app"]).await;
    let toml = config(&redis.url(), b[0].addr, "20/s", 5, "deny");
    let (one, two) = (Fulcrum::start(&toml), Fulcrum::start(&toml));

    // Each instance is asked 100 times a second (4 clients, every 40 ms)
    // for 3 s: far above the limit, so each alone would admit ~20/s.
    let admitted = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let mut conns = Vec::new();
    for (lb, count) in [(&one, &admitted[0]), (&two, &admitted[1])] {
        for _ in 0..4 {
            conns.push((Conn::open(lb.addr("web")).await, count.clone()));
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3);
    let clients = conns.into_iter().map(|(mut conn, count)| async move {
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while Instant::now() < deadline {
            tick.tick().await;
            let resp = conn.send(tenant_req()).await;
            match resp.status.as_u16() {
                200 => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                429 => assert!(resp.header("retry-after").is_some(), "429 without Retry-After"),
                other => panic!("unexpected {other}: {}", resp.text()),
            }
        }
    });
    join_all(clients).await;
    let secs = started.elapsed().as_secs_f64();
    let (a, b_count) = (admitted[0].load(Ordering::Relaxed), admitted[1].load(Ordering::Relaxed));
    let total = a + b_count;
    eprintln!("instance one {a}, instance two {b_count}: {total} in {secs:.2} s");
    // Redis decides on its own clock, within the span measured here.
    let most = 5.0 + (20.0 * secs).floor();
    // Two separate limits would admit twice the burst plus 40/s.
    let least = 0.75 * (5.0 + 20.0 * secs);
    assert!(
        (total as f64) <= most && (total as f64) >= least,
        "{total} admitted in {secs:.2} s; one shared 20/s limit allows {least:.0}..={most}"
    );
    assert!(a > 0 && b_count > 0, "both instances admitted some: {a} and {b_count}");
    assert_eq!(
        b[0].stats.requests.load(Ordering::Relaxed),
        total as u64,
        "the upstream saw only admitted requests"
    );
}

#[tokio::test]
async fn redis_down_with_allow_lets_requests_through_then_limits_again_when_it_returns() {
    let mut redis = RedisServer::start();
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(&redis.url(), b[0].addr, "1/m", 2, "allow"));
    let web = lb.addr("web");
    let admin = lb.addr("admin");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(status(web).await);
    }
    assert_eq!(seen, [200, 200, 429], "the limit holds while Redis is up");

    redis.kill();
    // Fail open: over the limit, yet admitted, while Redis is gone.
    for _ in 0..5 {
        assert_eq!(status(web).await, 200);
    }
    let metrics = get(admin, "/metrics").await.text();
    assert_eq!(metric(&metrics, "fulcrum_redis_up"), 0.0, "{metrics}");
    assert!(metric(&metrics, "fulcrum_redis_errors_total") >= 5.0, "{metrics}");
    lb.wait_for_log("redis unreachable", Duration::from_secs(5)).await;

    // A fresh (empty) Redis on the same port: the limit applies again by
    // itself — two more, then 429.
    redis.restart();
    wait_until_async("the limit to apply again", RECOVERY_DEADLINE, || async {
        status(web).await == 429
    })
    .await;
    lb.wait_for_log("redis reachable again", RECOVERY_DEADLINE).await;
    let logs = lb.logs();
    assert_eq!(
        logs.matches("redis unreachable").count(),
        1,
        "one line per transition:\n{logs}"
    );
    assert_eq!(logs.matches("redis reachable again").count(), 1, "{logs}");
    let metrics = get(admin, "/metrics").await.text();
    assert_eq!(metric(&metrics, "fulcrum_redis_up"), 1.0, "{metrics}");
    assert!(
        metric(&metrics, "fulcrum_rate_limited_total{route=\"api\"}") >= 2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn redis_down_with_deny_answers_503_then_admits_again_when_it_returns() {
    let mut redis = RedisServer::start();
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(&redis.url(), b[0].addr, "100/s", 10, "deny"));
    let web = lb.addr("web");
    assert_eq!(status(web).await, 200);

    redis.kill();
    let started = Instant::now();
    let mut conn = Conn::open(web).await;
    let resp = conn.send(tenant_req()).await;
    assert_eq!(resp.status, 503, "fail closed: {}", resp.text());
    let id = resp.header("x-request-id").expect("503 names its request id");
    assert!(resp.text().contains(id), "{}", resp.text());
    assert!(resp.header("retry-after").is_some());
    eprintln!("first answer without Redis after {:?}", started.elapsed());
    for _ in 0..3 {
        assert_eq!(status(web).await, 503);
    }
    let before = b[0].stats.requests.load(Ordering::Relaxed);
    assert_eq!(before, 1, "refused requests never reached the upstream");
    lb.wait_for_log("redis unreachable", Duration::from_secs(5)).await;

    redis.restart();
    wait_until_async("requests to be admitted again", RECOVERY_DEADLINE, || async {
        status(web).await == 200
    })
    .await;
    lb.wait_for_log("redis reachable again", RECOVERY_DEADLINE).await;
    let metrics = get(lb.addr("admin"), "/metrics").await.text();
    assert!(metric(&metrics, "fulcrum_redis_errors_total") >= 4.0, "{metrics}");
}

#[tokio::test]
async fn a_redis_that_hangs_costs_a_request_at_most_the_timeout() {
    let redis = RedisServer::start();
    let b = backends(&["app"]).await;
    let toml = config(&redis.url(), b[0].addr, "100/s", 10, "deny")
        .replace("on_error = \"deny\"", "on_error = \"deny\"\ntimeout = \"100ms\"");
    let lb = Fulcrum::start(&toml);
    let web = lb.addr("web");
    let mut conn = Conn::open(web).await;
    assert_eq!(conn.send(tenant_req()).await.status, 200);

    redis.pause();
    let started = Instant::now();
    let resp = conn.send(tenant_req()).await;
    let waited = started.elapsed();
    assert_eq!(resp.status, 503, "{}", resp.text());
    // 100 ms of timeout; the rest is slack for a loaded machine, still far
    // below what a request stuck on Redis would take (forever).
    assert!(
        waited >= Duration::from_millis(100),
        "answered before the timeout: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // Still down: refused (this worker now answers without asking Redis).
    assert_eq!(conn.send(tenant_req()).await.status, 503);

    redis.resume();
    wait_until_async("requests to be admitted again", RECOVERY_DEADLINE, || async {
        status(web).await == 200
    })
    .await;
}
