//! HTTP/2 from clients, over TLS (ALPN h2) and in the clear with prior
//! knowledge (h2c): streams balanced one by one, flow control per stream,
//! GOAWAY on shutdown, and the real curl and h2load as clients.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt as _;
use tokio::net::TcpStream;

use fulcrum::backend::BackendHandle;
use support::tls::{H2, Issued, TestCa, assert_status, connect, tool};
use support::{Config, Fulcrum, backends, wait_until};

/// A listener `web` (TLS when `cert` is given) balancing round robin over
/// `servers`.
fn config(servers: &[SocketAddr], cert: Option<&Issued>) -> String {
    let tls = cert.map_or(String::new(), |c| {
        format!(
            "[listeners.tls]\ncertificates = [ {{ cert = {:?}, key = {:?} }} ]\n",
            c.cert, c.key
        )
    });
    Config::app(servers)
        .global("workers = 2")
        .global(r#"shutdown_grace = "20s""#)
        .listener(&tls)
        .toml()
}

fn requests(b: &[BackendHandle]) -> u64 {
    b.iter().map(|x| x.stats.requests.load(Ordering::Relaxed)).sum()
}

/// h2c: HTTP/2 with prior knowledge on a plain connection.
async fn h2c(addr: SocketAddr) -> H2 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    H2::handshake(tcp).await.unwrap()
}

#[tokio::test]
async fn hundred_concurrent_streams_on_one_tls_connection_spread_over_three_backends() {
    let b = backends(&["a", "b", "c"]).await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let cert = ca.issue(dir.path(), "web", &["web.test"]);
    let addrs: Vec<SocketAddr> = b.iter().map(|x| x.addr).collect();
    let lb = Fulcrum::start(&config(&addrs, Some(&cert)));
    let stream = connect(lb.addr("web"), Some("web.test"), ca.default_client(&["h2"]))
        .await
        .unwrap();
    let h2 = Arc::new(H2::handshake(stream).await.unwrap());

    // Each request waits 3s at its backend: the 100 can only all arrive
    // within the deadline if they are in flight together.
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let h2 = h2.clone();
            tokio::spawn(async move { h2.get("/delay/3000").await })
        })
        .collect();
    wait_until(
        "100 streams to reach the backends at once",
        Duration::from_secs(25),
        || requests(&b) >= 100,
    )
    .await;
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let resp = t.await.unwrap().unwrap();
        assert_status(&resp, StatusCode::OK);
        *per_backend.entry(resp.text().trim().to_string()).or_default() += 1;
    }
    // One connection, one worker, round robin: a third each.
    for name in ["a", "b", "c"] {
        let n = per_backend.get(name).copied().unwrap_or(0);
        assert!((32..=35).contains(&n), "{name} got {n} of 100: {per_backend:?}");
    }
    assert_eq!(
        h2.get("/").await.unwrap().status,
        StatusCode::OK,
        "the connection is still usable"
    );
}

#[tokio::test]
async fn each_stream_gets_its_own_request_id_as_the_upstream_saw_it() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr], None));
    let h2 = h2c(lb.addr("web")).await;

    // Ids are sent never-indexed (HPACK): the client must still decode each
    // one intact, on one connection whose header table the others share.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let resp = h2.get("/echo").await.unwrap();
        assert_status(&resp, StatusCode::OK);
        let id = resp
            .header("x-request-id")
            .expect("client gets the request id")
            .to_owned();
        let echo: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(
            echo["headers"]["x-request-id"],
            id.as_str(),
            "upstream and client see the same id"
        );
        assert_eq!(id.len(), 32);
        assert!(seen.insert(id), "ids are not reused");
    }
}

#[tokio::test]
async fn the_h2c_preface_in_pieces_is_still_http2() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr], None));
    let mut tcp = TcpStream::connect(lb.addr("web")).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    for piece in [&b"PRI * HT"[..], b"TP/2.0\r\n\r\nSM", b"\r\n\r\n"] {
        tcp.write_all(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut frame))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(frame[3], 4, "the first frame back is the server's SETTINGS: {frame:?}");
}

