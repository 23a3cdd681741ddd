//! Telling HTTP/2 with prior knowledge (h2c) from HTTP/1 on a plain
//! listener: the first bytes a client sends either are the HTTP/2 connection
//! preface or are not. What was read to find out is replayed to the protocol
//! that gets the connection, so nothing is lost and nothing is read twice.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// RFC 9113 §3.4: what every HTTP/2 client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Room for the first read. One read usually brings a whole HTTP/1 request
/// head, which then needs no second system call to parse.
const FIRST_READ_BYTES: usize = 2048;

/// The protocol a plain connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

/// Reads until the bytes match the HTTP/2 preface or cannot; returns the
/// protocol, the bytes read (for the protocol to read first) and the
/// connection. A client that closes first is HTTP/1 (which then sees the
/// end as it would have).
pub(super) async fn sniff<I: AsyncRead + Unpin>(mut io: I) -> io::Result<(Protocol, BytesMut, I)> {
    let mut buf = BytesMut::with_capacity(FIRST_READ_BYTES);
    let protocol = loop {
        if io.read_buf(&mut buf).await? == 0 {
            break Protocol::Http1;
        }
        let seen = buf.len().min(PREFACE.len());
        if buf[..seen] != PREFACE[..seen] {
            break Protocol::Http1;
        }
        if seen == PREFACE.len() {
            break Protocol::Http2;
        }
    };
    Ok((protocol, buf, io))
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
    use tokio::io::AsyncWriteExt as _;

    async fn sniffed(chunks: &[&[u8]]) -> (Protocol, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64);
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for chunk in chunks {
                client.write_all(&chunk).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let (protocol, first, io) = sniff(server).await.unwrap();
        writer.await.unwrap();
        let mut io = Rewind::new(first.freeze(), io);
        let mut replayed = Vec::new();
        io.read_to_end(&mut replayed).await.unwrap();
        (protocol, replayed)
    }

    #[tokio::test]
    async fn preface_is_http2_even_when_it_arrives_in_pieces() {
        let (protocol, replayed) = sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM", b"\r\n\r\n\0\0"]).await;
        assert_eq!(protocol, Protocol::Http2);
        assert_eq!(replayed, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0");
    }

    #[tokio::test]
    async fn anything_else_is_http1_and_replayed_whole() {
        let (protocol, replayed) = sniffed(&[b"GET / HTTP/1.1\r\n", b"Host: x\r\n\r\n"]).await;
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(replayed, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let (protocol, replayed) = sniffed(&[b"PRI * HTTP/1.1\r\n\r\n"]).await;
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(replayed, b"PRI * HTTP/1.1\r\n\r\n");
        assert_eq!(sniffed(&[]).await, (Protocol::Http1, Vec::new()));
    }
}
