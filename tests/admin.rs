//! The admin listener's read calls: liveness, readiness, and the state of
//! every upstream and server.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use support::{Config, Conn, Fulcrum, Resp, backends, get, request, wait_until};

#[tokio::test]
async fn health_ready_and_upstreams_describe_the_running_balancer() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(
        &Config::new()
            .global(r#"admin_listen = "127.0.0.1:0""#)
            .upstream(r#"balance = "least_conn""#)
            .server(b[0].addr, "weight = 3")
            .server(b[1].addr, "backup = true")
            .toml(),
    );
    let admin = lb.addr("admin");
    let health = get(admin, "/health").await;
    assert_eq!((health.status.as_u16(), health.text().as_str()), (200, "ok\n"));
    assert_eq!(get(admin, "/ready").await.status, 200);
    assert_eq!(get(admin, "/nope").await.status, 404);

    let state = get(admin, "/api/upstreams").await;
    assert_eq!(state.header("content-type"), Some("application/json"));
    let json = state.json();
    let app = &json["upstreams"][0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["balance"], "LeastConn");
    assert_eq!(app["servers"][0]["address"], b[0].addr.to_string());
    assert_eq!(app["servers"][0]["weight"], 3);
    assert_eq!(app["servers"][0]["state"], "up");
    assert_eq!(app["servers"][1]["backup"], true);
    assert_eq!(app["servers"][0]["active_requests"], 0);
}

/// An admin call with an optional bearer token and JSON body.
async fn call(admin: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
    let mut req = request(method, path).header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    Conn::open(admin)
        .await
        .send(req.body(Bytes::from(body.to_owned())).unwrap())
        .await
}

/// Which backend answers each of `n` requests on one connection.
async fn who_answers(web: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut conn = Conn::open(web).await;
    let mut seen = HashMap::new();
    for _ in 0..n {
        let resp = conn.send(request("GET", "/").body(Bytes::new()).unwrap()).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        *seen.entry(resp.text().trim().to_string()).or_insert(0) += 1;
    }
    seen
}

fn admin_config(token: Option<&str>, servers: &[SocketAddr]) -> String {
    let token = token.map_or(String::new(), |t| format!("admin_token = \"{t}\""));
    Config::app(servers)
        .global("workers = 1")
        .global(r#"admin_listen = "127.0.0.1:0""#)
        .global(&token)
        .toml()
}

#[tokio::test]
async fn mutating_calls_need_the_right_bearer_token() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(&admin_config(Some("s3cret"), &[b[0].addr, b[1].addr]));
    let admin = lb.addr("admin");
    let drain = format!("/api/upstreams/app/servers/{}/drain", b[0].addr);

    let missing = call(admin, "POST", &drain, None, "").await;
    assert_eq!(missing.status, 401, "{}", missing.text());
    assert!(
        missing
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    let wrong = call(admin, "POST", &drain, Some("s3cret-not"), "").await;
    assert_eq!(wrong.status, 403, "{}", wrong.text());
    let short = call(admin, "POST", &drain, Some("s3cre"), "").await;
    assert_eq!(short.status, 403);
    // Refused calls changed nothing.
    assert_eq!(
        get(admin, "/api/upstreams").await.json()["upstreams"][0]["servers"][0]["state"],
        "up"
    );

    let ok = call(admin, "POST", &drain, Some("s3cret"), "").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["state"], "draining");
    // The token never shows in the effective config.
    let config = get(admin, "/api/config").await;
    assert_eq!(config.status, 200);
    assert!(!config.text().contains("s3cret"), "{}", config.text());
    assert_eq!(config.json()["global"]["admin_token"], "<redacted>");
}

#[tokio::test]
async fn without_a_token_mutating_calls_are_refused_and_reads_still_work() {
    let b = backends(&["a"]).await;
    let lb = Fulcrum::start(&admin_config(None, &[b[0].addr]));
    let admin = lb.addr("admin");
    let refused = call(
        admin,
        "POST",
        &format!("/api/upstreams/app/servers/{}/drain", b[0].addr),
        Some("anything"),
        "",
    )
    .await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.json()["error"].as_str().unwrap().contains("admin_token"),
        "{}",
        refused.text()
    );
    let reload = call(admin, "POST", "/api/reload", None, "").await;
    assert_eq!(reload.status, 403);
    assert_eq!(get(admin, "/api/upstreams").await.status, 200);
    assert_eq!(get(lb.addr("web"), "/").await.status, 200);
}

