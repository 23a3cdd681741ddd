//! The config text as a source of positions: byte offsets to `line:col`, and
//! offsets to the key path of the value found there.

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
    let bare = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        path.push_str(key);
    } else {
        // Quoted as TOML would need it, so `upstreams."api.v2"` stays one key.
        path.push_str(&format!("{key:?}"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn key_paths_name_nested_values() {
        let text = "[upstreams.app]\nservers = [ { address = \"a:1\" }, { address = \"b:1\", weight = \"x\" } ]\n";
        let doc = Document::parse(text.to_string()).unwrap();
        let offset = text.find("\"x\"").unwrap();
        assert_eq!(key_path_at(&doc, offset), "upstreams.app.servers[1].weight");
    }
}
