//! `fulcrum check`: a valid file gets a one-line summary and exit 0; an
//! invalid one gets every error, each with `file:line:col` and key path, and
//! exit 1.

use std::path::Path;
use std::process::Command;

struct Outcome {
    code: i32,
    stdout: String,
    /// With the temporary directory cut off, so paths read `fulcrum.toml`.
    stderr: String,
}

fn check(toml: &str) -> Outcome {
    check_env(toml, &[])
}

fn check_env(toml: &str, env: &[(&str, &str)]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(&path, toml).unwrap();
    run_check(&path, env)
}

fn run_check(path: &Path, env: &[(&str, &str)]) -> Outcome {
    let dir = path.parent().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(path)
        .env_remove("FULCRUM_TEST_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).replace(&format!("{}/", dir.display()), ""),
    }
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

/// Asserts exit 1 and an error line that starts with `fulcrum.toml:{at}: `
/// (position and key path) and mentions `needle`.
fn assert_error(toml: &str, at: &str, needle: &str) {
    assert_error_env(toml, &[], at, needle);
}

fn assert_error_env(toml: &str, env: &[(&str, &str)], at: &str, needle: &str) {
    let out = check_env(toml, env);
    assert_eq!(out.code, 1, "expected failure for:\n{toml}\nstderr:\n{}", out.stderr);
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", out.stdout);
    let prefix = format!("fulcrum.toml:{at}: ");
    assert!(
        out.stderr.lines().any(|l| l.starts_with(&prefix) && l.contains(needle)),
        "no error `{prefix}...` mentioning {needle:?} in:\n{}",
        out.stderr
    );
}

#[test]
fn valid_config_prints_a_summary() {
    let out = check(VALID);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "ok: 1 listener, 1 route, 1 upstream (2 servers)");
}

#[test]
fn unknown_key_is_an_error_at_its_position() {
    let toml = VALID.replace("name = \"web\"", "name = \"web\"\nmax_conections = 5");
    assert_error(
        &toml,
        "4:1: listeners[0].max_conections",
        "unknown field `max_conections`",
    );
}

#[test]
fn wrong_type_names_the_key_path() {
    let toml = VALID.replace("weight = 2", "weight = \"two\"");
    assert_error(
        &toml,
        "10:87: upstreams.app.servers[1].weight",
        "invalid type: string \"two\", expected u32",
    );
}

#[test]
fn bad_duration_is_explained() {
    let listen = "listen = \"127.0.0.1:8080\"";
    let toml = VALID.replace(listen, &format!("{listen}\nkeepalive_timeout = \"75 seconds\""));
    assert_error(
        &toml,
        "5:21: listeners[0].keepalive_timeout",
        "invalid duration \"75 seconds\"",
    );
    let toml = VALID.replace(listen, &format!("{listen}\nkeepalive_timeout = 75"));
    assert_error(
        &toml,
        "5:21: listeners[0].keepalive_timeout",
        "durations are strings like \"30s\"",
    );
}

#[test]
fn bad_size_is_explained() {
    let listen = "listen = \"127.0.0.1:8080\"";
    let toml = VALID.replace(listen, &format!("{listen}\nmax_body_size = \"10X\""));
    assert_error(&toml, "5:17: listeners[0].max_body_size", "invalid size \"10X\"");
}

#[test]
fn dangling_upstream_is_an_error() {
    let toml = VALID.replace("upstream = \"app\"", "upstream = \"nope\"");
    assert_error(&toml, "7:12: routes[0].upstream", "no upstream named `nope`");
}

#[test]
fn dangling_listener_is_an_error() {
    let toml = VALID.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\nlisteners = [\"web\", \"internal\"]",
    );
    assert_error(&toml, "8:21: routes[0].listeners[1]", "no listener named `internal`");
}

#[test]
fn duplicate_listener_name_is_an_error() {
    let toml = VALID.replace(
        "[[routes]]",
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8081\"\n\n[[routes]]",
    );
    assert_error(&toml, "7:8: listeners[1].name", "duplicate listener name `web`");
}

#[test]
fn empty_server_list_is_an_error() {
    let toml = VALID.replace(
        "servers = [ { address = \"127.0.0.1:9001\" }, { address = \"app.internal:3000\", weight = 2 } ]",
        "servers = []",
    );
    assert_error(&toml, "10:11: upstreams.app.servers", "upstream `app` has no servers");
}

#[test]
fn unset_environment_variable_is_an_error_where_it_is_used() {
    let toml = VALID.replace("name = \"web\"", "name = \"web-${FULCRUM_TEST_TOKEN}\"");
    assert_error(
        &toml,
        "3:13: listeners[0].name",
        "environment variable FULCRUM_TEST_TOKEN is not set",
    );
    let out = check_env(&toml, &[("FULCRUM_TEST_TOKEN", "public")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn substituted_values_keep_later_positions() {
    let toml = VALID
        .replace("name = \"web\"", "name = \"${FULCRUM_TEST_TOKEN}\"")
        .replace("weight = 2", "weight = -2");
    let long = "a-value-much-longer-than-the-reference-it-replaces";
    assert_error_env(
        &toml,
        &[("FULCRUM_TEST_TOKEN", long)],
        "10:87: upstreams.app.servers[1].weight",
        "invalid value",
    );
}

#[test]
fn syntax_error_has_a_position() {
    assert_error("[[listeners]\nname = 1\n", "1:13", "TOML syntax error");
    let toml = VALID.replace("upstream = \"app\"", "upstream = app");
    assert_error(&toml, "7:12", "TOML syntax error");
}

#[test]
fn compress_lists_each_coding_once() {
    let toml = VALID.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\ncompress = [\"gzip\", \"gzip\"]",
    );
    assert_error(&toml, "8:21: routes[0].compress[1]", "`gzip` is listed twice");
    let toml = VALID.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\ncompress = [\"gzip\", \"br\"]",
    );
    assert_eq!(check(&toml).code, 0);
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_check(&dir.path().join("absent.toml"), &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("absent.toml:1:1: cannot read the config file"),
        "{}",
        out.stderr
    );
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
    let out = check(toml);
    assert_eq!(out.code, 1);
    let positions: Vec<&str> = out.stderr.lines().map(|l| l.split(": ").next().unwrap_or(l)).collect();
    assert_eq!(
        positions,
        [
            "fulcrum.toml:3:18",
            "fulcrum.toml:7:10",
            "fulcrum.toml:10:12",
            "fulcrum.toml:13:52",
        ],
        "{}",
        out.stderr
    );
    for expected in [
        "fulcrum.toml:3:18: global.shutdown_grace: durations are strings",
        "fulcrum.toml:7:10: listeners[0].listen: invalid address",
        "fulcrum.toml:10:12: routes[0].upstream: no upstream named `missing`",
        "fulcrum.toml:13:52: upstreams.app.servers[0].weight: weight must be at least 1",
    ] {
        assert!(
            out.stderr.lines().any(|l| l.starts_with(expected)),
            "missing {expected} in:\n{}",
            out.stderr
        );
    }
}
