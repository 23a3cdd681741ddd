//! One HTTP/2 stream: its request body as the proxy reads it, and its
//! response written back with the stream's flow control.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BodyError, ClientBody};
use crate::observe::access_log::LoggedBody;
use crate::proxy::headers::{X_FORWARDED_FOR, X_REQUEST_ID, hop_by_hop_index};
use crate::proxy::{self, ClientInfo};
use crate::server::Shared;

/// A stream's work from its request to the end of its response. The client
/// resetting the stream while the proxy works drops the work (an upstream
/// connection in the middle of an exchange is closed, not pooled).
pub(super) async fn serve(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    client: Arc<ClientInfo>,
    shared: Arc<Shared>,
) {
    let (parts, recv) = req.into_parts();
    let carried = carried(&parts.headers);
    let body = RequestStream::new(recv, &parts.headers);
    let req = Request::from_parts(parts, ClientBody::Http2(body));
    let mut handled = std::pin::pin!(proxy::handle(req, carried, &client, &shared));
    let answered = std::future::poll_fn(|cx| {
        if let Poll::Ready(response) = handled.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(response) = answered else { return };
    let (mut parts, mut body) = response.into_parts();
    complete_head(parts.status, &mut parts.headers, &body);
    let end = body.is_end_stream();
    let mut send = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(send) => send,
        Err(error) => {
            tracing::debug!(%error, "HTTP/2 response head not sent");
            return;
        }
    };
    if !end {
        let mut pipe = Pipe {
            body: &mut body,
            send: &mut send,
            first: true,
        };
        if let Err(error) = std::future::poll_fn(|cx| pipe.poll(cx)).await {
            tracing::debug!(%error, "HTTP/2 response body not sent whole");
        }
    }
}

/// Which of the fields the proxy looks up the request has. One pass over
/// a few names compared by length first is cheaper than hashing the two
/// custom names for lookups.
fn carried(headers: &HeaderMap) -> proxy::Carried {
    let mut carried = proxy::Carried::default();
    for name in headers.keys() {
        if *name == X_REQUEST_ID {
            carried.request_id = true;
        } else if *name == X_FORWARDED_FOR {
            carried.forwarded_for = true;
        }
    }
    carried
}

/// What HTTP/2 needs of a response head that the proxy may not have put
/// there: `Date`, and `Content-Length` when the body's length is known; and
/// nothing that describes an HTTP/1 connection (the codecs never hand those
/// on, but a route's `response_headers` could name one). Found in one pass
/// over the names rather than by a lookup for each.
fn complete_head(status: StatusCode, headers: &mut HeaderMap, body: &LoggedBody) {
    let (mut dated, mut sized, mut hop_by_hop) = (false, false, false);
    for name in headers.keys() {
        if *name == header::DATE {
            dated = true;
        } else if *name == header::CONTENT_LENGTH {
            sized = true;
        } else if hop_by_hop_index(name).is_some() {
            hop_by_hop = true;
        }
    }
    if hop_by_hop {
        let names: Vec<_> = headers
            .keys()
            .filter(|n| hop_by_hop_index(n).is_some())
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    // 204 and 304 say nothing of a length (RFC 9110 §8.6).
    let bodiless = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    if !sized
        && !bodiless
        && let Some(len) = body.size_hint().exact()
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if !dated {
        headers.insert(header::DATE, crate::server::h1::encode::date_value());
    }
}

/// Writes a response body to its stream: a chunk goes out as soon as the
/// body yields it (the stream buffers it until the client's window allows),
/// and the next is taken only once the previous one has left, so a client
/// that reads slowly holds at most one chunk here.
struct Pipe<'a> {
    body: &'a mut LoggedBody,
    send: &'a mut SendStream<Bytes>,
    /// Nothing sent yet: no window to wait for.
    first: bool,
}

impl Pipe<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        loop {
            if !self.first {
                self.send.reserve_capacity(1);
                while self.send.capacity() == 0 {
                    match ready!(self.send.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return Poll::Ready(Err(error)),
                        None => return Poll::Ready(Err(h2::Error::from(Reason::CANCEL))),
                    }
                }
            }
            let frame = match Pin::new(&mut *self.body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Woken also if the client resets the stream meanwhile.
                    if let Poll::Ready(reason) = self.send.poll_reset(cx) {
                        return Poll::Ready(Err(reason.map_or_else(|e| e, h2::Error::from)));
                    }
                    return Poll::Pending;
                }
            };
            self.first = false;
            match frame {
                None => return Poll::Ready(self.send.send_data(Bytes::new(), true)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = self.body.is_end_stream();
                        self.send.send_data(data, end)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.send.reserve_capacity(0);
                            return Poll::Ready(self.send.send_trailers(trailers));
                        }
                    }
                },
                Some(Err(error)) => {
                    // The client must not take a cut-short body for a whole one.
                    self.send.send_reset(Reason::INTERNAL_ERROR);
                    tracing::debug!(%error, "response body failed");
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// A client's request body on an HTTP/2 stream. Window is given back as
/// the proxy takes the data, so the client can send on while the upstream
/// keeps up (and is held back when it does not).
#[derive(Debug)]
pub struct RequestStream {
    recv: RecvStream,
    /// Bytes the `Content-Length` field said are still to come.
    remaining: Option<u64>,
    data_done: bool,
}

impl RequestStream {
    /// `headers` are the request's, for the length it declares (h2 itself
    /// checks that the data matches it); not looked up when the request
    /// ended with its head.
    fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let remaining = if recv.is_end_stream() {
            Some(0)
        } else {
            headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        RequestStream {
            recv,
            remaining,
            data_done: false,
        }
    }
}

impl Body for RequestStream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut this.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(BodyError::Http2(error)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(BodyError::Http2(error)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.recv.is_end_stream() {
            return SizeHint::with_exact(0);
        }
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}
