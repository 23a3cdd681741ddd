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
    fresh_request_id()
}

/// A new request id, for a request that carries none.
pub fn fresh_request_id() -> HeaderValue {
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

/// Request ids made at a time: one buffer, and one allocation, serves this
/// many requests (each id shares it; sharing is a reference count).
const IDS_PER_BLOCK: usize = 64;
const ID_LEN: usize = 32;

thread_local! {
    /// This worker's block of fresh ids and how many are left in it.
    static FRESH_IDS: std::cell::RefCell<(bytes::Bytes, usize)> = const { std::cell::RefCell::new((bytes::Bytes::new(), 0)) };
}

/// A random 128-bit id in hex. Made 64 at a time: a header value of its own
/// per request costs an allocation to make and another to share it with the
/// upstream request.
fn generate_request_id() -> HeaderValue {
    FRESH_IDS.with(|fresh| {
        let mut fresh = fresh.borrow_mut();
        if fresh.1 == 0 {
            *fresh = (new_id_block(), IDS_PER_BLOCK);
        }
        fresh.1 -= 1;
        let at = fresh.1 * ID_LEN;
        HeaderValue::from_maybe_shared(fresh.0.slice(at..at + ID_LEN)).unwrap_or(HeaderValue::from_static("-"))
    })
}

fn new_id_block() -> bytes::Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut block = Vec::with_capacity(IDS_PER_BLOCK * ID_LEN);
    for _ in 0..IDS_PER_BLOCK {
        let n = fastrand::u128(..);
        block.extend((0..ID_LEN).rev().map(|digit| HEX[((n >> (digit * 4)) & 0xf) as usize]));
    }
    // Shared from the start: handing out slices never re-allocates it.
    bytes::Bytes::from_owner(block)
}

/// `Upgrade`'s place in the hop-by-hop list.
pub(crate) const UPGRADE_INDEX: usize = 5;

/// Where `name` is in the list of fields that describe one connection
/// rather than the message (RFC 9110 §7.6.1: `Connection` at 0), if it is.
/// Both HTTP/1 codecs read these and never put them in the message they hand
/// on, so the proxy has nothing to strip. Names are lowercase in a
/// `HeaderMap`; matching on the text dispatches on its length first, which is
/// far cheaper than comparing it with each `HeaderName` of the list (this
/// runs for every field of every message).
pub(crate) fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
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

/// The fields the proxy adds to a request on its way upstream: who the
/// client is, what it asked for, and the request id. They are not put in
/// the request's map (five insertions, each hashing its name and probing):
/// the upstream codec writes them after the map's fields and leaves out any
/// field of the map that has one of their names, which is what inserting
/// them would have done.
#[derive(Debug)]
pub struct Forwarding {
    fields: [(HeaderName, HeaderValue); 5],
    len: usize,
}

impl Forwarding {
    /// `host` is the request's `Host`; `headers` its fields, for the
    /// `X-Forwarded-For` list it came with (`None`: it came with none).
    pub fn new(
        headers: Option<&HeaderMap>,
        host: Option<HeaderValue>,
        client_ip: &HeaderValue,
        proto: &'static str,
        request_id: &HeaderValue,
    ) -> Self {
        let ip = client_ip;
        let prior = headers.and_then(|h| Some((h, h.get(X_FORWARDED_FOR)?.to_str().ok()?)));
        let forwarded_for = match prior {
            Some((headers, prior)) if !prior.trim().is_empty() => {
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
        let len = if host.is_some() { 5 } else { 4 };
        // `X-Forwarded-Host` last: it is left out when there is no `Host`
        // (a client's own then goes through, as it always has).
        let fields = [
            (X_FORWARDED_FOR, forwarded_for),
            (X_REAL_IP, ip.clone()),
            (X_FORWARDED_PROTO, HeaderValue::from_static(proto)),
            (X_REQUEST_ID, request_id.clone()),
            (X_FORWARDED_HOST, host.unwrap_or(HeaderValue::from_static(""))),
        ];
        Forwarding { fields, len }
    }

    pub fn fields(&self) -> &[(HeaderName, HeaderValue)] {
        &self.fields[..self.len]
    }

    /// A route's edits, for the fields among ours (`apply_edits` makes them
    /// on the map, where the upstream codec would not write them): a removed
    /// one is not sent, a set one is sent with the route's value.
    pub fn apply_edits(&mut self, edits: &HeaderEdits) {
        for name in &edits.remove {
            if let Some(at) = self.fields().iter().position(|(ours, _)| ours == name) {
                self.fields[at..self.len].rotate_left(1);
                self.len -= 1;
            }
        }
        for (name, value) in &edits.set {
            if let Some(at) = self.fields().iter().position(|(ours, _)| ours == name) {
                self.fields[at].1 = value.clone();
            }
        }
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
    fn the_hop_by_hop_list_is_rfc_9110s() {
        let listed = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
        ];
        for (i, name) in listed.iter().enumerate() {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(name)), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::UPGRADE), Some(UPGRADE_INDEX));
        for other in ["content-length", "host", "x-connection", "t", "upgrades"] {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(other)), None, "{other}");
        }
    }

    fn fields_of(forwarding: &Forwarding) -> Vec<(&str, &str)> {
        forwarding
            .fields()
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn forwarded_for_appends_to_every_prior_line() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        let host = HeaderValue::from_static("example.com");
        let id = HeaderValue::from_static("id-1");
        let forwarding = Forwarding::new(Some(&h), Some(host), &HeaderValue::from_static("10.0.0.9"), "http", &id);
        assert_eq!(
            fields_of(&forwarding),
            [
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.9"),
                ("x-real-ip", "10.0.0.9"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", "id-1"),
                ("x-forwarded-host", "example.com"),
            ]
        );
        let without_host = Forwarding::new(None, None, &HeaderValue::from_static("::1"), "https", &id);
        assert_eq!(
            fields_of(&without_host),
            [
                ("x-forwarded-for", "::1"),
                ("x-real-ip", "::1"),
                ("x-forwarded-proto", "https"),
                ("x-request-id", "id-1"),
            ]
        );
    }

    #[test]
    fn route_edits_reach_the_forwarding_fields() {
        let id = HeaderValue::from_static("id-1");
        let host = HeaderValue::from_static("example.com");
        let mut forwarding = Forwarding::new(None, Some(host), &HeaderValue::from_static("10.0.0.9"), "http", &id);
        let edits = HeaderEdits {
            remove: vec![X_REAL_IP, HeaderName::from_static("x-other")],
            set: vec![
                (X_FORWARDED_PROTO, HeaderValue::from_static("https")),
                (HeaderName::from_static("x-env"), HeaderValue::from_static("prod")),
            ],
        };
        forwarding.apply_edits(&edits);
        assert_eq!(
            fields_of(&forwarding),
            [
                ("x-forwarded-for", "10.0.0.9"),
                ("x-forwarded-proto", "https"),
                ("x-request-id", "id-1"),
                ("x-forwarded-host", "example.com"),
            ]
        );
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
        assert!(fresh.as_bytes().iter().all(u8::is_ascii_hexdigit));
        // Across more than one block, every id is new.
        let many: std::collections::HashSet<_> = (0..3 * IDS_PER_BLOCK).map(|_| request_id(&h)).collect();
        assert_eq!(many.len(), 3 * IDS_PER_BLOCK, "ids are random");
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
