//! PROXY protocol v1 and v2 on a listener with `proxy_protocol = true`, with
//! hand-built headers: the address they carry is the client's for
//! X-Forwarded-For, X-Real-IP, ip_hash and max_connections_per_ip; a
//! connection without a valid header (missing, truncated, garbage, too slow)
//! is closed without an answer and counted.

mod support;

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use support::{Config, Fulcrum, backends, get, wait_until_async};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);

/// Listener `web` expecting a PROXY header, in front of `servers`.
fn config(servers: &[SocketAddr]) -> Config {
    Config::app(servers)
        .global("workers = 2")
        .global(r#"admin_listen = "127.0.0.1:0""#)
        .listener("proxy_protocol = true")
        .listener(r#"request_header_timeout = "1s""#)
}

fn v1(src: &str) -> Vec<u8> {
    format!("PROXY TCP4 {src} 10.0.0.1 40000 80\r\n").into_bytes()
}

fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(addresses);
    out
}

fn v2_ipv6(src: Ipv6Addr, port: u16) -> Vec<u8> {
    let mut a = src.octets().to_vec();
    a.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    a.extend_from_slice(&port.to_be_bytes());
    a.extend_from_slice(&443u16.to_be_bytes());
    v2(1, 0x21, &a)
}

const ECHO: &[u8] = b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n";

/// Sends `header` then a request on one connection; everything read until
/// the response is complete or the server closes.
async fn exchange(web: SocketAddr, header: &[u8], request: &[u8]) -> String {
    let mut stream = TcpStream::connect(web).await.unwrap();
    let _ = stream.write_all(header).await;
    let _ = stream.write_all(request).await;
    read_response(&mut stream).await
}

/// Reads one response (this test's responses carry Content-Length), or
/// whatever arrives until the server closes.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if complete(&out) {
                return;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

fn complete(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|n| n.trim().parse::<usize>().ok());
    length.is_some_and(|n| body.len() >= n)
}

/// The request headers the backend saw, from `/echo`'s JSON.
fn echoed(response: &str) -> serde_json::Value {
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str::<serde_json::Value>(body).unwrap()["headers"].clone()
}

async fn refused(admin: SocketAddr) -> u64 {
    let text = get(admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("fulcrum_connections_refused_total{listener=\"web\",reason=\"proxy_protocol\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no proxy_protocol refusals in:\n{text}"))
}

#[tokio::test]
async fn the_carried_address_is_the_client_for_forwarding_headers() {
    let b = backends(&["a"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr]).toml());
    let web = lb.addr("web");

    let seen = echoed(&exchange(web, &v1("203.0.113.9"), ECHO).await);
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9");
    assert_eq!(seen["x-real-ip"], "203.0.113.9");

    let seen = echoed(&exchange(web, &v2_ipv6("2001:db8::7".parse().unwrap(), 5000), ECHO).await);
    assert_eq!(seen["x-forwarded-for"], "2001:db8::7");

    let mut v4 = vec![198, 51, 100, 20, 10, 0, 0, 1];
    v4.extend_from_slice(&[0x1f, 0x90, 0, 80]);
    let seen = echoed(&exchange(web, &v2(1, 0x11, &v4), ECHO).await);
    assert_eq!(seen["x-real-ip"], "198.51.100.20");

    // LOCAL (the proxy's own health check) and UNKNOWN keep the peer.
    let seen = echoed(&exchange(web, &v2(0, 0x00, &[]), ECHO).await);
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    let seen = echoed(&exchange(web, b"PROXY UNKNOWN\r\n", ECHO).await);
    assert_eq!(seen["x-real-ip"], "127.0.0.1");

    // A header split over two packets is still read whole, and keep-alive
    // requests after it keep the carried address.
    let mut stream = TcpStream::connect(web).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let header = v1("192.0.2.44");
    stream.write_all(&header[..9]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::task::yield_now().await;
    stream.write_all(&header[9..]).await.unwrap();
    for _ in 0..3 {
        stream.write_all(ECHO).await.unwrap();
        let seen = echoed(&read_response(&mut stream).await);
        assert_eq!(seen["x-forwarded-for"], "192.0.2.44");
    }
}

#[tokio::test]
async fn ip_hash_and_per_ip_limits_use_the_carried_address() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(
        &config(&[b[0].addr, b[1].addr])
            .listener("max_connections_per_ip = 1")
            .upstream(r#"balance = "ip_hash""#)
            .toml(),
    );
    let web = lb.addr("web");

    // Every connection comes from 127.0.0.1, yet twenty carried clients
    // spread over both servers, each always on the same one.
    let mut placed: HashMap<String, String> = HashMap::new();
    for round in 0..2 {
        for i in 0..20 {
            let client = format!("198.51.100.{i}");
            let seen = exchange(web, &v1(&client), ECHO).await;
            let backend =
                serde_json::from_str::<serde_json::Value>(seen.split_once("\r\n\r\n").unwrap().1).unwrap()["backend"]
                    .as_str()
                    .unwrap()
                    .to_string();
            if round == 0 {
                placed.insert(client, backend);
            } else {
                assert_eq!(placed[&client], backend, "{client} moved");
            }
        }
    }
    let on_a = placed.values().filter(|b| *b == "a").count();
    assert!(on_a > 0 && on_a < 20, "ip_hash saw one client: {placed:?}");

    // One connection per carried address: a second from 192.0.2.1 is
    // closed unanswered while one from 192.0.2.2 is served.
    let mut first = TcpStream::connect(web).await.unwrap();
    first.write_all(&v1("192.0.2.1")).await.unwrap();
    first.write_all(ECHO).await.unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));
    assert_eq!(exchange(web, &v1("192.0.2.1"), ECHO).await, "");
    assert!(exchange(web, &v1("192.0.2.2"), ECHO).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn missing_truncated_garbage_and_slow_headers_close_the_connection() {
    let b = backends(&["a"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr]).toml());
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));

    let mut long_v1 = b"PROXY TCP4 ".to_vec();
    long_v1.extend_from_slice(&[b'1'; 200]);
    let mut v2_bad_family = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
    v2_bad_family[13] = 0x77;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("plain HTTP", Vec::new()),
        ("garbage", b"\x16\x03\x01\x02\x00hello".to_vec()),
        ("bad v1 address", v1("999.1.2.3")),
        ("v1 without CRLF in 107 bytes", long_v1),
        ("v2 with an unknown family", v2_bad_family),
        ("v2 addresses cut short", v2(1, 0x21, &[0; 8])),
    ];
    for (what, header) in &cases {
        let answer = exchange(web, header, ECHO).await;
        assert_eq!(answer, "", "{what}: expected a silent close");
    }
    wait_until_async("the refusals to be counted", DEADLINE, || async {
        refused(admin).await >= cases.len() as u64
    })
    .await;

    // Truncated and then silent: closed at request_header_timeout (1s).
    let mut stream = TcpStream::connect(web).await.unwrap();
    stream.write_all(&v1("192.0.2.9")[..12]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // The listener still serves well-formed connections.
    assert!(exchange(web, &v1("192.0.2.10"), ECHO).await.starts_with("HTTP/1.1 200"));
}
