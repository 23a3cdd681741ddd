//! `redirect_http_from`: a plain HTTP listener beside a TLS one that answers
//! every request with `308 Permanent Redirect` to the same host and path over
//! https, so clients that type `http://` end up on TLS.

use std::convert::Infallible;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::closing::Closing;
use super::conn::TimedIo;
use crate::body::ResponseBody;
use crate::config::Listener;

/// Serves one connection on a redirect listener: one answer, then close
/// (the client's next request goes to the https listener anyway).
/// `listener` is the TLS listener it redirects to, listening on `https_port`.
pub(super) async fn serve(stream: TcpStream, https_port: u16, listener: &Listener, closing: &Closing) {
    // TCP_NODELAY comes from the listening socket (inherited at accept).
    // The same slow-loris guard as the TLS listener's.
    let io = TimedIo::new(stream, listener.request_header_timeout);
    let service = hyper::service::service_fn(move |req| async move { Ok::<_, Infallible>(redirect(&req, https_port)) });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(false)
        .max_header_size(listener.max_header_bytes)
        .header_read_timeout(None);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "redirect connection ended with an error");
            }
        }
        () = closing.raised() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The answer to any request: 308 to `https://HOST[:PORT]/path?query`, or
/// 400 when the request names no usable host.
fn redirect<B>(req: &Request<B>, https_port: u16) -> Response<ResponseBody> {
    let Some(location) = location(req, https_port) else {
        let mut response = Response::new(ResponseBody::full(Bytes::from_static(
            b"bad request: a valid Host header is needed to redirect to https\n",
        )));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return response;
    };
    let body = format!("redirecting to {}\n", location.to_str().unwrap_or_default());
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Where the https version of `req` lives: the host the client asked for
/// (its port dropped), the TLS listener's port unless it is 443, and the
/// request's path and query as sent.
fn location<B>(req: &Request<B>, https_port: u16) -> Option<HeaderValue> {
    let host = match req.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?,
        None => req.uri().authority()?.as_str(),
    };
    let authority: Authority = host.parse().ok()?;
    // A Host with user info is not a host a browser would send.
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    let path = match req.uri().path_and_query().map(|pq| pq.as_str()) {
        Some(pq) if pq.starts_with('/') => pq,
        _ => "/",
    };
    let mut location = String::with_capacity(16 + host.len() + path.len());
    location.push_str("https://");
    location.push_str(authority.host());
    if https_port != 443 {
        location.push(':');
        location.push_str(&https_port.to_string());
    }
    location.push_str(path);
    HeaderValue::from_str(&location).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location_of(target: &str, host: Option<&str>, port: u16) -> Option<String> {
        let mut req = Request::builder().uri(target);
        if let Some(host) = host {
            req = req.header(header::HOST, host);
        }
        let req = req.body(()).unwrap();
        location(&req, port).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn same_host_and_path_on_the_tls_port() {
        let at = |t, h, p| location_of(t, h, p);
        assert_eq!(
            at("/a/b?c=1", Some("example.com:80"), 443).as_deref(),
            Some("https://example.com/a/b?c=1")
        );
        assert_eq!(
            at("/", Some("example.com"), 8443).as_deref(),
            Some("https://example.com:8443/")
        );
        assert_eq!(
            at("/x", Some("[::1]:8080"), 8443).as_deref(),
            Some("https://[::1]:8443/x")
        );
        assert_eq!(
            at("http://other.test/p", None, 443).as_deref(),
            Some("https://other.test/p"),
            "absolute-form without Host"
        );
        assert_eq!(
            at("*", Some("example.com"), 443).as_deref(),
            Some("https://example.com/")
        );
    }

    #[test]
    fn unusable_hosts_get_no_location() {
        assert_eq!(location_of("/", None, 443), None);
        assert_eq!(location_of("/", Some("evil.test/path"), 443), None);
        assert_eq!(location_of("/", Some("user@evil.test"), 443), None);
        assert_eq!(location_of("/", Some(""), 443), None);
        assert_eq!(location_of("/", Some("a b"), 443), None);
    }
}
