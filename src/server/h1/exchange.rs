//! One request and its response on an HTTP/1 connection: the proxy's
//! `handle` runs here, in the connection's task, while the request body is
//! fed to it; then the response goes out, and what is left of the request
//! body is drained (a little) or the connection closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::body::{BodyStream, Room, Slot};
use super::decode::Decoder;
use super::encode::{self, BodyFraming, ConnectionField};
use super::parse::{Framing, Head};
use super::write::{self, Outbox};
use super::{Conn, fill_body};
use crate::body::ClientBody;
use crate::http1::chunked::ChunkError;
use crate::http1::{self, Decoded};
use crate::observe::access_log::LoggedBody;
use crate::proxy::tunnel::{self, TunnelIo};
use crate::proxy::{self, ClientInfo};
use crate::server::Shared;

/// Most bytes of a request body left unread by the proxy that are read and
/// dropped to keep the connection; with more left, the connection closes.
const DRAIN_BYTES: u64 = 64 * 1024;
/// The largest read for a request body.
const BODY_READ_BYTES: usize = 64 * 1024;
/// Read size for chunked bodies, whose length is unknown.
const CHUNKED_READ_BYTES: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the connection does after an exchange.
pub(super) enum After {
    KeepAlive,
    /// Close once what is queued is out; `linger` when the client may
    /// still be sending.
    Close {
        linger: bool,
    },
    /// The connection broke mid-response: drop it.
    Abort,
    /// The response switched protocols: hand the connection over.
    Upgrade(oneshot::Sender<Box<dyn TunnelIo>>),
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn<I> {
    pub(super) async fn exchange(&mut self, head: Head, client: &Arc<ClientInfo>, shared: &Shared) -> After {
        let Head {
            request,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
            carried,
        } = head;
        let is_head = request.method() == Method::HEAD;
        let version = request.version();
        let (body, mut feed) = match framing {
            Framing::Empty => (BodyStream::empty(), None),
            Framing::Length(n) => Feed::start(Decoder::Length(n), Some(n), expect_continue),
            Framing::Chunked => Feed::start(Decoder::chunked(), None, expect_continue),
        };
        let mut request = request.map(|()| ClientBody::Http1(body));
        let mut switch = None;
        if upgrade {
            let (tx, rx) = oneshot::channel::<Box<dyn TunnelIo>>();
            request.extensions_mut().insert(tunnel::Pending::new(async move {
                rx.await
                    .map_err(|_| io::Error::other("the client connection did not switch protocols"))
            }));
            switch = Some(tx);
        }

        // The proxy's work, with the request body fed to it as it asks.
        let mut handling = std::pin::pin!(proxy::handle(request, carried, client, shared));
        let response = std::future::poll_fn(|cx| {
            if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                return Poll::Ready(response);
            }
            if let Some(feed) = &mut feed {
                feed.poll(cx, &mut self.io, &mut self.read, Some(&mut self.out));
            }
            Poll::Pending
        })
        .await;

        if let Some(feed) = &feed
            && feed.state == FeedState::Malformed
        {
            // The body broke its own framing: whatever the proxy made of
            // that, the client hears that its request was bad.
            let why = feed.error.unwrap_or(ChunkError::Size);
            self.refuse(StatusCode::BAD_REQUEST, &why).await;
            return After::Close { linger: true };
        }
        let (parts, mut body) = response.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(switch) = switch
        {
            let mut writer = Writer::new(BodyFraming::None, ConnectionField::AsGiven);
            let written =
                std::future::poll_fn(|cx| writer.poll(cx, &mut self.io, &mut self.out, &parts, &mut body)).await;
            return match written {
                Ok(()) => After::Upgrade(switch),
                Err(_) => After::Abort,
            };
        }
        drop(switch);

        let framing = encode::framing(parts.status, is_head, version, body.size_hint().exact());
        let unread = feed.as_ref().is_some_and(|f| !f.drainable());
        let close = !keep_alive
            || framing == BodyFraming::Close
            || unread
            || self.stopping()
            || encode::asks_close(&parts.headers);
        let connection = if close {
            ConnectionField::Close
        } else if version == Version::HTTP_10 {
            ConnectionField::KeepAlive
        } else {
            ConnectionField::Omit
        };
        let mut writer = Writer::new(framing, connection);
        let written = std::future::poll_fn(|cx| {
            if let Some(feed) = &mut feed {
                // The 100 may not follow the final response.
                feed.poll(cx, &mut self.io, &mut self.read, None);
            }
            writer.poll(cx, &mut self.io, &mut self.out, &parts, &mut body)
        })
        .await;
        // The access-log line is written as the body goes.
        drop(body);
        http1::recycle(parts.headers);
        if let Err(error) = written {
            tracing::debug!(%error, "response not sent whole");
            return After::Abort;
        }
        let Some(mut feed) = feed else {
            return if close {
                After::Close { linger: false }
            } else {
                After::KeepAlive
            };
        };
        if feed.state != FeedState::Done {
            feed.slot.fail("the response was sent before the request body was read");
        }
        if close || self.stopping() {
            return After::Close {
                linger: feed.state != FeedState::Done,
            };
        }
        if feed.state == FeedState::Done || self.drain(&mut feed).await {
            After::KeepAlive
        } else {
            After::Close { linger: true }
        }
    }

