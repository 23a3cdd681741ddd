//! Route matching and what routes do to requests, seen from a client.

mod support;

use support::{Fulcrum, backends, get, get_with};

fn routed_config(addrs: &[std::net::SocketAddr]) -> String {
    format!(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[listeners]]
name = "internal"
listen = "127.0.0.1:0"

[[routes]]
name = "any-root"
listeners = ["web"]
upstream = "any"

[[routes]]
name = "wild"
listeners = ["web"]
host = "*.example.com"
upstream = "wild"

[[routes]]
name = "exact"
listeners = ["web"]
host = "api.example.com"
upstream = "exact"

[[routes]]
name = "exact-v2"
listeners = ["web"]
host = "api.example.com"
path_prefix = "/v2/"
upstream = "v2"

[[routes]]
name = "canary"
listeners = ["web"]
host = "api.example.com"
path_prefix = "/v2/"
headers = {{ "X-Canary" = "1" }}
upstream = "canary"

[[routes]]
name = "exact-v2-shadowed"
listeners = ["web"]
host = "api.example.com"
path_prefix = "/v2/"
upstream = "any"

[[routes]]
name = "internal-only"
listeners = ["internal"]
path_prefix = "/admin/"
upstream = "exact"

[upstreams.any]
servers = [ {{ address = "{}" }} ]
[upstreams.wild]
servers = [ {{ address = "{}" }} ]
[upstreams.exact]
servers = [ {{ address = "{}" }} ]
[upstreams.v2]
servers = [ {{ address = "{}" }} ]
[upstreams.canary]
servers = [ {{ address = "{}" }} ]
"#,
        addrs[0], addrs[1], addrs[2], addrs[3], addrs[4]
    )
}

#[tokio::test]
async fn most_specific_route_wins() {
    let b = backends(&["any", "wild", "exact", "v2", "canary"]).await;
    let addrs: Vec<_> = b.iter().map(|b| b.addr).collect();
    let lb = Fulcrum::start(&routed_config(&addrs));
    let web = lb.addr("web");
    let who = |host: &'static str, path: &'static str, extra: Option<(&'static str, &'static str)>| async move {
        let mut headers = vec![("host", host)];
        headers.extend(extra);
        let resp = get_with(web, path, &headers).await;
        // The backend names itself on every answer, 404s for unknown paths included.
        resp.header("x-backend")
            .unwrap_or_else(|| panic!("{host}{path} reached no backend: {}", resp.status))
            .to_string()
    };
    assert_eq!(who("api.example.com", "/x", None).await, "exact");
    assert_eq!(who("API.EXAMPLE.COM:8080", "/x", None).await, "exact");
    assert_eq!(who("www.example.com", "/x", None).await, "wild");
    assert_eq!(who("example.org", "/x", None).await, "any");
    assert_eq!(who("api.example.com", "/v2/users", None).await, "v2", "longest prefix");
    assert_eq!(
        who("api.example.com", "/v2/users", Some(("x-canary", "1"))).await,
        "canary",
        "header match"
    );
    assert_eq!(
        who("api.example.com", "/v2/users", Some(("x-canary", "0"))).await,
        "v2",
        "first in file on ties"
    );
    assert_eq!(
        who("www.example.com", "/v2/users", Some(("x-canary", "1"))).await,
        "wild"
    );
}

#[tokio::test]
async fn routes_only_serve_their_listeners_and_no_match_is_404() {
    let b = backends(&["any", "wild", "exact", "v2", "canary"]).await;
    let addrs: Vec<_> = b.iter().map(|b| b.addr).collect();
    let lb = Fulcrum::start(&routed_config(&addrs));
    let internal = lb.addr("internal");
    assert_eq!(get(internal, "/admin/x").await.header("x-backend"), Some("exact"));
    let miss = get(internal, "/public").await;
    assert_eq!(miss.status, 404);
    assert_eq!(miss.header("x-backend"), None, "answered by the balancer");
    let id = miss
        .header("x-request-id")
        .expect("error responses carry the request id")
        .to_string();
    assert!(
        miss.text().contains(&id),
        "404 body names the request id: {}",
        miss.text()
    );
    assert_eq!(miss.header("content-type"), Some("text/plain; charset=utf-8"));
}

#[tokio::test]
async fn respond_route_answers_without_upstream() {
    let lb = Fulcrum::start(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
path_prefix = "/lb-health"
respond = { status = 200, body = "healthy\n" }
response_headers = { set = { "Cache-Control" = "no-store" } }
[[routes]]
path_prefix = "/maintenance"
respond = { status = 503, body = "down for maintenance\n" }
"#,
    );
    let web = lb.addr("web");
    let ok = get(web, "/lb-health").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), "healthy\n");
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    assert!(ok.header("x-request-id").is_some());
    let down = get(web, "/maintenance/page").await;
    assert_eq!(down.status, 503);
    assert_eq!(down.text(), "down for maintenance\n");
}

#[tokio::test]
async fn rewrite_prefix_and_header_edits_reach_the_upstream() {
    let b = backends(&["app"]).await;
    let lb = Fulcrum::start(&format!(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
expose_upstream = true
[[routes]]
path_prefix = "/api/"
rewrite_prefix = "/"
upstream = "app"
request_headers = {{ set = {{ "X-Env" = "prod" }}, remove = ["X-Debug"] }}
response_headers = {{ set = {{ "Strict-Transport-Security" = "max-age=31536000" }}, remove = ["X-Backend"] }}
[upstreams.app]
servers = [ {{ address = "{}" }} ]
"#,
        b[0].addr
    ));
    let resp = get_with(lb.addr("web"), "/api/echo?q=1", &[("x-debug", "1"), ("x-keep", "yes")]).await;
    assert_eq!(resp.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(echo["path"], "/echo?q=1");
    assert_eq!(echo["headers"]["x-env"], "prod");
    assert_eq!(echo["headers"]["x-keep"], "yes");
    assert!(echo["headers"].get("x-debug").is_none(), "{echo}");
    assert_eq!(resp.header("strict-transport-security"), Some("max-age=31536000"));
    assert_eq!(resp.header("x-backend"), None);
    assert_eq!(resp.header("x-upstream"), Some(b[0].addr.to_string().as_str()));
}
