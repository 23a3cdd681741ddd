//! The built-in test backend seen over real sockets, and the harness pieces
//! that do not need the balancer: client, raw exchange, waits, log parsing,
//! the config builder.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use support::{Conn, Fulcrum, backends, get, get_with, raw_exchange, request};

#[tokio::test]
async fn root_names_the_backend_in_body_and_header() {
    let b = backends(&["alpha", "beta"]).await;
    let alpha = get(b[0].addr, "/").await;
    assert_eq!(alpha.status, 200);
    assert_eq!(alpha.text(), "alpha\n");
    assert_eq!(alpha.header("x-backend"), Some("alpha"));
    let beta = get(b[1].addr, "/").await;
    assert_eq!(beta.text(), "beta\n");
    assert_eq!(b[1].name, "beta");
}

#[tokio::test]
async fn health_fails_on_request_and_recovers_per_backend() {
    let b = backends(&["sick", "fine"]).await;
    let (sick, fine) = (b[0].addr, b[1].addr);
    assert_eq!(get(sick, "/health").await.text(), "ok");

    let mut conn = Conn::open(sick).await;
    let flipped = conn.send(post("/health/fail")).await;
    assert_eq!(flipped.status, 200);
    let down = get(sick, "/health").await;
    assert_eq!(down.status, 503);
    assert_eq!(down.header("x-backend"), Some("sick"));
    assert_eq!(get(fine, "/health").await.status, 200, "state is per backend");

    conn.send(post("/health/ok")).await;
    let up = get(sick, "/health").await;
    assert_eq!(up.status, 200);
    assert_eq!(up.text(), "ok");
}

#[tokio::test]
async fn status_path_answers_with_that_status_and_rejects_nonsense() {
    let b = backends(&["app"]).await;
    let addr = b[0].addr;
    let unavailable = get(addr, "/status/503").await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.header("x-backend"), Some("app"));
    assert_eq!(get(addr, "/status/201").await.status, 201);
    let empty = get(addr, "/status/204").await;
    assert_eq!(empty.status, 204);
    assert!(empty.body.is_empty());
    for bad in ["/status/abc", "/status/99", "/status/1000", "/status/101", "/status/"] {
        assert_eq!(get(addr, bad).await.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn delay_answers_no_sooner_than_asked() {
    let b = backends(&["slow"]).await;
    let started = Instant::now();
    let resp = get(b[0].addr, "/delay/50").await;
    assert_eq!(resp.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(b[0].addr, "/delay/soon").await.status, 400);
    assert_eq!(get(b[0].addr, "/delay/99999999999999999999").await.status, 400);
}

#[tokio::test]
async fn bytes_sends_exactly_n_bytes_of_text_with_a_length() {
    let b = backends(&["big"]).await;
    let resp = get(b[0].addr, "/bytes/1000000").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), 1_000_000);
    assert_eq!(resp.header("content-length"), Some("1000000"));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert!(resp.body.iter().all(|b| b.is_ascii_lowercase() || *b == b'\n'));

    let none = get(b[0].addr, "/bytes/0").await;
    assert_eq!(none.status, 200);
    assert!(none.body.is_empty());
    assert_eq!(get(b[0].addr, "/bytes/-1").await.status, 400);
}

#[tokio::test]
async fn echo_describes_the_request_it_got() {
    let b = backends(&["mirror"]).await;
    let mut conn = Conn::open(b[0].addr).await;
    let req = request("POST", "/echo?x=1&y=two")
        .header("x-trace", "abc")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .body(Bytes::from(vec![b'z'; 12_345]))
        .unwrap();
    let resp = conn.send(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let echo = resp.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo?x=1&y=two");
    assert_eq!(echo["body_bytes"], 12_345);
    assert_eq!(echo["backend"], "mirror");
    assert_eq!(echo["headers"]["x-trace"], "abc");
    assert_eq!(echo["headers"]["x-multi"], "one, two");
    assert_eq!(echo["headers"]["host"], "localhost");
    assert_eq!(echo["headers"]["content-length"], "12345");

    let plain = get_with(b[0].addr, "/echo", &[("host", "shop.example.com")]).await;
    let echo = plain.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["body_bytes"], 0);
    assert_eq!(echo["headers"]["host"], "shop.example.com");
}

