//! Response heads on the wire: the status line, the fields, and the framing
//! the connection chose (`Content-Length` when the body's size is known,
//! else chunked, else close-delimited for HTTP/1.0), with a `Date` added
//! when absent. Also the plain-text answers the codec gives on its own.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode, Version, header, response};

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    /// No body may follow (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// The end of the body is the end of the connection (HTTP/1.0 clients).
    Close,
}

/// The framing for a response to a request of `version` (a HEAD request
/// when `head_request`), given the body's exact size when it is known.
pub(super) fn framing(status: StatusCode, head_request: bool, version: Version, exact: Option<u64>) -> BodyFraming {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return BodyFraming::None;
    }
    match exact {
        Some(n) => BodyFraming::Length(n),
        None if version == Version::HTTP_11 => BodyFraming::Chunked,
        None => BodyFraming::Close,
    }
}

/// What the `Connection` field of a response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnectionField {
    /// Nothing: HTTP/1.1's default, keep-alive.
    Omit,
    Close,
    /// HTTP/1.0 clients keep the connection only when told.
    KeepAlive,
    /// As the response has it (a 101's `upgrade`).
    AsGiven,
}

/// Appends the response head to `out`.
pub(super) fn head(out: &mut Vec<u8>, parts: &response::Parts, framing: BodyFraming, connection: ConnectionField) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    // A body-less response to HEAD, or a 304, may say how long the body
    // would have been; otherwise the framing fields are ours alone.
    let keep_length =
        framing == BodyFraming::None && parts.status != StatusCode::NO_CONTENT && !parts.status.is_informational();
    let mut dated = false;
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            if !keep_length {
                continue;
            }
        } else if *name == header::TRANSFER_ENCODING {
            continue;
        } else if *name == header::CONNECTION {
            if connection != ConnectionField::AsGiven {
                continue;
            }
        } else if *name == header::DATE {
            dated = true;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::Close => {}
    }
    match connection {
        ConnectionField::Close => out.extend_from_slice(b"connection: close\r\n"),
        ConnectionField::KeepAlive => out.extend_from_slice(b"connection: keep-alive\r\n"),
        ConnectionField::Omit | ConnectionField::AsGiven => {}
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// True when the response's own `Connection` field asks to close.
pub(super) fn asks_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|option| option.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// The size line that opens a chunk of `len` bytes.
pub(crate) fn chunk_size(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// The answer the codec gives on its own to a request it cannot take (a
/// malformed or oversized head): plain text naming the status, the reason
/// and a request id, as the proxy's own error answers do; then close.
pub(super) fn refusal(out: &mut Vec<u8>, status: StatusCode, why: &dyn std::fmt::Display) {
    let id = crate::proxy::headers::fresh_request_id();
    let id = String::from_utf8_lossy(id.as_bytes());
    let reason = status.canonical_reason().unwrap_or("");
    let body = format!("{} {reason}: {why} (request id {id})\n", status.as_u16());
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).as_bytes());
    field(out, b"content-type", b"text/plain; charset=utf-8");
    field(out, b"x-request-id", id.as_bytes());
    field(out, b"connection", b"close");
    out.extend_from_slice(b"content-length: ");
    decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\ndate: ");
    date(out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal (also used by the upstream client's heads).
pub(crate) fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// An IMF-fixdate is always this long.
const DATE_BYTES: usize = 29;

thread_local! {
    /// The current second's `Date`, formatted once per second per worker.
    static DATE: RefCell<(u64, [u8; DATE_BYTES])> = const { RefCell::new((u64::MAX, [0; DATE_BYTES])) };
}

/// The current `Date` as a field value (for HTTP/2 responses that lack one).
pub(crate) fn date_value() -> http::HeaderValue {
    let mut text = Vec::with_capacity(DATE_BYTES);
    date(&mut text);
    http::HeaderValue::from_bytes(&text).unwrap_or(http::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == DATE_BYTES {
                text.copy_from_slice(formatted.as_bytes());
                *at = second;
            }
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Response};

    fn encoded(response: Response<()>, framing: BodyFraming, connection: ConnectionField) -> String {
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        head(&mut out, &parts, framing, connection);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn framing_follows_status_method_and_size() {
        let ok = StatusCode::OK;
        let v11 = Version::HTTP_11;
        assert_eq!(framing(ok, false, v11, Some(3)), BodyFraming::Length(3));
        assert_eq!(framing(ok, false, v11, None), BodyFraming::Chunked);
        assert_eq!(framing(ok, false, Version::HTTP_10, None), BodyFraming::Close);
        assert_eq!(framing(ok, true, v11, Some(3)), BodyFraming::None);
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED, StatusCode::CONTINUE] {
            assert_eq!(framing(status, false, v11, None), BodyFraming::None);
        }
    }

    #[test]
    fn head_has_our_framing_and_a_date() {
        let response = Response::builder()
            .status(200)
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .header("connection", "keep-alive")
            .header("x-a", "1")
            .body(())
            .unwrap();
        let text = encoded(response, BodyFraming::Length(3), ConnectionField::Close);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 3\r\nconnection: close\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert!(!text.contains("999") && !text.contains("chunked") && !text.contains("keep-alive"));
    }

    #[test]
    fn head_response_keeps_the_length_and_a_given_date() {
        let response = Response::builder()
            .status(200)
            .header("content-length", "42")
            .header("date", "Tue, 01 Dec 2026 00:00:00 GMT")
            .body(())
            .unwrap();
        let text = encoded(response, BodyFraming::None, ConnectionField::KeepAlive);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 42\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\nconnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn switching_protocols_keeps_its_connection_field() {
        let mut response = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("content-length", "0")
            .body(())
            .unwrap();
        response
            .headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        let text = encoded(response, BodyFraming::None, ConnectionField::AsGiven);
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\ndate: "),
            "{text}"
        );
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for (len, text) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let mut out = Vec::new();
            chunk_size(&mut out, len);
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn refusal_is_plain_text_naming_a_request_id() {
        let mut out = Vec::new();
        refusal(&mut out, StatusCode::BAD_REQUEST, &"malformed request head");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(
            body.starts_with("400 Bad Request: malformed request head (request id "),
            "{body}"
        );
        let id = head.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap();
        assert!(body.contains(id));
    }
}
