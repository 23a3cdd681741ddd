//! Writing to the client: a response head and the body bytes that are
//! already there go out in one vectored write, encoded in a per-worker
//! scratch buffer; only what a write could not take is copied into the
//! connection, and that copy is freed as soon as it has gone out.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

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

/// Bytes on their way to the client that a write did not take yet, in
/// order: `head[at..]`, `body`, `tail`.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    head: Vec<u8>,
    at: usize,
    body: Bytes,
    tail: &'static [u8],
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.at == self.head.len() && self.body.is_empty() && self.tail.is_empty()
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
        tail: &'static [u8],
    ) -> io::Result<()> {
        debug_assert!(self.is_empty());
        let slices = [IoSlice::new(head), IoSlice::new(&body), IoSlice::new(tail)];
        let mut n = match Pin::new(&mut *io).poll_write_vectored(cx, &slices) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => 0,
        };
        let from_head = n.min(head.len());
        n -= from_head;
        if from_head < head.len() {
            self.head.clear();
            self.head.extend_from_slice(&head[from_head..]);
            self.at = 0;
        }
        let from_body = n.min(body.len());
        n -= from_body;
        body.advance(from_body);
        self.body = body;
        self.tail = &tail[n.min(tail.len())..];
        Ok(())
    }

    /// Writes out whatever waits; then holds no memory.
    pub(super) fn poll_drain<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let slices = [
                IoSlice::new(&self.head[self.at..]),
                IoSlice::new(&self.body),
                IoSlice::new(self.tail),
            ];
            let mut n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_head = n.min(self.head.len() - self.at);
            self.at += from_head;
            n -= from_head;
            let from_body = n.min(self.body.len());
            self.body.advance(from_body);
            n -= from_body;
            self.tail = &self.tail[n.min(self.tail.len())..];
        }
        if self.head.capacity() > 0 {
            self.head = Vec::new();
            self.at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

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
        assert_eq!(outbox.head.capacity(), 0, "nothing held once drained");
        assert_eq!(reader.await.unwrap(), b"head:body:tail");
    }
}
