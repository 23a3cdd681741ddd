//! Bodies stream through the balancer both ways: a 1 GiB download and a
//! 1 GiB upload pass with the balancer's memory flat.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use support::{Config, Fulcrum, backends};

const GIB: u64 = 1024 * 1024 * 1024;
/// Peak RSS the balancer may reach while moving 1 GiB: buffers, not the body.
const MAX_PEAK_RSS_KB: u64 = 64 * 1024;

fn config(upstream: std::net::SocketAddr) -> String {
    Config::app(&[upstream])
        .global("workers = 1")
        .listener(r#"max_body_size = "2G""#)
        .route(r#"read_timeout = "30s""#)
        .toml()
}

async fn client<B>(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn one_gib_download_streams_with_flat_memory() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(b[0].addr));
    let mut sender = client::<http_body_util::Empty<Bytes>>(lb.addr("web")).await;
    let req = http::Request::get(format!("/bytes/{GIB}"))
        .header("host", "x")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            received += data.len() as u64;
        }
    }
    assert_eq!(received, GIB);
    let peak = lb.peak_rss_kb();
    assert!(
        peak < MAX_PEAK_RSS_KB,
        "balancer peak RSS {peak} kB while streaming 1 GiB"
    );
}

#[tokio::test]
async fn one_gib_upload_streams_with_flat_memory() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&config(b[0].addr));
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = GIB / chunk.len() as u64;
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
    );
    let mut sender = client(lb.addr("web")).await;
    let req = http::Request::post("/echo")
        .header("host", "x")
        .header("content-length", GIB.to_string())
        .body(StreamBody::new(stream))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["body_bytes"], GIB);
    let peak = lb.peak_rss_kb();
    assert!(
        peak < MAX_PEAK_RSS_KB,
        "balancer peak RSS {peak} kB while streaming 1 GiB"
    );
}
