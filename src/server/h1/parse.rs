//! Request heads: bytes from the client in, an `http` request head and the
//! way its body is delimited out. The head's bytes are shared, not copied,
//! by the URI and the header values. Framing follows RFC 9112 §6 strictly,
//! so that no two readings of one message (ours and the client's, or ours
//! and an upstream's) can disagree: anything ambiguous is refused.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header};

use crate::http1::{self, ConnectionOptions};
use crate::proxy::{self, headers};

/// Most header lines a request may have (hyper's limit too).
pub(super) const MAX_HEADERS: usize = 100;

/// How a request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length`, more than zero bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head and what the connection needs to know about it.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) request: Request<()>,
    pub(super) framing: Framing,
    /// The client allows the connection to be reused after this exchange.
    pub(super) keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body.
    pub(super) expect_continue: bool,
    /// `Upgrade` with `Connection: upgrade`: the client asks to switch protocols.
    pub(super) upgrade: bool,
    /// Which of the fields the proxy looks up it has.
    pub(super) carried: proxy::Carried,
}

/// Why a request head is refused; the connection answers and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum HeadError {
    #[error("malformed request head")]
    Malformed,
    #[error("request head larger than max_header_size")]
    TooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("invalid or conflicting body framing")]
    Framing,
    #[error("unsupported transfer coding")]
    UnknownCoding,
}

