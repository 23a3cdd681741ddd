//! A tiny HTTP/1.1 test client on hyper: keep-alive connections, whole
//! responses in memory, and raw bytes for requests hyper refuses to write.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The longest a request may take, body included, before the test fails
/// instead of hanging.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(60);
/// How long `raw_exchange` waits for the server to close.
const RAW_DEADLINE: Duration = Duration::from_secs(10);

/// A response read to its end.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name`, if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// One keep-alive HTTP/1.1 connection. Dropping it closes the socket.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Conn {
    /// Connects to `addr`; panics if it cannot.
    pub async fn open(addr: SocketAddr) -> Conn {
        Conn::try_open(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e:#}"))
    }

    pub async fn try_open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await.context("connect")?;
        stream.set_nodelay(true).context("set TCP_NODELAY")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("handshake")?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, driver })
    }

    /// Sends `req` and reads the whole response; panics on any failure.
    pub async fn send(&mut self, req: Request<Bytes>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        self.try_send(req)
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {e:#}"))
    }

    /// Sends `req` and reads the whole response, reporting failures (a reset
    /// connection, a server that closed without answering) as errors.
    pub async fn try_send(&mut self, req: Request<Bytes>) -> anyhow::Result<Resp> {
        let exchange = async {
            self.sender.ready().await.context("connection not usable")?;
            let resp = self
                .sender
                .send_request(req.map(Full::new))
                .await
                .context("no response")?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.context("response body")?.to_bytes();
            Ok(Resp {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(RESPONSE_DEADLINE, exchange)
            .await
            .with_context(|| format!("no complete response within {RESPONSE_DEADLINE:?}"))?
    }

    /// Whether the server has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The driver owns the socket; stopping it closes the connection now
        // rather than whenever hyper notices the sender is gone.
        self.driver.abort();
    }
}

/// A request builder for `method path` with `Host: localhost` already set.
pub fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path).header(HOST, "localhost")
}

/// `GET path` on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    get_with(addr, path, &[]).await
}

/// `GET path` on a fresh connection with extra headers; a `host` among them
/// replaces the default `localhost`, other names are added.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = request("GET", path)
        .body(Bytes::new())
        .unwrap_or_else(|e| panic!("bad request target {path:?}: {e}"));
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|e| panic!("bad header name {name:?}: {e}"));
        let value = HeaderValue::from_str(value).unwrap_or_else(|e| panic!("bad header value {value:?}: {e}"));
        if name == HOST {
            req.headers_mut().insert(name, value);
        } else {
            req.headers_mut().append(name, value);
        }
    }
    Conn::open(addr).await.send(req).await
}

/// Writes `bytes` as they are and returns everything the server sends back
/// until it closes the connection (or 10 s pass), as lossy text. Meant for
/// malformed requests; for a valid one send `Connection: close`.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    // The server may answer and close before reading everything; what it
    // said is still worth reading, so a failed write is not an error here.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(RAW_DEADLINE, async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}
