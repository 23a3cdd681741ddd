//! `compress = ["gzip", "br"]` on a route: responses the client accepts are
//! compressed as they stream and decompress to exactly what the backend
//! sent; everything else passes untouched.

mod support;

use std::convert::Infallible;
use std::io::{Read as _, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

use support::{Conn, Fulcrum, backends, get_with, request};

/// Routes: `/` compresses with both codings, `/gz/` with gzip only,
/// `/plain/` not at all; `/custom/` leads to the backend of this file.
fn config(builtin: SocketAddr, custom: SocketAddr) -> String {
    format!(
        r#"
[global]
workers = 1
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
path_prefix = "/gz/"
rewrite_prefix = "/"
upstream = "builtin"
compress = ["gzip"]
[[routes]]
path_prefix = "/plain/"
rewrite_prefix = "/"
upstream = "builtin"
[[routes]]
path_prefix = "/custom/"
rewrite_prefix = "/"
upstream = "custom"
read_timeout = "30s"
compress = ["gzip", "br"]
[[routes]]
upstream = "builtin"
read_timeout = "30s"
compress = ["br", "gzip"]
[upstreams.builtin]
servers = [ {{ address = "{builtin}" }} ]
[upstreams.custom]
servers = [ {{ address = "{custom}" }} ]
"#
    )
}

/// What `/bytes/{n}` of the built-in backend sends: lines of 63 letters and
/// a newline.
fn backend_bytes(n: usize) -> Vec<u8> {
    (0..n).map(expected_byte).collect()
}

fn expected_byte(i: usize) -> u8 {
    if i % 64 == 63 {
        b'\n'
    } else {
        b'a' + (i % 64 % 26) as u8
    }
}

fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(body).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(body, 4096).read_to_end(&mut out),
        other => panic!("unexpected Content-Encoding {other}"),
    }
    .unwrap_or_else(|e| panic!("{encoding} body does not decode: {e}"));
    out
}

/// The balancer in front of one built-in and one custom backend.
struct Setup {
    lb: Fulcrum,
    slow_gate: Arc<Semaphore>,
    _builtin: Vec<fulcrum::backend::BackendHandle>,
}

impl Setup {
    async fn start() -> Setup {
        let builtin = backends(&["builtin"]).await;
        let slow_gate = Arc::new(Semaphore::new(0));
        let custom = custom_backend(slow_gate.clone());
        let lb = Fulcrum::start(&config(builtin[0].addr, custom));
        Setup {
            lb,
            slow_gate,
            _builtin: builtin,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.lb.addr("web")
    }
}

#[tokio::test]
async fn gzip_and_br_decode_to_exactly_what_the_backend_sent() {
    let s = Setup::start().await;
    for (accept, expected) in [("gzip", "gzip"), ("br", "br"), ("gzip, deflate, br", "br")] {
        let r = get_with(s.addr(), "/bytes/300000", &[("accept-encoding", accept)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-encoding"),
            Some(expected),
            "Accept-Encoding: {accept}"
        );
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert!(r.header("content-length").is_none());
        assert!(r.body.len() < 300000 / 10, "{expected}: {} bytes", r.body.len());
        assert_eq!(decode(expected, &r.body), backend_bytes(300000));
    }
    // JSON from /echo, made large by a header it echoes back.
    let pad = "p".repeat(3000);
    let r = get_with(s.addr(), "/echo", &[("accept-encoding", "br"), ("x-pad", &pad)]).await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("content-encoding"), Some("br"));
    let echo: serde_json::Value = serde_json::from_slice(&decode("br", &r.body)).unwrap();
    assert_eq!(echo["headers"]["x-pad"], pad.as_str());
    // The backend is asked as the client asked: Accept-Encoding passes on.
    assert_eq!(echo["headers"]["accept-encoding"], "br");
}

#[tokio::test]
async fn the_route_list_and_the_clients_weights_decide_the_coding() {
    let s = Setup::start().await;
    let coding = |path: &'static str, accept: &'static str| {
        let addr = s.addr();
        async move {
            let r = get_with(addr, path, &[("accept-encoding", accept)]).await;
            assert_eq!(r.status, 200);
            if let Some(coding) = r.header("content-encoding") {
                assert_eq!(decode(coding, &r.body), backend_bytes(5000), "{path} {accept}");
            } else {
                assert_eq!(r.body, backend_bytes(5000), "{path} {accept}");
                assert_eq!(r.header("content-length"), Some("5000"));
            }
            r.header("content-encoding").map(str::to_owned)
        }
    };
    assert_eq!(coding("/gz/bytes/5000", "gzip, br").await.as_deref(), Some("gzip"));
    assert_eq!(coding("/gz/bytes/5000", "br").await, None);
    assert_eq!(coding("/plain/bytes/5000", "gzip, br").await, None);
    assert_eq!(coding("/bytes/5000", "identity").await, None);
    assert_eq!(coding("/bytes/5000", "br;q=0, gzip").await.as_deref(), Some("gzip"));
    assert_eq!(coding("/bytes/5000", "br;q=0, gzip;q=0").await, None);
    assert_eq!(coding("/bytes/5000", "*;q=0").await, None);
    assert_eq!(
        coding("/bytes/5000", "gzip;q=1, br;q=0.5").await.as_deref(),
        Some("gzip")
    );
    assert_eq!(coding("/bytes/5000", "*").await.as_deref(), Some("br"));
    // No Accept-Encoding at all: sent as it is, but caches learn it varies.
    let r = get_with(s.addr(), "/bytes/5000", &[]).await;
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.body, backend_bytes(5000));
    // A route without compress leaves even Vary alone.
    let r = get_with(s.addr(), "/plain/bytes/5000", &[("accept-encoding", "gzip")]).await;
    assert!(r.header("vary").is_none());
}

