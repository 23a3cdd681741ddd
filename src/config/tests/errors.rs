//! Each kind of mistake, reported at `line:col` with its key path.

use super::*;

#[test]
fn type_errors_point_at_the_value() {
    assert_error(
        &in_listener("max_conections = 5"),
        "max_conections",
        "listeners[0].max_conections",
        "unknown field",
    );
    let text = BASE.replace("9001\" }", "9001\", weight = \"x\" }");
    assert_error(
        &text,
        "\"x\"",
        "upstreams.app.servers[0].weight",
        "invalid type: string \"x\", expected u32",
    );
    assert_error(
        &in_listener("keepalive_timeout = 75"),
        "75",
        "listeners[0].keepalive_timeout",
        "durations are strings like \"30s\"",
    );
    assert_error(
        &in_listener("keepalive_timeout = \"75 s\""),
        "\"75 s\"",
        "listeners[0].keepalive_timeout",
        "invalid duration",
    );
    assert_error(
        &in_listener("max_body_size = \"10X\""),
        "\"10X\"",
        "listeners[0].max_body_size",
        "invalid size",
    );
    assert_error(
        &in_route("host = \"a.*.com\""),
        "\"a.*.com\"",
        "routes[0].host",
        "invalid host",
    );
    assert_error(
        &in_route("headers = { \"bad name\" = \"1\" }"),
        "\"bad name\"",
        "routes[0].headers.\"bad name\"",
        "invalid header name",
    );
    assert_error(
        &in_upstream("balance = \"fastest\""),
        "\"fastest\"",
        "upstreams.app.balance",
        "unknown variant `fastest`",
    );
    let text = BASE.replace("127.0.0.1:9001", "app");
    assert_error(
        &text,
        "\"app\" }",
        "upstreams.app.servers[0].address",
        "invalid server address",
    );
    assert_error(
        &format!("{BASE}[global]\naccess_log_format = \"xml\"\n"),
        "\"xml\"",
        "global.access_log_format",
        "unknown variant",
    );
}

#[test]
fn structural_mistakes_are_explained() {
    assert_error("listeners = 5\n", "5", "listeners", "must be an array of tables");
    assert_error(
        &format!("{BASE}[upstream.x]\n"),
        "upstream.x",
        "upstream",
        "unknown section `upstream`",
    );
    assert_error(&format!("global = 1\n{BASE}"), "1\n", "global", "expected a table");
    let lines = error_lines("[global]\nworkers = 1\n");
    assert!(
        lines.contains(&"f.toml:1:1: at least one [[listeners]] is needed".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"f.toml:1:1: at least one [[routes]] is needed".to_string()),
        "{lines:?}"
    );
}

#[test]
fn semantic_rules_are_checked_where_they_break() {
    let second = |listen: &str| {
        BASE.replace(
            "[[routes]]",
            &format!("[[listeners]]\nname = \"b\"\nlisten = \"{listen}\"\n\n[[routes]]"),
        )
    };
    let text = second("127.0.0.1:8080");
    assert_error_at(
        &text,
        "name = \"b\"",
        "\"127.0.0.1:8080\"",
        "listeners[1].listen",
        "overlaps",
    );
    assert_error(
        &second("0.0.0.0:8080"),
        "\"0.0.0.0:8080\"",
        "listeners[1].listen",
        "overlaps",
    );
    assert!(parse(&second("127.0.0.1:8081"), "f", &env).is_ok());
    let text = BASE.replace(
        "[[routes]]",
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8081\"\n[[routes]]",
    );
    assert_error_at(
        &text,
        "listen = \"127.0.0.1:8080",
        "\"web\"",
        "listeners[1].name",
        "duplicate listener name `web`",
    );
    assert_error(
        &in_listener("max_connections = 0"),
        "0\n",
        "listeners[0].max_connections",
        "at least 1",
    );
    assert_error(
        &format!("[global]\nworkers = 2000\n{BASE}"),
        "2000",
        "global.workers",
        "at most 1024",
    );
    assert_error(
        &in_route("listeners = [\"nope\"]"),
        "\"nope\"",
        "routes[0].listeners[0]",
        "no listener named `nope`",
    );
    let text = BASE.replace("upstream = \"app\"", "upstream = \"ghost\"");
    assert_error(&text, "\"ghost\"", "routes[0].upstream", "no upstream named `ghost`");
    assert_error(
        &in_route("rate_limit = \"api\""),
        "\"api\"",
        "routes[0].rate_limit",
        "no rate limit named `api`",
    );
    assert_error(
        &in_route("respond = { status = 200 }"),
        "[[routes]]",
        "routes[0]",
        "only one of",
    );
    let text = BASE.replace("upstream = \"app\"", "path_prefix = \"/x\"");
    assert_error(&text, "[[routes]]", "routes[0]", "needs one of");
    assert_error(
        &in_route("path_prefix = \"api\""),
        "\"api\"",
        "routes[0].path_prefix",
        "must start with `/`",
    );
    assert_error(
        &in_route("rewrite_prefix = \"v2\""),
        "\"v2\"",
        "routes[0].rewrite_prefix",
        "must start with `/`",
    );
    assert_error(
        &in_route("connect_timeout = \"0s\""),
        "\"0s\"",
        "routes[0].connect_timeout",
        "greater than 0",
    );
    let text = BASE.replace("upstream = \"app\"", "respond = { status = 700 }");
    assert_error(&text, "700", "routes[0].respond.status", "between 100 and 599");
    let text = BASE.replace("upstream = \"app\"", "split = [ { upstream = \"app\", weight = 0 } ]");
    assert_error(
        &text,
        "[ {",
        "routes[0].split",
        "at least one split weight must be above 0",
    );
    let text = BASE.replace(
        "upstream = \"app\"",
        "split = [ { upstream = \"app\", weight = 1 }, { upstream = \"app\", weight = 2 } ]",
    );
    assert_error(
        &text,
        "\"app\", weight = 2",
        "routes[0].split[1].upstream",
        "appears twice",
    );
}

