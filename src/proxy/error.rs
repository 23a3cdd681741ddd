//! Why the proxy answered a request itself, and the one mapping from that to
//! the HTTP status and body a client sees.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ResponseBody;

/// A request the proxy could not forward to a successful end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request")]
    BadRequest,
    #[error("no route")]
    NoRoute,
    #[error("request body too large")]
    BodyTooLarge,
    /// Over the route's rate limit; the client may try again this many
    /// seconds later.
    #[error("rate limited, retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("rate limiter unavailable")]
    LimiterUnavailable,
    #[error("no healthy server")]
    NoServer,
    #[error("every server is at its max_requests")]
    AllBusy,
    #[error("upstream connect failed")]
    ConnectFailed,
    #[error("upstream connect timed out")]
    ConnectTimeout,
    #[error("upstream failed")]
    UpstreamFailed,
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// A reload removed the listener the connection came in on.
    #[error("listener closed by a reload")]
    ListenerClosed,
}

impl ProxyError {
    /// The status a client gets for this error (SPEC §3).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoServer
            | ProxyError::AllBusy
            | ProxyError::ListenerClosed
            | ProxyError::LimiterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed | ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A short plain-text response naming the request id.
    pub fn into_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let status = self.status();
        let retry_after = match self {
            ProxyError::RateLimited { retry_after_secs } => Some(HeaderValue::from(retry_after_secs)),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(HeaderValue::from_static("1")),
            _ => None,
        };
        let body = format!(
            "{} {}: {} (request id {})\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self,
            String::from_utf8_lossy(request_id.as_bytes()),
        );
        let mut response = Response::new(ResponseBody::full(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(retry_after) = retry_after {
            headers.insert(header::RETRY_AFTER, retry_after);
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE
            || status == StatusCode::BAD_REQUEST
            || self == ProxyError::ListenerClosed
        {
            // The rest of the request body is unread; the connection cannot be reused.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        headers.insert(super::headers::X_REQUEST_ID, request_id.clone());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status() {
        let table = [
            (ProxyError::BadRequest, 400),
            (ProxyError::NoRoute, 404),
            (ProxyError::BodyTooLarge, 413),
            (ProxyError::RateLimited { retry_after_secs: 1 }, 429),
            (ProxyError::LimiterUnavailable, 503),
            (ProxyError::NoServer, 503),
            (ProxyError::AllBusy, 503),
            (ProxyError::ConnectFailed, 502),
            (ProxyError::UpstreamFailed, 502),
            (ProxyError::ConnectTimeout, 504),
            (ProxyError::UpstreamTimeout, 504),
            (ProxyError::ListenerClosed, 503),
        ];
        for (error, status) in table {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
        }
    }

    #[test]
    fn body_names_the_request_id_and_503_says_when_to_retry() {
        let id = HeaderValue::from_static("abc123");
        let response = ProxyError::NoServer.into_response(&id);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[super::super::headers::X_REQUEST_ID], "abc123");
        match response.into_body() {
            ResponseBody::Full(Some(body)) => {
                let text = String::from_utf8(body.to_vec()).unwrap();
                assert!(text.contains("abc123"), "{text}");
                assert!(text.starts_with("503 "), "{text}");
            }
            other => panic!("unexpected body {other:?}"),
        }
    }

    #[test]
    fn rate_limited_says_when_to_come_back() {
        let id = HeaderValue::from_static("req-7");
        let response = ProxyError::RateLimited { retry_after_secs: 42 }.into_response(&id);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
        match response.into_body() {
            ResponseBody::Full(Some(body)) => {
                let text = String::from_utf8(body.to_vec()).unwrap();
                assert_eq!(
                    text,
                    "429 Too Many Requests: rate limited, retry in 42 s (request id req-7)\n"
                );
            }
            other => panic!("unexpected body {other:?}"),
        }
    }
}
