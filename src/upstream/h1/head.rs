//! Response heads from upstream servers: parsed by `httparse`, header
//! values sliced out of the read buffer without copying, and the body's
//! framing decided as RFC 9112 §6.3 says (ambiguity is an error, never a
//! guess: a proxy that guesses can be made to smuggle responses).

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{HeaderName, HeaderValue, Response, StatusCode, Version, header};

use super::{Framing, Head};
use crate::http1::{self, ConnectionOptions};
use crate::proxy::headers;

/// Most header fields a response may have.
const MAX_HEADERS: usize = 100;
/// Largest response head accepted (offsets into it fit in a `u16`).
const MAX_HEAD: usize = u16::MAX as usize;
/// Room left in the header map for what the proxy adds to a response.
const ADDED_HEADERS: usize = 4;
/// Fields of most responses.
const FEW_HEADERS: usize = 16;

/// Takes one final response head off the front of `buf` (informational
/// ones before it are skipped), or `None` if it is not all there yet.
pub(super) fn parse(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, &'static str> {
    loop {
        let Some(head) = parse_one(buf, head_request)? else {
            return Ok(None);
        };
        let status = head.parts.status;
        // 1xx other than 101 are interim: the final answer follows.
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        return Ok(Some(head));
    }
}

fn parse_one(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, &'static str> {
    // Neither array is initialised up front: that alone cost more than the
    // parse (a 3 KiB memset per response).
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err("response head too large"),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err("response head too large"),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
        Err(_) => return Err("invalid response head"),
    };
    let code = response.code.ok_or("no status code")?;
    let status = StatusCode::from_u16(code).map_err(|_| "invalid status code")?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where each field sits in the buffer, to slice it out once frozen.
    let base = buf.as_ptr() as usize;
    let count = response.headers.len();
    // On the stack for the usual few fields (setting all `MAX_HEADERS` to
    // zero first costs more than filling them).
    let mut few = [(0u16, 0u16, 0u16, 0u16); FEW_HEADERS];
    let mut many = Vec::new();
    let spans = if count <= FEW_HEADERS {
        &mut few[..count]
    } else {
        many.resize(count, (0, 0, 0, 0));
        &mut many[..]
    };
    for (span, field) in spans.iter_mut().zip(response.headers.iter()) {
        // Within the head, so below MAX_HEAD.
        let name = (field.name.as_ptr() as usize - base) as u16;
        let value = (field.value.as_ptr() as usize - base) as u16;
        *span = (
            name,
            name + field.name.len() as u16,
            value,
            value + field.value.len() as u16,
        );
    }
    let head = buf.split_to(len).freeze();
    let mut headers = http1::header_map(count + ADDED_HEADERS);
    let mut scan = Scan::default();
    // Hop-by-hop fields describe this connection, which the client owns:
    // read here, never put in the map (an `Upgrade` stays on a 101, whose
    // protocol the proxy passes on).
    let keep_upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    for &(name_start, name_end, value_start, value_end) in spans.iter() {
        let name =
            http1::field_name(&head[name_start as usize..name_end as usize]).map_err(|_| "invalid header name")?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
            .map_err(|_| "invalid header value")?;
        scan.see(&name, &value);
        if let Some(hop) = headers::hop_by_hop_index(&name)
            && !(keep_upgrade && hop == headers::UPGRADE_INDEX)
        {
            continue;
        }
        headers.append(name, value);
    }
    for named in scan.connection.named.drain(..) {
        headers.remove(named);
    }
    let (framing, reusable) = scan.framing(status, version, head_request)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    let (parts, ()) = response.into_parts();
    Ok(Some(Head {
        parts,
        framing,
        reusable,
    }))
}

/// What the framing- and connection-related fields of a response said.
#[derive(Debug, Default)]
struct Scan {
    /// Its fields named there are removed once the map is built.
    connection: ConnectionOptions,
    /// A `Transfer-Encoding` field was present.
    coded: bool,
    /// The last transfer coding listed is `chunked`.
    chunked_last: bool,
    length: Option<u64>,
    /// Why the `Content-Length` fields cannot be trusted, if they cannot:
    /// an error only where the length delimits the body.
    bad_length: Option<&'static str>,
}

