//! Configuration: the TOML file users write (`schema`), checked in one pass
//! into the model the program runs on (`model`). Every problem is reported,
//! each with `file:line:col` and its key path.

pub mod model;
mod schema;
mod source;
mod unbuilt;
mod units;
mod validate;

pub use model::*;

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml_edit::{Document, Item};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub line: usize,
    pub col: usize,
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
    let mut config = parse(&text, &origin, &|name| std::env::var(name).ok())?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// Validates config text; `origin` names it in messages, `env` answers `${VAR}`.
pub fn parse(text: &str, origin: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let at = |offset: usize, key_path: String, message: String| {
        let (line, col) = source::line_col(text, offset);
        ConfigError {
            origin: origin.to_string(),
            line,
            col,
            key_path,
            message,
        }
    };
    let first = Document::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        ConfigErrors(vec![at(
            offset,
            String::new(),
            format!("TOML syntax error: {}", e.message()),
        )])
    })?;
    let (interpolated, unset) = source::interpolate(text, &first, env);
    let original = Document::parse(text.to_string()).map_err(|_| ConfigErrors(Vec::new()))?;
    let unset_errors: Vec<ConfigError> = unset
        .into_iter()
        .map(|u| {
            at(
                u.offset,
                source::key_path_at(&original, u.offset),
                format!("environment variable {} is not set", u.name),
            )
        })
        .collect();
    let doc = Document::parse(interpolated.text.clone()).map_err(|e| {
        let offset = interpolated.original_offset(e.span().map_or(0, |s| s.start));
        ConfigErrors(vec![at(
            offset,
            String::new(),
            format!("TOML syntax error after ${{VAR}} substitution: {}", e.message()),
        )])
    })?;
    let mut sink = Sink::default();
    let specs = read_units(&doc, &mut sink);
    let config = validate::validate(specs, &mut sink);
    if sink.errors.is_empty()
        && unset_errors.is_empty()
        && let Some(config) = config
    {
        return Ok(config);
    }
    let mut errors: Vec<ConfigError> = sink
        .errors
        .into_iter()
        .map(|(offset, message)| {
            let path = source::key_path_at(&doc, offset);
            at(interpolated.original_offset(offset), path, message)
        })
        .chain(unset_errors)
        .collect();
    errors.sort_by_key(|e| (e.line, e.col));
    errors.dedup();
    Err(ConfigErrors(errors))
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

/// Collects errors as (byte offset in the interpolated text, message).
#[derive(Default)]
pub(crate) struct Sink {
    errors: Vec<(usize, String)>,
}

impl Sink {
    pub(crate) fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.errors.push((span.map_or(0, |s| s.start), message.into()));
    }
}

/// The file's sections, each deserialized on its own so that an error in one
/// never hides an error in another.
#[derive(Default)]
pub(crate) struct Specs {
    pub global: schema::GlobalSpec,
    pub listeners: Vec<(Option<Range<usize>>, schema::ListenerSpec)>,
    pub routes: Vec<(Option<Range<usize>>, schema::RouteSpec)>,
    pub upstreams: Vec<(String, Option<Range<usize>>, schema::UpstreamSpec)>,
    pub rate_limits: Vec<(String, Option<Range<usize>>, schema::RateLimitSpec)>,
    pub redis: Option<(Option<Range<usize>>, schema::RedisSpec)>,
    /// Every name the file defines, read from the document itself, so that a
    /// reference to a section with an error of its own is not reported again
    /// as dangling.
    pub names: Names,
    /// Whether every section deserialized.
    pub complete: bool,
}

#[derive(Default)]
pub(crate) struct Names {
    pub listeners: Vec<String>,
    pub upstreams: Vec<String>,
    pub rate_limits: Vec<String>,
}

fn read_units(doc: &Document<String>, sink: &mut Sink) -> Specs {
    let mut specs = Specs {
        complete: true,
        ..Specs::default()
    };
    for (key, item) in doc.as_table().iter() {
        let span = item_span(doc, key, item);
        match key {
            "global" => {
                if let Some(g) = unit(item, span.clone(), sink, &mut specs.complete) {
                    specs.global = g;
                }
            }
            "listeners" | "routes" => {
                let elements = elements(item);
                if elements.is_none() {
                    sink.error(span, format!("`{key}` must be an array of tables ([[{key}]])"));
                    specs.complete = false;
                }
                for (el_span, el) in elements.unwrap_or_default() {
                    if key == "listeners" {
                        let name = el.as_table_like().and_then(|t| t.get("name")).and_then(|n| n.as_str());
                        specs.names.listeners.extend(name.map(str::to_string));
                        if let Some(l) = unit(&el, el_span.clone(), sink, &mut specs.complete) {
                            specs.listeners.push((el_span, l));
                        }
                    } else if let Some(r) = unit(&el, el_span.clone(), sink, &mut specs.complete) {
                        specs.routes.push((el_span, r));
                    }
                }
            }
            "upstreams" | "rate_limits" => {
                let Some(table) = item.as_table_like() else {
                    sink.error(
                        span,
                        format!("`{key}` must be a table of named sections ([{key}.NAME])"),
                    );
                    specs.complete = false;
                    continue;
                };
                for (name, sub) in table.iter() {
                    if key == "upstreams" {
                        specs.names.upstreams.push(name.to_string());
                    } else {
                        specs.names.rate_limits.push(name.to_string());
                    }
                    let sub_span = sub.span().or_else(|| table.key(name).and_then(|k| k.span()));
                    if key == "upstreams" {
                        if let Some(u) = unit(sub, sub_span.clone(), sink, &mut specs.complete) {
                            specs.upstreams.push((name.to_string(), sub_span, u));
                        }
                    } else if let Some(r) = unit(sub, sub_span.clone(), sink, &mut specs.complete) {
                        specs.rate_limits.push((name.to_string(), sub_span, r));
                    }
                }
            }
            "redis" => {
                if let Some(r) = unit(item, span.clone(), sink, &mut specs.complete) {
                    specs.redis = Some((span, r));
                }
            }
            other => {
                sink.error(
                    doc.as_table().key(other).and_then(|k| k.span()).or(span),
                    format!(
                        "unknown section `{other}`, expected one of `global`, `listeners`, `routes`, `upstreams`, `rate_limits`, `redis`"
                    ),
                );
                specs.complete = false;
            }
        }
    }
    specs
}

fn item_span(doc: &Document<String>, key: &str, item: &Item) -> Option<Range<usize>> {
    item.span().or_else(|| doc.as_table().key(key).and_then(|k| k.span()))
}

fn elements(item: &Item) -> Option<Vec<(Option<Range<usize>>, Item)>> {
    match item {
        Item::ArrayOfTables(a) => Some(a.iter().map(|t| (t.span(), Item::Table(t.clone()))).collect()),
        Item::Value(toml_edit::Value::Array(a)) => Some(a.iter().map(|v| (v.span(), Item::Value(v.clone()))).collect()),
        _ => None,
    }
}

/// Deserializes one section; an error is recorded at its position.
fn unit<T: for<'de> Deserialize<'de>>(
    item: &Item,
    span: Option<Range<usize>>,
    sink: &mut Sink,
    complete: &mut bool,
) -> Option<T> {
    let value = match item.clone().into_value() {
        Ok(v) => v,
        Err(_) => {
            sink.error(span, "expected a table");
            *complete = false;
            return None;
        }
    };
    match T::deserialize(value.into_deserializer()) {
        Ok(t) => Some(t),
        Err(e) => {
            sink.error(e.span().or(span), e.message().to_string());
            *complete = false;
            None
        }
    }
}