#[tokio::test]
async fn servers_are_added_reweighted_drained_enabled_and_removed_at_runtime() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(&admin_config(Some("t"), &[b[0].addr]));
    let (admin, web) = (lb.addr("admin"), lb.addr("web"));
    let t = Some("t");
    assert_eq!(who_answers(web, 4).await, HashMap::from([("a".to_string(), 4)]));

    // Add: takes traffic from the next request on.
    let added = call(
        admin,
        "POST",
        "/api/upstreams/app/servers",
        t,
        &format!(r#"{{ "address": "{}", "weight": 1 }}"#, b[1].addr),
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.text());
    assert_eq!(added.json()["address"], b[1].addr.to_string());
    assert_eq!(
        who_answers(web, 10).await,
        HashMap::from([("a".to_string(), 5), ("b".to_string(), 5)])
    );

    // Bad input: each with its status and a message.
    let servers = "/api/upstreams/app/servers";
    let body = format!(r#"{{ "address": "{}" }}"#, b[1].addr);
    let duplicate = call(admin, "POST", servers, t, &body).await;
    assert_eq!(duplicate.status, 409, "{}", duplicate.text());
    let unknown = call(admin, "POST", "/api/upstreams/nope/servers", t, &body).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let bad_json = call(admin, "POST", servers, t, "{ address: ").await;
    assert_eq!(bad_json.status, 400);
    assert!(
        bad_json.json()["error"].as_str().unwrap().contains("invalid JSON"),
        "{}",
        bad_json.text()
    );
    let bad_address = call(admin, "POST", servers, t, r#"{ "address": "no-port" }"#).await;
    assert_eq!(bad_address.status, 400, "{}", bad_address.text());
    let zero = call(
        admin,
        "POST",
        servers,
        t,
        r#"{ "address": "10.0.0.1:80", "weight": 0 }"#,
    )
    .await;
    assert_eq!(zero.status, 400, "{}", zero.text());
    let unknown_server = call(admin, "POST", &format!("{servers}/10.9.9.9:1/drain"), t, "").await;
    assert_eq!(unknown_server.status, 404);

    // Weight 3 for b: 1 in 4 to a.
    let b_path = format!("{servers}/{}", b[1].addr);
    let patched = call(admin, "PATCH", &b_path, t, r#"{ "weight": 3 }"#).await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["weight"], 3);
    assert_eq!(
        who_answers(web, 40).await,
        HashMap::from([("a".to_string(), 10), ("b".to_string(), 30)])
    );
    let bad_patch = call(admin, "PATCH", &b_path, t, r#"{ "weight": "heavy" }"#).await;
    assert_eq!(bad_patch.status, 400);

    // Drain a: everything to b; enable: back in rotation.
    let a_path = format!("{servers}/{}", b[0].addr);
    assert_eq!(call(admin, "POST", &format!("{a_path}/drain"), t, "").await.status, 200);
    assert_eq!(who_answers(web, 8).await, HashMap::from([("b".to_string(), 8)]));
    assert_eq!(
        call(admin, "POST", &format!("{a_path}/enable"), t, "").await.status,
        200
    );
    assert!(who_answers(web, 8).await.contains_key("a"));

    // The effective config shows the runtime changes.
    let config = get(admin, "/api/config").await.json();
    let listed = &config["upstreams"]["app"]["servers"];
    assert_eq!(listed[1]["address"], b[1].addr.to_string());
    assert_eq!(listed[1]["weight"], 3);

    // Remove b; the last server cannot go.
    let removed = call(admin, "DELETE", &b_path, t, "").await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    assert_eq!(who_answers(web, 6).await, HashMap::from([("a".to_string(), 6)]));
    assert_eq!(call(admin, "DELETE", &a_path, t, "").await.status, 409);
    assert_eq!(call(admin, "DELETE", &b_path, t, "").await.status, 404);
    assert_eq!(call(admin, "PUT", &a_path, t, "").await.status, 405);
    let state = get(admin, "/api/upstreams").await.json();
    assert_eq!(state["upstreams"][0]["servers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_drained_server_finishes_its_requests_in_flight_and_gets_no_new_ones() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(&admin_config(Some("t"), &[b[0].addr, b[1].addr]));
    let (admin, web) = (lb.addr("admin"), lb.addr("web"));
    // Round robin from a: the slow request goes to a.
    let slow = tokio::spawn(async move { get(web, "/delay/1500").await });
    // In flight on a: a has its head (so `before` below counts it).
    let a_stats = b[0].stats.clone();
    wait_until("the slow request to reach a", Duration::from_secs(10), || {
        a_stats.requests.load(Ordering::Relaxed) == 1
    })
    .await;
    let drained = call(
        admin,
        "POST",
        &format!("/api/upstreams/app/servers/{}/drain", b[0].addr),
        Some("t"),
        "",
    )
    .await;
    assert_eq!(drained.status, 200);
    assert_eq!(drained.json()["active_requests"], 1);
    let before = b[0].stats.requests.load(Ordering::Relaxed);
    assert_eq!(who_answers(web, 10).await, HashMap::from([("b".to_string(), 10)]));
    assert_eq!(b[0].stats.requests.load(Ordering::Relaxed), before);
    let finished = slow.await.unwrap();
    assert_eq!(
        finished.status,
        200,
        "the request in flight finishes: {}",
        finished.text()
    );
}
