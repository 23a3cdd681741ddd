//! Splits the document into its sections (`[global]`, each listener, route,
//! upstream, rate limit, `[redis]`) and deserializes each on its own, so that
//! an error in one never hides an error in another.

use std::ops::Range;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml_edit::{Document, DocumentMut, Item, Value};

use super::Sink;
use super::schema::{GlobalSpec, ListenerSpec, RateLimitSpec, RedisSpec, RouteSpec, UpstreamSpec};

/// One deserialized section and where it starts.
pub(super) struct Section<T> {
    pub span: Option<Range<usize>>,
    pub spec: T,
}

/// A section of a named table such as `[upstreams.NAME]`.
pub(super) struct Named<T> {
    pub name: String,
    pub spec: T,
}

/// The sections that deserialized, in file order.
#[derive(Default)]
pub(super) struct Specs {
    pub global: GlobalSpec,
    pub listeners: Vec<Section<ListenerSpec>>,
    pub routes: Vec<Section<RouteSpec>>,
    pub upstreams: Vec<Named<UpstreamSpec>>,
    pub rate_limits: Vec<Named<RateLimitSpec>>,
    pub redis: Option<Section<RedisSpec>>,
    pub names: Names,
    /// Whether every section deserialized.
    pub complete: bool,
}

/// What the file defines, read from the document itself, so that a section
/// with an error of its own is neither reported again as a dangling
/// reference nor as missing.
#[derive(Default)]
pub(super) struct Names {
    pub listeners: Vec<String>,
    pub upstreams: Vec<String>,
    pub rate_limits: Vec<String>,
    pub listener_entries: usize,
    pub route_entries: usize,
    pub has_redis: bool,
}

const SECTIONS: &str = "`global`, `listeners`, `routes`, `upstreams`, `rate_limits`, `redis`";

/// Deserializes every section of `doc`, recording each failure in `sink`.
pub(super) fn read(doc: &Document<String>, sink: &mut Sink) -> Specs {
    let mut specs = Specs {
        complete: true,
        ..Specs::default()
    };
    let root = doc.as_table();
    for (key, item) in root.iter() {
        let key_span = root.key(key).and_then(|k| k.span());
        let span = item.span().or_else(|| key_span.clone());
        match key {
            "global" => {
                if let Some(global) = section(item, &span, sink, &mut specs.complete) {
                    specs.global = global;
                }
            }
            "listeners" | "routes" => {
                let Some(entries) = entries(item) else {
                    sink.error(span, format!("`{key}` must be an array of tables ([[{key}]])"));
                    specs.complete = false;
                    continue;
                };
                for entry in entries {
                    let span = entry.span();
                    if key == "listeners" {
                        specs.names.listener_entries += 1;
                        let name = entry.as_table_like().and_then(|t| t.get("name")).and_then(Item::as_str);
                        specs.names.listeners.extend(name.map(str::to_string));
                        if let Some(spec) = section(&entry, &span, sink, &mut specs.complete) {
                            specs.listeners.push(Section { span, spec });
                        }
                    } else {
                        specs.names.route_entries += 1;
                        if let Some(spec) = section(&entry, &span, sink, &mut specs.complete) {
                            specs.routes.push(Section { span, spec });
                        }
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
                    let span = sub.span().or_else(|| table.key(name).and_then(|k| k.span()));
                    let name = name.to_string();
                    if key == "upstreams" {
                        specs.names.upstreams.push(name.clone());
                        if let Some(spec) = section(sub, &span, sink, &mut specs.complete) {
                            specs.upstreams.push(Named { name, spec });
                        }
                    } else {
                        specs.names.rate_limits.push(name.clone());
                        if let Some(spec) = section(sub, &span, sink, &mut specs.complete) {
                            specs.rate_limits.push(Named { name, spec });
                        }
                    }
                }
            }
            "redis" => {
                specs.names.has_redis = true;
                if let Some(spec) = section(item, &span, sink, &mut specs.complete) {
                    specs.redis = Some(Section { span, spec });
                }
            }
            other => {
                sink.error(
                    key_span.or(span),
                    format!("unknown section `{other}`, expected one of {SECTIONS}"),
                );
                specs.complete = false;
            }
        }
    }
    specs
}

/// The entries of `[[name]]` or `name = [ {...}, ... ]`.
fn entries(item: &Item) -> Option<Vec<Item>> {
    match item {
        Item::ArrayOfTables(array) => Some(array.iter().cloned().map(Item::Table).collect()),
        Item::Value(Value::Array(array)) => Some(array.iter().cloned().map(Item::Value).collect()),
        _ => None,
    }
}

/// Deserializes one section; a failure is recorded at its position.
fn section<T: for<'de> Deserialize<'de>>(
    item: &Item,
    span: &Option<Range<usize>>,
    sink: &mut Sink,
    complete: &mut bool,
) -> Option<T> {
    let result = match item {
        // Through a document of its own: a table converted to an inline
        // value would lose the spans of its sub-tables (`[listeners.tls]`).
        Item::Table(table) => T::deserialize(toml_edit::de::Deserializer::from(DocumentMut::from(table.clone()))),
        Item::Value(value @ Value::InlineTable(_)) => T::deserialize(value.clone().into_deserializer()),
        _ => {
            sink.error(item.span().or_else(|| span.clone()), "expected a table");
            *complete = false;
            return None;
        }
    };
    result
        .map_err(|e| {
            sink.error(e.span().or_else(|| span.clone()), e.message());
            *complete = false;
        })
        .ok()
}
