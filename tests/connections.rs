//! Client connection handling: slow-loris and keep-alive timeouts, the
//! connection limit, and graceful shutdown.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Config, Conn, Fulcrum, backends, get, request};

/// `upstream` behind listener `web`, with a shutdown grace longer than any
/// test here needs.
fn config(upstream: std::net::SocketAddr) -> Config {
    Config::app(&[upstream]).global(r#"shutdown_grace = "10s""#)
}

/// Reads until the peer closes; returns what was read and when it closed.
async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let result = tokio::time::timeout(deadline, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(result.is_ok(), "connection still open after {deadline:?}");
    (out, Instant::now())
}

#[tokio::test]
async fn slow_loris_is_cut_off_at_request_header_timeout() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(b[0].addr).listener(r#"request_header_timeout = "500ms""#).toml());
    let mut stream = TcpStream::connect(lb.addr("web")).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let took = closed - started;
    assert!(took >= Duration::from_millis(450), "closed too early: {took:?}");
    assert_eq!(b[0].stats.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn idle_keepalive_connection_closes_after_keepalive_timeout() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(
        &config(b[0].addr)
            .listener(r#"keepalive_timeout = "600ms""#)
            .listener(r#"request_header_timeout = "5s""#)
            .toml(),
    );
    let mut stream = TcpStream::connect(lb.addr("web")).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    let (rest, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(rest.is_empty() || rest.ends_with(b"app\n"), "unexpected bytes {rest:?}");
    let idle = closed - idle_from;
    assert!(
        idle >= Duration::from_millis(550),
        "closed after {idle:?}, before keepalive_timeout"
    );
    assert!(
        idle < Duration::from_secs(5),
        "closed after {idle:?}: header timeout, not keepalive"
    );
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(b[0].addr).listener("max_connections = 2").toml());
    let web = lb.addr("web");
    let mut first = Conn::open(web).await;
    let mut second = Conn::open(web).await;
    assert_eq!(
        first
            .send(request("GET", "/").body(Default::default()).unwrap())
            .await
            .status,
        200
    );
    assert_eq!(
        second
            .send(request("GET", "/").body(Default::default()).unwrap())
            .await
            .status,
        200
    );
    // The third connection sits in the backlog: no answer while both slots are taken.
    let mut third = tokio::spawn(async move { get(web, "/").await });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(
        early.is_err(),
        "a third connection was served beyond max_connections = 2"
    );
    drop(first);
    let resp = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0() {
    let b = backends(&["app"]).await;
    let mut lb = Fulcrum::start(&config(b[0].addr).toml());
    let web = lb.addr("web");
    let slow = tokio::spawn(async move { get(web, "/delay/1500").await });
    support::wait_until("the slow request reached the backend", Duration::from_secs(10), || {
        b[0].stats.requests.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    lb.signal("TERM");
    support::wait_until("the listener stopped accepting", Duration::from_secs(10), || {
        std::net::TcpStream::connect(web).is_err()
    })
    .await;
    let resp = slow.await.unwrap();
    assert_eq!(resp.status, 200, "in-flight request finished");
    assert!(
        lb.wait_exit(Duration::from_secs(15)).success(),
        "exit code 0\n{}",
        lb.logs()
    );
}

/// A connection to `addr` from the source address `from`.
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// One GET on a raw connection; true when a 200 came back.
async fn served(stream: &mut TcpStream) -> bool {
    let sent = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.is_ok();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer or a close within 10 s")
        .unwrap_or(0);
    sent && buf[..n].starts_with(b"HTTP/1.1 200")
}

#[tokio::test]
async fn connections_beyond_max_connections_per_ip_are_refused_per_address() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(
        &config(b[0].addr)
            .global(r#"admin_listen = "127.0.0.1:0""#)
            .listener("max_connections_per_ip = 2")
            .toml(),
    );
    let web = lb.addr("web");
    let mut first = connect_from("127.0.0.1", web).await;
    let mut second = connect_from("127.0.0.1", web).await;
    assert!(served(&mut first).await);
    assert!(served(&mut second).await);

    // The third from the same address is closed without an answer.
    let mut third = connect_from("127.0.0.1", web).await;
    let (bytes, _) = read_until_closed(&mut third, Duration::from_secs(10)).await;
    assert!(
        bytes.is_empty(),
        "refused connection got {:?}",
        String::from_utf8_lossy(&bytes)
    );
    // Another address is not affected; the first two still work.
    let mut other = connect_from("127.0.0.2", web).await;
    assert!(served(&mut other).await);
    assert!(served(&mut first).await);

    // A slot frees when a connection closes.
    drop(second);
    support::wait_until_async(
        "a connection from 127.0.0.1 to be accepted again",
        Duration::from_secs(10),
        || async move { served(&mut connect_from("127.0.0.1", web).await).await },
    )
    .await;
    let metrics = get(lb.addr("admin"), "/metrics").await.text();
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fulcrum_connections_refused_total{listener=\"web\",reason=\"per_ip\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no refused counter in:\n{metrics}"));
    assert!(refused >= 1, "{refused}");
}
