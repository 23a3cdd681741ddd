//! The admin listener's read calls: liveness, readiness, and the state of
//! every upstream and server.

mod support;

use support::{Fulcrum, backends, get};

#[tokio::test]
async fn health_ready_and_upstreams_describe_the_running_balancer() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(&format!(
        r#"
[global]
admin_listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
balance = "least_conn"
servers = [ {{ address = "{}", weight = 3 }}, {{ address = "{}", backup = true }} ]
"#,
        b[0].addr, b[1].addr
    ));
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

#[tokio::test]
async fn admin_token_is_refused_until_mutating_calls_exist() {
    let mut lb = Fulcrum::spawn(
        r#"
[global]
admin_listen = "127.0.0.1:0"
admin_token = "secret"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
respond = { status = 200, body = "x" }
"#,
    );
    assert!(!lb.wait_exit(std::time::Duration::from_secs(20)).success());
    assert!(lb.logs().contains("not supported yet"), "{}", lb.logs());
}
