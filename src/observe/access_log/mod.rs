//! The access log (`global.access_log`, `access_log_format`): one line per
//! request, errors and the balancer's own answers included, written when
//! the response body has finished (or the client went away) so that bytes
//! and duration are final.
//!
//! Request handling never waits for it: a worker formats the line into its
//! own batch (`queue`), batches go to the writer thread (`writer`) through a
//! bounded queue, and when the writer falls behind, lines are dropped and
//! counted (`fulcrum_access_log_dropped_total`). `format` owns the layouts.

mod format;
mod queue;
mod writer;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, mpsc};

use crate::body::{BodyError, ResponseBody};
use crate::config::{AccessLog as Destination, AccessLogFormat, Global, Route, RouteAction};
use crate::router::RouteId;
use crate::server::Snapshot;

/// Batches the queue holds at most ...
const QUEUE_BATCHES: usize = 1024;
/// ... and bytes of lines at most; beyond either, lines are dropped.
const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// How long shutdown waits for the writer to write what is queued: a
/// destination that blocks (a stdout pipe nobody reads) must not keep the
/// process from exiting.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open the access log {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the access log writer thread")]
    Thread(#[source] std::io::Error),
}

/// A running access log: where workers send lines. Stopped by [`close`].
///
/// [`close`]: AccessLog::close
#[derive(Debug)]
pub struct AccessLog {
    /// As started; a reload cannot change it.
    destination: Destination,
    inner: Arc<Inner>,
    writer: Mutex<Option<WriterThread>>,
}

/// The writer thread; `done` disconnects when it ends.
#[derive(Debug)]
struct WriterThread {
    handle: std::thread::JoinHandle<()>,
    done: std::sync::mpsc::Receiver<()>,
}

/// What workers and the writer share.
#[derive(Debug)]
struct Inner {
    format: AccessLogFormat,
    tx: mpsc::Sender<Batch>,
    /// Bytes sent and not yet taken by the writer.
    queued_bytes: AtomicUsize,
    /// Lines lost: queue full, or a failed write.
    dropped: AtomicU64,
    /// Tells the writer to write what is queued and stop.
    closing: Notify,
}

/// Lines from one worker, newline-terminated, on their way to the writer.
#[derive(Debug)]
struct Batch {
    buf: Vec<u8>,
    lines: u64,
}

impl AccessLog {
    /// Opens the destination `global.access_log` names and starts the
    /// writer thread; `None` when the log is off.
    pub fn start(global: &Global) -> Result<Option<AccessLog>, AccessLogError> {
        let target = match &global.access_log {
            Destination::Off => return Ok(None),
            Destination::Stdout => writer::Target::Stdout(std::io::stdout()),
            Destination::File(path) => writer::Target::open_file(path).map_err(|source| AccessLogError::Open {
                path: path.display().to_string(),
                source,
            })?,
        };
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let inner = Arc::new(Inner {
            format: global.access_log_format,
            tx,
            queued_bytes: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            closing: Notify::new(),
        });
        let to = match &global.access_log {
            Destination::File(path) => path.display().to_string(),
            _ => "stdout".to_string(),
        };
        let (done_tx, done) = std::sync::mpsc::channel();
        let handle = writer::spawn(target, rx, inner.clone(), done_tx).map_err(AccessLogError::Thread)?;
        tracing::info!(%to, format = ?global.access_log_format, "access log on");
        Ok(Some(AccessLog {
            destination: global.access_log.clone(),
            inner,
            writer: Mutex::new(Some(WriterThread { handle, done })),
        }))
    }

    /// Starts the entry of a request received now (`started`); what the
    /// request says is read here, before the proxy consumes it. Boxed, so
    /// that a response carries one pointer for it, and none's worth when
    /// the log is off.
    pub fn begin<B>(&self, req: &Request<B>, client: IpAddr, request_id: &HeaderValue, started: Instant) -> Box<Entry> {
        queue::attach(&self.inner);
        let headers = req.headers();
        Box::new(Entry {
            received: SystemTime::now(),
            started,
            client,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            referer: headers.get(header::REFERER).cloned(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            request_id: request_id.clone(),
            answer: Answer::default(),
            snapshot: None,
            body_bytes: 0,
        })
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Writes every line queued so far and stops the writer, waiting for it
    /// at most `CLOSE_WAIT`. Call after the workers have stopped: a worker's
    /// last lines are queued as it ends.
    pub fn close(&self) {
        self.inner.closing.notify_one();
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(writer) = writer else { return };
        match writer.done.recv_timeout(CLOSE_WAIT) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(wait = ?CLOSE_WAIT, "the access log writer is stuck; lines still queued are lost");
            }
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = writer.handle.join();
            }
        }
    }
}

