use super::*;

const BOTH: Compress = Compress { gzip: true, br: true };
const GZIP: Compress = Compress { gzip: true, br: false };
const BR: Compress = Compress { gzip: false, br: true };

fn accept(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for v in values {
        headers.append(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
    }
    headers
}

fn chosen(values: &[&str], allowed: Compress) -> Option<Encoding> {
    negotiate(&accept(values), allowed)
}

#[test]
fn negotiation_follows_q_values_and_prefers_br_on_a_tie() {
    use Encoding::{Br, Gzip};
    let cases: &[(&[&str], Compress, Option<Encoding>)] = &[
        (&[], BOTH, None),
        (&["identity"], BOTH, None),
        (&["gzip, deflate, br"], BOTH, Some(Br)),
        (&["gzip, deflate, br"], GZIP, Some(Gzip)),
        (&["gzip"], BR, None),
        (&["GZip"], BOTH, Some(Gzip)),
        (&["x-gzip"], BOTH, Some(Gzip)),
        (&["br;q=0, gzip"], BOTH, Some(Gzip)),
        (&["br;q=0"], BOTH, None),
        (&["gzip;q=1.0, br;q=0.5"], BOTH, Some(Gzip)),
        (&["gzip;q=0.5, br;q=0.5"], BOTH, Some(Br)),
        (&["gzip ; Q=0.9 , br;q=0.8"], BOTH, Some(Gzip)),
        (&["*"], BOTH, Some(Br)),
        (&["*;q=0"], BOTH, None),
        (&["br;q=0, *"], BOTH, Some(Gzip)),
        (&["gzip;q=0, *;q=0.3"], GZIP, None),
        (&["gzip", "br"], BOTH, Some(Br)),
        (&["gzip, gzip;q=0"], GZIP, None),
        // A malformed weight refuses that coding rather than guessing.
        (&["br;q=2, gzip"], BOTH, Some(Gzip)),
        (&["br;q=0.0001, gzip;q=0.1"], BOTH, Some(Gzip)),
        (&["br;q=, gzip;q=x"], BOTH, None),
        (&[",,; ;q=1"], BOTH, None),
    ];
    for (values, allowed, expected) in cases {
        assert_eq!(
            chosen(values, *allowed),
            *expected,
            "Accept-Encoding {values:?} with {allowed:?}"
        );
    }
}

#[test]
fn q_values_parse_as_rfc_9110_writes_them() {
    assert_eq!(qvalue("1"), Some(1000));
    assert_eq!(qvalue("1.000"), Some(1000));
    assert_eq!(qvalue("0"), Some(0));
    assert_eq!(qvalue("0.5"), Some(500));
    assert_eq!(qvalue("0.05"), Some(50));
    assert_eq!(qvalue("0.001"), Some(1));
    for bad in ["1.5", "2", "0.0001", "-1", "", ".5", "0.5x", "01"] {
        assert_eq!(qvalue(bad), None, "{bad:?}");
    }
}

#[test]
fn compressible_types_are_a_short_list() {
    for yes in [
        "text/html",
        "text/plain; charset=utf-8",
        "TEXT/CSS",
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
        "application/problem+json",
        "application/atom+xml; charset=utf-8",
        "application/wasm",
    ] {
        assert!(compressible(&HeaderValue::from_static(yes)), "{yes}");
    }
    for no in [
        "image/png",
        "image/jpeg",
        "application/octet-stream",
        "application/zip",
        "video/mp4",
        "font/woff2",
        "+json",
        "application/+json",
        "text",
        "",
    ] {
        assert!(!compressible(&HeaderValue::from_static(no)), "{no}");
    }
}

fn response(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response.headers_mut().append(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    response
}

fn header_values(response: &Response<ResponseBody>, name: header::HeaderName) -> Vec<String> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

const TEXT: (&str, &str) = ("content-type", "text/plain");

#[test]
fn an_encoded_response_loses_its_length_and_gains_coding_vary_and_a_weak_etag() {
    let mut r = response(
        200,
        &[
            TEXT,
            ("content-length", "4096"),
            ("etag", "\"v1\""),
            ("vary", "Origin"),
            ("accept-ranges", "bytes"),
        ],
        "x",
    );
    apply(Plan::Encode(Encoding::Gzip), &mut r);
    assert_eq!(header_values(&r, header::CONTENT_ENCODING), ["gzip"]);
    assert!(r.headers().get(header::CONTENT_LENGTH).is_none());
    assert!(r.headers().get(header::ACCEPT_RANGES).is_none());
    assert_eq!(header_values(&r, header::ETAG), ["W/\"v1\""]);
    assert_eq!(header_values(&r, header::VARY), ["Origin", "Accept-Encoding"]);
    assert!(matches!(r.body(), ResponseBody::Compressed(_)));

    let mut weak = response(
        200,
        &[TEXT, ("etag", "W/\"v1\""), ("vary", "accept-encoding, origin")],
        "x",
    );
    apply(Plan::Encode(Encoding::Br), &mut weak);
    assert_eq!(header_values(&weak, header::ETAG), ["W/\"v1\""]);
    assert_eq!(header_values(&weak, header::VARY), ["accept-encoding, origin"]);
}

#[test]
fn a_client_without_a_usable_coding_still_gets_vary() {
    let mut r = response(200, &[TEXT, ("etag", "\"v1\""), ("content-length", "1")], "x");
    apply(Plan::Identity, &mut r);
    // Too small: untouched, no Vary either.
    assert!(r.headers().get(header::VARY).is_none());
    let mut r = response(200, &[TEXT, ("etag", "\"v1\"")], "x");
    apply(Plan::Identity, &mut r);
    assert_eq!(header_values(&r, header::VARY), ["Accept-Encoding"]);
    assert_eq!(header_values(&r, header::ETAG), ["\"v1\""]);
    assert!(matches!(r.body(), ResponseBody::Full(_)));
}

#[test]
fn responses_that_must_or_need_not_be_compressed_pass_untouched() {
    let untouched: &[(u16, &[(&str, &str)])] = &[
        (204, &[TEXT]),
        (206, &[TEXT, ("content-range", "bytes 0-1/2")]),
        (304, &[TEXT]),
        (200, &[TEXT, ("content-encoding", "gzip")]),
        (200, &[TEXT, ("content-range", "bytes 0-1/2")]),
        (200, &[("content-type", "image/png")]),
        (200, &[]),
        (200, &[TEXT, ("content-length", "1023")]),
        (200, &[TEXT, ("cache-control", "public, No-Transform")]),
    ];
    for (status, headers) in untouched {
        let mut r = response(*status, headers, "x");
        let before = r.headers().clone();
        apply(Plan::Encode(Encoding::Gzip), &mut r);
        assert_eq!(r.headers(), &before, "{status} {headers:?}");
        assert!(matches!(r.body(), ResponseBody::Full(_)), "{status} {headers:?}");
    }
    let mut empty = Response::new(ResponseBody::empty());
    empty
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    apply(Plan::Encode(Encoding::Gzip), &mut empty);
    assert!(empty.headers().get(header::CONTENT_ENCODING).is_none());
    let mut big = response(404, &[TEXT, ("content-length", "1024")], "x");
    apply(Plan::Encode(Encoding::Gzip), &mut big);
    assert_eq!(header_values(&big, header::CONTENT_ENCODING), ["gzip"]);
}

#[test]
fn the_plan_needs_a_compress_route_and_a_body_to_send() {
    let get = Request::get("/").header("accept-encoding", "gzip").body(()).unwrap();
    let head = Request::head("/").header("accept-encoding", "gzip").body(()).unwrap();
    assert_eq!(Plan::for_request(Compress::default(), &get), Plan::Off);
    assert_eq!(Plan::for_request(GZIP, &get), Plan::Encode(Encoding::Gzip));
    assert_eq!(Plan::for_request(BR, &get), Plan::Identity);
    assert_eq!(Plan::for_request(GZIP, &head), Plan::Identity);
}