    /// Reads and drops the rest of a request body the proxy did not read,
    /// up to `DRAIN_BYTES` and within the header timeout; true when it
    /// reached the body's end.
    async fn drain(&mut self, feed: &mut Feed) -> bool {
        let due = Instant::now() + self.limits.header_timeout;
        let mut drained = 0u64;
        std::future::poll_fn(|cx| {
            loop {
                match feed.decoder.decode(&mut self.read) {
                    Ok(Decoded::Data(data)) => {
                        drained += data.len() as u64;
                        if drained > DRAIN_BYTES {
                            return Poll::Ready(false);
                        }
                    }
                    Ok(Decoded::Done) => return Poll::Ready(true),
                    Ok(Decoded::NeedMore) => match fill_body(&mut self.io, &mut self.read, cx, feed.read_size()) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            self.eof = true;
                            return Poll::Ready(false);
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => {
                            return match self.timer.poll_until(cx, due) {
                                Poll::Ready(()) => Poll::Ready(false),
                                Poll::Pending => Poll::Pending,
                            };
                        }
                    },
                    Err(_) => return Poll::Ready(false),
                }
            }
        })
        .await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedState {
    Running,
    /// The whole body was read and handed over.
    Done,
    /// The consumer dropped the body before its end.
    Dropped,
    /// The body's framing was broken (a smuggling attempt, or garbage).
    Malformed,
    /// The client closed or the read failed mid-body.
    Broken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// No `100 Continue` to send.
    No,
    /// To send when the proxy first asks for the body.
    Waiting,
    Sent,
    /// The final response came first: never sent.
    Skipped,
}

/// The connection's end of a request body: reads, decodes and hands over.
struct Feed {
    slot: Arc<Slot>,
    decoder: Decoder,
    expect: Expect,
    state: FeedState,
    error: Option<ChunkError>,
}

impl Feed {
    fn start(decoder: Decoder, length: Option<u64>, expect_continue: bool) -> (BodyStream, Option<Feed>) {
        let slot = Arc::new(Slot::default());
        let feed = Feed {
            slot: slot.clone(),
            decoder,
            expect: if expect_continue { Expect::Waiting } else { Expect::No },
            state: FeedState::Running,
            error: None,
        };
        (BodyStream::new(slot, length), Some(feed))
    }

    /// The rest can be read and dropped to keep the connection: the body is
    /// whole, or a short known rest the client will send without a 100.
    fn drainable(&self) -> bool {
        match self.state {
            FeedState::Done => true,
            FeedState::Running | FeedState::Dropped => {
                !matches!(self.expect, Expect::Waiting | Expect::Skipped)
                    && self.decoder.remaining().is_some_and(|n| n <= DRAIN_BYTES)
            }
            FeedState::Malformed | FeedState::Broken => false,
        }
    }

    fn read_size(&self) -> usize {
        match self.decoder.remaining() {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX).clamp(1, BODY_READ_BYTES),
            None => CHUNKED_READ_BYTES,
        }
    }

    /// Moves the body along as far as it can without waiting: sends the
    /// `100 Continue` when first asked (if `out` is given), reads, decodes,
    /// hands one chunk over.
    fn poll<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
        read: &mut bytes::BytesMut,
        mut out: Option<&mut Outbox>,
    ) {
        while self.state == FeedState::Running {
            if let Some(out) = out.as_deref_mut()
                && !out.is_empty()
            {
                match out.poll_drain(io, cx) {
                    Poll::Pending => return,
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return self.broken("the client connection failed"),
                }
                if let Poll::Ready(Err(_)) = Pin::new(&mut *io).poll_flush(cx) {
                    return self.broken("the client connection failed");
                }
            }
            match self.slot.poll_room(cx, self.expect == Expect::Waiting) {
                Poll::Pending => return,
                Poll::Ready(Room::Dropped) => {
                    self.state = FeedState::Dropped;
                    return;
                }
                Poll::Ready(Room::Free) => {}
            }
            if self.expect == Expect::Waiting {
                self.expect = match out.as_deref_mut() {
                    Some(out) => {
                        if out.send(io, cx, &[], Bytes::new(), CONTINUE).is_err() {
                            return self.broken("the client connection failed");
                        }
                        Expect::Sent
                    }
                    None => Expect::Skipped,
                };
                continue;
            }
            match self.decoder.decode(read) {
                Ok(Decoded::Data(data)) => self.slot.put(data),
                Ok(Decoded::Done) => {
                    self.slot.complete();
                    self.state = FeedState::Done;
                }
                Ok(Decoded::NeedMore) => match fill_body(io, read, cx, self.read_size()) {
                    Poll::Ready(Ok(0)) => return self.broken("the client closed the connection mid-body"),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) => return self.broken("reading the request body failed"),
                    Poll::Pending => return,
                },
                Err(error) => {
                    self.error = Some(error);
                    self.state = FeedState::Malformed;
                    self.slot.fail("malformed request body");
                }
            }
        }
    }

    fn broken(&mut self, why: &'static str) {
        self.state = FeedState::Broken;
        self.slot.fail(why);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Head,
    Body,
    Flush,
}

