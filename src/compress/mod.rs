//! Response compression for routes with `compress`: which coding a client
//! gets (Accept-Encoding with q-values), which responses qualify, the header
//! changes that go with it, and (in `encoder`) the streaming encoder.

mod encoder;

pub use encoder::CompressedBody;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;

use crate::body::ResponseBody;
use crate::config::Compress;

/// Responses that declare fewer bytes than this are sent as they are: the
/// gzip header and trailer alone are 18 bytes, and tiny bodies rarely shrink.
pub const MIN_BYTES: u64 = 1024;

/// A content coding Fulcrum can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Br,
}

impl Encoding {
    fn header_value(self) -> HeaderValue {
        match self {
            Encoding::Gzip => HeaderValue::from_static("gzip"),
            Encoding::Br => HeaderValue::from_static("br"),
        }
    }
}

/// What a request on a route asks of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The route does not compress: the response is not looked at.
    Off,
    /// The route compresses, but not for this request (the client accepts
    /// none of its codings, or it is a HEAD): only `Vary` is added.
    Identity,
    Encode(Encoding),
}

impl Plan {
    /// Decides from the request alone; costs one check when the route has
    /// no `compress`.
    pub fn for_request<B>(allowed: Compress, req: &Request<B>) -> Plan {
        if allowed.is_off() {
            return Plan::Off;
        }
        if req.method() == Method::HEAD {
            return Plan::Identity;
        }
        negotiate(req.headers(), allowed).map_or(Plan::Identity, Plan::Encode)
    }
}

/// Applies `plan` to a response on its way to the client: a qualifying
/// response gets `Vary: Accept-Encoding` and, when a coding was agreed, is
/// compressed as it streams.
pub fn apply(plan: Plan, response: &mut Response<ResponseBody>) {
    if plan == Plan::Off || !qualifies(response) {
        return;
    }
    let headers = response.headers_mut();
    add_vary(headers);
    let Plan::Encode(encoding) = plan else {
        return;
    };
    headers.remove(header::CONTENT_LENGTH);
    // Byte ranges of the compressed form are not what the origin offered.
    headers.remove(header::ACCEPT_RANGES);
    headers.insert(header::CONTENT_ENCODING, encoding.header_value());
    weaken_etag(headers);
    let body = std::mem::replace(response.body_mut(), ResponseBody::empty());
    *response.body_mut() = ResponseBody::Compressed(Box::new(CompressedBody::new(body, encoding)));
}

/// The coding to use for a client: among the route's codings, the one the
/// client weighs highest (`*` stands for codings it does not name; q=0
/// refuses); br when both weigh the same. `None`: send it as it is.
pub fn negotiate(headers: &HeaderMap, allowed: Compress) -> Option<Encoding> {
    let mut gzip = None;
    let mut br = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let slot = if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                &mut gzip
            } else if coding.eq_ignore_ascii_case("br") {
                &mut br
            } else if coding == "*" {
                &mut any
            } else {
                continue;
            };
            let q = weight(parts);
            // Named twice: the lower weight wins, so a refusal sticks.
            *slot = Some(slot.map_or(q, |seen: u16| seen.min(q)));
        }
    }
    let q_of = |listed: bool, named: Option<u16>| if listed { named.or(any).unwrap_or(0) } else { 0 };
    let (br, gzip) = (q_of(allowed.br, br), q_of(allowed.gzip, gzip));
    match (br, gzip) {
        (0, 0) => None,
        (br, gzip) if br >= gzip => Some(Encoding::Br),
        _ => Some(Encoding::Gzip),
    }
}

/// The `q` parameter in thousandths (1000 when absent); a malformed one
/// counts as a refusal.
fn weight<'a>(params: impl Iterator<Item = &'a str>) -> u16 {
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("q") {
            return qvalue(value.trim()).unwrap_or(0);
        }
    }
    1000
}

/// RFC 9110 §12.4.2: `0[.ddd]` or `1[.000]`, in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, digit) in frac.bytes().enumerate() {
        thousandths += u16::from(digit - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Whether compressing this response is allowed and worth it: it has a body
/// of a compressible type, is not encoded or ranged already, is not too
/// small, and does not forbid transformation (RFC 9111 §5.2.2.6).
fn qualifies(response: &Response<ResponseBody>) -> bool {
    let status = response.status();
    if status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        )
        || response.body().is_end_stream()
    {
        return false;
    }
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_ENCODING) || headers.contains_key(header::CONTENT_RANGE) {
        return false;
    }
    if !headers.get(header::CONTENT_TYPE).is_some_and(compressible) {
        return false;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len < MIN_BYTES) {
        return false;
    }
    !headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("no-transform")))
}

/// Media types that shrink well: `text/*`, `*/*+json`, `*/*+xml`, and a
/// short list of others. Already-compressed formats (images, video,
/// archives, fonts in woff2) are left alone.
fn compressible(content_type: &HeaderValue) -> bool {
    let Ok(text) = content_type.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let ends_with = |suffix: &str| {
        subtype.len() > suffix.len() && subtype[subtype.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    if kind.eq_ignore_ascii_case("text") || ends_with("+json") || ends_with("+xml") {
        return true;
    }
    const LISTED: [(&str, &str); 8] = [
        ("application", "json"),
        ("application", "javascript"),
        ("application", "x-javascript"),
        ("application", "ecmascript"),
        ("application", "xml"),
        ("application", "wasm"),
        ("font", "ttf"),
        ("font", "otf"),
    ];
    LISTED
        .iter()
        .any(|(k, s)| kind.eq_ignore_ascii_case(k) && subtype.eq_ignore_ascii_case(s))
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value.to_str().unwrap_or("").split(',').map(str::trim)
}

/// Adds `Accept-Encoding` to `Vary` unless it (or `*`) is there already;
/// the origin's own `Vary` entries are kept.
fn add_vary(headers: &mut HeaderMap) {
    let covered = headers
        .get_all(header::VARY)
        .iter()
        .any(|v| tokens(v).any(|t| t == "*" || t.eq_ignore_ascii_case("accept-encoding")));
    if !covered {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// A strong ETag promises byte-identical content, which the compressed form
/// is not (RFC 9110 §8.8.1): it becomes weak.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    if etag.as_bytes().starts_with(b"W/") {
        return;
    }
    let mut weak = Vec::with_capacity(etag.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(etag.as_bytes());
    match HeaderValue::from_bytes(&weak) {
        Ok(weak) => {
            headers.insert(header::ETAG, weak);
        }
        Err(_) => {
            headers.remove(header::ETAG);
        }
    }
}

#[cfg(test)]
mod tests;
