//! Every error status a client can get, with a short body naming the
//! request id, and the limits and timeouts that produce them.

mod support;

use std::time::{Duration, Instant};

use support::{Config, Conn, Fulcrum, backends, get, raw_exchange, request};

fn assert_error_body(resp: &support::Resp, status: u16) {
    assert_eq!(resp.status, status);
    let id = resp.header("x-request-id").expect("request id header");
    let text = resp.text();
    assert!(text.starts_with(&status.to_string()), "{text}");
    assert!(text.contains(id), "body names the request id: {text}");
}

#[tokio::test]
async fn dead_server_gives_502() {
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = Fulcrum::start(&Config::app(&[dead]).toml());
    assert_error_body(&get(lb.addr("web"), "/").await, 502);
}

#[tokio::test]
async fn unreachable_server_gives_504_at_the_connect_timeout() {
    // A listener whose accept queue is full: the kernel drops further SYNs,
    // so a connect hangs until the balancer's connect_timeout.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let full = socket.local_addr().unwrap().as_socket().unwrap();
    let _queued: Vec<_> = (0..4)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&full, Duration::from_millis(200)).ok())
        .collect();
    let lb = Fulcrum::start(&Config::app(&[full]).route(r#"connect_timeout = "300ms""#).toml());
    let started = Instant::now();
    let resp = get(lb.addr("web"), "/").await;
    assert_error_body(&resp, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "answered before the connect timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "did not honour connect_timeout: {took:?}"
    );
}

#[tokio::test]
async fn slow_server_gives_504_at_the_read_timeout() {
    let b = backends(&["slow"]).await;
    let lb = Fulcrum::start(&Config::app(&[b[0].addr]).route(r#"read_timeout = "300ms""#).toml());
    let started = Instant::now();
    let resp = get(lb.addr("web"), "/delay/5000").await;
    let took = started.elapsed();
    assert_error_body(&resp, 504);
    assert!(
        took >= Duration::from_millis(300),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(4000),
        "did not honour read_timeout: {took:?}"
    );
    // A fast request on the same route still works.
    assert_eq!(get(lb.addr("web"), "/delay/10").await.status, 200);
}

/// The upstream connection keeps its timer between requests and lets one set
/// by an earlier request fire early: that must never cut a later request
/// short of its own read_timeout.
#[tokio::test]
async fn a_reused_upstream_connection_gives_each_request_its_whole_read_timeout() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&Config::app(&[b[0].addr]).route(r#"read_timeout = "2s""#).toml());
    let mut conn = Conn::open(lb.addr("web")).await;
    let get = |path: &str| request("GET", path).body(Default::default()).unwrap();
    // Sets the upstream connection's timer to now + 2 s.
    assert_eq!(conn.send(get("/")).await.status, 200);
    // A second later, on the same upstream connection, a request that takes
    // 1.5 s: the first request's timer fires while it waits (at +2 s), yet its
    // own deadline is +3 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let resp = conn.send(get("/delay/1500")).await;
    assert_eq!(
        resp.status,
        200,
        "cut short after {:?}: {}",
        started.elapsed(),
        resp.text()
    );
    assert_eq!(
        b[0].stats.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one upstream connection"
    );
}

#[tokio::test]
async fn body_over_max_body_size_gives_413_with_or_without_length() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&Config::app(&[b[0].addr]).listener(r#"max_body_size = "64k""#).toml());
    let web = lb.addr("web");

    let mut conn = Conn::open(web).await;
    let resp = conn
        .send(request("POST", "/echo").body(vec![b'a'; 100_000].into()).unwrap())
        .await;
    assert_error_body(&resp, 413);

    // Chunked: no length up front; the limit trips while streaming.
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..10 {
        raw.extend_from_slice(b"2000\r\n");
        raw.extend_from_slice(&[b'b'; 0x2000]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(web, &raw).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Under the limit passes.
    let mut conn = Conn::open(web).await;
    let resp = conn
        .send(request("POST", "/echo").body(vec![b'a'; 60_000].into()).unwrap())
        .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn oversized_headers_give_431_and_garbage_gives_400() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&Config::app(&[b[0].addr]).listener(r#"max_header_size = "8k""#).toml());
    let web = lb.addr("web");
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "y".repeat(10_000));
    let answer = raw_exchange(web, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let answer = raw_exchange(web, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The balancer is unharmed.
    assert_eq!(get(web, "/").await.status, 200);
}