/// Warns when a reloaded config asks for another access log than the
/// running one (`log`, `None` when off): that takes a restart.
pub fn warn_if_changed(log: Option<&AccessLog>, global: &Global) {
    let (destination, format) = match log {
        Some(log) => (&log.destination, log.inner.format),
        None => (&Destination::Off, global.access_log_format),
    };
    if *destination != global.access_log || format != global.access_log_format {
        tracing::warn!("`access_log` and `access_log_format` change only with a restart");
    }
}

/// `fulcrum_access_log_dropped_total`, appended to the metrics exposition
/// (0 when the log is off).
pub fn render_metrics(out: &mut String, log: Option<&AccessLog>) {
    out.push_str(
        "# HELP fulcrum_access_log_dropped_total Access log lines dropped because the writer fell behind or a write failed.\n\
         # TYPE fulcrum_access_log_dropped_total counter\n",
    );
    let _ = writeln!(
        out,
        "fulcrum_access_log_dropped_total {}",
        log.map_or(0, AccessLog::dropped)
    );
}

/// How a request was answered, as the proxy knows it once the response
/// head is ready.
#[derive(Debug, Default, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    pub route: Option<RouteId>,
    /// Index in the route's upstreams (several for a split) of the one used.
    pub upstream: Option<usize>,
    /// Index, in that upstream, of the server that answered or was tried
    /// last.
    pub server: Option<usize>,
    /// Time to that server's response head, connect included.
    pub upstream_time: Option<Duration>,
    pub retries: u32,
}

/// One request's line in the making.
#[derive(Debug)]
pub struct Entry {
    received: SystemTime,
    started: Instant,
    client: IpAddr,
    method: Method,
    uri: Uri,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    request_id: HeaderValue,
    answer: Answer,
    /// The snapshot the request ran on, to name its route and server.
    snapshot: Option<Arc<Snapshot>>,
    body_bytes: u64,
}

impl Entry {
    /// Records the answer; the line is written when the body ends.
    pub fn answered(&mut self, answer: Answer, snapshot: Arc<Snapshot>) {
        self.answer = answer;
        self.snapshot = Some(snapshot);
    }

    /// Formats the line into this worker's batch.
    fn write(self) {
        let duration = self.started.elapsed();
        let route = self
            .snapshot
            .as_deref()
            .zip(self.answer.route)
            .and_then(|(s, id)| s.config.routes.get(id.0));
        let upstream = self
            .snapshot
            .as_deref()
            .zip(route)
            .and_then(|(s, route)| server_address(s, route, self.answer.upstream?, self.answer.server?));
        let target = match (self.uri.path_and_query(), self.uri.authority()) {
            (Some(pq), _) => pq.as_str(),
            (None, Some(authority)) => authority.as_str(),
            (None, None) => "-",
        };
        let line = format::Line {
            time: self.received,
            client: self.client,
            method: self.method.as_str(),
            target,
            protocol: protocol(self.version),
            status: self.answer.status,
            body_bytes: self.body_bytes,
            duration,
            upstream,
            upstream_time: self.answer.upstream_time,
            retries: self.answer.retries,
            request_id: self.request_id.as_bytes(),
            route: route.map(|r| r.name.as_str()),
            referer: self.referer.as_ref().map(HeaderValue::as_bytes),
            user_agent: self.user_agent.as_ref().map(HeaderValue::as_bytes),
        };
        queue::push(|layout, out| match layout {
            AccessLogFormat::Json => format::json(&line, out),
            AccessLogFormat::Combined => format::combined(&line, out),
        });
    }
}

/// The address of server `server` of upstream `upstream` of `route`.
fn server_address<'a>(snapshot: &'a Snapshot, route: &Route, upstream: usize, server: usize) -> Option<&'a str> {
    let id = match &route.action {
        RouteAction::Upstream(id) => *id,
        RouteAction::Split(targets) => targets.get(upstream)?.upstream,
        RouteAction::Respond { .. } => return None,
    };
    let pool = snapshot.upstreams.get(id.0)?;
    Some(pool.servers.get(server)?.address.as_str())
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The response body as the client receives it: counts the bytes handed to
/// the connection and writes the request's access-log line when the body
/// ends or is dropped (written out, or the client went away).
#[derive(Debug)]
pub struct LoggedBody {
    inner: ResponseBody,
    entry: Option<Box<Entry>>,
}

impl LoggedBody {
    /// `entry` is `None` when the access log is off.
    pub fn new(inner: ResponseBody, entry: Option<Box<Entry>>) -> Self {
        LoggedBody { inner, entry }
    }

    fn finish(&mut self) {
        if let Some(entry) = self.entry.take() {
            entry.write();
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(entry), Some(data)) = (&mut this.entry, frame.data_ref()) {
                    entry.body_bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}
