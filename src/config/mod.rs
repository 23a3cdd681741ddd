//! Configuration: the TOML file users write, checked in one pass into the
//! model the program runs on. Every problem is reported, each with
//! `file:line:col` and its key path.
//!
//! text → `interp` (`${VAR}`) → `sections` (each section deserialized on its
//! own into `schema`, values parsed by `units`) → `validate` (rules, defaults,
//! ids) → `model`. `source` turns
//! byte offsets into positions and key paths.

mod interp;
pub mod model;
mod schema;
mod sections;
mod source;
#[cfg(test)]
mod tests;
mod units;
mod validate;

pub use model::*;
pub use units::parse_server_address;

use std::fmt;
use std::ops::Range;
use std::path::Path;

use toml_edit::Document;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name (or other origin) given to `parse`.
    pub origin: String,
    /// 1-based; 1:1 for a problem of the whole file.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    /// Like `upstreams.app.servers[1].weight`; empty when no key is at fault
    /// (a syntax error, a missing section).
    pub key_path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.origin, self.line, self.col)?;
        if !self.key_path.is_empty() {
            write!(f, "{}: ", self.key_path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads and validates a config file, with `${VAR}` from the environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            origin: origin.clone(),
            line: 1,
            col: 1,
            key_path: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    let base_dir = path.parent().unwrap_or(Path::new(""));
    let mut config = parse_in(&text, &origin, base_dir, &|name| std::env::var(name).ok())?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// Validates config text; `origin` names it in messages (and its directory
/// is where relative certificate paths start), `env` answers `${VAR}`.
pub fn parse(text: &str, origin: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    parse_in(text, origin, Path::new(origin).parent().unwrap_or(Path::new("")), env)
}

/// [`parse`] with relative file paths resolved against `base_dir`.
fn parse_in(
    text: &str,
    origin: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let at = |offset: Option<usize>, key_path: String, message: String| {
        let (line, col) = offset.map_or((1, 1), |o| source::line_col(text, o));
        ConfigError {
            origin: origin.to_string(),
            line,
            col,
            key_path,
            message,
        }
    };
    let original = Document::parse(text.to_string()).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        ConfigErrors(vec![at(
            offset,
            String::new(),
            format!("TOML syntax error: {}", e.message().trim_end()),
        )])
    })?;
    let interpolated = interp::interpolate(text, &original, env);
    let mut errors: Vec<ConfigError> = interpolated
        .problems
        .iter()
        .map(|p| {
            at(
                Some(p.offset),
                source::key_path_at(&original, p.offset),
                p.message.clone(),
            )
        })
        .collect();
    let doc = Document::parse(interpolated.text.clone()).map_err(|e| {
        // Only a substitution can break a file that parsed before.
        let offset = e.span().map(|s| interpolated.original_offset(s.start));
        let mut errors = errors.clone();
        errors.push(at(
            offset,
            String::new(),
            format!(
                "TOML syntax error after ${{VAR}} substitution: {}",
                e.message().trim_end()
            ),
        ));
        ConfigErrors(errors)
    })?;
    let unknown_values: Vec<Range<usize>> = interpolated.problems.iter().map(|p| p.value.clone()).collect();
    let mut sink = Sink::default();
    let specs = sections::read(&doc, &mut sink);
    let config = validate::validate(specs, base_dir, &mut sink);
    for (offset, message) in sink.errors {
        let original_offset = offset.map(|o| interpolated.original_offset(o));
        // A value whose variable could not be substituted is unknown, so
        // complaints about what it became are noise.
        if original_offset.is_some_and(|o| unknown_values.iter().any(|v| v.contains(&o))) {
            continue;
        }
        let key_path = offset.map(|o| source::key_path_at(&doc, o)).unwrap_or_default();
        errors.push(at(original_offset, key_path, message));
    }
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => {
            if errors.is_empty() {
                errors.push(at(None, String::new(), "invalid configuration".to_string()));
            }
            errors.sort_by_key(|e| (e.line, e.col));
            errors.dedup();
            Err(ConfigErrors(errors))
        }
    }
}

/// A one-line summary for `fulcrum check`.
pub fn summary(config: &Config) -> String {
    let servers: usize = config.upstreams.iter().map(|u| u.servers.len()).sum();
    format!(
        "ok: {} listener{}, {} route{}, {} upstream{} ({} server{})",
        config.listeners.len(),
        plural(config.listeners.len()),
        config.routes.len(),
        plural(config.routes.len()),
        config.upstreams.len(),
        plural(config.upstreams.len()),
        servers,
        plural(servers),
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Collects errors as (byte offset in the substituted text, message); an
/// error without an offset concerns the whole file.
#[derive(Default)]
pub(crate) struct Sink {
    errors: Vec<(Option<usize>, String)>,
}

impl Sink {
    pub(crate) fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.errors.push((span.map(|s| s.start), message.into()));
    }

    pub(crate) fn len(&self) -> usize {
        self.errors.len()
    }
}
