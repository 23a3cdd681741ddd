//! The config text as a source of positions: byte offsets to `line:col`,
//! offsets to key paths, and `${VAR}` interpolation that keeps positions
//! pointing at what the user wrote.

use std::ops::Range;

use toml_edit::{Document, Item, Value};

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The dotted path of the deepest key whose key or value covers `offset`,
/// e.g. `upstreams.app.servers[1].weight`.
pub fn key_path_at(doc: &Document<String>, offset: usize) -> String {
    let mut path = String::new();
    walk_table(doc.as_table(), offset, &mut path);
    path
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn walk_table(table: &toml_edit::Table, offset: usize, path: &mut String) {
    for (key, item) in table.iter() {
        let key_span = table.key(key).and_then(|k| k.span());
        if covers(key_span, offset) {
            push_key(path, key);
            return;
        }
        let len = path.len();
        push_key(path, key);
        if walk_item(item, offset, path) {
            return;
        }
        path.truncate(len);
    }
}

/// True when `offset` lies inside `item` (the path then names it or a child).
fn walk_item(item: &Item, offset: usize, path: &mut String) -> bool {
    match item {
        Item::None => false,
        Item::Value(v) => walk_value(v, offset, path),
        Item::Table(t) => {
            let len = path.len();
            walk_table(t, offset, path);
            path.len() > len || covers(t.span(), offset)
        }
        Item::ArrayOfTables(array) => {
            for (i, t) in array.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let before = path.len();
                walk_table(t, offset, path);
                if path.len() > before || covers(t.span(), offset) {
                    return true;
                }
                path.truncate(len);
            }
            false
        }
    }
}

fn walk_value(value: &Value, offset: usize, path: &mut String) -> bool {
    if !covers(value.span(), offset) {
        return false;
    }
    match value {
        Value::Array(array) => {
            for (i, v) in array.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if walk_value(v, offset, path) {
                    return true;
                }
                path.truncate(len);
            }
        }
        Value::InlineTable(t) => {
            for (key, v) in t.iter() {
                let key_span = t.key(key).and_then(|k| k.span());
                let len = path.len();
                push_key(path, key);
                if covers(key_span, offset) || walk_value(v, offset, path) {
                    return true;
                }
                path.truncate(len);
            }
        }
        _ => {}
    }
    true
}

/// An unset `${VAR}` found while interpolating.
#[derive(Debug)]
pub struct UnsetVar {
    pub name: String,
    pub offset: usize,
}

/// Text with `${VAR}` replaced inside string values, and the way back from
/// its offsets to the original's.
pub struct Interpolated {
    pub text: String,
    /// (start in new text, end in new text, start in original, end in original)
    replacements: Vec<(usize, usize, usize, usize)>,
}

impl Interpolated {
    /// Maps an offset in the interpolated text to the original text.
    pub fn original_offset(&self, offset: usize) -> usize {
        let mut delta: isize = 0;
        for &(new_start, new_end, old_start, old_end) in &self.replacements {
            if offset < new_start {
                break;
            }
            if offset < new_end {
                return old_start;
            }
            delta = old_end as isize - new_end as isize;
        }
        (offset as isize + delta).max(0) as usize
    }
}

/// Replaces every `${NAME}` inside a string value of `doc` with `env(NAME)`,
/// escaped for a TOML basic string.
pub fn interpolate(
    text: &str,
    doc: &Document<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Interpolated, Vec<UnsetVar>) {
    let mut spans = Vec::new();
    collect_string_spans(doc.as_item(), &mut spans);
    spans.sort_by_key(|s| s.start);
    let mut out = String::with_capacity(text.len());
    let mut replacements = Vec::new();
    let mut unset = Vec::new();
    let mut copied = 0;
    for span in spans {
        let mut search = span.start;
        while let Some(found) = text[search..span.end].find("${") {
            let start = search + found;
            let Some(close) = text[start..span.end].find('}') else {
                break;
            };
            let end = start + close + 1;
            let name = &text[start + 2..end - 1];
            search = end;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            // An unset variable reads as empty so that the rest of the file
            // is still checked; the caller reports it.
            let value = env(name).unwrap_or_else(|| {
                unset.push(UnsetVar {
                    name: name.to_string(),
                    offset: start,
                });
                String::new()
            });
            {
                {
                    out.push_str(&text[copied..start]);
                    let new_start = out.len();
                    for c in value.chars() {
                        match c {
                            '"' => out.push_str("\\\""),
                            '\\' => out.push_str("\\\\"),
                            '\n' => out.push_str("\\n"),
                            c => out.push(c),
                        }
                    }
                    replacements.push((new_start, out.len(), start, end));
                    copied = end;
                }
            }
        }
    }
    out.push_str(&text[copied..]);
    (
        Interpolated {
            text: out,
            replacements,
        },
        unset,
    )
}

fn collect_string_spans(item: &Item, spans: &mut Vec<Range<usize>>) {
    match item {
        Item::None => {}
        Item::Value(v) => collect_value_spans(v, spans),
        Item::Table(t) => t.iter().for_each(|(_, i)| collect_string_spans(i, spans)),
        Item::ArrayOfTables(a) => a
            .iter()
            .for_each(|t| t.iter().for_each(|(_, i)| collect_string_spans(i, spans))),
    }
}

fn collect_value_spans(value: &Value, spans: &mut Vec<Range<usize>>) {
    match value {
        Value::String(s) => spans.extend(s.span()),
        Value::Array(a) => a.iter().for_each(|v| collect_value_spans(v, spans)),
        Value::InlineTable(t) => t.iter().for_each(|(_, v)| collect_value_spans(v, spans)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn interpolation_replaces_only_inside_strings_and_maps_back() {
        let text = "# ${NOT_ME}\na = \"x${A}y\"\nb = \"${B}\"\n";
        let doc = Document::parse(text).unwrap();
        let env = |n: &str| match n {
            "A" => Some("long-value".to_string()),
            "B" => Some("q\"".to_string()),
            _ => None,
        };
        let (out, unset) = interpolate(text, &doc, &env);
        assert!(unset.is_empty());
        assert_eq!(out.text, "# ${NOT_ME}\na = \"xlong-valuey\"\nb = \"q\\\"\"\n");
        let b_new = out.text.find("b =").unwrap();
        assert_eq!(out.original_offset(b_new), text.find("b =").unwrap());
        let (_, unset) = interpolate("a = \"${NOPE}\"", &Document::parse("a = \"${NOPE}\"").unwrap(), &env);
        assert_eq!(unset[0].name, "NOPE");
        assert_eq!(unset[0].offset, 5);
    }

    #[test]
    fn key_paths_name_nested_values() {
        let text = "[upstreams.app]\nservers = [ { address = \"a:1\" }, { address = \"b:1\", weight = \"x\" } ]\n";
        let doc = Document::parse(text.to_string()).unwrap();
        let offset = text.find("\"x\"").unwrap();
        assert_eq!(key_path_at(&doc, offset), "upstreams.app.servers[1].weight");
    }
}
