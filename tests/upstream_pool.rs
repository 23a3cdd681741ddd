//! Idle pooled upstream connections are closed once they are no use, with
//! no request coming to find out: when the server has closed its end (else
//! our socket would sit in CLOSE_WAIT), or when they have been idle for the
//! upstream's `keepalive_timeout`. One the server keeps open stays pooled
//! and is reused.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Config, Fulcrum, get, wait_until};

/// Idle connections are swept once a second; this leaves room for a loaded
/// machine.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// What the upstream does with a connection after answering on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterAnswer {
    /// Keeps it open for the next request.
    KeepOpen,
    /// Closes its sending side (a FIN, as a server whose own keep-alive
    /// timeout ran out sends) and waits for the balancer to close its end.
    Close,
}

/// What the upstream has seen.
#[derive(Debug, Default)]
struct Seen {
    accepted: usize,
    requests: usize,
    /// For each connection the balancer closed after an answer, how long
    /// after that answer began.
    closed_after: Vec<Duration>,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Upstream {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }
}

/// An HTTP/1.1 server answering every request `200 ok`, on keep-alive.
async fn upstream(after: AfterAnswer) -> Upstream {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    let addr = support::tcp_server(move |stream| {
        shared.lock().unwrap().accepted += 1;
        serve(stream, after, shared.clone())
    })
    .await;
    Upstream { addr, seen }
}

async fn serve(mut stream: TcpStream, after: AfterAnswer, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut answered: Option<Instant> = None;
    loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            if let Some(at) = answered {
                seen.lock().unwrap().closed_after.push(at.elapsed());
            }
            return;
        }
        if after == AfterAnswer::Close && answered.is_some() {
            // Our side is closed; only the balancer's close is awaited.
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        // The balancer's requests here are GETs without a body.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            seen.lock().unwrap().requests += 1;
            if head.contains("\r\nupgrade:") {
                tunnel(stream).await;
                return;
            }
            // Taken before the answer goes out, so before the balancer can
            // have pooled the connection.
            answered = Some(Instant::now());
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
            if after == AfterAnswer::Close {
                let _ = stream.shutdown().await;
                break;
            }
        }
    }
}

/// Switches protocols and holds the tunnel open until the balancer closes it.
async fn tunnel(mut stream: TcpStream) {
    let switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n";
    if stream.write_all(switched).await.is_ok() {
        let _ = stream.read_to_end(&mut Vec::new()).await;
    }
}

#[tokio::test]
async fn an_idle_connection_the_server_closed_is_closed_without_further_traffic() {
    let up = upstream(AfterAnswer::Close).await;
    // Each worker sweeps its own idle connections.
    let lb = Fulcrum::start(&Config::app(&[up.addr]).global("workers = 2").toml());
    for _ in 0..3 {
        assert_eq!(get(lb.addr("web"), "/").await.text(), "ok");
        wait_until(
            "the balancer to close every connection the upstream closed",
            CLOSE_DEADLINE,
            || {
                let seen = up.seen();
                seen.closed_after.len() == seen.accepted
            },
        )
        .await;
    }
}

#[tokio::test]
async fn an_idle_connection_past_keepalive_timeout_is_closed_without_further_traffic() {
    let up = upstream(AfterAnswer::KeepOpen).await;
    let config = Config::app(&[up.addr])
        .global("workers = 1")
        .upstream(r#"keepalive_timeout = "1s""#);
    let lb = Fulcrum::start(&config.toml());
    assert_eq!(get(lb.addr("web"), "/").await.text(), "ok");
    wait_until("the balancer to close the idle connection", CLOSE_DEADLINE, || {
        up.seen().closed_after.len() == 1
    })
    .await;
    let idle = up.seen().closed_after[0];
    assert!(
        idle >= Duration::from_secs(1),
        "closed after {idle:?} idle, before keepalive_timeout"
    );
}

#[tokio::test]
async fn an_idle_connection_the_server_keeps_open_is_reused_after_a_sweep() {
    let kept = upstream(AfterAnswer::KeepOpen).await;
    let closing = upstream(AfterAnswer::Close).await;
    let config = Config::app(&[kept.addr]).global("workers = 1").sections(&format!(
        r#"
        [[routes]]
        path_prefix = "/closing/"
        upstream = "closing"
        [upstreams.closing]
        servers = [ {{ address = "{}" }} ]
        "#,
        closing.addr
    ));
    let lb = Fulcrum::start(&config.toml());
    let addr = lb.addr("web");
    assert_eq!(get(addr, "/").await.text(), "ok");
    assert_eq!(get(addr, "/closing/").await.text(), "ok");
    // The sweep that closed this one also looked at the kept connection,
    // idle since before it.
    wait_until(
        "the balancer to close the connection the upstream closed",
        CLOSE_DEADLINE,
        || closing.seen().closed_after.len() == 1,
    )
    .await;
    assert_eq!(get(addr, "/").await.text(), "ok");
    let seen = kept.seen();
    assert_eq!((seen.accepted, seen.requests), (1, 2), "the idle connection was reused");
    assert!(seen.closed_after.is_empty());
}

#[tokio::test]
async fn a_reload_that_shortens_keepalive_timeout_closes_idle_connections_past_it() {
    let up = upstream(AfterAnswer::KeepOpen).await;
    let config = Config::app(&[up.addr]).global("workers = 1");
    let lb = Fulcrum::start(&config.toml());
    assert_eq!(get(lb.addr("web"), "/").await.text(), "ok");
    lb.write_config(&config.upstream(r#"keepalive_timeout = "1s""#).toml());
    lb.signal("HUP");
    lb.wait_for_log("config reloaded", CLOSE_DEADLINE).await;
    wait_until("the balancer to close the idle connection", CLOSE_DEADLINE, || {
        up.seen().closed_after.len() == 1
    })
    .await;
}

#[tokio::test]
async fn idle_connections_to_a_removed_server_close_while_a_tunnel_to_it_lives_on() {
    let old = upstream(AfterAnswer::KeepOpen).await;
    let new = upstream(AfterAnswer::KeepOpen).await;
    let lb = Fulcrum::start(&Config::app(&[old.addr]).global("workers = 1").toml());
    let addr = lb.addr("web");
    assert_eq!(get(addr, "/").await.text(), "ok");
    // The tunnel keeps the old server's state (its in-flight count) alive
    // after the reload, and with it the pool holding the idle connection.
    let mut tunnel = TcpStream::connect(addr).await.unwrap();
    tunnel
        .write_all(b"GET /t HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(CLOSE_DEADLINE, tunnel.read_exact(&mut answer))
        .await
        .expect("no answer to the upgrade")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101");

    lb.write_config(&Config::app(&[new.addr]).global("workers = 1").toml());
    lb.signal("HUP");
    lb.wait_for_log("config reloaded", CLOSE_DEADLINE).await;
    wait_until(
        "the balancer to close the idle connection to the removed server",
        CLOSE_DEADLINE,
        || old.seen().closed_after.len() == 1,
    )
    .await;
    assert_eq!(old.seen().accepted, 2, "the pooled connection and the tunnel's");
    assert_eq!(get(addr, "/").await.text(), "ok");
    assert_eq!(new.seen().requests, 1);
}