#[tokio::test]
async fn small_encoded_binary_and_bodiless_responses_pass_untouched() {
    let s = Setup::start().await;
    let gzip = [("accept-encoding", "gzip, br")];
    let r = get_with(s.addr(), "/bytes/1000", &gzip).await;
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(r.body, backend_bytes(1000));

    let r = get_with(s.addr(), "/custom/png", &gzip).await;
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, png());

    let r = get_with(s.addr(), "/custom/encoded", &gzip).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), backend_bytes(20000), "compressed only once");

    for status in [204, 304] {
        let r = get_with(s.addr(), &format!("/status/{status}"), &gzip).await;
        assert_eq!(r.status.as_u16(), status);
        assert!(r.header("content-encoding").is_none());
        assert!(r.body.is_empty());
    }

    let mut conn = Conn::open(s.addr()).await;
    let head = request("HEAD", "/bytes/5000")
        .header("accept-encoding", "gzip")
        .body(Bytes::new())
        .unwrap();
    let r = conn.send(head).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.header("content-length"), Some("5000"));
}

#[tokio::test]
async fn unknown_length_is_compressed_and_etag_and_vary_are_adjusted() {
    let s = Setup::start().await;
    let r = get_with(s.addr(), "/custom/chunked", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    let vary: Vec<_> = r.headers.get_all("vary").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(vary, ["Origin", "Accept-Encoding"]);
    assert_eq!(decode("gzip", &r.body), backend_bytes(CHUNKED_BYTES));
}

#[tokio::test]
async fn a_slow_stream_reaches_the_client_piece_by_piece() {
    let s = Setup::start().await;
    for coding in ["gzip", "br"] {
        let stream = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = request("GET", "/custom/slow")
            .header("accept-encoding", coding)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.headers()["content-encoding"], coding);
        let mut body = resp.into_body();
        let mut decoder = Decoder::new(coding);
        // The backend sends piece i+1 only after the client has decoded piece
        // i: without a flush per pause this would wait forever.
        for piece in 0..SLOW_PIECES {
            // Everything up to this piece; a later one may have come too (the
            // gate is shared: the previous request left a permit behind).
            let expected: String = (0..=piece).map(slow_piece).collect();
            tokio::time::timeout(Duration::from_secs(20), async {
                while !decoder.decoded().starts_with(expected.as_bytes()) {
                    let frame = body.frame().await.expect("body ended early").unwrap();
                    decoder.feed(frame.data_ref().unwrap());
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{coding}: piece {piece} not decodable after 20 s"));
            s.slow_gate.add_permits(1);
        }
        while let Some(frame) = body.frame().await {
            decoder.feed(frame.unwrap().data_ref().map_or(&[][..], |d| &d[..]));
        }
        let all: String = (0..SLOW_PIECES).map(slow_piece).collect();
        assert_eq!(decoder.finish(), all.as_bytes());
    }
}

#[tokio::test]
async fn a_100_mb_response_streams_compressed_with_bounded_memory() {
    const TOTAL: usize = 100 * 1024 * 1024;
    // As in streaming.rs: room for buffers, not for the body (100 MiB).
    const MAX_PEAK_RSS_KB: u64 = 64 * 1024;
    let s = Setup::start().await;
    for coding in ["gzip", "br"] {
        let stream = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = request("GET", &format!("/bytes/{TOTAL}"))
            .header("accept-encoding", coding)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.headers()["content-encoding"], coding);
        let mut body = resp.into_body();
        let mut sink = Checker::default();
        let mut compressed = 0usize;
        {
            let mut decoder: Box<dyn Write> = match coding {
                "gzip" => Box::new(flate2::write::GzDecoder::new(&mut sink)),
                _ => Box::new(brotli::DecompressorWriter::new(&mut sink, 64 * 1024)),
            };
            while let Some(frame) = body.frame().await {
                let frame = frame.unwrap();
                let data = frame.data_ref().unwrap();
                compressed += data.len();
                decoder.write_all(data).unwrap();
            }
            decoder.flush().unwrap();
        }
        assert_eq!(sink.seen, TOTAL, "{coding}: decoded length");
        let peak = s.lb.peak_rss_kb();
        eprintln!("{coding}: 100 MiB sent as {compressed} bytes; balancer peak RSS {peak} kB");
        assert!(peak < MAX_PEAK_RSS_KB, "{coding}: balancer peak RSS {peak} kB");
    }
}

#[tokio::test]
async fn curl_compressed_gets_the_original_bytes() {
    let s = Setup::start().await;
    for (path, coding) in [("/bytes/200000", "br"), ("/gz/bytes/200000", "gzip")] {
        let url = format!("http://{}{path}", s.addr());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args([
                    "--silent",
                    "--show-error",
                    "--compressed",
                    "--dump-header",
                    "-",
                    "--max-time",
                    "60",
                ])
                .arg(&url)
                .output()
                .expect("run curl")
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let split = out
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("headers end")
            + 4;
        let head = String::from_utf8_lossy(&out.stdout[..split]).to_ascii_lowercase();
        assert!(head.contains(&format!("content-encoding: {coding}\r\n")), "{head}");
        assert_eq!(&out.stdout[split..], &backend_bytes(200000)[..], "{path}");
    }
}

/// Checks decoded bytes against the built-in backend's pattern as they
/// come, holding none of them.
#[derive(Default)]
struct Checker {
    seen: usize,
}

impl Write for Checker {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b, expected_byte(self.seen + i), "byte {}", self.seen + i);
        }
        self.seen += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes a body as its frames arrive.
enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    fn new(coding: &str) -> Decoder {
        match coding {
            "gzip" => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            _ => Decoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        match self {
            Decoder::Gzip(d) => d.write_all(data).and_then(|()| d.flush()),
            Decoder::Br(d) => d.write_all(data).and_then(|()| d.flush()),
        }
        .expect("a valid stream");
    }

    fn decoded(&self) -> &[u8] {
        match self {
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::Br(d) => d.get_ref(),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Decoder::Gzip(d) => d.finish().expect("a complete gzip stream"),
            Decoder::Br(d) => d.into_inner().expect("a complete brotli stream"),
        }
    }
}

const CHUNKED_BYTES: usize = 50_000;
const SLOW_PIECES: usize = 4;

fn slow_piece(i: usize) -> String {
    format!("{{\"event\":{i},\"text\":\"piece {i} of a slow stream\"}}\n")
}

fn png() -> Bytes {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.resize(8000, 0);
    Bytes::from(png)
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

/// A backend for what the built-in one does not send: `/png`, `/encoded`
/// (already gzip), `/chunked` (no length, an ETag and a Vary) and `/slow`
/// (one piece per permit of `gate`). Runs on a thread of its own.
fn custom_backend(gate: Arc<Semaphore>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let gate = gate.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let gate = gate.clone();
                        async move { Ok::<_, Infallible>(custom_reply(req.uri().path(), gate)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
}

fn custom_reply(path: &str, gate: Arc<Semaphore>) -> Reply {
    let full = |content_type: &str, body: Bytes| {
        Response::builder()
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(Full::new(body).boxed())
            .unwrap()
    };
    match path {
        "/png" => full("image/png", png()),
        "/encoded" => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&backend_bytes(20000)).unwrap();
            let mut reply = full("text/plain", Bytes::from(encoder.finish().unwrap()));
            reply.headers_mut().insert("content-encoding", "gzip".parse().unwrap());
            reply
        }
        "/chunked" => {
            let data = Bytes::from(backend_bytes(CHUNKED_BYTES));
            let pieces = (0..CHUNKED_BYTES)
                .step_by(1000)
                .map(move |at| Ok(Frame::data(data.slice(at..(at + 1000).min(CHUNKED_BYTES)))));
            Response::builder()
                .header("content-type", "text/plain")
                .header("etag", "\"v1\"")
                .header("vary", "Origin")
                .body(StreamBody::new(futures_util::stream::iter(pieces)).boxed())
                .unwrap()
        }
        "/slow" => {
            let pieces = futures_util::stream::unfold(0, move |i| {
                let gate = gate.clone();
                async move {
                    if i == SLOW_PIECES {
                        return None;
                    }
                    if i > 0 {
                        gate.acquire().await.unwrap().forget();
                    }
                    Some((Ok(Frame::data(Bytes::from(slow_piece(i)))), i + 1))
                }
            });
            Response::builder()
                .header("content-type", "application/x-ndjson+json")
                .body(StreamBody::new(pieces).boxed())
                .unwrap()
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
    }
}
