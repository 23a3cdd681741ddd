//! The built-in test backend (SPEC §7): a small HTTP/1.1 server whose paths
//! let tests and demos make an upstream slow, failing, large or talkative.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Traffic a backend has seen, for tests to assert on.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Requests received, counted when their head arrives (before any delay).
    pub requests: AtomicU64,
}

/// A running backend. Dropping it shuts the backend down.
pub struct BackendHandle {
    pub addr: SocketAddr,
    pub name: String,
    pub stats: Arc<BackendStats>,
    stop: Arc<Stop>,
}

impl BackendHandle {
    /// Stops accepting and closes every connection, like a crashed server.
    /// When this returns the port refuses new connections and no further
    /// request is answered; open connections are dropped without a response.
    /// Idempotent.
    pub fn shutdown(&self) {
        self.stop.trigger();
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for BackendHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendHandle")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Spawns the backend on the current tokio runtime, serving `listener`.
///
/// Panics if called outside a tokio runtime.
pub fn spawn(listener: TcpListener, name: impl Into<String>) -> BackendHandle {
    let name = name.into();
    // A listener whose address cannot be read is unusable anyway; report the
    // unspecified address rather than panicking.
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let stats = Arc::new(BackendStats::default());
    let (signal, _) = watch::channel(false);
    let stop = Arc::new(Stop {
        listener: Mutex::new(Some(listener)),
        signal,
    });
    let shared = Arc::new(Shared {
        name: name.clone(),
        x_backend: HeaderValue::from_str(&name).unwrap_or_else(|_| HeaderValue::from_static("invalid-name")),
        healthy: AtomicBool::new(true),
        stats: Arc::clone(&stats),
        stopped: stop.signal.subscribe(),
    });
    tokio::spawn(accept_loop(Arc::clone(&stop), shared));
    BackendHandle {
        addr,
        name,
        stats,
        stop,
    }
}

/// CLI entry: binds `addr`, logs "backend listening" and serves until
/// Ctrl-C or SIGTERM.
///
/// # Errors
/// If `addr` cannot be bound or the signals cannot be watched.
pub async fn run(addr: SocketAddr, name: String) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let handle = spawn(listener, name);
    tracing::info!(name = %handle.name, addr = %handle.addr, "backend listening");
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot watch Ctrl-C")?,
        _ = term.recv() => {}
    }
    tracing::info!(name = %handle.name, "backend stopping");
    handle.shutdown();
    Ok(())
}

/// The shutdown switch, shared by the handle and the tasks it stops.
struct Stop {
    // Behind a lock so `shutdown` can close the socket synchronously instead
    // of waiting for the accept task to notice.
    listener: Mutex<Option<TcpListener>>,
    signal: watch::Sender<bool>,
}

impl Stop {
    fn trigger(&self) {
        self.signal.send_replace(true);
        drop(self.listener.lock().unwrap_or_else(PoisonError::into_inner).take());
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<(TcpStream, SocketAddr)>>> {
        let guard = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(listener) => listener.poll_accept(cx).map(Some),
            None => Poll::Ready(None),
        }
    }
}

/// What every connection of one backend shares.
struct Shared {
    name: String,
    x_backend: HeaderValue,
    healthy: AtomicBool,
    stats: Arc<BackendStats>,
    stopped: watch::Receiver<bool>,
}

async fn accept_loop(stop: Arc<Stop>, shared: Arc<Shared>) {
    let mut stopped = shared.stopped.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return,
            accepted = std::future::poll_fn(|cx| stop.poll_accept(cx)) => accepted,
        };
        match accepted {
            None => return,
            Some(Ok((stream, _peer))) => {
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
            }
            Some(Err(error)) => {
                // Out of file descriptors and the like: back off instead of
                // spinning on an error that will repeat at once.
                tracing::warn!(name = %shared.name, %error, "backend accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Small answers on keep-alive connections must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut stopped = shared.stopped.clone();
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move {
            if *shared.stopped.borrow() {
                return Err(Stopped);
            }
            shared.stats.requests.fetch_add(1, Ordering::Relaxed);
            Ok(answer(&shared, req).await)
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        // Dropping the connection mid-request is the point: a stopped
        // backend behaves like a dead one.
        _ = stopped.wait_for(|s| *s) => {}
    }
}

/// The error that makes hyper drop a connection whose backend was stopped.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("backend stopped")
    }
}

impl std::error::Error for Stopped {}

/// The longest `/delay/{ms}` accepted: a day is plenty for any test.
const MAX_DELAY_MS: u64 = 24 * 60 * 60 * 1000;

