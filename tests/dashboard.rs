//! The dashboard at `GET /` on the admin listener, loaded in a real headless
//! Chromium against a running balancer with real backends and traffic; and
//! the per-server counters and latency percentiles it reads from
//! `GET /api/upstreams`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use support::browser::Browser;
use support::{Conn, Fulcrum, backends, get, request};

/// How long the page may take to show what the test waits for: it polls
/// every second and rates need two polls, but a loaded machine is slow.
const PAGE_DEADLINE: Duration = Duration::from_secs(45);

/// Every server row of the page, as the user sees it.
const ROWS: &str = r#"[...document.querySelectorAll("tr.server")].map(r => ({
  upstream: r.closest("section").dataset.upstream,
  server: r.dataset.server,
  state: r.querySelector(".pill").textContent,
  weight: r.querySelector(".weight").textContent,
  in_flight: r.querySelector(".inflight").textContent,
  rps: r.querySelector(".rps").textContent,
  errors: r.querySelector(".errors").textContent,
  p50: r.querySelector(".p50").textContent,
  p99: r.querySelector(".p99").textContent,
  sparkline: r.querySelectorAll(".spark polyline").length,
  drain_enabled: !r.querySelector("button.drain").disabled,
}))"#;

fn row(rows: &Value, server: SocketAddr) -> &Value {
    rows.as_array()
        .and_then(|rows| rows.iter().find(|r| r["server"] == server.to_string()))
        .unwrap_or_else(|| panic!("no row for {server} in {rows:#}"))
}

/// A number as the page prints it ("1,234", "12.5", "0.42 ms"), if it is one.
fn number(cell: &Value) -> Option<f64> {
    let text = cell
        .as_str()?
        .trim_end_matches(" ms")
        .trim_end_matches(" %")
        .replace(',', "");
    text.parse().ok()
}

