//! `config::parse` end to end: what a whole file becomes (`model`), where
//! each kind of mistake is reported (`errors`; rate limits in `limits`), and
//! that no input panics (`fuzz`).

mod errors;
mod fuzz;
mod limits;
mod model;

use super::source::line_col;
use super::*;

const BASE: &str = r#"[[listeners]]
name = "web"
listen = "127.0.0.1:8080"

[[routes]]
upstream = "app"

[upstreams.app]
servers = [ { address = "127.0.0.1:9001" } ]
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "TOKEN" => Some("s3cret".to_string()),
        "LONG" => Some("a-much-longer-value-than-the-reference".to_string()),
        "QUOTE" => Some("it's".to_string()),
        _ => None,
    }
}

fn parse_ok(text: &str) -> Config {
    parse(text, "f.toml", &env).unwrap_or_else(|e| panic!("unexpected errors:\n{e}\nin:\n{text}"))
}

fn error_lines(text: &str) -> Vec<String> {
    match parse(text, "f.toml", &env) {
        Ok(_) => panic!("expected errors in:\n{text}"),
        Err(e) => e.errors().iter().map(ToString::to_string).collect(),
    }
}

/// Asserts an error at the first occurrence of `at` (searched after the first `after`),
/// on `key_path`, whose message contains `needle`.
fn assert_error_at(text: &str, after: &str, at: &str, key_path: &str, needle: &str) {
    let from = text.find(after).expect("`after` is in the text") + after.len();
    let offset = from + text[from..].find(at).expect("`at` is in the text");
    let (line, col) = line_col(text, offset);
    let prefix = if key_path.is_empty() {
        format!("f.toml:{line}:{col}: ")
    } else {
        format!("f.toml:{line}:{col}: {key_path}: ")
    };
    let lines = error_lines(text);
    assert!(
        lines.iter().any(|l| l.starts_with(&prefix) && l.contains(needle)),
        "no error `{prefix}...{needle}...` in:\n{}\nfor:\n{text}",
        lines.join("\n")
    );
}

fn assert_error(text: &str, at: &str, key_path: &str, needle: &str) {
    assert_error_at(text, "", at, key_path, needle);
}

fn in_listener(keys: &str) -> String {
    BASE.replace(
        "listen = \"127.0.0.1:8080\"\n",
        &format!("listen = \"127.0.0.1:8080\"\n{keys}\n"),
    )
}

fn in_route(keys: &str) -> String {
    BASE.replace("upstream = \"app\"\n", &format!("upstream = \"app\"\n{keys}\n"))
}

fn in_upstream(keys: &str) -> String {
    format!("{BASE}{keys}\n")
}
