//! Writing to the client: a response head and the body bytes that are
//! already there go out in one vectored write, encoded in a per-worker
//! scratch buffer; only what a write could not take is copied into the
//! connection, and that copy is freed as soon as it has gone out.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::AsyncWrite;

use crate::http1::advance_written;

/// Above this the scratch buffer is not kept for the next response.
const SCRATCH_KEEP_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this worker's scratch buffer, emptied.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        let result = f(scratch);
        if scratch.capacity() > SCRATCH_KEEP_BYTES {
            *scratch = Vec::new();
        }
        result
    })
}

/// Bytes on their way to the client that a write did not take yet. Most
/// writes take everything, so the room for a rest is made only by the
/// first write that does not, and given back when the connection goes idle
/// ([`Outbox::release`]): an idle connection keeps one pointer for it.
#[derive(Debug, Default)]
pub(super) struct Outbox(Option<Box<Rest>>);

/// What waits, in order: `head[at..]`, `body`, `tail`.
#[derive(Debug, Default)]
struct Rest {
    head: Vec<u8>,
    at: usize,
    body: Bytes,
    tail: &'static [u8],
}

impl Rest {
    fn is_empty(&self) -> bool {
        self.at == self.head.len() && self.body.is_empty() && self.tail.is_empty()
    }
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(Rest::is_empty)
    }

    /// Writes `head`, `body` and `tail` in one go as far as the socket takes
    /// them, keeping the rest; the outbox must be empty. A write that is not
    /// ready leaves the waker registered: drain with [`Outbox::poll_drain`].
    pub(super) fn send<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        cx: &mut Context<'_>,
        head: &[u8],
        mut body: Bytes,
        mut tail: &'static [u8],
    ) -> io::Result<()> {
        debug_assert!(self.is_empty());
        let slices = [IoSlice::new(head), IoSlice::new(&body), IoSlice::new(tail)];
        let n = match Pin::new(&mut *io).poll_write_vectored(cx, &slices) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => 0,
        };
        if n == head.len() + body.len() + tail.len() {
            return Ok(());
        }
        let rest = self.0.get_or_insert_default();
        let from_head = advance_written(n, head.len(), &mut body, &mut tail);
        if from_head < head.len() {
            rest.head.clear();
            rest.head.extend_from_slice(&head[from_head..]);
            rest.at = 0;
        }
        rest.body = body;
        rest.tail = tail;
        Ok(())
    }

    /// Writes out whatever waits; then holds no buffer.
    pub(super) fn poll_drain<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(rest) = self.0.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !rest.is_empty() {
            let slices = [
                IoSlice::new(&rest.head[rest.at..]),
                IoSlice::new(&rest.body),
                IoSlice::new(rest.tail),
            ];
            let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let head_left = rest.head.len() - rest.at;
            rest.at += advance_written(n, head_left, &mut rest.body, &mut rest.tail);
        }
        if rest.head.capacity() > 0 {
            rest.head = Vec::new();
            rest.at = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Gives back the room for a rest, for a connection going idle.
    pub(super) fn release(&mut self) {
        debug_assert!(self.is_empty());
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_whole_write_makes_no_room_for_a_rest() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let mut outbox = Outbox::default();
        std::future::poll_fn(|cx| {
            Poll::Ready(outbox.send(&mut server, cx, b"head:", Bytes::from_static(b"body"), b":tail"))
        })
        .await
        .unwrap();
        assert!(outbox.is_empty());
        assert!(outbox.0.is_none(), "nothing allocated");
    }

    #[tokio::test]
    async fn a_short_write_keeps_the_rest_in_order() {
        // A pipe that takes 5 bytes at a time until read.
        let (mut client, mut server) = tokio::io::duplex(5);
        let mut outbox = Outbox::default();
        let sent = std::future::poll_fn(|cx| {
            Poll::Ready(outbox.send(&mut server, cx, b"head:", Bytes::from_static(b"body"), b":tail"))
        })
        .await;
        sent.unwrap();
        assert!(!outbox.is_empty());
        let reader = tokio::spawn(async move {
            let mut all = vec![0u8; 14];
            client.read_exact(&mut all).await.unwrap();
            all
        });
        std::future::poll_fn(|cx| outbox.poll_drain(&mut server, cx))
            .await
            .unwrap();
        assert!(outbox.is_empty());
        assert_eq!(
            outbox.0.as_ref().unwrap().head.capacity(),
            0,
            "no buffer held once drained"
        );
        outbox.release();
        assert!(outbox.0.is_none());
        assert_eq!(reader.await.unwrap(), b"head:body:tail");
    }
}