#[tokio::test]
async fn a_slow_reader_on_one_stream_does_not_block_another() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr], None));
    let h2 = h2c(lb.addr("web")).await;

    // 16 MiB, far more than every window and buffer on the way: unread, it
    // stalls at its stream's flow-control window.
    const BIG: u64 = 16 << 20;
    let big = h2.head(&format!("/bytes/{BIG}")).await.unwrap();
    assert_eq!(big.status(), StatusCode::OK);
    for i in 0..5 {
        let small = tokio::time::timeout(Duration::from_secs(10), h2.get("/"))
            .await
            .unwrap_or_else(|_| panic!("small request {i} was stuck behind the unread download"))
            .unwrap();
        assert_eq!(small.text(), "app\n");
    }
    // The stalled stream resumes once read and loses nothing.
    let body = tokio::time::timeout(Duration::from_secs(60), big.into_body().collect())
        .await
        .expect("the download finishes once read")
        .unwrap()
        .to_bytes();
    assert_eq!(body.len() as u64, BIG);
}

#[tokio::test]
async fn graceful_shutdown_sends_goaway_and_lets_open_streams_finish() {
    let b = backends(&["app"]).await;
    let mut lb = Fulcrum::start(&config(&[b[0].addr], None));
    let h2 = h2c(lb.addr("web")).await;
    assert_eq!(h2.get("/").await.unwrap().status, StatusCode::OK);
    let sender = h2.sender.clone();
    let slow = tokio::spawn(async move {
        let mut sender = sender;
        let req = http::Request::get("http://localhost/delay/1500")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    });
    wait_until("the slow request to reach the backend", Duration::from_secs(10), || {
        requests(&b) >= 2
    })
    .await;
    lb.signal("TERM");
    // GOAWAY: the client learns that no new stream will be taken, and the
    // connection closes once the open one is done.
    let (status, body) = slow.await.unwrap().expect("the open stream finishes");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"app\n");
    wait_until("the connection to close after GOAWAY", Duration::from_secs(10), || {
        h2.sender.is_closed()
    })
    .await;
    assert!(h2.get("/").await.is_err(), "a new stream was accepted after GOAWAY");
    assert!(lb.wait_exit(Duration::from_secs(20)).success());
}

#[tokio::test]
async fn curl_and_h2load_speak_h2c_with_prior_knowledge() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr], None));
    let url = format!("http://{}/", lb.addr("web"));
    if let Some(curl) = tool("curl") {
        let out = tokio::process::Command::new(curl)
            .args([
                "--silent",
                "--show-error",
                "--max-time",
                "20",
                "--http2-prior-knowledge",
            ])
            .args(["--write-out", "\n%{http_code} %{http_version}"])
            .arg(&url)
            .output()
            .await
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout, "app\n\n200 2");
        // And HTTP/1.1 on the same listener.
        assert_eq!(support::get(lb.addr("web"), "/").await.text(), "app\n");
    }
    if let Some(h2load) = tool("h2load") {
        let before = requests(&b);
        let out = tokio::process::Command::new(h2load)
            .args(["-n", "400", "-c", "4", "-m", "20", "-t", "1"])
            .arg(&url)
            .output()
            .await
            .expect("run h2load");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "h2load: {stdout}");
        assert!(
            stdout.contains("400 succeeded, 0 failed, 0 errored") && stdout.contains("status codes: 400 2xx"),
            "h2load: {stdout}"
        );
        assert!(stdout.contains("Application protocol: h2c"), "h2load: {stdout}");
        assert_eq!(requests(&b) - before, 400);
    }
}

#[tokio::test]
async fn h2_requests_are_routed_by_authority_and_reach_http11_upstreams_whole() {
    let b = backends(&["api", "www"]).await;
    let lb = Fulcrum::start(&format!(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
host = "api.test"
upstream = "api"
[[routes]]
upstream = "www"
[upstreams.api]
servers = [ {{ address = "{}" }} ]
[upstreams.www]
servers = [ {{ address = "{}" }} ]
"#,
        b[0].addr, b[1].addr
    ));
    let h2 = h2c(lb.addr("web")).await;
    let req = http::Request::post("http://api.test:8080/echo?x=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"hello")))
        .unwrap();
    let mut sender = h2.sender.clone();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["backend"], "api", "{echo}");
    assert_eq!(echo["path"], "/echo?x=1", "{echo}");
    assert_eq!(echo["method"], "POST", "{echo}");
    assert_eq!(echo["body_bytes"], 5, "{echo}");
    assert_eq!(echo["headers"]["host"], "api.test:8080", "{echo}");
    assert_eq!(echo["headers"]["cookie"], "a=1; b=2", "one Cookie line: {echo}");
    assert_eq!(
        h2.get("/").await.unwrap().text(),
        "www\n",
        "no authority match: the catch-all"
    );
}

/// The admin API's count of requests in flight on the first server of `app`.
async fn in_flight(admin: SocketAddr) -> u64 {
    let state = support::get(admin, "/api/upstreams").await.json();
    state["upstreams"][0]["servers"][0]["active_requests"].as_u64().unwrap()
}

