//! Balancing algorithms and resilience end to end: least_conn and ewma move
//! traffic off a slow server, backups take over only when every primary is
//! down, max_requests sheds load with 503, retries hide a failing server, and
//! a server that dies under load costs the client nothing.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::{Config, Conn, Fulcrum, backends, get, request};

/// A minimal HTTP/1.1 server that reads each request whole and answers it
/// with `status` and its name after an adjustable delay: the one thing the
/// built-in backend cannot do per instance.
struct Scripted {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    /// Requests read so far.
    requests: Arc<AtomicU64>,
}

async fn scripted(name: &'static str, status: u16, delay_ms: u64) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let delay = Arc::new(AtomicU64::new(delay_ms));
    let requests = Arc::new(AtomicU64::new(0));
    let (shared_delay, counter) = (delay.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (delay, counter) = (shared_delay.clone(), counter.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // The head, then as many body bytes as it declares.
                    let mut whole = None;
                    while whole.is_none_or(|len| buf.len() < len) {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if whole.is_none()
                            && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                        {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            whole = Some(end + 4 + length);
                        }
                    }
                    buf.drain(..whole.unwrap_or(0));
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(delay.load(Ordering::Relaxed))).await;
                    let body = format!("{name}\n");
                    let reply = format!(
                        "HTTP/1.1 {status} Scripted\r\nContent-Length: {}\r\nX-Backend: {name}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Scripted {
        addr,
        delay_ms: delay,
        requests,
    }
}

/// One worker balancing `servers` by `balance`.
fn config(balance: &str, servers: &[SocketAddr]) -> Config {
    Config::app(servers)
        .global("workers = 1")
        .upstream(&format!(r#"balance = "{balance}""#))
}

/// Sends `total` GETs of `path` from `concurrency` keep-alive clients; counts
/// answers by X-Backend (failures count under their status).
async fn spread(addr: SocketAddr, path: &'static str, total: usize, concurrency: usize) -> HashMap<String, usize> {
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let share = total / concurrency + usize::from(c < total % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut seen = Vec::with_capacity(share);
            for _ in 0..share {
                let resp = conn.send(request("GET", path).body(Default::default()).unwrap()).await;
                seen.push(match resp.header("x-backend") {
                    Some(b) if resp.status == 200 => b.to_string(),
                    _ => format!("status {}", resp.status),
                });
            }
            seen
        }));
    }
    let mut counts = HashMap::new();
    for t in tasks {
        for name in t.await.unwrap() {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test]
async fn least_conn_sends_most_traffic_away_from_a_slow_server() {
    let fast = scripted("fast", 200, 0).await;
    let slow = scripted("slow", 200, 300).await;
    let lb = Fulcrum::start(&config("least_conn", &[fast.addr, slow.addr]).toml());
    let counts = spread(lb.addr("web"), "/", 200, 10).await;
    let slow_share = counts.get("slow").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<usize>(), 200);
    // Round robin would give it 100; least_conn only sends it a request
    // while it has no more requests in flight than the fast one.
    assert!(slow_share < 60, "slow server got {slow_share} of 200: {counts:?}");
    assert_eq!(counts.get("fast").copied().unwrap_or(0) + slow_share, 200, "{counts:?}");
}

#[tokio::test]
async fn ewma_moves_traffic_off_a_server_that_turns_slow_and_back_when_it_recovers() {
    let a = scripted("a", 200, 0).await;
    let b = scripted("b", 200, 0).await;
    let lb = Fulcrum::start(&config("ewma", &[a.addr, b.addr]).toml());
    let web = lb.addr("web");
    let before = spread(web, "/", 200, 4).await;
    assert!(
        before.get("b").copied().unwrap_or(0) > 40,
        "both share while equal: {before:?}"
    );

    b.delay_ms.store(50, Ordering::Relaxed);
    let slow = spread(web, "/", 300, 4).await;
    let b_share = slow.get("b").copied().unwrap_or(0);
    assert!(b_share < 45, "a server 50 ms slower kept {b_share} of 300: {slow:?}");

    b.delay_ms.store(0, Ordering::Relaxed);
    // The slow estimate decays (2 s time constant) and probes bring it back.
    support::wait_until_async(
        "b gets traffic again after recovering",
        Duration::from_secs(20),
        || async {
            let recovered = spread(web, "/", 100, 4).await;
            recovered.get("b").copied().unwrap_or(0) >= 25
        },
    )
    .await;
}

#[tokio::test]
async fn backup_takes_over_only_when_every_primary_is_down() {
    let b = backends(&["p1", "p2", "standby"]).await;
    let lb = Fulcrum::start(
        &config("round_robin", &[b[0].addr, b[1].addr])
            .server(b[2].addr, "backup = true")
            .upstream(r#"fail_timeout = "30s""#)
            .toml(),
    );
    let web = lb.addr("web");
    let healthy = spread(web, "/", 60, 3).await;
    assert_eq!(
        healthy.get("standby"),
        None,
        "backup served while primaries were up: {healthy:?}"
    );
    b[0].shutdown();
    let one_down = spread(web, "/", 60, 3).await;
    assert_eq!(
        one_down.get("p2"),
        Some(&60),
        "one primary left carries everything: {one_down:?}"
    );
    b[1].shutdown();
    let all_down = spread(web, "/", 60, 3).await;
    assert_eq!(
        all_down.get("standby"),
        Some(&60),
        "backup takes over without failures: {all_down:?}"
    );
}

#[tokio::test]
async fn server_at_max_requests_is_skipped_and_all_busy_gives_503_at_once() {
    let b = backends(&["only"]).await;
    let lb = Fulcrum::start(&config("least_conn", &[]).server(b[0].addr, "max_requests = 1").toml());
    let web = lb.addr("web");
    let slow = tokio::spawn(async move { get(web, "/delay/2000").await });
    support::wait_until("the slow request reached the backend", Duration::from_secs(10), || {
        b[0].stats.requests.load(Ordering::Relaxed) == 1
    })
    .await;
    let started = std::time::Instant::now();
    let shed = get(web, "/").await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "503 must not wait for a slot"
    );
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(get(web, "/").await.status, 200, "a freed slot is used again");
}

#[tokio::test]
async fn retries_on_503_hide_a_failing_server() {
    let b = backends(&["sick", "well", "fine"]).await;
    let lb = Fulcrum::start(
        &config("round_robin", &[b[0].addr, b[1].addr, b[2].addr])
            .route(r#"retry = { tries = 2, on = ["error", "http_503"] }"#)
            .upstream("max_fails = 0")
            .toml(),
    );
    let web = lb.addr("web");
    // `sick` answers /health with 503 from now on.
    let mut admin = Conn::open(b[0].addr).await;
    admin
        .send(request("POST", "/health/fail").body(Default::default()).unwrap())
        .await;
    // A third of the requests need a retry: well within the retry budget
    // (a reserve of 10 plus 20 % of requests).
    let counts = spread(web, "/health", 30, 2).await;
    assert_eq!(
        counts.get("well").copied().unwrap_or(0) + counts.get("fine").copied().unwrap_or(0),
        30,
        "{counts:?}"
    );
    assert!(
        b[0].stats.requests.load(Ordering::Relaxed) >= 5,
        "the sick server was tried"
    );
}

#[tokio::test]
async fn a_server_dying_under_load_costs_the_client_nothing_and_it_comes_back() {
    let b = backends(&["a", "b", "c"]).await;
    let c_addr = b[2].addr;
    let lb = Fulcrum::start(
        &config("round_robin", &[b[0].addr, b[1].addr, c_addr])
            .upstream("max_fails = 1")
            .upstream(r#"fail_timeout = "1s""#)
            .toml(),
    );
    let web = lb.addr("web");
    // 3000 requests of ~20 ms from 32 clients: a few seconds of steady load.
    let load = tokio::spawn(spread(web, "/delay/20", 3000, 32));
    support::wait_until("load is flowing", Duration::from_secs(10), || {
        b[2].stats.requests.load(Ordering::Relaxed) > 100
    })
    .await;
    b[2].shutdown();
    let counts = load.await.unwrap();
    assert_eq!(counts.values().sum::<usize>(), 3000);
    assert!(
        counts.keys().all(|k| !k.starts_with("status")),
        "client saw failures: {counts:?}"
    );

    // The server comes back on the same address and gets traffic again.
    let listener = std::net::TcpListener::bind(c_addr).expect("rebind the restarted server's port");
    listener.set_nonblocking(true).unwrap();
    let restarted = fulcrum::backend::spawn(tokio::net::TcpListener::from_std(listener).unwrap(), "c");
    support::wait_until_async("the restarted server gets traffic", Duration::from_secs(15), || async {
        let counts = spread(web, "/", 30, 3).await;
        counts.get("c").copied().unwrap_or(0) > 0
    })
    .await;
    drop(restarted);
}

#[tokio::test]
async fn a_retried_request_goes_again_with_its_head_and_body() {
    let well = backends(&["well"]).await;
    let sick = scripted("sick", 503, 0).await;
    let lb = Fulcrum::start(
        &config("round_robin", &[sick.addr, well[0].addr])
            .route(r#"retry = { tries = 2, on = ["http_503"] }"#)
            .upstream("max_fails = 0")
            .toml(),
    );
    let mut conn = Conn::open(lb.addr("web")).await;
    // Held for replay (up to 64 KiB by default) but larger than what goes
    // out in the head's own write (16 KiB): it is written on its own after
    // the head, which must leave it whole for the retry.
    let body = bytes::Bytes::from(vec![b'x'; 40 * 1024]);
    for _ in 0..4 {
        let req = request("PUT", "/echo?q=1")
            .header("x-check", "kept")
            .body(body.clone())
            .unwrap();
        let resp = conn.send(req).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let echo = resp.json();
        assert_eq!(echo["backend"], "well");
        assert_eq!(echo["method"], "PUT");
        assert_eq!(echo["path"], "/echo?q=1");
        assert_eq!(echo["body_bytes"], body.len());
        assert_eq!(echo["headers"]["x-check"], "kept");
    }
    // Round robin sent half the first tries to the sick server.
    assert!(sick.requests.load(Ordering::Relaxed) >= 2, "the sick server was tried");
}
