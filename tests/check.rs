//! `fulcrum check`: a valid file gets a one-line summary and exit 0; an
//! invalid one gets every error, each with `file:line:col` and key path, and
//! exit 1.

use std::process::Command;

fn check(toml: &str) -> (i32, String, String) {
    check_env(toml, &[])
}

fn check_env(toml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("FULCRUM_TEST_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "fulcrum.toml");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

const VALID: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:8080"

[[routes]]
upstream = "app"

[upstreams.app]
servers = [ { address = "127.0.0.1:9001" }, { address = "app.internal:3000", weight = 2 } ]
"#;

#[test]
fn valid_config_prints_a_summary() {
    let (code, stdout, stderr) = check(VALID);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "ok: 1 listener, 1 route, 1 upstream (2 servers)");
}

/// Asserts exit 1 and that one error line starts with `fulcrum.toml:L:C: path:`
/// and mentions `needle`.
fn assert_error(toml: &str, at: &str, needle: &str) {
    let (code, _, stderr) = check(toml);
    assert_eq!(code, 1, "expected failure for:\n{toml}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("fulcrum.toml:{at}")) && l.contains(needle)),
        "no error `fulcrum.toml:{at}` mentioning {needle:?} in:\n{stderr}"
    );
}

#[test]
fn unknown_key_is_an_error_at_its_position() {
    let toml = VALID.replace("name = \"web\"", "name = \"web\"\nmax_conections = 5");
    assert_error(
        &toml,
        "4:1: listeners[0].max_conections:",
        "unknown field `max_conections`",
    );
}

#[test]
fn wrong_type_names_the_key_path() {
    let toml = VALID.replace("weight = 2", "weight = \"two\"");
    assert_error(&toml, "10:87: upstreams.app.servers[1].weight:", "invalid type");
}

#[test]
fn bad_duration_and_bad_size_are_explained() {
    let listen = "listen = \"127.0.0.1:8080\"";
    let toml = VALID.replace(listen, &format!("{listen}\nkeepalive_timeout = \"75 seconds\""));
    assert_error(&toml, "5:21: listeners[0].keepalive_timeout:", "invalid duration");
    let toml = VALID.replace(listen, &format!("{listen}\nmax_body_size = \"10X\""));
    assert_error(&toml, "5:17: listeners[0].max_body_size:", "invalid size");
}

#[test]
fn dangling_references_are_errors() {
    let toml = VALID.replace("upstream = \"app\"", "upstream = \"nope\"\nlisteners = [\"internal\"]");
    assert_error(&toml, "7:12: routes[0].upstream:", "no upstream named `nope`");
    assert_error(&toml, "8:14: routes[0].listeners[0]:", "no listener named `internal`");
}

#[test]
fn duplicate_listener_and_empty_servers_are_errors() {
    let toml = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:8080"
[[listeners]]
name = "web"
listen = "127.0.0.1:8081"
[[routes]]
upstream = "app"
[upstreams.app]
servers = []
"#;
    assert_error(toml, "6:8: listeners[1].name:", "duplicate listener name `web`");
    assert_error(toml, "11:11: upstreams.app.servers:", "has no servers");
}

#[test]
fn unset_environment_variable_is_an_error_where_it_is_used() {
    let toml = VALID.replace("name = \"web\"", "name = \"${FULCRUM_TEST_TOKEN}\"");
    assert_error(
        &toml,
        "3:9: listeners[0].name:",
        "environment variable FULCRUM_TEST_TOKEN is not set",
    );
    let (code, _, stderr) = check_env(&toml, &[("FULCRUM_TEST_TOKEN", "public")]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn syntax_error_has_a_position() {
    assert_error("[[listeners]\nname = 1\n", "1:", "TOML syntax error");
}

#[test]
fn keys_not_built_yet_are_refused_not_ignored() {
    let toml = VALID.replace("upstream = \"app\"", "upstream = \"app\"\ncompress = [\"gzip\"]");
    assert_error(&toml, "8:12: routes[0].compress:", "not supported yet");
}

#[test]
fn errors_in_different_sections_are_reported_together() {
    let toml = r#"
[global]
shutdown_grace = 30

[[listeners]]
name = "web"
listen = "not an address"

[[routes]]
upstream = "missing"

[upstreams.app]
servers = [ { address = "127.0.0.1:9001", weight = 0 } ]
"#;
    let (code, _, stderr) = check(toml);
    assert_eq!(code, 1);
    for expected in [
        "fulcrum.toml:3:18: global.shutdown_grace:",
        "fulcrum.toml:7:10: listeners[0].listen:",
        "fulcrum.toml:10:12: routes[0].upstream:",
        "fulcrum.toml:13:52: upstreams.app.servers[0].weight:",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(expected)),
            "missing {expected} in:\n{stderr}"
        );
    }
}