#[tokio::test]
async fn a_stream_the_client_resets_stops_its_upstream_request() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(
        &Config::app(&[b[0].addr])
            .global(r#"admin_listen = "127.0.0.1:0""#)
            .toml(),
    );
    let admin = lb.addr("admin");
    let h2 = Arc::new(h2c(lb.addr("web")).await);
    let slow = {
        let h2 = h2.clone();
        tokio::spawn(async move { h2.head("/delay/60000").await })
    };
    support::wait_until_async("the slow request to be in flight", Duration::from_secs(10), || async {
        in_flight(admin).await == 1
    })
    .await;
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    slow.abort();
    support::wait_until_async(
        "the reset to end the upstream request long before its minute",
        Duration::from_secs(20),
        || async { in_flight(admin).await == 0 },
    )
    .await;
    assert_eq!(h2.get("/").await.unwrap().text(), "app\n", "the connection carries on");
}

#[tokio::test]
async fn an_upload_without_a_length_streams_through_many_windows() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr], None));
    let tcp = TcpStream::connect(lb.addr("web")).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://localhost/echo").body(()).unwrap();
    let (response, mut upload) = client.send_request(req, false).unwrap();
    // 4 MiB in 64 KiB frames: sixteen times the stream's window, so it only
    // gets through if the balancer gives the window back as it forwards.
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 64;
    for i in 0..CHUNKS {
        upload
            .send_data(bytes::Bytes::from(vec![b'x'; CHUNK]), i == CHUNKS - 1)
            .unwrap();
    }
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("the upload is answered")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut echoed = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        echoed.extend_from_slice(&chunk);
    }
    let echo: serde_json::Value = serde_json::from_slice(&echoed).unwrap();
    assert_eq!(echo["body_bytes"], CHUNK * CHUNKS, "{echo}");
    assert_eq!(
        echo["headers"]["transfer-encoding"], "chunked",
        "no length given: {echo}"
    );
    driver.abort();
}

#[tokio::test]
async fn answers_made_by_the_balancer_carry_date_and_length_and_no_connection_fields_over_h2() {
    let lb = Fulcrum::start(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
respond = { status = 200, body = "healthy\n" }
# HTTP/2 has no such fields: the stream must still be answered, without them.
response_headers = { set = { "Connection" = "close", "Keep-Alive" = "timeout=5", "Cache-Control" = "no-store" } }
"#,
    );
    let h2 = h2c(lb.addr("web")).await;
    let ok = h2.get("/lb-health").await.unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.text(), "healthy\n");
    assert_eq!(ok.header("connection"), None);
    assert_eq!(ok.header("keep-alive"), None);
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    assert_eq!(ok.header("content-length"), Some("8"));
    let date = ok.header("date").expect("a Date field");
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
}

#[tokio::test]
async fn an_upstream_that_dies_mid_body_resets_the_stream_not_the_connection() {
    // Promises 1000 bytes, sends 10, hangs up.
    let addr = support::tcp_server(|mut stream: TcpStream| async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await;
    })
    .await;
    let lb = Fulcrum::start(&config(&[addr], None));
    let h2 = h2c(lb.addr("web")).await;
    for _ in 0..2 {
        // The reset may come before the head has left, or after some of the body.
        let whole = async {
            let response = h2.head("/").await?;
            anyhow::Ok(response.into_body().collect().await?.to_bytes())
        };
        let outcome = tokio::time::timeout(Duration::from_secs(20), whole)
            .await
            .expect("the cut is noticed");
        assert!(outcome.is_err(), "a cut-short body must not look whole: {outcome:?}");
    }
    assert!(!h2.sender.is_closed(), "one stream's failure is not the connection's");
}

#[tokio::test]
async fn a_clients_request_id_and_forwarded_for_are_kept_over_h2() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(&[b[0].addr], None));
    let h2 = h2c(lb.addr("web")).await;
    let req = http::Request::get("http://localhost/echo")
        .header("x-request-id", "trace-42")
        .header("x-forwarded-for", "203.0.113.7")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = h2.sender.clone().send_request(req).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-42");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["x-request-id"], "trace-42", "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "{echo}");
    // And without them: a fresh id, and the client's address alone.
    let plain: serde_json::Value = serde_json::from_slice(&h2.get("/echo").await.unwrap().body).unwrap();
    assert_eq!(plain["headers"]["x-forwarded-for"], "127.0.0.1", "{plain}");
    assert_eq!(
        plain["headers"]["x-request-id"].as_str().map(str::len),
        Some(32),
        "{plain}"
    );
}
