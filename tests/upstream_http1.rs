//! Fulcrum's own HTTP/1.1 client against an upstream that says exactly what
//! a test scripts, byte for byte: every way a response body can be
//! delimited, interim answers, malformed and ambiguous heads (502, never a
//! guess) and broken bodies, a pooled connection the server closed while
//! idle, and the framing of request bodies on the way up.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Config, Conn, Fulcrum, request, wait_until};

/// What the scripted upstream has seen.
#[derive(Default)]
struct Seen {
    connections: usize,
    /// Each request: its head, and its body as it came on the wire.
    requests: Vec<(String, Vec<u8>)>,
    /// Connections the upstream closed after answering (`/then-close`).
    closed: usize,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

/// An HTTP/1.1 server that answers by path with the bytes of `reply`.
async fn upstream() -> Upstream {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    let addr = support::tcp_server(move |stream| {
        shared.lock().unwrap().connections += 1;
        serve(stream, shared.clone())
    })
    .await;
    Upstream { addr, seen }
}

async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until(&mut stream, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let lower = head.to_ascii_lowercase();
        let body = if let Some(len) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            while buf.len() < len {
                if !read_more(&mut stream, &mut buf).await {
                    return;
                }
            }
            buf.drain(..len).collect()
        } else if lower.contains("transfer-encoding: chunked") {
            let Some(end) = read_until(&mut stream, &mut buf, b"0\r\n\r\n").await else {
                return;
            };
            buf.drain(..end).collect()
        } else {
            Vec::new()
        };
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        seen.lock().unwrap().requests.push((head, body.clone()));
        let reply = reply(&path, &body);
        if stream.write_all(&reply).await.is_err() {
            return;
        }
        if path.starts_with("/close-delimited") || path.starts_with("/truncated") || path.starts_with("/then-close") {
            drop(stream);
            seen.lock().unwrap().closed += 1;
            return;
        }
    }
}

fn reply(path: &str, body: &[u8]) -> Vec<u8> {
    let text = match path {
        "/close-delimited" => "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_owned(),
        "/chunked" => {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                .to_owned()
        }
        "/bare-lf" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n".to_owned(),
        "/continue" => "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned(),
        "/conflicting" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!".to_owned(),
        "/garbage" => "this is not HTTP\r\n\r\n".to_owned(),
        "/truncated" => "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b".to_owned(),
        "/head" => "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_owned(),
        "/then-close" | "/keep" => "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nkept".to_owned(),
        "/4k" => format!("HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n{}", "k".repeat(4096)),
        _ => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()),
    };
    let mut out = text.into_bytes();
    if path == "/echo" {
        out.extend_from_slice(body);
    }
    out
}

/// Reads until `marker` is in `buf`; the index just past it, or `None` at
/// the end of the stream.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, marker: &[u8]) -> Option<usize> {
    loop {
        if let Some(at) = buf.windows(marker.len()).position(|w| w == marker) {
            return Some(at + marker.len());
        }
        if !read_more(stream, buf).await {
            return None;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn start(upstream: SocketAddr) -> Fulcrum {
    Fulcrum::start(&Config::app(&[upstream]).global("workers = 1").toml())
}

async fn exchange(addr: SocketAddr, method: &str, path: &str, body: &str) -> support::Resp {
    let req = request(method, path).body(Bytes::from(body.to_owned())).unwrap();
    Conn::open(addr).await.send(req).await
}

#[tokio::test]
async fn every_kind_of_response_body_reaches_the_client_whole() {
    let up = upstream().await;
    let lb = start(up.addr);
    let addr = lb.addr("web");
    let r = exchange(addr, "GET", "/close-delimited", "").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "until the end"));
    let r = exchange(addr, "GET", "/chunked", "").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello world"));
    let r = exchange(addr, "GET", "/continue", "").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    // A HEAD answer has no body, whatever its Content-Length says; the
    // connection stays good for the next request.
    let mut conn = Conn::open(addr).await;
    let r = conn.send(request("HEAD", "/head").body(Bytes::new()).unwrap()).await;
    assert_eq!((r.status.as_u16(), r.header("content-length")), (200, Some("1234")));
    assert!(r.body.is_empty());
    let r = conn.send(request("GET", "/keep").body(Bytes::new()).unwrap()).await;
    assert_eq!(r.text(), "kept");
}

