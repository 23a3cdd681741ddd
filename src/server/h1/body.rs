//! A request body on its way from the client connection to whoever forwards
//! it: the connection task reads and decodes, and hands over one chunk at a
//! time through a single slot, reading the next only once the last was
//! taken (backpressure: a slow upstream stops the reads from the client).
//! Requests without a body share nothing and allocate nothing.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::BodyError;

/// The consumer's end: a request body as the proxy sees it.
#[derive(Debug)]
pub struct BodyStream {
    slot: Option<Arc<Slot>>,
    /// Bytes still to come when the length is known.
    remaining: Option<u64>,
}

/// The one place a chunk waits between the two ends.
#[derive(Debug, Default)]
pub(super) struct Slot(Mutex<SlotState>);

#[derive(Debug, Default)]
struct SlotState {
    chunk: Option<Bytes>,
    end: Option<End>,
    /// The consumer has asked for data at least once (when to send `100 Continue`).
    asked: bool,
    /// The consumer is gone: nothing more will be taken.
    dropped: bool,
    consumer: Option<Waker>,
    connection: Option<Waker>,
}

#[derive(Debug, Clone, Copy)]
enum End {
    Complete,
    Failed(&'static str),
}

/// What the connection may do next for the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Room {
    /// The slot is empty and wanted: deliver the next chunk.
    Free,
    /// The consumer dropped the body.
    Dropped,
}

impl BodyStream {
    /// A request without a body.
    pub(super) fn empty() -> Self {
        BodyStream {
            slot: None,
            remaining: Some(0),
        }
    }

    /// A body that the connection fills through `slot`; `length` when declared.
    pub(super) fn new(slot: Arc<Slot>, length: Option<u64>) -> Self {
        BodyStream {
            slot: Some(slot),
            remaining: length,
        }
    }
}

impl Body for BodyStream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(slot) = &self.slot else {
            return Poll::Ready(None);
        };
        let mut state = slot.lock();
        let first_ask = !state.asked;
        state.asked = true;
        if let Some(chunk) = state.chunk.take() {
            wake(&mut state.connection);
            drop(state);
            if let Some(left) = &mut self.remaining {
                *left = left.saturating_sub(chunk.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match state.end {
            Some(End::Complete) => Poll::Ready(None),
            Some(End::Failed(why)) => {
                // Said once; the body then just ends.
                state.end = Some(End::Complete);
                Poll::Ready(Some(Err(BodyError::Client(why.to_string()))))
            }
            None => {
                state.consumer = Some(cx.waker().clone());
                if first_ask {
                    wake(&mut state.connection);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.slot {
            None => true,
            Some(slot) => {
                let state = slot.lock();
                state.chunk.is_none() && matches!(state.end, Some(End::Complete))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for BodyStream {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            let mut state = slot.lock();
            state.dropped = true;
            state.chunk = None;
            wake(&mut state.connection);
        }
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state stays consistent whatever panicked while holding it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready when the next chunk may be delivered: the slot is empty and,
    /// if `after_ask`, the consumer has asked for data at least once.
    pub(super) fn poll_room(&self, cx: &mut Context<'_>, after_ask: bool) -> Poll<Room> {
        let mut state = self.lock();
        if state.dropped {
            return Poll::Ready(Room::Dropped);
        }
        if state.chunk.is_none() && (state.asked || !after_ask) {
            return Poll::Ready(Room::Free);
        }
        state.connection = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(super) fn put(&self, chunk: Bytes) {
        let mut state = self.lock();
        if !state.dropped {
            state.chunk = Some(chunk);
            wake(&mut state.consumer);
        }
    }

    pub(super) fn complete(&self) {
        self.finish(End::Complete);
    }

    /// The body cannot be read to its end: the consumer gets an error.
    pub(super) fn fail(&self, why: &'static str) {
        self.finish(End::Failed(why));
    }

    fn finish(&self, end: End) {
        let mut state = self.lock();
        state.end = Some(end);
        wake(&mut state.consumer);
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn chunks_pass_one_at_a_time_then_the_end() {
        let slot = Arc::new(Slot::default());
        let mut body = BodyStream::new(slot.clone(), Some(5));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Nothing may be delivered before the consumer asks, when asked to wait.
        assert!(slot.poll_room(&mut cx, true).is_pending());
        assert!(std::pin::Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(slot.poll_room(&mut cx, true), Poll::Ready(Room::Free));
        slot.put(Bytes::from_static(b"hel"));
        assert!(slot.poll_room(&mut cx, true).is_pending(), "one chunk at a time");
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hel");
        assert_eq!(body.size_hint().exact(), Some(2));
        slot.put(Bytes::from_static(b"lo"));
        slot.complete();
        assert!(!body.is_end_stream());
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "lo");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_failure_reaches_the_consumer_and_a_drop_reaches_the_connection() {
        let slot = Arc::new(Slot::default());
        let mut body = BodyStream::new(slot.clone(), None);
        slot.fail("client closed");
        assert!(matches!(body.frame().await, Some(Err(BodyError::Client(_)))));
        drop(body);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(slot.poll_room(&mut cx, false), Poll::Ready(Room::Dropped));
        assert!(BodyStream::empty().is_end_stream());
    }
}
