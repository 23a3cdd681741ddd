//! The access log: one line per request, JSON or combined, to a file or
//! stdout, written once the response body is done — proxied requests,
//! retries, streamed bodies, the balancer's own answers — and a writer that
//! cannot keep up drops lines instead of holding requests back.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use support::{Config, Conn, Fulcrum, backends, get, get_with, request, wait_until};

/// How long a line may take to reach the log.
const LINE_DEADLINE: Duration = Duration::from_secs(20);
/// How long the slow backend holds the second half of its body back.
const HOLD: Duration = Duration::from_millis(300);

/// One worker, the admin listener, `web` taking bodies up to 1k, with
/// `global` lines, `routes` and `upstreams`.
fn config(global: &str, routes: &str, upstreams: &str) -> String {
    format!(
        r#"
[global]
workers = 1
admin_listen = "127.0.0.1:0"
{global}
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
max_body_size = "1k"
{routes}
{upstreams}
"#
    )
}

/// The same with a route `app` to upstream `app` with `servers`.
fn app_config(global: &str, servers: &[SocketAddr]) -> Config {
    Config::app(servers)
        .global("workers = 1")
        .global(r#"admin_listen = "127.0.0.1:0""#)
        .global(global)
        .listener(r#"max_body_size = "1k""#)
        .route(r#"name = "app""#)
}

/// The complete lines of `path` (a half-written last line is left out).
fn complete_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    lines.pop();
    lines
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

/// Waits until `path` holds at least `n` lines and returns them all.
async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    wait_until(&format!("{n} lines in {}", path.display()), LINE_DEADLINE, || {
        lines = complete_lines(path);
        lines.len() >= n
    })
    .await;
    lines
}

/// The one JSON line whose path is `path`.
fn line_for(lines: &[String], path: &str) -> Value {
    let found: Vec<Value> = lines.iter().map(|l| parse(l)).filter(|v| v["path"] == path).collect();
    assert_eq!(found.len(), 1, "one line for {path} in:\n{}", lines.join("\n"));
    found.into_iter().next().unwrap()
}

fn dead_addr() -> SocketAddr {
    // A port that was just free: nothing listens there.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = get(admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test]
async fn a_proxied_request_is_logged_as_json_with_what_the_client_saw() {
    let b = backends(&["alpha"]).await;
    let lb = Fulcrum::start(&app_config("access_log = \"access.log\"", &[b[0].addr]).toml());
    let resp = get_with(
        lb.addr("web"),
        "/bytes/1000",
        &[("user-agent", "access-log-test/1"), ("referer", "http://example.com/")],
    )
    .await;
    assert_eq!((resp.status.as_u16(), resp.body.len()), (200, 1000));

    let lines = wait_for_lines(&lb.dir().join("access.log"), 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = parse(&lines[0]);
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/bytes/1000");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 1000);
    assert_eq!(line["upstream"], b[0].addr.to_string());
    assert_eq!(line["retries"], 0);
    assert_eq!(line["route"], "app");
    assert_eq!(line["request_id"], resp.header("x-request-id").unwrap());
    assert_eq!(line["user_agent"], "access-log-test/1");
    assert_eq!(line["referer"], "http://example.com/");
    let time = line["time"].as_str().unwrap();
    let shape = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$").unwrap();
    assert!(shape.is_match(time), "{time}");
    let duration = line["duration_ms"].as_f64().unwrap();
    let upstream_time = line["upstream_time_ms"].as_f64().unwrap();
    assert!(upstream_time <= duration, "{line}");
}

#[tokio::test]
async fn the_balancers_own_answers_are_logged() {
    let b = backends(&["alpha"]).await;
    let dead = dead_addr();
    let extra = format!(
        r#"
[[routes]]
name = "lb-health"
path_prefix = "/lb-health"
respond = {{ status = 200, body = "healthy\n" }}
[[routes]]
name = "dead"
path_prefix = "/dead/"
upstream = "dead"
[[routes]]
name = "limited"
path_prefix = "/limited"
respond = {{ status = 200, body = "once\n" }}
rate_limit = "once"
[upstreams.dead]
servers = [ {{ address = "{dead}" }} ]
[rate_limits.once]
rate = "1/h"
burst = 1
"#
    );
    // The `app` route only serves /app/, so other paths have no route.
    let text = app_config("access_log = \"access.log\"", &[b[0].addr])
        .route(r#"path_prefix = "/app/""#)
        .sections(&extra)
        .toml();
    let lb = Fulcrum::start(&text);
    let web = lb.addr("web");

    let not_found = get(web, "/nowhere").await;
    assert_eq!(not_found.status, 404);
    let health = get(web, "/lb-health").await;
    assert_eq!(health.status, 200);
    let failed = get(web, "/dead/x").await;
    assert_eq!(failed.status, 502);
    let too_large = Conn::open(web)
        .await
        .send(request("POST", "/app/echo").body(vec![b'a'; 4000].into()).unwrap())
        .await;
    assert_eq!(too_large.status, 413);
    assert_eq!(get(web, "/limited").await.status, 200);
    let limited = get(web, "/limited?again").await;
    assert_eq!(limited.status, 429);

    let lines = wait_for_lines(&lb.dir().join("access.log"), 6).await;
    let line = line_for(&lines, "/nowhere");
    assert_eq!(line["status"], 404);
    assert_eq!(line["bytes"], not_found.body.len());
    assert!(line["route"].is_null() && line["upstream"].is_null(), "{line}");
    assert!(line["upstream_time_ms"].is_null(), "{line}");
    assert_eq!(line["request_id"], not_found.header("x-request-id").unwrap());

    let line = line_for(&lines, "/lb-health");
    assert_eq!((line["status"].as_u64(), line["bytes"].as_u64()), (Some(200), Some(8)));
    assert_eq!(line["route"], "lb-health");
    assert!(line["upstream"].is_null(), "{line}");

    let line = line_for(&lines, "/dead/x");
    assert_eq!(line["status"], 502);
    assert_eq!(line["route"], "dead");
    assert_eq!(line["upstream"], dead.to_string(), "the server tried is named");
    assert!(line["upstream_time_ms"].is_null(), "no response head came: {line}");
    assert_eq!(line["bytes"], failed.body.len());

    let line = line_for(&lines, "/app/echo");
    assert_eq!(
        (line["status"].as_u64(), line["method"].as_str()),
        (Some(413), Some("POST"))
    );
    assert_eq!(line["route"], "app");

    let line = line_for(&lines, "/limited?again");
    assert_eq!(line["status"], 429);
    assert_eq!(line["route"], "limited");
    assert_eq!(line["bytes"], limited.body.len());
}

#[tokio::test]
async fn a_retried_request_logs_its_retries_and_the_server_that_answered() {
    let b = backends(&["alive"]).await;
    let dead = dead_addr();
    // Round robin over both; each request that meets the dead server first
    // is retried on the live one.
    let lb = Fulcrum::start(
        &app_config("access_log = \"access.log\"", &[dead, b[0].addr])
            .upstream("max_fails = 0")
            .toml(),
    );
    for _ in 0..4 {
        assert_eq!(get(lb.addr("web"), "/").await.status, 200);
    }
    let lines = wait_for_lines(&lb.dir().join("access.log"), 4).await;
    let lines: Vec<Value> = lines.iter().map(|l| parse(l)).collect();
    let retried = lines.iter().filter(|l| l["retries"] == 1).count();
    assert!(retried >= 1, "{lines:?}");
    for line in &lines {
        assert_eq!(line["status"], 200);
        assert_eq!(line["upstream"], b[0].addr.to_string(), "{line}");
        assert!(line["retries"] == 0 || line["retries"] == 1, "{line}");
    }
    let admin = lb.addr("admin");
    let retries = metric(admin, "fulcrum_retries_total{route=\"app\"}").await;
    assert_eq!(retries, retried as f64);
    assert_eq!(metric(admin, "fulcrum_access_log_dropped_total").await, 0.0);
}

/// A backend whose body comes in two 1000-byte chunks, the second `HOLD`
/// after the first: the time a line is written shows in its numbers.
async fn slow_body_backend() -> SocketAddr {
    scripted_backend(|mut stream| async move {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let chunk = format!("3e8\r\n{}\r\n", "a".repeat(1000));
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(chunk.as_bytes()).await?;
        tokio::time::sleep(HOLD).await;
        stream.write_all(chunk.as_bytes()).await?;
        stream.write_all(b"0\r\n\r\n").await
    })
    .await
}

/// A backend that streams 1000-byte chunks every 20 ms until the balancer
/// hangs up.
async fn endless_backend() -> SocketAddr {
    scripted_backend(|mut stream| async move {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunk = format!("3e8\r\n{}\r\n", "e".repeat(1000));
        stream.write_all(head.as_bytes()).await?;
        loop {
            stream.write_all(chunk.as_bytes()).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Accepts connections, reads one request head on each, and hands the
/// stream to `reply`.
async fn scripted_backend<F, Fut>(reply: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = std::sync::Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = reply(stream).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_streamed_body_is_logged_when_it_ends_with_its_final_size_and_time() {
    let slow = slow_body_backend().await;
    let lb = Fulcrum::start(&app_config("access_log = \"access.log\"", &[slow]).toml());
    let resp = get(lb.addr("web"), "/stream").await;
    assert_eq!((resp.status.as_u16(), resp.body.len()), (200, 2000));

    let lines = wait_for_lines(&lb.dir().join("access.log"), 1).await;
    let line = parse(&lines[0]);
    // Logged at the response head, it would say 0 bytes and less than HOLD.
    assert_eq!(line["bytes"], 2000, "{line}");
    let duration = line["duration_ms"].as_f64().unwrap();
    assert!(duration >= HOLD.as_millis() as f64, "{line}");
    assert!(line["upstream_time_ms"].as_f64().unwrap() < duration, "{line}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_still_gets_a_line() {
    let endless = endless_backend().await;
    let lb = Fulcrum::start(&app_config("access_log = \"access.log\"", &[endless]).toml());
    let mut stream = TcpStream::connect(lb.addr("web")).await.unwrap();
    stream
        .write_all(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = 0;
    let mut buf = [0u8; 8192];
    while received < 3000 {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the balancer closed first");
        received += n;
    }
    drop(stream);

    let lines = wait_for_lines(&lb.dir().join("access.log"), 1).await;
    let line = parse(&lines[0]);
    assert_eq!(
        (line["status"].as_u64(), line["path"].as_str()),
        (Some(200), Some("/forever"))
    );
    assert!(line["bytes"].as_u64().unwrap() >= 2000, "{line}");
}

#[tokio::test]
async fn combined_lines_follow_the_documented_layout() {
    let b = backends(&["alpha"]).await;
    let global = "access_log = \"access.log\"\naccess_log_format = \"combined\"";
    let text = app_config(global, &[b[0].addr])
        .route(r#"path_prefix = "/app/""#)
        .route(r#"rewrite_prefix = "/""#)
        .toml();
    let lb = Fulcrum::start(&text);
    let ok = get_with(lb.addr("web"), "/app/bytes/100", &[("user-agent", "combined \"test\"")]).await;
    assert_eq!(ok.status, 200);
    let missing = get(lb.addr("web"), "/nowhere").await;
    assert_eq!(missing.status, 404);
    let lines = wait_for_lines(&lb.dir().join("access.log"), 2).await;
    let line_with = |needle: &str| {
        let found: Vec<&String> = lines.iter().filter(|l| l.contains(needle)).collect();
        assert_eq!(found.len(), 1, "one line with {needle} in {lines:?}");
        found[0].clone()
    };

    let time = r"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\]";
    let proxied = format!(
        r#"^127\.0\.0\.1 - - {time} "GET /app/bytes/100 HTTP/1\.1" 200 100 "-" "combined \\x22test\\x22" \d+\.\d{{3}} {} \d+\.\d{{3}} 0 "{}" "app"$"#,
        regex::escape(&b[0].addr.to_string()),
        ok.header("x-request-id").unwrap()
    );
    let proxied = regex::Regex::new(&proxied).unwrap();
    let line = line_with("/app/bytes/100");
    assert!(proxied.is_match(&line), "{line}\n!~ {proxied}");
    let unrouted = format!(
        r#"^127\.0\.0\.1 - - {time} "GET /nowhere HTTP/1\.1" 404 {} "-" "-" \d+\.\d{{3}} - - 0 "{}" "-"$"#,
        missing.body.len(),
        missing.header("x-request-id").unwrap()
    );
    let unrouted = regex::Regex::new(&unrouted).unwrap();
    let line = line_with("/nowhere");
    assert!(unrouted.is_match(&line), "{line}\n!~ {unrouted}");
}

#[tokio::test]
async fn stdout_mode_writes_json_lines_to_stdout() {
    let b = backends(&["alpha"]).await;
    let lb = Fulcrum::start(&app_config("access_log = \"stdout\"", &[b[0].addr]).toml());
    let resp = get(lb.addr("web"), "/bytes/64").await;
    assert_eq!(resp.status, 200);
    let id = resp.header("x-request-id").unwrap().to_owned();
    let mut found = None;
    wait_until("the access log line on stdout", LINE_DEADLINE, || {
        found = lb
            .logs()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(parse)
            .find(|v| v["request_id"] == id.as_str());
        found.is_some()
    })
    .await;
    let line = found.unwrap();
    assert_eq!((line["status"].as_u64(), line["bytes"].as_u64()), (Some(200), Some(64)));
    assert_eq!(line["upstream"], b[0].addr.to_string());
}

#[tokio::test]
async fn a_log_file_is_appended_to_and_reopened_on_sighup() {
    let b = backends(&["alpha"]).await;
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    std::fs::write(&path, "an earlier line\n").unwrap();
    let global = format!("access_log = \"{}\"", path.display());
    let lb = Fulcrum::start(&app_config(&global, &[b[0].addr]).toml());
    assert_eq!(get(lb.addr("web"), "/bytes/1").await.status, 200);
    let lines = wait_for_lines(&path, 2).await;
    assert_eq!(lines[0], "an earlier line");
    assert_eq!(parse(&lines[1])["path"], "/bytes/1");

    // What logrotate does: move the file away, then signal.
    let rotated = logs.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    lb.signal("HUP");
    lb.wait_for_log("access log reopened", LINE_DEADLINE).await;
    assert_eq!(get(lb.addr("web"), "/bytes/2").await.status, 200);
    let lines = wait_for_lines(&path, 1).await;
    assert_eq!(parse(&lines[0])["path"], "/bytes/2");
    assert_eq!(complete_lines(&rotated).len(), 2, "the old file is left alone");
}

/// Sends `GET path` and returns once the response head has arrived, the
/// body still to read.
async fn head_only(addr: SocketAddr, path: &str) -> hyper::Response<hyper::body::Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap()
}

#[tokio::test]
async fn requests_in_flight_at_shutdown_are_logged_before_exit() {
    let slow = slow_body_backend().await;
    let mut lb = Fulcrum::start(&app_config("access_log = \"access.log\"", &[slow]).toml());
    let resp = head_only(lb.addr("web"), "/in-flight").await;
    assert_eq!(resp.status(), 200);
    lb.signal("TERM");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 2000);
    assert!(lb.wait_exit(LINE_DEADLINE).success());
    let lines = complete_lines(&lb.dir().join("access.log"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(parse(&lines[0])["bytes"], 2000);
}

#[tokio::test]
async fn a_writer_that_cannot_keep_up_drops_lines_and_never_blocks_requests() {
    // A FIFO nobody reads: once its pipe buffer is full, every write blocks.
    let dir = tempfile::tempdir().unwrap();
    let fifo: PathBuf = dir.path().join("access.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Opening one end waits for the other: the balancer opens the write end.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::File::open(fifo).unwrap())
    };
    let global = format!("access_log = \"{}\"", fifo.display());
    let mut lb = Fulcrum::start(&config(
        &global,
        "[[routes]]\nrespond = { status = 200, body = \"ok\" }\n",
        "",
    ));
    let _unread = reader.join().unwrap();
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));

    let mut conn = Conn::open(web).await;
    let mut sent = 0;
    loop {
        for _ in 0..200 {
            let resp = conn.send(request("GET", "/").body(Bytes::new()).unwrap()).await;
            assert_eq!(resp.status, 200);
        }
        sent += 200;
        if metric(admin, "fulcrum_access_log_dropped_total").await > 0.0 {
            break;
        }
        assert!(sent < 50_000, "no line dropped after {sent} requests");
    }
    // The writer is still stuck on the FIFO: shutdown gives up on it
    // rather than hang.
    drop(conn);
    lb.signal("TERM");
    assert!(lb.wait_exit(LINE_DEADLINE).success());
    assert!(lb.logs().contains("access log writer is stuck"), "{}", lb.logs());
}

#[tokio::test]
async fn a_log_path_in_a_missing_directory_is_refused_by_check_and_run() {
    let text = config(
        "access_log = \"no-such-dir/access.log\"",
        "[[routes]]\nrespond = { status = 200, body = \"ok\" }\n",
        "",
    );
    let expected = "global.access_log: access_log no-such-dir/access.log: the directory no-such-dir does not exist";

    let mut run = Fulcrum::spawn(&text);
    assert!(!run.wait_exit(LINE_DEADLINE).success());
    assert!(run.logs().contains(expected), "{}", run.logs());
    assert!(!run.dir().join("no-such-dir").exists());

    let config_path = run.config_path().to_str().unwrap().to_owned();
    let mut check = Fulcrum::spawn_args(&["check", "-c", &config_path]);
    assert_eq!(check.wait_exit(LINE_DEADLINE).code(), Some(1));
    let logs = check.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(expected))
        .unwrap_or_else(|| panic!("{logs}"));
    let position = regex::Regex::new(r"fulcrum\.toml:\d+:\d+: global\.access_log: ").unwrap();
    assert!(position.is_match(line), "{line}");
}

#[tokio::test]
async fn a_split_route_logs_the_server_of_the_upstream_it_chose() {
    let b = backends(&["stable", "canary"]).await;
    let text = config(
        "access_log = \"access.log\"",
        r#"
[[routes]]
name = "canary"
split = [ { upstream = "stable", weight = 0 }, { upstream = "canary", weight = 1 } ]
"#,
        &format!(
            "[upstreams.stable]\nservers = [ {{ address = \"{}\" }} ]\n[upstreams.canary]\nservers = [ {{ address = \"{}\" }} ]\n",
            b[0].addr, b[1].addr
        ),
    );
    let lb = Fulcrum::start(&text);
    let resp = get(lb.addr("web"), "/bytes/10").await;
    assert_eq!((resp.status.as_u16(), resp.body.len()), (200, 10));
    let lines = wait_for_lines(&lb.dir().join("access.log"), 1).await;
    let line = parse(&lines[0]);
    assert_eq!(line["route"], "canary");
    assert_eq!(line["upstream"], b[1].addr.to_string(), "{line}");
}