#[tokio::test]
async fn malformed_or_ambiguous_upstream_answers_are_502() {
    let up = upstream().await;
    let lb = start(up.addr);
    let addr = lb.addr("web");
    for path in ["/garbage", "/conflicting"] {
        let r = exchange(addr, "GET", path, "").await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert!(r.text().contains("request id"), "{path}: {}", r.text());
    }
    // A body cut short, or chunked with a bare LF that ends no line (RFC
    // 9112 §7.1), cannot be passed off as complete: the client's response
    // fails instead of ending cleanly.
    for path in ["/truncated", "/bare-lf"] {
        let req = request("GET", path).body(Bytes::new()).unwrap();
        let cut = Conn::open(addr).await.try_send(req).await;
        assert!(
            cut.is_err(),
            "{path}: a broken body reached the client as complete: {cut:?}"
        );
    }
    // The balancer is fine afterwards.
    assert_eq!(exchange(addr, "GET", "/keep", "").await.text(), "kept");
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_not_used_again() {
    let up = upstream().await;
    let lb = start(up.addr);
    let addr = lb.addr("web");
    for _ in 0..3 {
        assert_eq!(exchange(addr, "GET", "/keep", "").await.text(), "kept");
    }
    assert_eq!(
        up.seen.lock().unwrap().connections,
        1,
        "keep-alive reuses one connection"
    );
    // The server answers, then closes the (now pooled) connection.
    assert_eq!(exchange(addr, "GET", "/then-close", "").await.text(), "kept");
    wait_until("the upstream closed", Duration::from_secs(10), || {
        up.seen.lock().unwrap().closed == 1
    })
    .await;
    for method in ["GET", "POST"] {
        let r = exchange(addr, method, "/keep", "").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "kept"), "{method}");
    }
    assert_eq!(up.seen.lock().unwrap().connections, 2);
}

#[tokio::test]
async fn request_bodies_go_up_with_the_framing_they_need() {
    let up = upstream().await;
    let lb = start(up.addr);
    let addr = lb.addr("web");
    // Content-Length from the client stays a length.
    let r = exchange(addr, "POST", "/echo", "twelve bytes").await;
    assert_eq!(r.text(), "twelve bytes");
    // A chunked upload is sent on chunked, whatever pieces it came in.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // (the echo is of the body as it came on the wire, chunked)
    assert!(answer.contains("abc") && answer.ends_with("0\r\n\r\n"), "{answer}");
    // An empty POST declares its length; a GET without a body does not.
    exchange(addr, "POST", "/echo", "").await;
    exchange(addr, "GET", "/echo", "").await;
    let seen = up.seen.lock().unwrap();
    let heads: Vec<String> = seen.requests.iter().map(|(h, _)| h.to_ascii_lowercase()).collect();
    assert!(heads[0].contains("content-length: 12\r\n"), "{}", heads[0]);
    assert!(heads[1].contains("transfer-encoding: chunked\r\n"), "{}", heads[1]);
    assert!(!heads[1].contains("content-length"), "{}", heads[1]);
    // However the pieces were regrouped on the way, the chunks carry them.
    let wire = String::from_utf8_lossy(&seen.requests[1].1).into_owned();
    assert!(
        wire.ends_with("\r\n0\r\n\r\n") && wire.contains("abc") && wire.contains("defg"),
        "{wire:?}"
    );
    assert!(
        heads[2].starts_with("post ") && heads[2].contains("content-length: 0\r\n"),
        "{}",
        heads[2]
    );
    assert!(
        heads[3].starts_with("get ") && !heads[3].contains("content-length"),
        "{}",
        heads[3]
    );
}

/// Write system calls the process has made so far (`syscw`: `write`,
/// `writev`).
fn writes_made(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/PID/io");
    io.lines()
        .find_map(|line| line.strip_prefix("syscw: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("syscw in /proc/PID/io")
}

#[tokio::test]
async fn a_response_the_server_sends_in_one_write_reaches_the_client_in_one_write() {
    // Each 4 KiB answer leaves the upstream in one write. Read into what
    // was left of the buffer after the one before, it used to come in two
    // reads every other time, and go to the client in two writes.
    let up = upstream().await;
    let lb = start(up.addr);
    let mut client = Conn::open(lb.addr("web")).await;
    let get = || request("GET", "/4k").body(Bytes::new()).unwrap();
    assert_eq!(client.send(get()).await.body.len(), 4096);
    let before = writes_made(lb.pid());
    let requests = 100;
    for _ in 0..requests {
        let resp = client.send(get()).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), 4096);
    }
    let writes = writes_made(lb.pid()) - before;
    // One write of the request upstream, one of the response to the client.
    assert!(
        writes <= 2 * requests + 10,
        "{writes} writes for {requests} requests; log:\n{}",
        lb.logs()
    );
    assert_eq!(up.seen.lock().unwrap().connections, 1);
}
