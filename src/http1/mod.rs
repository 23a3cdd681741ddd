//! What our two HTTP/1.1 codecs share on the way in: the server codec
//! (`server/h1`, request bodies from clients) and the upstream client
//! (`upstream/h1`, response bodies from servers) decode bodies with the same
//! pieces, so both directions accept exactly the same framing, and read the
//! `Connection` field the same way.

pub mod chunked;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};

use crate::proxy::headers::hop_by_hop_index;

/// What the `Connection` fields of a message said (RFC 9110 §7.6.1).
#[derive(Debug, Default)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Fields it names beyond the fixed hop-by-hop list, which go with the
    /// connection too (rare: allocates only then).
    pub named: Vec<HeaderName>,
}

impl ConnectionOptions {
    /// Adds the options of one `Connection` field.
    pub fn read(&mut self, value: &HeaderValue) {
        for option in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if option.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if option.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if option.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if let Ok(named) = HeaderName::from_bytes(option)
                && hop_by_hop_index(&named).is_none()
            {
                self.named.push(named);
            }
        }
    }
}

/// Counts the `n` bytes one vectored write took of `head_left` bytes of a
/// head, then `body`, then `tail` (the way both codecs write: head, body
/// data, the CRLF after a chunk) off them: `body` and `tail` are advanced
/// past what went, and how much of the head went is returned.
pub fn advance_written(mut n: usize, head_left: usize, body: &mut Bytes, tail: &mut &'static [u8]) -> usize {
    let from_head = n.min(head_left);
    n -= from_head;
    let from_body = n.min(body.len());
    body.advance(from_body);
    n -= from_body;
    *tail = &tail[n.min(tail.len())..];
    from_head
}

/// What one step of decoding a body gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no more of the body: read more.
    NeedMore,
    /// The body has ended; what is left in the buffer is not part of it.
    Done,
}

/// Splits up to `left` bytes of body off the front of `buf`, without a
/// copy, and counts them off `left`; `None` when `buf` is empty.
// Inlined: it is on the path of every body.
#[inline(always)]
pub fn split_counted(left: &mut u64, buf: &mut BytesMut) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(*left).map_or(buf.len(), |left| left.min(buf.len()));
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// Feeds `raw` to `decode` in pieces of `step` bytes, as reads would bring
/// it, until the body ends or `raw` runs out: the body, and how many bytes
/// of `raw` it took (`None` when it never ended).
#[cfg(test)]
pub(crate) fn feed_in_pieces<E>(
    raw: &[u8],
    step: usize,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Decoded, E>,
) -> Result<(Vec<u8>, Option<usize>), E> {
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match decode(&mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::Done => return Ok((body, Some(fed - buf.len()))),
            Decoded::NeedMore if fed == raw.len() => return Ok((body, None)),
            Decoded::NeedMore => {
                let n = step.max(1).min(raw.len() - fed);
                buf.extend_from_slice(&raw[fed..fed + n]);
                fed += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_write_is_counted_off_head_then_body_then_tail() {
        let (head, body, tail) = (5, &b"0123456789"[..], &b"\r\n"[..]);
        for n in 0..=head + body.len() + tail.len() {
            let (mut b, mut t) = (Bytes::from_static(body), tail);
            let from_head = advance_written(n, head, &mut b, &mut t);
            let mut rest = vec![b'h'; head - from_head];
            rest.extend_from_slice(&b);
            rest.extend_from_slice(t);
            let mut all = vec![b'h'; head];
            all.extend_from_slice(body);
            all.extend_from_slice(tail);
            assert_eq!(rest, &all[n..], "after {n} bytes");
        }
    }
}