/// Sends `GET path` requests over one keep-alive connection per path until
/// dropped; the dashboard needs traffic while it polls to show rates.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: SocketAddr, paths: &[&'static str]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let paths = paths.to_vec();
        let task = tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            while !flag.load(Ordering::Relaxed) {
                for path in &paths {
                    let req = request("GET", path).body(Bytes::new()).unwrap();
                    if conn.try_send(req).await.is_err() {
                        conn = Conn::open(addr).await;
                    }
                }
                // Pacing only (about 100 requests/s), so the load generator
                // does not starve the browser on a small machine.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Traffic { stop, task }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

fn dashboard_config(app: &[String], other: SocketAddr, token: &str) -> String {
    format!(
        r#"
[global]
admin_listen = "127.0.0.1:0"
{token}
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
name = "other"
path_prefix = "/other/"
rewrite_prefix = "/"
upstream = "other"
[[routes]]
name = "app"
upstream = "app"
[upstreams.app]
max_fails = 1
fail_timeout = "5m"
servers = [ {{ address = "{}", weight = 2 }}, {{ address = "{}" }}, {{ address = "{}", backup = true }} ]
[upstreams.other]
servers = [ {{ address = "{other}" }} ]
"#,
        app[0], app[1], app[2]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_servers_and_a_killed_one_goes_down() {
    let mut b = backends(&["a", "b", "c", "d"]).await;
    let app: Vec<String> = b[..3].iter().map(|b| b.addr.to_string()).collect();
    let (a_addr, b_addr, c_addr, d_addr) = (b[0].addr, b[1].addr, b[2].addr, b[3].addr);
    let lb = Fulcrum::start(&dashboard_config(&app, d_addr, ""));
    let _traffic = Traffic::start(lb.addr("web"), &["/", "/other/"]);

    let mut browser = Browser::launch().await;
    browser.navigate(&format!("http://{}/", lb.addr("admin"))).await;
    let all_live = format!(
        r#"(() => {{ const rows = {ROWS};
            const a = rows.find(r => r.server === "{a_addr}");
            const d = rows.find(r => r.server === "{d_addr}");
            const live = r => r && parseFloat(r.rps) > 0 && r.p50.endsWith(" ms") && r.p99.endsWith(" ms") && r.sparkline > 0;
            return rows.length === 4 && live(a) && live(d) ? rows : null; }})()"#
    );
    let rows = browser
        .wait_for("every server with live numbers", PAGE_DEADLINE, &all_live, ROWS)
        .await;

    let a = row(&rows, a_addr);
    assert_eq!((a["upstream"].as_str(), a["state"].as_str()), (Some("app"), Some("up")));
    assert_eq!(a["weight"], "2");
    assert_eq!(a["errors"], "0 %", "healthy backends answer without errors");
    assert!(number(&a["in_flight"]).is_some(), "{a}");
    assert!(number(&a["p50"]).unwrap() > 0.0 && number(&a["p99"]).unwrap() >= number(&a["p50"]).unwrap());
    assert!(
        !a["drain_enabled"].as_bool().unwrap(),
        "no token typed: drain is not offered"
    );
    assert_eq!(row(&rows, b_addr)["state"], "up");
    assert_eq!(row(&rows, b_addr)["weight"], "1");
    let c = row(&rows, c_addr);
    assert_eq!(c["state"], "backup", "an idle backup is shown as standing by");
    assert_eq!(c["rps"], "0", "the backup gets no traffic while primaries are up");
    let d = row(&rows, d_addr);
    assert_eq!(
        (d["upstream"].as_str(), d["state"].as_str()),
        (Some("other"), Some("up"))
    );
    let status = browser.eval("document.getElementById('status').textContent").await;
    assert!(status.as_str().unwrap().contains("live"), "{status}");

    // Kill server b: its next request fails to connect, which takes it out.
    drop(b.remove(1));
    let b_down = format!(
        r#"(() => {{ const rows = {ROWS}; const b = rows.find(r => r.server === "{b_addr}");
            return b && b.state === "down" ? rows : null; }})()"#
    );
    let rows = browser
        .wait_for("the killed server shown down", PAGE_DEADLINE, &b_down, ROWS)
        .await;
    assert_eq!(row(&rows, a_addr)["state"], "up");
    let api = get(lb.addr("admin"), "/api/upstreams").await.json();
    let killed = &api["upstreams"][0]["servers"][1];
    assert_eq!(killed["state"], "down");
    assert!(killed["errors_total"].as_u64().unwrap() >= 1, "{killed}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot).await;
    eprintln!("dashboard screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_drain_shows_its_status_and_message_on_the_page() {
    let b = backends(&["a", "b", "c", "d"]).await;
    let app: Vec<String> = b[..3].iter().map(|b| b.addr.to_string()).collect();
    let a_addr = b[0].addr;
    let lb = Fulcrum::start(&dashboard_config(&app, b[3].addr, r#"admin_token = "s3cret""#));
    let admin = lb.addr("admin");
    let path = format!("/api/upstreams/app/servers/{a_addr}/drain");
    let refusal = Conn::open(admin)
        .await
        .send(
            request("POST", &path)
                .header("authorization", "Bearer not-the-token")
                .body(Bytes::new())
                .unwrap(),
        )
        .await;
    assert_eq!(refusal.status, 403, "a wrong token is refused");

    let mut browser = Browser::launch().await;
    browser.navigate(&format!("http://{admin}/")).await;
    let drain = format!(r#"tr.server[data-server="{a_addr}"] button.drain"#);
    let drain_json = serde_json::to_string(&drain).unwrap();
    let disabled = format!("document.querySelector({drain_json})?.disabled");
    browser
        .wait_for("the server rows", PAGE_DEADLINE, &format!("{disabled} === true"), ROWS)
        .await;

    browser.type_into("#token", "not-the-token").await;
    browser
        .wait_for(
            "drain offered once a token is typed",
            PAGE_DEADLINE,
            &format!("{disabled} === false"),
            ROWS,
        )
        .await;
    assert_eq!(
        browser.eval("sessionStorage.getItem('fulcrum.adminToken')").await,
        "not-the-token"
    );
    browser.click(&drain).await;
    let message = browser
        .wait_for(
            "the failed call's message",
            PAGE_DEADLINE,
            "(() => { const m = document.getElementById('message'); \
             return !m.hidden && m.dataset.kind === 'error' ? m.textContent : null; })()",
            "document.getElementById('message').outerHTML",
        )
        .await;
    let message = message.as_str().unwrap();
    assert!(message.contains("HTTP 403"), "{message:?} should name the status");
    assert!(
        message.contains("wrong bearer token"),
        "{message:?} should carry the API's message"
    );
    assert!(message.contains(&a_addr.to_string()), "{message:?}");
    let api = get(admin, "/api/upstreams").await.json();
    assert_eq!(
        api["upstreams"][0]["servers"][0]["state"], "up",
        "a refused drain changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_enable_buttons_take_a_server_out_and_back() {
    let b = backends(&["a", "b", "c", "d"]).await;
    let app: Vec<String> = b[..3].iter().map(|b| b.addr.to_string()).collect();
    let a_addr = b[0].addr;
    let lb = Fulcrum::start(&dashboard_config(&app, b[3].addr, r#"admin_token = "s3cret""#));
    let admin = lb.addr("admin");
    let mut browser = Browser::launch().await;
    browser.navigate(&format!("http://{admin}/")).await;
    let button = |action: &str| format!(r#"tr.server[data-server="{a_addr}"] button.{action}"#);
    let enabled = |action: &str| {
        format!(
            "document.querySelector({})?.disabled === false",
            serde_json::to_string(&button(action)).unwrap()
        )
    };
    let state = format!(r#"document.querySelector('tr.server[data-server="{a_addr}"] .pill')?.textContent"#);

    browser.type_into("#token", "s3cret").await;
    browser
        .wait_for("drain offered", PAGE_DEADLINE, &enabled("drain"), ROWS)
        .await;
    browser.click(&button("drain")).await;
    // The confirmation hides itself after a while; its text stays.
    let confirmed = |what: &str| {
        format!(
            "(() => {{ const m = document.getElementById('message'); \
             return m.dataset.kind === 'ok' && m.textContent.includes('{what} {a_addr}'); }})()"
        )
    };
    browser
        .wait_for(
            "the drain confirmed",
            PAGE_DEADLINE,
            &confirmed("Draining"),
            "document.getElementById('message').outerHTML",
        )
        .await;
    browser
        .wait_for(
            "the server shown draining",
            PAGE_DEADLINE,
            &format!("{state} === 'draining'"),
            ROWS,
        )
        .await;
    let api = get(admin, "/api/upstreams").await.json();
    assert_eq!(api["upstreams"][0]["servers"][0]["state"], "draining");

    browser
        .wait_for("enable offered", PAGE_DEADLINE, &enabled("enable"), ROWS)
        .await;
    browser.click(&button("enable")).await;
    browser
        .wait_for(
            "the enable confirmed",
            PAGE_DEADLINE,
            &confirmed("Enabled"),
            "document.getElementById('message').outerHTML",
        )
        .await;
    browser
        .wait_for(
            "the server shown up again",
            PAGE_DEADLINE,
            &format!("{state} === 'up'"),
            ROWS,
        )
        .await;
    let api = get(admin, "/api/upstreams").await.json();
    assert_eq!(api["upstreams"][0]["servers"][0]["state"], "up");
}

#[tokio::test]
async fn upstreams_api_counts_requests_errors_and_latency_per_server() {
    let b = backends(&["slow"]).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = Fulcrum::start(&format!(
        r#"
[global]
admin_listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
name = "dead"
path_prefix = "/dead/"
upstream = "dead"
[[routes]]
upstream = "app"
[upstreams.app]
servers = [ {{ address = "{}" }} ]
[upstreams.dead]
servers = [ {{ address = "{dead}" }} ]
"#,
        b[0].addr
    ));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));
    let before = get(admin, "/api/upstreams").await.json();
    let server = &before["upstreams"][0]["servers"][0];
    assert_eq!(
        (server["requests_total"].as_u64(), server["errors_total"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(server["latency_p50_ms"].is_null(), "no answers yet: {server}");
    assert_eq!(server["latency_histogram"], serde_json::json!([]));

    let mut conn = Conn::open(web).await;
    for _ in 0..10 {
        let resp = conn.send(request("GET", "/delay/30").body(Bytes::new()).unwrap()).await;
        assert_eq!(resp.status, 200);
    }
    for path in ["/status/500", "/status/500", "/status/503", "/status/404"] {
        conn.send(request("GET", path).body(Bytes::new()).unwrap()).await;
    }
    assert_eq!(get(web, "/dead/").await.status, 502);

    let after = get(admin, "/api/upstreams").await.json();
    let server = &after["upstreams"][0]["servers"][0];
    assert_eq!(server["requests_total"], 14, "{server}");
    assert_eq!(
        server["errors_total"], 3,
        "the 5xx answers are errors, the 404 is not: {server}"
    );
    assert_eq!(server["weight"], 1, "the fields from before are kept: {server}");
    let p50 = server["latency_p50_ms"].as_f64().unwrap();
    let p99 = server["latency_p99_ms"].as_f64().unwrap();
    // 10 of 14 answers took at least 30 ms; buckets are within 1/16.
    assert!(p50 >= 30.0 * 15.0 / 16.0, "p50 {p50} ms");
    assert!(p99 >= p50, "p99 {p99} < p50 {p50}");
    let buckets = server["latency_histogram"].as_array().unwrap();
    let counted: u64 = buckets.iter().map(|b| b[2].as_u64().unwrap()).sum();
    assert_eq!(counted, 14, "every answer is in the histogram: {buckets:?}");
    let slow: u64 = buckets
        .iter()
        .filter(|b| b[1].as_u64().unwrap() > 28_000)
        .map(|b| b[2].as_u64().unwrap())
        .sum();
    assert!(slow >= 10, "the 30 ms answers are in buckets above 28 ms: {buckets:?}");
    for bucket in buckets {
        assert!(bucket[0].as_u64().unwrap() < bucket[1].as_u64().unwrap(), "{bucket}");
    }

    let dead_server = &after["upstreams"][1]["servers"][0];
    assert_eq!(dead_server["requests_total"], 1, "{dead_server}");
    assert_eq!(
        dead_server["errors_total"], 1,
        "a failed connect is an error: {dead_server}"
    );
    assert!(
        dead_server["latency_p99_ms"].is_null(),
        "no answer, no latency: {dead_server}"
    );
}

#[tokio::test]
async fn dashboard_page_is_self_contained_html() {
    let lb = Fulcrum::start(
        r#"
[global]
admin_listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
respond = { status = 200, body = "x" }
"#,
    );
    let page = get(lb.addr("admin"), "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("connect-src 'self'")
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let html = page.text();
    assert!(html.starts_with("<!doctype html>"));
    for external in ["<link", " src=", "@import", "url(", "//cdn", "https://"] {
        assert!(
            !html.contains(external),
            "the page loads something from elsewhere: {external}"
        );
    }
    assert!(html.contains("fetch(\"/api/upstreams\""));
}
