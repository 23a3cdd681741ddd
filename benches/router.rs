//! Route resolution (`RouteTable::resolve`) on a realistic table: 3
//! listeners, 50 routes mixing exact, wildcard and any host, nested path
//! prefixes and a header match, built from TOML through the config loader
//! the way a snapshot builds it.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fulcrum::config::ListenerId;
use fulcrum::router::RouteTable;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The config: `web` carries most routes and has no catch-all (so a miss
/// walks its whole list), `api` and `internal` a few each.
fn config_text() -> String {
    let mut toml = String::new();
    for (i, name) in ["web", "api", "internal"].iter().enumerate() {
        writeln!(
            toml,
            "[[listeners]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{}\"\n",
            8080 + i
        )
        .unwrap();
    }
    let mut route = |name: &str, listeners: &str, host: Option<&str>, prefix: &str, headers: Option<&str>| {
        writeln!(toml, "[[routes]]\nname = \"{name}\"\nlisteners = [{listeners}]").unwrap();
        if let Some(host) = host {
            writeln!(toml, "host = \"{host}\"").unwrap();
        }
        writeln!(toml, "path_prefix = \"{prefix}\"\nupstream = \"app\"").unwrap();
        if let Some(headers) = headers {
            writeln!(toml, "headers = {{ {headers} }}").unwrap();
        }
        toml.push('\n');
    };
    // 20 exact hosts on web, each with a root and an API route.
    for i in 0..10 {
        let host = format!("app{i}.example.com");
        route(&format!("app{i}-root"), "\"web\"", Some(&host), "/", None);
        route(&format!("app{i}-api"), "\"web\"", Some(&host), "/api/", None);
    }
    // 10 wildcard hosts on web: one tenant domain each.
    for i in 0..10 {
        let host = format!("*.tenant{i}.example.net");
        route(&format!("tenant{i}"), "\"web\"", Some(&host), "/", None);
    }
    // 12 any-host routes on web: nested prefixes, a canary by header.
    for prefix in ["/static/", "/assets/", "/img/", "/docs/", "/blog/", "/status/"] {
        route(
            &format!("any{}", prefix.trim_matches('/')),
            "\"web\"",
            None,
            prefix,
            None,
        );
    }
    route("v1", "\"web\"", None, "/api/v1/", None);
    route("v1-users", "\"web\"", None, "/api/v1/users/", None);
    route("v1-orders", "\"web\"", None, "/api/v1/orders/", None);
    route("v1-canary", "\"web\"", None, "/api/v1/", Some("\"X-Canary\" = \"1\""));
    route("v2", "\"web\"", None, "/api/v2/", None);
    route("api-any", "\"web\"", None, "/api/", None);
    // 8 on the other listeners, two of them shared with web.
    for i in 0..4 {
        route(
            &format!("internal{i}"),
            "\"internal\"",
            None,
            &format!("/admin/{i}/"),
            None,
        );
    }
    route("api-host", "\"api\", \"web\"", Some("api.example.com"), "/", None);
    route("api-wild", "\"api\", \"web\"", Some("*.api.example.com"), "/", None);
    route("api-root", "\"api\"", None, "/", None);
    route("internal-root", "\"internal\"", None, "/", None);
    toml.push_str("[upstreams.app]\nservers = [ { address = \"127.0.0.1:3001\" } ]\n");
    toml
}

fn table() -> RouteTable {
    let config = fulcrum::config::parse(&config_text(), "bench", &|_| None).expect("the bench config is valid");
    assert_eq!(config.routes.len(), 50);
    RouteTable::new(config.routes.clone(), config.listeners.len())
}

struct Case {
    name: &'static str,
    host: &'static str,
    path: &'static str,
    headers: HeaderMap,
    /// The route it must resolve to; `None` for a 404.
    want: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let plain = HeaderMap::new();
    let mut canary = HeaderMap::new();
    // A few ordinary headers, so the lookup is not in a one-entry map.
    for (name, value) in [("user-agent", "bench/1.0"), ("accept", "*/*"), ("x-canary", "1")] {
        canary.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    vec![
        Case {
            name: "exact_host",
            host: "app7.example.com",
            path: "/api/orders/42",
            headers: plain.clone(),
            want: Some("app7-api"),
        },
        Case {
            name: "wildcard_host",
            host: "shop.tenant6.example.net",
            path: "/cart",
            headers: plain.clone(),
            want: Some("tenant6"),
        },
        Case {
            name: "longest_prefix",
            host: "www.example.org",
            path: "/api/v1/users/42/profile",
            headers: plain.clone(),
            want: Some("v1-users"),
        },
        Case {
            name: "header_match",
            host: "www.example.org",
            path: "/api/v1/things",
            headers: canary,
            want: Some("v1-canary"),
        },
        Case {
            name: "miss_404",
            host: "www.example.org",
            path: "/nothing/here",
            headers: plain,
            want: None,
        },
    ]
}

fn resolve(c: &mut Criterion) {
    let table = table();
    let web = ListenerId(0);
    let mut group = c.benchmark_group("router/resolve");
    for case in cases() {
        let got = table.resolve(web, Some(case.host), case.path, &case.headers);
        assert_eq!(got.map(|id| table.route(id).name.as_str()), case.want, "{}", case.name);
        group.bench_function(case.name, |b| {
            b.iter(|| {
                table.resolve(
                    black_box(web),
                    black_box(Some(case.host)),
                    black_box(case.path),
                    black_box(&case.headers),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, resolve);
criterion_main!(benches);
