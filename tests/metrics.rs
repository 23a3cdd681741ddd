//! `/metrics`: scraped and parsed like Prometheus would, counters move as
//! requests are answered — successes, 404s, failures, retries.

mod support;

use std::net::SocketAddr;

use support::{Fulcrum, backends, get};

/// The value of the series written exactly as `series`, 0 when absent.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(admin: SocketAddr) -> String {
    let resp = get(admin, "/metrics").await;
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    resp.text()
}

#[tokio::test]
async fn counters_follow_what_clients_see() {
    let b = backends(&["alive"]).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = Fulcrum::start(&format!(
        r#"
[global]
workers = 1
admin_listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
name = "lb-health"
path_prefix = "/lb-health"
respond = {{ status = 200, body = "ok" }}
[[routes]]
name = "api"
path_prefix = "/api/"
rewrite_prefix = "/"
upstream = "app"
[upstreams.app]
max_fails = 0
servers = [ {{ address = "{dead}" }}, {{ address = "{alive}" }} ]
"#,
        alive = b[0].addr
    ));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));
    let before = scrape(admin).await;
    assert!(before.contains("# TYPE fulcrum_requests_total counter"), "{before}");
    assert!(
        !before.contains("fulcrum_requests_total{"),
        "no request counted yet: {before}"
    );

    for _ in 0..4 {
        assert_eq!(get(web, "/api/").await.status, 200);
    }
    assert_eq!(get(web, "/nowhere").await.status, 404);
    assert_eq!(get(web, "/lb-health").await.status, 200);
    assert_eq!(get(web, "/api/status/500").await.status, 500);

    let after = scrape(admin).await;
    let alive = b[0].addr.to_string();
    let ok = format!("fulcrum_requests_total{{route=\"api\",upstream=\"app\",server=\"{alive}\",code=\"2xx\"}}");
    assert_eq!(value(&after, &ok), 4.0, "{after}");
    let five = format!("fulcrum_requests_total{{route=\"api\",upstream=\"app\",server=\"{alive}\",code=\"5xx\"}}");
    assert_eq!(value(&after, &five), 1.0, "{after}");
    assert_eq!(
        value(
            &after,
            "fulcrum_requests_total{route=\"\",upstream=\"\",server=\"\",code=\"4xx\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "fulcrum_requests_total{route=\"lb-health\",upstream=\"\",server=\"\",code=\"2xx\"}"
        ),
        1.0
    );
    // Round robin sent some tries to the dead server first: each was a
    // connect failure followed by a retry on the live one.
    let connect = format!("fulcrum_upstream_failures_total{{upstream=\"app\",server=\"{dead}\",kind=\"connect\"}}");
    let failures = value(&after, &connect);
    assert!(failures >= 2.0, "{after}");
    assert_eq!(value(&after, "fulcrum_retries_total{route=\"api\"}"), failures);
    assert_eq!(
        value(
            &after,
            "fulcrum_request_duration_seconds_count{route=\"api\",upstream=\"app\"}"
        ),
        5.0
    );
    assert!(
        value(&after, "fulcrum_connections_total{listener=\"web\"}") >= 7.0,
        "{after}"
    );
    let up = format!("fulcrum_upstream_server_up{{upstream=\"app\",server=\"{alive}\"}}");
    assert_eq!(value(&after, &up), 1.0);
}