impl Scan {
    fn see(&mut self, name: &HeaderName, value: &HeaderValue) {
        let items = || value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii);
        if *name == header::CONNECTION {
            self.connection.read(value);
        } else if *name == header::TRANSFER_ENCODING {
            self.coded = true;
            if let Some(last) = items().rfind(|t| !t.is_empty()) {
                self.chunked_last = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if *name == header::CONTENT_LENGTH {
            for part in items() {
                let n = (!part.is_empty() && part.len() <= 19 && part.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                    .flatten();
                match n {
                    None => self.bad_length = Some("invalid content-length"),
                    Some(n) if self.length.is_some_and(|l| l != n) => {
                        self.bad_length = Some("conflicting content-length values");
                    }
                    Some(n) => self.length = Some(n),
                }
            }
        }
    }

    /// How the body is delimited, and whether the connection stays open after it.
    fn framing(
        &self,
        status: StatusCode,
        version: Version,
        head_request: bool,
    ) -> Result<(Framing, bool), &'static str> {
        let keep_alive = !self.connection.close && (version == Version::HTTP_11 || self.connection.keep_alive);
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok((Framing::Empty, keep_alive && status != StatusCode::SWITCHING_PROTOCOLS));
        }
        if self.coded {
            // With a length too, the length is ignored and the connection
            // not trusted with another request (RFC 9112 §6.3 point 3).
            return Ok(if self.chunked_last {
                (
                    Framing::Chunked,
                    keep_alive && self.length.is_none() && self.bad_length.is_none(),
                )
            } else {
                (Framing::UntilClose, false)
            });
        }
        if let Some(bad) = self.bad_length {
            return Err(bad);
        }
        Ok(match self.length {
            Some(n) => (Framing::Length(n), keep_alive),
            None => (Framing::UntilClose, false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(raw: &str) -> Result<Option<Head>, &'static str> {
        parse(&mut BytesMut::from(raw), false)
    }

    #[test]
    fn a_complete_head_is_split_off_with_its_framing() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        let head = parse(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.parts.status, 200);
        assert_eq!(head.parts.headers["x-a"], "b");
        assert_eq!((head.framing, head.reusable), (Framing::Length(5), true));
        assert_eq!(&buf[..], b"hello");
        assert!(parsed("HTTP/1.1 200 OK\r\nContent-Len").unwrap().is_none());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing_of = |raw: &str| parsed(raw).map(|h| h.map(|h| (h.framing, h.reusable)));
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Ok(Some((Framing::Chunked, true)))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            Ok(Some((Framing::Chunked, false)))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Ok(Some((Framing::UntilClose, false)))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\n\r\n"),
            Ok(Some((Framing::UntilClose, false)))
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"),
            Ok(Some((Framing::Length(1), false)))
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n"),
            Ok(Some((Framing::Length(1), true)))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"),
            Ok(Some((Framing::Length(1), false)))
        );
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
            Ok(Some((Framing::Empty, true)))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n"),
            Ok(Some((Framing::Length(7), true)))
        );
        assert!(
            parse(
                &mut BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
                true
            )
            .unwrap()
            .unwrap()
            .framing
                == Framing::Empty
        );
    }

    #[test]
    fn ambiguous_or_malformed_heads_are_errors() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(parsed(raw).is_err(), "{raw:?}");
        }
        let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(parsed(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD + 10));
        assert!(parsed(&huge).is_err());
    }

    #[test]
    fn interim_answers_are_skipped_but_101_is_final() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(parse(&mut buf, false).unwrap().unwrap().parts.status, 200);
        let head = parsed("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.parts.status.as_u16(), head.framing, head.reusable),
            (101, Framing::Empty, false)
        );
        assert_eq!(head.parts.headers[header::UPGRADE], "websocket");
    }

    #[test]
    fn hop_by_hop_fields_are_read_and_not_handed_on() {
        let head = parsed(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
             Upgrade: h2c\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((head.framing, head.reusable), (Framing::Chunked, false));
        let names: Vec<&str> = head.parts.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&mut BytesMut::from(&input[..]), false);
        }
    }
}