#[tokio::test]
async fn chunked_upload_is_counted_as_it_streams() {
    let b = backends(&["mirror"]).await;
    let mut raw = b"PUT /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"1000\r\n");
        raw.extend_from_slice(&[b'c'; 0x1000]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(b[0].addr, &raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""body_bytes":16384"#), "{answer}");
    assert!(answer.contains(r#""method":"PUT""#), "{answer}");
}

#[tokio::test]
async fn unknown_paths_and_methods_are_404_and_garbage_is_400() {
    let b = backends(&["app"]).await;
    let addr = b[0].addr;
    for path in ["/nope", "/health/extra", "/bytes", "/bytes/1/2"] {
        let resp = get(addr, path).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(resp.header("x-backend"), Some("app"));
    }
    let mut conn = Conn::open(addr).await;
    assert_eq!(conn.send(post("/")).await.status, 404);
    assert_eq!(conn.send(post("/health")).await.status, 404);

    let answer = raw_exchange(addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(get(addr, "/").await.status, 200, "the backend is unharmed");
}

#[tokio::test]
async fn one_keepalive_connection_counts_once_and_every_request_counts() {
    let b = backends(&["app"]).await;
    let stats = &b[0].stats;
    let mut conn = Conn::open(b[0].addr).await;
    for _ in 0..5 {
        assert_eq!(conn.send(get_req("/")).await.status, 200);
    }
    assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
    assert_eq!(stats.requests.load(Ordering::Relaxed), 5);
    get(b[0].addr, "/health").await;
    assert_eq!(stats.connections.load(Ordering::Relaxed), 2);
    assert_eq!(stats.requests.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn a_request_counts_when_it_arrives_not_when_it_is_answered() {
    let b = backends(&["slow"]).await;
    let addr = b[0].addr;
    let slow = tokio::spawn(async move { get(addr, "/delay/300").await });
    let stats = std::sync::Arc::clone(&b[0].stats);
    support::wait_until("the request reached the backend", Duration::from_secs(5), || {
        stats.requests.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(!slow.is_finished());
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn shutdown_refuses_new_connections_and_drops_open_ones() {
    let b = backends(&["doomed", "other"]).await;
    let addr = b[0].addr;
    let mut idle = Conn::open(addr).await;
    assert_eq!(idle.send(get_req("/")).await.status, 200);
    let in_flight = tokio::spawn(async move { Conn::open(addr).await.try_send(get_req("/delay/5000")).await });
    let stats = std::sync::Arc::clone(&b[0].stats);
    support::wait_until("the slow request arrived", Duration::from_secs(5), || {
        stats.requests.load(Ordering::Relaxed) == 2
    })
    .await;

    b[0].shutdown();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting");
    let cut = in_flight.await.unwrap();
    assert!(cut.is_err(), "answered after shutdown: {cut:?}");
    assert!(
        idle.try_send(get_req("/")).await.is_err(),
        "idle connection still served"
    );
    assert_eq!(get(b[1].addr, "/").await.text(), "other\n", "other backends live on");
}

#[tokio::test]
async fn dropping_a_handle_stops_its_backend() {
    let mut b = backends(&["gone"]).await;
    let addr = b[0].addr;
    b.clear();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
#[should_panic(expected = "timed out after 50ms waiting for the impossible")]
async fn wait_until_names_what_never_happened() {
    support::wait_until("the impossible", Duration::from_millis(50), || false).await;
}

#[tokio::test]
async fn wait_until_async_returns_once_the_condition_holds() {
    let b = backends(&["app"]).await;
    let addr = b[0].addr;
    let mut tries = 0;
    support::wait_until_async("three healthy answers", Duration::from_secs(5), || {
        tries += 1;
        let enough = tries >= 3;
        async move { get(addr, "/health").await.status == 200 && enough }
    })
    .await;
    assert_eq!(b[0].stats.requests.load(Ordering::Relaxed), 3);
}

#[test]
fn log_lines_yield_listener_addresses_with_or_without_colour() {
    let plain = "2026-11-23T04:00:00Z  INFO fulcrum::server: listening listener=web addr=127.0.0.1:41234";
    let (name, addr) = support::parse_listening_line(plain).unwrap();
    assert_eq!(name, "web");
    assert_eq!(addr, "127.0.0.1:41234".parse().unwrap());

    let coloured = "\x1b[2m2026-11-23T04:00:00Z\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mfulcrum::server\x1b[0m: listening \x1b[3mlistener\x1b[0m\x1b[2m=\x1b[0madmin \x1b[3maddr\x1b[0m\x1b[2m=\x1b[0m[::1]:9000";
    let (name, addr) = support::parse_listening_line(&support::strip_ansi(coloured)).unwrap();
    assert_eq!(name, "admin");
    assert_eq!(addr, "[::1]:9000".parse().unwrap());

    assert!(
        support::parse_listening_line("INFO fulcrum::backend: backend listening name=a addr=127.0.0.1:1").is_none()
    );
    assert!(support::parse_listening_line("ERROR cannot register listening socket error=x").is_none());
    assert_eq!(support::log_field(r#"INFO x: y path="/a b""#, "path"), Some("/a"));
}

#[test]
fn the_config_builder_puts_each_line_in_its_section() {
    let toml = support::Config::app(&["127.0.0.1:1"])
        .server("127.0.0.1:2", "backup = true")
        .global("workers = 1")
        .listener(r#"max_body_size = "1k""#)
        .route(r#"read_timeout = "1s""#)
        .upstream("max_fails = 0")
        .sections(
            r#"
            [upstreams.app.health_check]
            path = "/health"
            "#,
        )
        .toml();
    let expected = r#"[global]
workers = 1
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
max_body_size = "1k"
[[routes]]
upstream = "app"
read_timeout = "1s"
[upstreams.app]
max_fails = 0
servers = [ { address = "127.0.0.1:1" }, { address = "127.0.0.1:2", backup = true } ]
[upstreams.app.health_check]
path = "/health"
"#;
    assert_eq!(toml, expected);
    // No [global] table unless something goes into it.
    assert!(!support::Config::app(&["127.0.0.1:1"]).toml().contains("[global]"));
}

/// The CLI form of the backend, driven like the balancer is in other tests:
/// spawned, found by its log line, signalled, and gone with exit code 0.
#[tokio::test]
async fn backend_subcommand_serves_until_sigterm() {
    let mut cli = Fulcrum::spawn_args(&["backend", "--listen", "127.0.0.1:0", "--name", "cli"]);
    cli.wait_for_log("backend listening", Duration::from_secs(20)).await;
    let logs = cli.logs();
    let line = logs.lines().find(|l| l.contains("backend listening")).unwrap();
    assert_eq!(support::log_field(line, "name"), Some("cli"));
    let addr = support::log_field(line, "addr").unwrap().parse().unwrap();

    let resp = get(addr, "/").await;
    assert_eq!(resp.text(), "cli\n");
    assert!(cli.rss_kb() > 0);
    assert!(cli.peak_rss_kb() >= cli.rss_kb() / 2);

    cli.signal("TERM");
    let status = cli.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}\n{}", cli.logs());
}

fn post(path: &str) -> http::Request<Bytes> {
    request("POST", path).body(Bytes::new()).unwrap()
}

fn get_req(path: &str) -> http::Request<Bytes> {
    request("GET", path).body(Bytes::new()).unwrap()
}
