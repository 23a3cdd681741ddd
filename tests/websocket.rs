//! WebSockets through the balancer, with a real WebSocket client
//! (tokio-tungstenite) and the built-in backend's `/ws` echo: the upgrade is
//! balanced like any request, the tunnel carries messages both ways, closes
//! from either side, outlives reloads and keep-alive timeouts, and ends when
//! idle for the route's `read_timeout`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use support::{Config, Conn, Fulcrum, backends, get, raw_exchange, request, wait_until_async};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const DEADLINE: Duration = Duration::from_secs(20);

fn config(servers: &[SocketAddr], balance: &str, read_timeout: &str) -> String {
    Config::app(servers)
        .global("workers = 2")
        .global(r#"admin_listen = "127.0.0.1:0""#)
        .listener(r#"keepalive_timeout = "1s""#)
        .listener("expose_upstream = true")
        .route(&format!(r#"read_timeout = "{read_timeout}""#))
        .upstream(&format!(r#"balance = "{balance}""#))
        .toml()
}

/// Opens a WebSocket to `/ws` through the balancer; returns the stream and
/// the backend that took it (from `X-Upstream` on the 101).
async fn open(web: SocketAddr) -> (Ws, String) {
    let (ws, response) = tokio_tungstenite::connect_async(format!("ws://{web}/ws"))
        .await
        .expect("WebSocket handshake through the balancer");
    assert_eq!(response.status(), 101);
    let upstream = response
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .expect("X-Upstream on the 101")
        .to_string();
    (ws, upstream)
}

/// Sends `text` and returns the echo.
async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send through the tunnel");
    loop {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("an echo within the deadline")
            .expect("the tunnel to stay open")
            .expect("a well-formed message");
        if let Message::Text(reply) = message {
            return reply.as_str().to_string();
        }
    }
}

/// Waits for the tunnel to be closed by the other end.
async fn closed_by_peer(ws: &mut Ws) {
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel was not closed within {DEADLINE:?}");
}

async fn metric(admin: SocketAddr, name: &str) -> u64 {
    let text = get(admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test]
async fn messages_echo_both_ways_and_either_side_can_close() {
    let b = backends(&["a"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr], "round_robin", "60s"));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));

    let (mut ws, upstream) = open(web).await;
    assert_eq!(upstream, b[0].addr.to_string());
    assert_eq!(echo(&mut ws, "hello").await, "a:hello");
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    let binary = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(binary, Message::binary(b"a:\x00\x01\x02\xff".to_vec()));
    // A message larger than any socket buffer crosses intact.
    let big = "x".repeat(1 << 20);
    assert_eq!(echo(&mut ws, &big).await, format!("a:{big}"));
    assert_eq!(metric(admin, "fulcrum_tunnels_active").await, 1);

    // The client closes: the close handshake completes through the tunnel.
    ws.close(None).await.unwrap();
    closed_by_peer(&mut ws).await;
    // The client lets go of its socket once the close is done.
    drop(ws);
    wait_until_async("the tunnel to be gone", DEADLINE, || async {
        metric(admin, "fulcrum_tunnels_active").await == 0
    })
    .await;
    assert_eq!(metric(admin, "fulcrum_tunnels_total").await, 1);

    // The backend goes away: the client sees its tunnel end.
    let (mut ws, _) = open(web).await;
    assert_eq!(echo(&mut ws, "still here").await, "a:still here");
    b[0].shutdown();
    closed_by_peer(&mut ws).await;
    // The client lets go of its socket once the close is done.
    drop(ws);
    wait_until_async("the tunnel to be gone", DEADLINE, || async {
        metric(admin, "fulcrum_tunnels_active").await == 0
    })
    .await;
}

#[tokio::test]
async fn a_thousand_concurrent_tunnels_spread_evenly_under_least_conn() {
    // The test process holds both ends of each tunnel's client and backend.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr, b[1].addr], "least_conn", "60s"));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));

    // Opened one after another and all kept open, so least_conn sees every
    // earlier tunnel as in flight and alternates exactly.
    let mut tunnels = Vec::new();
    let (mut on_a, mut on_b) = (0u32, 0u32);
    for _ in 0..1000 {
        let (ws, upstream) = open(web).await;
        if upstream == b[0].addr.to_string() {
            on_a += 1;
        } else {
            on_b += 1;
        }
        tunnels.push(ws);
    }
    assert!(on_a.abs_diff(on_b) <= 2, "a={on_a} b={on_b}");
    assert_eq!(metric(admin, "fulcrum_tunnels_active").await, 1000);

    // All of them carry traffic at once.
    let echoes = futures_util::future::join_all(tunnels.iter_mut().enumerate().map(|(i, ws)| async move {
        let reply = echo(ws, &format!("m{i}")).await;
        assert!(reply == format!("a:m{i}") || reply == format!("b:m{i}"), "{reply}");
    }));
    echoes.await;

    drop(tunnels);
    wait_until_async("every tunnel to be gone", DEADLINE, || async {
        metric(admin, "fulcrum_tunnels_active").await == 0
    })
    .await;
}

#[tokio::test]
async fn a_reload_that_removes_the_server_keeps_its_open_tunnels() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr], "round_robin", "60s"));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));
    let (mut ws, _) = open(web).await;
    assert_eq!(echo(&mut ws, "before").await, "a:before");

    lb.write_config(&config(&[b[1].addr], "round_robin", "60s"));
    lb.signal("HUP");
    wait_until_async("new connections to reach b", DEADLINE, || async {
        get(web, "/").await.text().trim() == "b"
    })
    .await;
    assert_eq!(echo(&mut ws, "after").await, "a:after");
    let (mut fresh, _) = open(web).await;
    assert_eq!(echo(&mut fresh, "new").await, "b:new");
    assert_eq!(metric(admin, "fulcrum_tunnels_active").await, 2);
}

#[tokio::test]
async fn tunnels_ignore_keepalive_timeout_and_close_when_idle_past_read_timeout() {
    let b = backends(&["a"]).await;
    // keepalive_timeout is 1s on the listener; the route allows 4s of silence.
    let lb = Fulcrum::start(&config(&[b[0].addr], "round_robin", "4s"));
    let web = lb.addr("web");
    let (mut ws, _) = open(web).await;

    // Traffic every 200 ms for longer than read_timeout: the tunnel stays,
    // and silences of 2s (past keepalive_timeout) do not cut it either.
    for i in 0..6 {
        assert_eq!(echo(&mut ws, &format!("m{i}")).await, format!("a:m{i}"));
        tokio::time::sleep(Duration::from_millis(if i % 2 == 0 { 200 } else { 2000 })).await;
    }

    // Then silence: the balancer closes it after read_timeout.
    assert_eq!(echo(&mut ws, "last").await, "a:last");
    let started = std::time::Instant::now();
    closed_by_peer(&mut ws).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "closed after {:?}, before read_timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_upgrade_the_backend_declines_is_an_ordinary_response() {
    let b = backends(&["a"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr], "round_robin", "60s"));
    let web = lb.addr("web");
    // `/` does not speak WebSocket: a plain 200, and the connection goes on
    // as HTTP.
    let mut conn = Conn::open(web).await;
    let resp = conn
        .send(
            request("GET", "/")
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Bytes::new())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text().trim(), "a");
    let again = conn.send(request("GET", "/").body(Bytes::new()).unwrap()).await;
    assert_eq!(again.status, 200);

    // A handshake without a key is refused by the backend with 400, passed on.
    let raw = raw_exchange(
        web,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
}
