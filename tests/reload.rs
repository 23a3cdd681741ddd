//! Reload (SIGHUP and `POST /api/reload`): a new config swaps in under load
//! without a failed request, an invalid one changes nothing, listeners come
//! and go without touching the others, and server state carries over.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use support::{Conn, Fulcrum, Resp, backends, get, request, wait_until, wait_until_async};

const TOKEN: &str = "reload-token";

fn config(servers: &[(SocketAddr, u32)], extra_listener: bool) -> String {
    let servers = servers
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let extra = if extra_listener {
        "[[listeners]]\nname = \"extra\"\nlisten = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    format!(
        r#"
[global]
workers = 1
admin_listen = "127.0.0.1:0"
admin_token = "{TOKEN}"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
{extra}
[[routes]]
upstream = "app"
[upstreams.app]
servers = [ {servers} ]
"#
    )
}

async fn api_reload(admin: SocketAddr) -> Resp {
    let req = request("POST", "/api/reload")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Bytes::new())
        .unwrap();
    Conn::open(admin).await.send(req).await
}

/// `fulcrum_config_reloads_total{result}` as the metrics say.
async fn reloads(admin: SocketAddr, result: &str) -> u64 {
    let text = get(admin, "/metrics").await.text();
    let prefix = format!("fulcrum_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
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

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(pid.to_string().as_str()) {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn ten_reloads_under_load_lose_no_request_and_routing_follows_each_config() {
    let b = backends(&["a", "b", "c"]).await;
    let (a, bb, c) = (b[0].addr, b[1].addr, b[2].addr);
    // Alternately {a, b} and {a, b:3, c}: a server removed and added, a weight changed.
    let configs = [
        (vec![(a, 1), (bb, 1)], HashSet::from(["a", "b"])),
        (vec![(a, 1), (bb, 3), (c, 1)], HashSet::from(["a", "b", "c"])),
    ];
    let lb = Fulcrum::start(&config(&configs[0].0, false));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));
    assert_eq!(who_answers(web, 4).await.len(), 2);

    // Steady load: four keep-alive clients, each counting what went wrong.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, sent) = (stop.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut conn = Conn::open(web).await;
            while !stop.load(Ordering::Relaxed) {
                match conn.try_send(request("GET", "/").body(Bytes::new()).unwrap()).await {
                    Ok(resp) if resp.status == 200 => {}
                    Ok(resp) => failures.push(format!("{} {}", resp.status, resp.text())),
                    Err(e) => failures.push(e.to_string()),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }

    let mut rss_after = Vec::new();
    for i in 1..=10 {
        let (servers, expected) = &configs[i % 2];
        lb.write_config(&config(servers, false));
        if i % 2 == 1 {
            lb.signal("HUP");
            wait_until_async(
                "the SIGHUP reload to be counted",
                Duration::from_secs(10),
                || async move { reloads(admin, "ok").await == i as u64 },
            )
            .await;
        } else {
            let resp = api_reload(admin).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            assert_eq!(reloads(admin, "ok").await, i as u64);
        }
        // Every request from now on runs on the new config: over the next
        // few hundred (mostly from the load), each backend gets its share.
        let counts = || {
            b.iter()
                .map(|x| x.stats.requests.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        };
        let start = counts();
        let mut seen = who_answers(web, 20).await;
        wait_until("300 more requests", Duration::from_secs(20), || {
            counts().iter().sum::<u64>() >= start.iter().sum::<u64>() + 300
        })
        .await;
        let share: Vec<u64> = counts().iter().zip(&start).map(|(now, then)| now - then).collect();
        let total = share.iter().sum::<u64>() as f64;
        for (backend, n) in b.iter().zip(&share) {
            if *n > 0 {
                seen.entry(backend.name.clone()).or_insert(0);
            }
        }
        let names: HashSet<&str> = seen.keys().map(String::as_str).collect();
        assert_eq!(&names, expected, "after reload {i}: {share:?}");
        // A few requests in flight at the swap may still end on the old
        // config: allow them, and no more.
        let (weight_b, weight_sum) = if expected.len() == 3 { (3.0, 5.0) } else { (1.0, 2.0) };
        let b_share = share[1] as f64 / total;
        assert!(
            (b_share - weight_b / weight_sum).abs() < 0.05,
            "b's share {b_share:.3} after reload {i} ({share:?}), weight {weight_b} of {weight_sum}"
        );
        rss_after.push(lb.rss_kb());
    }
    let before = sent.load(Ordering::Relaxed);
    wait_until_async("the load to keep flowing", Duration::from_secs(10), || {
        let sent = sent.clone();
        async move { sent.load(Ordering::Relaxed) > before + 100 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(failures.is_empty(), "failed requests during reloads: {failures:?}");
    assert!(sent.load(Ordering::Relaxed) > 200);
    assert_eq!(reloads(admin, "error").await, 0);
    // Nothing left behind: one process, memory flat from reload to reload
    // (the first reloads warm up pools and allocator; compare after them).
    assert_eq!(children_of(lb.pid()), 0);
    let (early, late) = (rss_after[2], rss_after[9]);
    eprintln!("RSS after each reload (kB): {rss_after:?}");
    // One step of the allocator (a 2 MiB segment, seen once after some
    // reload in some runs, then flat) is not a leak; a leak of even 0.5 MB
    // per reload would still pass 3 MiB over 7 reloads.
    assert!(
        late <= early + 3 * 1024,
        "RSS grew from {early} kB to {late} kB over 7 reloads: {rss_after:?}"
    );
}

#[tokio::test]
async fn an_invalid_reload_returns_the_errors_and_changes_nothing() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(&config(&[(b[0].addr, 1)], false));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));

    lb.write_config("[global\nworkers = 1\n");
    let resp = api_reload(admin).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let errors = resp.json()["errors"].clone();
    assert!(
        errors[0].as_str().unwrap().contains("fulcrum.toml:1:"),
        "a syntax error names its position: {errors}"
    );

    let dangling = config(&[(b[1].addr, 1)], false).replace("upstream = \"app\"", "upstream = \"nope\"");
    lb.write_config(&dangling);
    let resp = api_reload(admin).await;
    assert_eq!(resp.status, 400);
    assert!(resp.text().contains("nope"), "{}", resp.text());
    lb.signal("HUP");
    wait_until_async(
        "the failed SIGHUP reload to be counted",
        Duration::from_secs(10),
        || async move { reloads(admin, "error").await == 3 },
    )
    .await;
    assert!(lb.logs().contains("reload failed"), "{}", lb.logs());
    // Still the old config: only a serves.
    assert_eq!(who_answers(web, 4).await, HashMap::from([("a".to_string(), 4)]));
    assert_eq!(reloads(admin, "ok").await, 0);
}

#[tokio::test]
async fn reload_adds_and_removes_a_listener_without_touching_the_others() {
    let b = backends(&["a"]).await;
    let servers = [(b[0].addr, 1)];
    let lb = Fulcrum::start(&config(&servers, false));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));
    let mut kept = Conn::open(web).await;
    assert_eq!(
        kept.send(request("GET", "/").body(Bytes::new()).unwrap()).await.status,
        200
    );

    lb.write_config(&config(&servers, true));
    assert_eq!(api_reload(admin).await.status, 200);
    lb.wait_for_log("listener=extra", Duration::from_secs(10)).await;
    let extra = lb.addr("extra");
    assert_eq!(get(extra, "/").await.text(), "a\n");
    let mut on_extra = Conn::open(extra).await;
    assert_eq!(
        on_extra
            .send(request("GET", "/").body(Bytes::new()).unwrap())
            .await
            .status,
        200
    );
    // The connection opened before the reload is still served.
    assert_eq!(
        kept.send(request("GET", "/").body(Bytes::new()).unwrap()).await.status,
        200
    );

    lb.write_config(&config(&servers, false));
    assert_eq!(api_reload(admin).await.status, 200);
    wait_until_async(
        "the removed listener to refuse connections",
        Duration::from_secs(10),
        || async move { tokio::net::TcpStream::connect(extra).await.is_err() },
    )
    .await;
    // Its idle keep-alive connection is closed too.
    wait_until_async(
        "the removed listener's connection to close",
        Duration::from_secs(10),
        || {
            let closed = on_extra.is_closed();
            async move { closed }
        },
    )
    .await;
    assert_eq!(
        kept.send(request("GET", "/").body(Bytes::new()).unwrap()).await.status,
        200
    );
    assert_eq!(get(web, "/").await.status, 200);
}

#[tokio::test]
async fn servers_in_both_configs_keep_their_health_verdict() {
    let b = backends(&["a", "b"]).await;
    let health = |servers: &str| {
        format!(
            r#"
[global]
workers = 1
admin_listen = "127.0.0.1:0"
admin_token = "{TOKEN}"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
servers = [ {servers} ]
[upstreams.app.health_check]
path = "/health"
interval = "100ms"
timeout = "100ms"
unhealthy_threshold = 1
healthy_threshold = 1
"#
        )
    };
    let lb = Fulcrum::start(&health(&format!(
        "{{ address = \"{}\" }}, {{ address = \"{}\" }}",
        b[0].addr, b[1].addr
    )));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));
    // b fails its checks and goes down.
    let mut conn = Conn::open(b[1].addr).await;
    assert_eq!(
        conn.send(request("POST", "/health/fail").body(Bytes::new()).unwrap())
            .await
            .status,
        200
    );
    wait_until_async("b to be marked down", Duration::from_secs(10), || async move {
        get(admin, "/api/upstreams").await.json()["upstreams"][0]["servers"][1]["state"] == "down"
    })
    .await;
    assert_eq!(who_answers(web, 50).await, HashMap::from([("a".to_string(), 50)]));

    // Same servers, new weight for a: b is still down.
    lb.write_config(&health(&format!(
        "{{ address = \"{}\", weight = 2 }}, {{ address = \"{}\" }}",
        b[0].addr, b[1].addr
    )));
    assert_eq!(api_reload(admin).await.status, 200);
    let state = get(admin, "/api/upstreams").await.json();
    assert_eq!(state["upstreams"][0]["servers"][0]["weight"], 2);
    assert_eq!(state["upstreams"][0]["servers"][1]["state"], "down", "{state}");
    assert_eq!(who_answers(web, 50).await, HashMap::from([("a".to_string(), 50)]));
    // And the checker still watches b: it comes back.
    assert_eq!(
        conn.send(request("POST", "/health/ok").body(Bytes::new()).unwrap())
            .await
            .status,
        200
    );
    wait_until_async("b to come back", Duration::from_secs(10), || async move {
        get(admin, "/api/upstreams").await.json()["upstreams"][0]["servers"][1]["state"] == "up"
    })
    .await;
}

#[tokio::test]
async fn servers_in_both_configs_keep_their_pooled_connections() {
    let b = backends(&["a", "b"]).await;
    let lb = Fulcrum::start(&config(&[(b[0].addr, 1)], false));
    let (web, admin) = (lb.addr("web"), lb.addr("admin"));
    assert_eq!(who_answers(web, 20).await, HashMap::from([("a".to_string(), 20)]));
    let opened = b[0].stats.connections.load(Ordering::Relaxed);
    assert_eq!(opened, 1, "one client on one worker needs one upstream connection");

    lb.write_config(&config(&[(b[0].addr, 3), (b[1].addr, 1)], false));
    assert_eq!(api_reload(admin).await.status, 200);
    let seen = who_answers(web, 20).await;
    assert_eq!(seen["a"], 15, "{seen:?}");
    assert_eq!(
        b[0].stats.connections.load(Ordering::Relaxed),
        opened,
        "a's requests after the reload reuse its pooled connection"
    );
}