#[test]
fn dns_settings_are_checked() {
    let global = |keys: &str| format!("[global]\n{keys}\n{BASE}");
    assert_error(
        &global("dns_refresh = \"500ms\""),
        "\"500ms\"",
        "global.dns_refresh",
        "at least 1s",
    );
    assert_error(
        &global("resolver = \"dns.internal:53\""),
        "\"dns.internal:53\"",
        "global.resolver",
        "expected an IP address",
    );
    assert_eq!(
        parse_ok(&global("resolver = \"10.0.0.2\"")).global.resolver,
        Some("10.0.0.2:53".parse().unwrap())
    );
}

#[test]
fn compress_takes_gzip_and_br_once_each() {
    assert_error(
        &in_route("compress = [\"gzip\", \"zstd\"]"),
        "\"zstd\"",
        "routes[0].compress[1]",
        "unknown variant `zstd`, expected `gzip` or `br`",
    );
    assert_error(
        &in_route("compress = [\"br\", \"gzip\", \"br\"]"),
        "\"br\"]",
        "routes[0].compress[2]",
        "`br` is listed twice",
    );
    let config = parse_ok(&in_route("compress = [\"br\", \"gzip\"]"));
    assert_eq!(config.routes[0].compress, Compress { gzip: true, br: true });
    let config = parse_ok(&in_route("compress = []"));
    assert!(config.routes[0].compress.is_off());
}

#[test]
fn route_names_are_unique() {
    let two =
        |a: &str, b: &str| format!("{BASE}[[routes]]\n{a}upstream = \"app\"\n[[routes]]\n{b}upstream = \"app\"\n");
    let text = two("name = \"x\"\n", "name = \"x\"\n");
    assert_error_at(
        &text,
        "name = \"x\"\nupstream = \"app\"\n[[routes]]",
        "\"x\"",
        "routes[2].name",
        "duplicate route name `x`",
    );
    let text = two("name = \"route2\"\n", "");
    assert_error(&text, "\"route2\"", "routes[1].name", "routes[2], which has none");
}

#[test]
fn upstream_rules_are_checked_where_they_break() {
    let text = BASE.replace("servers = [ { address = \"127.0.0.1:9001\" } ]", "servers = []");
    assert_error(&text, "[]", "upstreams.app.servers", "has no servers");
    let text = BASE.replace("9001\" }", "9001\", weight = 0 }");
    assert_error(&text, "0 }", "upstreams.app.servers[0].weight", "at least 1");
    let text = BASE.replace("9001\" }", "9001\" }, { address = \"127.0.0.1:9001\" }");
    assert_error_at(
        &text,
        "}, ",
        "\"127.0.0.1:9001\"",
        "upstreams.app.servers[1].address",
        "duplicate server",
    );
    assert_error(
        &in_upstream("balance = \"hash\""),
        "\"hash\"",
        "upstreams.app.balance",
        "needs a `hash_key`",
    );
    assert_error(
        &in_upstream("hash_key = \"path\""),
        "\"path\"",
        "upstreams.app.hash_key",
        "only used with",
    );
    assert_error(
        &in_upstream("balance = \"hash\"\nhash_key = \"ip\""),
        "\"ip\"",
        "upstreams.app.hash_key",
        "invalid hash_key",
    );
    let check = |keys: &str| format!("{BASE}[upstreams.app.health_check]\n{keys}\n");
    assert_error(
        &check("healthy_threshold = 0"),
        "0\n",
        "upstreams.app.health_check.healthy_threshold",
        "at least 1",
    );
    assert_error(
        &check("interval = \"1s\"\ntimeout = \"2s\""),
        "\"2s\"",
        "upstreams.app.health_check.timeout",
        "must not exceed",
    );
    assert_error(
        &check("interval = \"0s\""),
        "\"0s\"",
        "upstreams.app.health_check.interval",
        "greater than 0",
    );
    assert_error(
        &check("path = \"health\""),
        "\"health\"",
        "upstreams.app.health_check.path",
        "must start with `/`",
    );
    assert_error(
        &check("expect_status = \"200-999\""),
        "\"200-999\"",
        "upstreams.app.health_check.expect_status",
        "invalid status range",
    );
    let text = format!("{BASE}[rate_limits.api]\nrate = \"5/s\"\nstore = \"redis\"\n");
    assert_error(&text, "\"redis\"", "rate_limits.api.store", "needs a [redis] section");
}