async fn answer(shared: &Shared, req: Request<Incoming>) -> Response<ReplyBody> {
    // HEAD is GET without a body; hyper drops the body on the way out.
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut reply = match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => text(StatusCode::OK, format!("{}\n", shared.name)),
        (&Method::GET, ["health"]) => {
            if shared.healthy.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ok")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "failing")
            }
        }
        (&Method::POST, ["health", "fail"]) => {
            shared.healthy.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "failing")
        }
        (&Method::POST, ["health", "ok"]) => {
            shared.healthy.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "ok")
        }
        (&Method::GET, ["delay", ms]) => match ms.parse::<u64>() {
            Ok(ms) if ms <= MAX_DELAY_MS => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, format!("{}\n", shared.name))
            }
            _ => bad_request("delay must be milliseconds, at most one day"),
        },
        (&Method::GET, ["status", code]) => match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
            Some(code) => status_reply(code, &shared.name),
            None => bad_request("status must be a number from 200 to 599"),
        },
        (&Method::GET, ["bytes", n]) => match n.parse::<u64>() {
            Ok(n) => {
                let mut reply = Response::new(ReplyBody::Text { remaining: n });
                reply.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                reply
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                reply
            }
            Err(_) => bad_request("bytes must be a non-negative number"),
        },
        (_, ["echo"]) => echo(shared, req).await,
        (&Method::GET, ["ws"]) => websocket(shared, req),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    reply.headers_mut().insert("x-backend", shared.x_backend.clone());
    reply
}

/// `GET /ws`: accepts the WebSocket handshake and echoes every text or
/// binary message back prefixed with `NAME:`, until either side closes.
fn websocket(shared: &Shared, mut req: Request<Incoming>) -> Response<ReplyBody> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let headers = req.headers();
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_websocket) else {
        return bad_request("/ws needs a WebSocket handshake (Upgrade: websocket, Sec-WebSocket-Key)");
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    let name = shared.name.clone();
    let mut stopped = shared.stopped.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = echo_messages(upgrade, name) => {}
            // A stopped backend cuts its WebSockets too.
            _ = stopped.wait_for(|s| *s) => {}
        }
    });
    let mut reply = Response::new(ReplyBody::Full(None));
    *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = reply.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    reply
}

async fn echo_messages(upgrade: hyper::upgrade::OnUpgrade, name: String) {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{Message, protocol::Role};
    let Ok(upgraded) = upgrade.await else { return };
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    while let Some(Ok(message)) = ws.next().await {
        let reply = match message {
            Message::Text(text) => Message::text(format!("{name}:{}", text.as_str())),
            Message::Binary(data) => {
                let mut out = Vec::with_capacity(name.len() + 1 + data.len());
                out.extend_from_slice(name.as_bytes());
                out.push(b':');
                out.extend_from_slice(&data);
                Message::binary(out)
            }
            // Pings are answered and closes completed by the stream itself.
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

fn status_reply(code: u16, name: &str) -> Response<ReplyBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    // RFC 9110 §15.3.5, §15.4.5: these statuses never carry content.
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut reply = Response::new(ReplyBody::Full(None));
        *reply.status_mut() = status;
        return reply;
    }
    text(status, format!("{name}\n"))
}

/// Describes the request as JSON; the body is counted as it streams, never
/// held, so any size fits in flat memory.
async fn echo(shared: &Shared, req: Request<Incoming>) -> Response<ReplyBody> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => return bad_request("request body broke off"),
        }
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        // Repeated fields fold into one, as RFC 9110 §5.3 allows.
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::String(seen)) => {
                seen.push_str(", ");
                seen.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), value.into_owned().into());
            }
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": path,
        "headers": headers,
        "body_bytes": body_bytes,
        "backend": shared.name,
    });
    let mut reply = Response::new(ReplyBody::Full(Some(Bytes::from(json.to_string()))));
    reply
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ReplyBody> {
    let mut reply = Response::new(ReplyBody::Full(Some(body.into())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

fn bad_request(why: &'static str) -> Response<ReplyBody> {
    text(StatusCode::BAD_REQUEST, format!("{why}\n"))
}

const CHUNK_BYTES: usize = 64 * 1024;

/// Lines of 63 letters and a newline; `/bytes/{n}` is cut from copies of it.
static CHUNK: [u8; CHUNK_BYTES] = {
    let mut chunk = [0u8; CHUNK_BYTES];
    let mut i = 0;
    while i < CHUNK_BYTES {
        chunk[i] = if i % 64 == 63 {
            b'\n'
        } else {
            b'a' + (i % 64 % 26) as u8
        };
        i += 1;
    }
    chunk
};

/// A response body: either in hand, or `remaining` bytes of text produced
/// chunk by chunk from [`CHUNK`] without allocating.
enum ReplyBody {
    Full(Option<Bytes>),
    Text { remaining: u64 },
}

impl http_body::Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            ReplyBody::Full(data) => data.take().filter(|d| !d.is_empty()).map(Frame::data),
            ReplyBody::Text { remaining: 0 } => None,
            ReplyBody::Text { remaining } => {
                let len = usize::try_from(*remaining).map_or(CHUNK_BYTES, |r| r.min(CHUNK_BYTES));
                *remaining -= len as u64;
                Some(Frame::data(Bytes::from_static(&CHUNK[..len])))
            }
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReplyBody::Full(data) => data.as_ref().is_none_or(Bytes::is_empty),
            ReplyBody::Text { remaining } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReplyBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ReplyBody::Text { remaining } => SizeHint::with_exact(*remaining),
        }
    }
}
