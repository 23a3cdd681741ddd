//! Header work on the way through: hop-by-hop removal (RFC 9110 §7.6.1),
//! X-Forwarded-*, X-Real-IP, request ids, and the routes' set/remove edits.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderEdits;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub const X_UPSTREAM: HeaderName = HeaderName::from_static("x-upstream");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The client's request id when it is sane (1–128 visible characters from a
/// conservative set), else a fresh random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(X_REQUEST_ID) {
        let bytes = given.as_bytes();
        let sane = !bytes.is_empty()
            && bytes.len() <= 128
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'='));
        if sane {
            return never_indexed(given.clone());
        }
    }
    never_indexed(generate_request_id())
}

/// Marks a request id sensitive: HTTP/2's HPACK then sends it as a
/// never-indexed literal instead of adding a value seen once to the
/// connection's table, where every later response would be compared with it
/// and it would push out the entries that do repeat.
fn never_indexed(mut id: HeaderValue) -> HeaderValue {
    id.set_sensitive(true);
    id
}

fn generate_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for byte in out.iter_mut().rev() {
        *byte = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("-"))
}

/// Removes the headers that describe one connection rather than the message:
/// those named in `Connection`, and the fixed list of RFC 9110 §7.6.1.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which hop-by-hop headers are present;
    // most messages have none or only `Connection: keep-alive` (nginx sends
    // it on every response), so the common case removes one header and
    // allocates nothing.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    if present[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // These two name no header beyond the fixed list.
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, present) in present.into_iter().enumerate() {
        if present {
            headers.remove(hop_by_hop_name(i));
        }
    }
}

const HOP_BY_HOP_COUNT: usize = 6;

/// The RFC 9110 §7.6.1 list, `Connection` at 0.
fn hop_by_hop_name(index: usize) -> HeaderName {
    match index {
        0 => header::CONNECTION,
        1 => KEEP_ALIVE,
        2 => PROXY_CONNECTION,
        3 => header::TE,
        4 => header::TRANSFER_ENCODING,
        _ => header::UPGRADE,
    }
}

/// Names are lowercase in a `HeaderMap`; matching on the text dispatches on
/// its length first, which is far cheaper than comparing it with each
/// `HeaderName` of the list (this runs for every header of every message).
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "transfer-encoding" => Some(4),
        "upgrade" => Some(5),
        _ => None,
    }
}

/// Tells the upstream who the client is and what it asked for.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &'static str) {
    let ip = client_ip;
    let forwarded_for = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => {
            // Several X-Forwarded-For lines are one comma-separated list.
            let mut list = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            list.push_str(", ");
            list.push_str(ip.to_str().unwrap_or("unknown"));
            HeaderValue::from_str(&list).unwrap_or_else(|_| ip.clone())
        }
        _ => ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_REAL_IP, ip.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// HTTP/2 clients may send each cookie as a header of its own; an HTTP/1.1
/// upstream expects one `Cookie` line (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Applies a route's `remove` then `set` lists.
pub fn apply_edits(headers: &mut HeaderMap, edits: &HeaderEdits) {
    for name in &edits.remove {
        headers.remove(name);
    }
    for (name, value) in &edits.set {
        headers.insert(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_list_and_the_index_agree() {
        for i in 0..HOP_BY_HOP_COUNT {
            assert_eq!(hop_by_hop_index(&hop_by_hop_name(i)), Some(i));
        }
        for other in ["content-length", "host", "x-connection", "t", "upgrades"] {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(other)), None, "{other}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends_to_every_prior_line() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        add_forwarded(&mut h, &HeaderValue::from_static("10.0.0.9"), "http");
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h[X_REAL_IP], "10.0.0.9");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "example.com");
    }

    #[test]
    fn separate_cookie_headers_become_one_line() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn sane_request_ids_are_kept_and_others_replaced() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("req-42.a"));
        assert_eq!(request_id(&h), "req-42.a");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, request_id(&h), "ids are random");
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }

    #[test]
    fn request_ids_are_never_indexed_by_hpack() {
        let mut h = HeaderMap::new();
        assert!(request_id(&h).is_sensitive());
        h.insert(X_REQUEST_ID, HeaderValue::from_static("req-42.a"));
        assert!(request_id(&h).is_sensitive());
    }
}