#[test]
fn access_log_paths_must_be_openable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("access.log");
    let text = format!("{BASE}[global]\naccess_log = \"{}\"\n", missing.display());
    assert_error(&text, "\"/", "global.access_log", "no-such-dir does not exist");
    let text = format!("{BASE}[global]\naccess_log = \"{}\"\n", dir.path().display());
    assert_error(&text, "\"/", "global.access_log", "is a directory, not a file");

    let file = dir.path().join("access.log");
    let text = format!(
        "{BASE}[global]\naccess_log = \"{}\"\naccess_log_format = \"combined\"\n",
        file.display()
    );
    let config = parse_ok(&text);
    assert_eq!(config.global.access_log, AccessLog::File(file.clone()));
    assert_eq!(config.global.access_log_format, AccessLogFormat::Combined);
    assert!(!file.exists(), "checking a config creates nothing");
    // A bare file name lives in the working directory, which exists.
    let config = parse_ok(&format!("{BASE}[global]\naccess_log = \"access.log\"\n"));
    assert_eq!(config.global.access_log, AccessLog::File("access.log".into()));
    assert_eq!(config.global.access_log_format, AccessLogFormat::Json);
}

#[test]
fn environment_variables_are_substituted_and_positions_kept() {
    let text = in_route("request_headers = { set = { \"X-A\" = \"${LONG}\" } }\nread_timeout = \"soon\"");
    assert_error(&text, "\"soon\"", "routes[0].read_timeout", "invalid duration");
    let text = in_route("request_headers = { set = { \"X-A\" = \"${LONG}\", \"X B\" = \"1\" } }");
    assert_error(
        &text,
        "\"X B\"",
        "routes[0].request_headers.set.\"X B\"",
        "invalid header name",
    );
    let text = BASE.replace("\"web\"", "\"${NOT_SET}\"");
    assert_error(
        &text,
        "${NOT_SET}",
        "listeners[0].name",
        "environment variable NOT_SET is not set",
    );
    let text = BASE.replace("upstream = \"app\"", "upstream = \"x-${NOT_SET}\"");
    let lines = error_lines(&text);
    assert_eq!(lines.len(), 1, "the unknown value is not complained about: {lines:?}");
    let text = BASE.replace("\"web\"", "'${QUOTE}'");
    assert_error(&text, "${QUOTE}", "listeners[0].name", "'literal' string");
}

#[test]
fn syntax_errors_have_a_position() {
    assert_error("[[listeners]\nname = 1\n", "\n", "", "TOML syntax error");
    assert_error("a = \"open\n", "\n", "", "TOML syntax error");
}

#[test]
fn errors_in_different_sections_come_together_in_file_order() {
    let text = r#"[global]
shutdown_grace = 30

[[listeners]]
name = "web"
listen = "not an address"

[[routes]]
upstream = "missing"

[upstreams.app]
servers = [ { address = "127.0.0.1:9001", weight = 0 } ]
"#;
    let lines = error_lines(text);
    let prefixes: Vec<&str> = lines.iter().map(|l| &l[..l.find(": ").unwrap()]).collect();
    assert_eq!(
        prefixes,
        ["f.toml:2:18", "f.toml:6:10", "f.toml:9:12", "f.toml:12:52"],
        "{lines:#?}"
    );
    assert!(lines[3].starts_with("f.toml:12:52: upstreams.app.servers[0].weight: weight must be at least 1"));
}

#[test]
fn tls_sections_are_checked_where_they_are_written() {
    let text = format!("{BASE}[listeners.tls]\ncertificates = []\n");
    assert_error(&text, "[]", "listeners[0].tls.certificates", "at least one certificate");
    let text = format!("{BASE}[listeners.tls]\ncertificates = [ {{ cert = \"absent.pem\", key = \"absent.key\" }} ]\n");
    assert_error(
        &text,
        "\"absent.pem\"",
        "listeners[0].tls.certificates[0].cert",
        "cannot read certificate file absent.pem",
    );
    let text = format!("{BASE}[listeners.tls]\ncertificates = [ {{ cert = \"\", key = \"k\" }} ]\n");
    assert_error(
        &text,
        "\"\"",
        "listeners[0].tls.certificates[0].cert",
        "cannot be empty",
    );
    let text = format!(
        "{BASE}[listeners.tls]\ncertificates = [ {{ cert = \"a\", key = \"b\" }} ]\nredirect_http_from = \"0.0.0.0:8080\"\n"
    );
    assert_error(
        &text,
        "\"0.0.0.0:8080\"",
        "listeners[0].tls.redirect_http_from",
        "overlaps 127.0.0.1:8080",
    );
}
