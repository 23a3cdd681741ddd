//! Telling HTTP/2 with prior knowledge (h2c) from HTTP/1 on a plain
//! listener: the first bytes a client sends either are the HTTP/2 connection
//! preface or are not. The HTTP/1 codec reads them as the start of a head
//! and asks [`classify`]; when they are the preface, what it read is replayed
//! to HTTP/2 ([`Rewind`]), so nothing is lost and nothing is read twice.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// RFC 9113 §3.4: what every HTTP/2 client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a plain connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

/// What a connection's first bytes say: HTTP/2 once they hold the whole
/// preface, HTTP/1 as soon as they differ from it, `None` while they are a
/// strict beginning of it (nothing received included).
pub(super) fn classify(first: &[u8]) -> Option<Protocol> {
    let seen = first.len().min(PREFACE.len());
    if first[..seen] != PREFACE[..seen] {
        Some(Protocol::Http1)
    } else if seen == PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// A connection whose first bytes, already read, are read again first.
#[derive(Debug)]
pub(crate) struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub(crate) fn new(prefix: Bytes, inner: I) -> Self {
        Rewind { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Frees the first read's buffer now rather than with the connection.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[test]
    fn preface_is_http2_only_once_whole() {
        let whole = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0";
        for n in 0..PREFACE.len() {
            assert_eq!(classify(&whole[..n]), None, "{n} bytes");
        }
        assert_eq!(classify(&whole[..24]), Some(Protocol::Http2));
        assert_eq!(classify(whole), Some(Protocol::Http2));
    }

    #[test]
    fn anything_else_is_http1_at_the_first_difference() {
        assert_eq!(classify(b"G"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n\r\n"), Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_reads_on() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" rest")
            .await
            .unwrap();
        drop(client);
        let mut io = Rewind::new(Bytes::from_static(b"first"), server);
        let mut replayed = Vec::new();
        io.read_to_end(&mut replayed).await.unwrap();
        assert_eq!(replayed, b"first rest");
    }
}