/// Writes one response: its head with whatever body is already there,
/// then the rest of the body frame by frame in the chosen framing.
struct Writer {
    framing: BodyFraming,
    connection: ConnectionField,
    stage: Stage,
    sent: u64,
}

/// Why a response could not be written whole.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("writing to the client failed")]
    Io(#[from] io::Error),
    #[error("response body failed")]
    Body(#[source] crate::body::BodyError),
    #[error("response body longer or shorter than its length")]
    Length,
}

impl Writer {
    fn new(framing: BodyFraming, connection: ConnectionField) -> Self {
        Writer {
            framing,
            connection,
            stage: Stage::Head,
            sent: 0,
        }
    }

    fn poll<I: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
        out: &mut Outbox,
        parts: &http::response::Parts,
        body: &mut LoggedBody,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            ready!(out.poll_drain(io, cx))?;
            match self.stage {
                Stage::Head => {
                    // Body bytes that are already there go out with the head.
                    let first = match self.framing {
                        BodyFraming::None => Poll::Ready(None),
                        _ => Pin::new(&mut *body).poll_frame(cx),
                    };
                    let (data, ended) = match first {
                        Poll::Ready(Some(Ok(frame))) => (frame.into_data().unwrap_or_default(), body.is_end_stream()),
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(WriteError::Body(e))),
                        Poll::Ready(None) => (Bytes::new(), true),
                        Poll::Pending => (Bytes::new(), false),
                    };
                    let (data, tail) = self.frame(data, ended)?;
                    let sent = write::with_scratch(|scratch| {
                        encode::head(scratch, parts, self.framing, self.connection);
                        self.chunk_size(scratch, data.len());
                        out.send(io, cx, scratch, data, tail)
                    });
                    sent?;
                    self.stage = if ended || self.framing == BodyFraming::None {
                        Stage::Flush
                    } else {
                        Stage::Body
                    };
                }
                Stage::Body => match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else { continue };
                        let ended = body.is_end_stream();
                        if data.is_empty() && !ended {
                            continue;
                        }
                        let (data, tail) = self.frame(data, ended)?;
                        let sent = write::with_scratch(|scratch| {
                            self.chunk_size(scratch, data.len());
                            out.send(io, cx, scratch, data, tail)
                        });
                        sent?;
                        if ended {
                            self.stage = Stage::Flush;
                        }
                    }
                    Poll::Ready(None) => {
                        let (_, tail) = self.frame(Bytes::new(), true)?;
                        out.send(io, cx, &[], Bytes::new(), tail)?;
                        self.stage = Stage::Flush;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(WriteError::Body(e))),
                    Poll::Pending => {
                        // What was written so far reaches the client while the body waits.
                        ready!(Pin::new(&mut *io).poll_flush(cx))?;
                        return Poll::Pending;
                    }
                },
                Stage::Flush => {
                    ready!(Pin::new(&mut *io).poll_flush(cx))?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// Checks `data` against the framing; the bytes to write after it
    /// (the chunk's end, and the last chunk when `ended`).
    fn frame(&mut self, data: Bytes, ended: bool) -> Result<(Bytes, &'static [u8]), WriteError> {
        self.sent += data.len() as u64;
        let tail: &'static [u8] = match self.framing {
            BodyFraming::Length(n) if self.sent > n || (ended && self.sent < n) => return Err(WriteError::Length),
            BodyFraming::Chunked => match (data.is_empty(), ended) {
                (false, true) => b"\r\n0\r\n\r\n",
                (false, false) => b"\r\n",
                (true, true) => b"0\r\n\r\n",
                (true, false) => b"",
            },
            _ => b"",
        };
        Ok((data, tail))
    }

    fn chunk_size(&self, out: &mut Vec<u8>, len: usize) {
        if self.framing == BodyFraming::Chunked && len > 0 {
            encode::chunk_size(out, len);
        }
    }
}
