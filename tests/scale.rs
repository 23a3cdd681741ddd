//! Scale (issue 7): 10,000 concurrent keep-alive clients and 1,000 WebSocket
//! tunnels open at once on one Fulcrum, every one of them served without an
//! error, twice (once to open, once more while all the others are open).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _, stream};
use support::{Config, Fulcrum, backends, get};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 10_000;
const TUNNELS: usize = 1_000;
/// Connections opened at once, like a crowd arriving rather than a SYN flood.
const OPENING: usize = 128;
const DEADLINE: Duration = Duration::from_secs(60);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: scale\r\n\r\n";

/// One keep-alive request on `stream`; true when a whole 200 came back.
async fn exchange(stream: &mut TcpStream) -> bool {
    if stream.write_all(REQUEST).await.is_err() {
        return false;
    }
    let mut got = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|n| n.trim().parse::<usize>().ok());
            if let Some(length) = length
                && body.len() >= length
            {
                return head.starts_with("HTTP/1.1 200");
            }
        }
    }
}

async fn metric(admin: SocketAddr, name: &str) -> u64 {
    let text = get(admin, "/metrics").await.text();
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.rsplit_once(' ').and_then(|(_, n)| n.trim().parse::<u64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keepalive_clients_and_a_thousand_tunnels_at_once() {
    // This process holds the clients, the tunnels' client ends and the
    // backends' ends of the tunnels and of the balancer's pool.
    let needed = (CLIENTS + 2 * TUNNELS + 2_000) as u64;
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    assert!(
        limit >= needed,
        "this test needs an open-files hard limit of at least {needed}, the machine allows {limit}"
    );
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(
        &Config::app(&[b[0].addr, b[1].addr])
            .global("workers = 2")
            .global(r#"admin_listen = "127.0.0.1:0""#)
            .listener("max_connections = 20000")
            .listener(r#"keepalive_timeout = "300s""#)
            .upstream(r#"balance = "least_conn""#)
            .toml(),
    );
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));

    let opened = tokio::time::timeout(DEADLINE * 2, async {
        stream::iter(0..CLIENTS)
            .map(|_| async move {
                let mut stream = TcpStream::connect(web).await.ok()?;
                exchange(&mut stream).await.then_some(stream)
            })
            .buffer_unordered(OPENING)
            .collect::<Vec<_>>()
            .await
    })
    .await
    .expect("10,000 clients connected and answered within the deadline");
    let mut clients: Vec<TcpStream> = opened.into_iter().flatten().collect();
    assert_eq!(clients.len(), CLIENTS, "clients that failed their first request");

    let url = format!("ws://{web}/ws");
    let tunnels = tokio::time::timeout(DEADLINE, async {
        stream::iter(0..TUNNELS)
            .map(|_| {
                let url = url.clone();
                async move { tokio_tungstenite::connect_async(url).await.ok().map(|(ws, _)| ws) }
            })
            .buffer_unordered(OPENING)
            .collect::<Vec<_>>()
            .await
    })
    .await
    .expect("1,000 tunnels opened within the deadline");
    let mut tunnels: Vec<_> = tunnels.into_iter().flatten().collect();
    assert_eq!(tunnels.len(), TUNNELS, "tunnels that failed to open");

    assert!(metric(admin, "fulcrum_connections_active").await >= (CLIENTS + TUNNELS) as u64);
    assert_eq!(metric(admin, "fulcrum_tunnels_active").await, TUNNELS as u64);

    // Everyone at once again, with all the others still open.
    let served = tokio::time::timeout(DEADLINE * 2, async {
        let requests = stream::iter(clients.iter_mut())
            .map(exchange)
            .buffer_unordered(OPENING)
            .filter(|ok| std::future::ready(*ok))
            .count();
        let echoes = stream::iter(tunnels.iter_mut().enumerate())
            .map(|(i, ws)| async move {
                let text = format!("m{i}");
                ws.send(Message::text(text.clone())).await.ok()?;
                match ws.next().await {
                    Some(Ok(Message::Text(reply))) => {
                        let reply = reply.as_str();
                        (reply == format!("a:{text}") || reply == format!("b:{text}")).then_some(())
                    }
                    _ => None,
                }
            })
            .buffer_unordered(OPENING)
            .filter(|ok| std::future::ready(ok.is_some()))
            .count();
        tokio::join!(requests, echoes)
    })
    .await
    .expect("the second round within the deadline");
    assert_eq!(served, (CLIENTS, TUNNELS));
}