impl HeadError {
    pub(super) fn status(self) -> StatusCode {
        match self {
            HeadError::Malformed | HeadError::Framing => StatusCode::BAD_REQUEST,
            HeadError::TooLarge | HeadError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// Parses the head at the front of `buf`. `Ok(None)`: not complete yet (and
/// still within `max_bytes`). On success the head's bytes are taken from
/// `buf`, which keeps whatever follows (a body, a pipelined request).
pub(super) fn parse(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<Head>, HeadError> {
    // Parsed frozen, so that the URI and the values can share the bytes
    // they point at; an incomplete head goes back as it was (no copy: the
    // buffer is still unique then).
    let whole = std::mem::take(buf).freeze();
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(&whole, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            let too_large = whole.len() >= max_bytes;
            *buf = whole
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            return if too_large { Err(HeadError::TooLarge) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > max_bytes {
        return Err(HeadError::TooLarge);
    }
    // What follows the head is rare (pipelining, a body in the same read)
    // and small: copied into a buffer of its own.
    if whole.len() > len {
        *buf = BytesMut::from(&whole[len..]);
    }
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes()).map_err(|_| HeadError::Malformed)?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Malformed),
    };
    let path = whole.slice_ref(parsed.path.unwrap_or_default().as_bytes());
    let uri = Uri::from_maybe_shared(path).map_err(|_| HeadError::Malformed)?;
    // Room for the forwarding fields the proxy adds, so the map never regrows.
    let mut map = http1::header_map(parsed.headers.len() + 8);
    let mut framing = FramingScan::default();
    for field in parsed.headers.iter() {
        // Standard names map to constants: no allocation.
        let name = http1::field_name(field.name.as_bytes()).map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_maybe_shared(whole.slice_ref(field.value)).map_err(|_| HeadError::Malformed)?;
        framing.see(&name, &value)?;
        // Told apart by length first: most fields are neither.
        match field.name.len() {
            12 if name == headers::X_REQUEST_ID => framing.carried.request_id = true,
            15 if name == headers::X_FORWARDED_FOR => framing.carried.forwarded_for = true,
            _ => {}
        }
        // Hop-by-hop fields are this connection's, read here and never
        // passed on; `Upgrade` stays until we know whether the request
        // really asks to switch (`Connection: upgrade` may come after it).
        if headers::hop_by_hop_index(&name).is_some_and(|hop| hop != headers::UPGRADE_INDEX) {
            continue;
        }
        map.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = map;
    framing.finish(request)
}

/// What the framing- and connection-related header fields said.
#[derive(Debug, Default)]
struct FramingScan {
    length: Option<u64>,
    /// A `Transfer-Encoding` field was present.
    coded: bool,
    /// The last transfer coding seen was `chunked`.
    chunked_last: bool,
    /// A coding other than `chunked` was listed.
    other_coding: bool,
    /// Its fields named there are removed once the map is built.
    connection: ConnectionOptions,
    upgrade_field: bool,
    expect_continue: bool,
    carried: proxy::Carried,
}

impl FramingScan {
    fn see(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), HeadError> {
        if *name == header::CONTENT_LENGTH {
            for item in value.as_bytes().split(|&b| b == b',') {
                let n = parse_length(item.trim_ascii()).ok_or(HeadError::Framing)?;
                // The same length repeated is allowed (RFC 9110 §8.6); two differ: refused.
                if self.length.is_some_and(|seen| seen != n) {
                    return Err(HeadError::Framing);
                }
                self.length = Some(n);
            }
        } else if *name == header::TRANSFER_ENCODING {
            self.coded = true;
            for coding in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if coding.is_empty() {
                    continue;
                }
                // `chunked` must be applied once, and last (RFC 9112 §6.1).
                if self.chunked_last {
                    return Err(HeadError::Framing);
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    self.chunked_last = true;
                } else {
                    self.other_coding = true;
                }
            }
        } else if *name == header::CONNECTION {
            self.connection.read(value);
        } else if *name == header::UPGRADE {
            self.upgrade_field = true;
        } else if *name == header::EXPECT {
            self.expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }

    fn finish(self, mut request: Request<()>) -> Result<Option<Head>, HeadError> {
        let upgrade = self.upgrade_field && self.connection.upgrade;
        if self.upgrade_field && !upgrade {
            request.headers_mut().remove(header::UPGRADE);
        }
        for named in self.connection.named {
            request.headers_mut().remove(named);
        }
        let framing = if self.coded {
            // Both framings at once is the classic smuggling vector; HTTP/1.0
            // has no chunked coding; a body whose end is not chunked cannot
            // be delimited at all.
            if self.length.is_some() || request.version() == Version::HTTP_10 || !self.chunked_last {
                return Err(HeadError::Framing);
            }
            if self.other_coding {
                return Err(HeadError::UnknownCoding);
            }
            Framing::Chunked
        } else {
            match self.length {
                Some(0) | None => Framing::Empty,
                Some(n) => Framing::Length(n),
            }
        };
        let keep_alive =
            !self.connection.close && (request.version() == Version::HTTP_11 || self.connection.keep_alive);
        Ok(Some(Head {
            expect_continue: self.expect_continue && framing != Framing::Empty && request.version() == Version::HTTP_11,
            upgrade,
            request,
            framing,
            keep_alive,
            carried: self.carried,
        }))
    }
}

/// `1*DIGIT`, nothing else (no sign, no spaces inside), without overflow.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 8192;

    fn parse_all(raw: &[u8]) -> Result<Option<Head>, HeadError> {
        parse(&mut BytesMut::from(raw), MAX)
    }

    fn head(raw: &str) -> Head {
        parse_all(raw.as_bytes()).unwrap().expect("a complete head")
    }

    #[test]
    fn get_parses_and_leaves_the_pipelined_rest() {
        let mut buf = BytesMut::from(&b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-One: 1\r\n\r\nGET /next"[..]);
        let head = parse(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(head.request.method(), Method::GET);
        assert_eq!(head.request.uri(), "/a?b=1");
        assert_eq!(head.request.version(), Version::HTTP_11);
        assert_eq!(head.request.headers()["host"], "x");
        assert_eq!(head.request.headers()["x-one"], "1");
        assert!(head.request.headers().capacity() >= 2 + 8);
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[test]
    fn incomplete_head_waits_and_oversized_one_is_refused() {
        assert!(parse_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "y".repeat(MAX));
        assert_eq!(parse_all(big.as_bytes()).unwrap_err(), HeadError::TooLarge);
        let complete_but_big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(MAX));
        assert_eq!(parse_all(complete_but_big.as_bytes()).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            raw.push_str(&format!("x-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        let error = parse(&mut BytesMut::from(raw.as_bytes()), 1 << 20).unwrap_err();
        assert_eq!(error, HeadError::TooManyHeaders);
        assert_eq!(error.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        let head = head("GET / HTTP/1.1\nHost: x\n\n");
        assert_eq!(head.request.headers()["host"], "x");
    }

    #[test]
    fn framing_by_length_or_chunked() {
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").framing,
            Framing::Empty
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").framing,
            Framing::Chunked
        );
        let continued = head("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(continued.expect_continue);
        assert!(!head("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let refused = [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for raw in refused {
            let error = parse_all(raw.as_bytes()).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{raw:?}");
        }
        let error = parse_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap_err();
        assert_eq!(error, HeadError::UnknownCoding);
        // A space before the colon is how some smuggling attempts hide a field.
        let error = parse_all(b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n").unwrap_err();
        assert_eq!(error, HeadError::Malformed);
    }

    #[test]
    fn garbage_is_malformed() {
        for raw in [
            &b"NOT HTTP AT ALL\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_all(raw).unwrap_err(), HeadError::Malformed, "{raw:?}");
        }
    }

    #[test]
    fn upgrade_needs_both_fields() {
        assert!(head("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(!head("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
    }

    #[test]
    fn hop_by_hop_fields_are_read_and_not_handed_on() {
        let raw = "POST / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
                   Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\nUpgrade: websocket\r\n\
                   Transfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n";
        let parsed = head(raw);
        assert_eq!(parsed.framing, Framing::Chunked);
        assert!(parsed.keep_alive);
        // No `upgrade` option: the `Upgrade` field goes with the others.
        assert!(!parsed.upgrade);
        let names: Vec<&str> = parsed.request.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["host", "x-kept"]);
        // Asked for, the switch keeps `Upgrade` for the proxy to pass on.
        let upgrading = head("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert!(upgrading.upgrade);
        assert_eq!(upgrading.request.headers()[header::UPGRADE], "websocket");
        assert!(!upgrading.request.headers().contains_key(header::CONNECTION));
    }

    /// The framing a well-behaved reader could see in `raw`: every
    /// Content-Length value and whether a Transfer-Encoding field is present.
    fn declared_framing(raw: &[u8]) -> (Vec<String>, bool) {
        let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
        let head_end = text
            .find("\r\n\r\n")
            .or_else(|| text.find("\n\n"))
            .unwrap_or(text.len());
        let mut lengths = Vec::new();
        let mut coded = false;
        for line in text[..head_end].lines().skip(1) {
            if let Some(v) = line.strip_prefix("content-length:") {
                lengths.extend(v.split(',').map(|s| s.trim().to_string()));
            }
            coded |= line.starts_with("transfer-encoding:");
        }
        (lengths, coded)
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Content-Length: 5".to_string()),
            Just("Content-Length: 6".to_string()),
            Just("content-length: 5, 5".to_string()),
            Just("Transfer-Encoding: chunked".to_string()),
            Just("Transfer-Encoding: gzip".to_string()),
            Just("Transfer-Encoding: chunked, identity".to_string()),
            Just("Connection: close".to_string()),
            Just("Host: x".to_string()),
            "[ -~]{0,12}".prop_map(|s| format!("X-A: {s}")),
            "[ -~\t]{0,20}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random bytes never panic the parser, and whatever comes back
        /// stays within the limit.
        #[test]
        fn random_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut buf = BytesMut::from(&raw[..]);
            if let Ok(Some(_)) = parse(&mut buf, 512) {
                prop_assert!(raw.len() - buf.len() <= 512);
            }
        }

        /// Heads built from framing fields in any order and number: an
        /// accepted one never has both framings, never two different
        /// lengths, and chunked only when that was the sole coding.
        #[test]
        fn accepted_framing_is_never_ambiguous(
            fields in proptest::collection::vec(field(), 0..6),
            ending in prop_oneof![Just("\r\n"), Just("\n")],
            version in prop_oneof![Just("1.1"), Just("1.0")],
        ) {
            let mut raw = format!("POST / HTTP/{version}{ending}");
            for f in &fields {
                raw.push_str(f);
                raw.push_str(ending);
            }
            raw.push_str(ending);
            let (lengths, coded) = declared_framing(raw.as_bytes());
            if let Ok(Some(head)) = parse_all(raw.as_bytes()) {
                prop_assert!(!coded || lengths.is_empty(), "both framings accepted: {raw:?}");
                match head.framing {
                    Framing::Chunked => prop_assert!(coded && version == "1.1"),
                    Framing::Length(n) => {
                        prop_assert!(!coded);
                        prop_assert!(lengths.iter().all(|l| l == &n.to_string()), "{raw:?}");
                    }
                    Framing::Empty => prop_assert!(!coded),
                }
            }
        }
    }
}
