//! The hash key a request carries for `ip_hash` and `balance = "hash"`.

use http::Request;

use super::ClientInfo;
use crate::balance::hash_key;
use crate::config::{Balance, HashKey};
use crate::upstream::UpstreamPool;

/// The request's key for the upstream's algorithm, hashed; `None` when the
/// algorithm needs none or the request lacks it (the algorithm then falls
/// back to spreading such requests evenly).
pub fn request_key<B>(upstream: &UpstreamPool, req: &Request<B>, client: &ClientInfo) -> Option<u64> {
    match upstream.kind {
        Balance::IpHash => Some(hash_key(client.ip_header.as_bytes())),
        Balance::Hash => match upstream.hash_key.as_ref()? {
            HashKey::ClientIp => Some(hash_key(client.ip_header.as_bytes())),
            HashKey::Header(name) => req.headers().get(name).map(|v| hash_key(v.as_bytes())),
            HashKey::Cookie(name) => cookie(req, name).map(hash_key),
            HashKey::Path => Some(hash_key(req.uri().path().as_bytes())),
            HashKey::Query(name) => query_param(req.uri().query()?, name).map(hash_key),
        },
        _ => None,
    }
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a [u8]> {
    req.headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_bytes())
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_query_parameters_are_found_by_name() {
        let req = Request::get("/p?a=1&session=xyz&b")
            .header("cookie", "theme=dark; session=abc")
            .header("cookie", "other=1")
            .body(())
            .unwrap();
        assert_eq!(cookie(&req, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&req, "other"), Some(&b"1"[..]));
        assert_eq!(cookie(&req, "missing"), None);
        assert_eq!(query_param(req.uri().query().unwrap(), "session"), Some(&b"xyz"[..]));
        assert_eq!(query_param(req.uri().query().unwrap(), "b"), Some(&b""[..]));
        assert_eq!(query_param(req.uri().query().unwrap(), "c"), None);
    }
}
