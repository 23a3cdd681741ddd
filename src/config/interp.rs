//! `${VAR}` interpolation inside string values, and the way back from the
//! substituted text's offsets to the text the user wrote.

use std::ops::Range;

use toml_edit::{Document, Item, Value};

/// The config text with every `${NAME}` inside a string value replaced.
#[derive(Debug)]
pub struct Interpolated {
    pub text: String,
    /// In text order; each `${NAME}` and what replaced it.
    replacements: Vec<Replacement>,
    /// Variables that could not be substituted, at their `${` in the original.
    pub problems: Vec<Problem>,
}

#[derive(Debug)]
struct Replacement {
    original: Range<usize>,
    substituted: Range<usize>,
}

/// A `${NAME}` that could not be substituted.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where its `${` is.
    pub offset: usize,
    /// The string value it is in, quotes included.
    pub value: Range<usize>,
    pub message: String,
}

impl Interpolated {
    /// Maps an offset in the substituted text to the original text; an offset
    /// inside a substituted value maps to its `${`.
    pub fn original_offset(&self, offset: usize) -> usize {
        let mut shifted = offset;
        for r in &self.replacements {
            if offset < r.substituted.start {
                break;
            }
            if offset < r.substituted.end {
                return r.original.start;
            }
            shifted = offset - r.substituted.end + r.original.end;
        }
        shifted
    }
}

/// How a TOML string is quoted, which decides how a value is written into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// `"..."` or `"""..."""`: escapes work.
    Basic,
    /// `'...'`: no escapes, one line.
    Literal,
    /// `'''...'''`: no escapes, newlines allowed.
    MultiLineLiteral,
}

impl Quoting {
    fn of(raw: &str) -> Quoting {
        if raw.starts_with("'''") {
            Quoting::MultiLineLiteral
        } else if raw.starts_with('\'') {
            Quoting::Literal
        } else {
            Quoting::Basic
        }
    }

    /// `value` as it must appear between these quotes, or `None` when it cannot.
    fn encode(self, value: &str) -> Option<String> {
        if self != Quoting::Basic {
            let allowed = |c: char| match c {
                '\'' => false,
                '\t' => true,
                '\n' => self == Quoting::MultiLineLiteral,
                c => !c.is_control(),
            };
            return value.chars().all(allowed).then(|| value.to_string());
        }
        let mut out = String::with_capacity(value.len());
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push('\t'),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                c => out.push(c),
            }
        }
        Some(out)
    }
}

/// Replaces every `${NAME}` inside a string value of `doc` (parsed from
/// `text`) with `env(NAME)`. `${` not followed by a name and `}` is kept as
/// written. An unset variable is replaced by nothing so the rest of the file
/// is still checked, and reported in `problems`.
pub fn interpolate<S>(text: &str, doc: &Document<S>, env: &dyn Fn(&str) -> Option<String>) -> Interpolated {
    let mut strings = Vec::new();
    collect_string_spans(doc.as_item(), &mut strings);
    strings.sort_by_key(|s| s.start);
    let mut out = Interpolated {
        text: String::with_capacity(text.len()),
        replacements: Vec::new(),
        problems: Vec::new(),
    };
    let mut copied = 0;
    for span in strings {
        let Some(raw) = text.get(span.clone()) else { continue };
        let quoting = Quoting::of(raw);
        for (var, name) in variables(raw) {
            let var = span.start + var.start..span.start + var.end;
            let value = match env(name) {
                Some(value) => value,
                None => {
                    out.problems.push(Problem {
                        offset: var.start,
                        value: span.clone(),
                        message: format!("environment variable {name} is not set"),
                    });
                    String::new()
                }
            };
            let encoded = quoting.encode(&value).unwrap_or_else(|| {
                out.problems.push(Problem {
                    offset: var.start,
                    value: span.clone(),
                    message: format!(
                        "the value of environment variable {name} cannot be written inside a 'literal' string \
                         (it has a quote or a control character); use a \"basic\" string"
                    ),
                });
                String::new()
            });
            out.text.push_str(&text[copied..var.start]);
            let start = out.text.len();
            out.text.push_str(&encoded);
            out.replacements.push(Replacement {
                original: var.clone(),
                substituted: start..out.text.len(),
            });
            copied = var.end;
        }
    }
    out.text.push_str(&text[copied..]);
    out
}

/// Each `${NAME}` in `raw` (relative range, name); NAME is `[A-Za-z0-9_]+`.
fn variables(raw: &str) -> Vec<(Range<usize>, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = raw[from..].find("${") {
        let start = from + at;
        let name_start = start + 2;
        let name_len = raw[name_start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(raw.len() - name_start);
        let name_end = name_start + name_len;
        if name_len > 0 && raw[name_end..].starts_with('}') {
            found.push((start..name_end + 1, &raw[name_start..name_end]));
            from = name_end + 1;
        } else {
            from = name_start;
        }
    }
    found
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

    fn run(text: &str, env: &[(&str, &str)]) -> Interpolated {
        let doc = Document::parse(text).unwrap();
        let lookup = |name: &str| env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
        interpolate(text, &doc, &lookup)
    }

    fn value_of(text: &str, key: &str) -> String {
        let doc = Document::parse(text).unwrap();
        doc.as_table().get(key).and_then(|i| i.as_str()).unwrap().to_string()
    }

    #[test]
    fn replaces_only_inside_string_values() {
        let text = "# ${A}\n\"${A}\" = \"x${A}y\"\nn = 1\n";
        let out = run(text, &[("A", "long-value")]);
        assert!(out.problems.is_empty());
        assert_eq!(out.text, "# ${A}\n\"${A}\" = \"xlong-valuey\"\nn = 1\n");
    }

    #[test]
    fn values_are_escaped_for_basic_strings() {
        let nasty = "q\"\\ \n\r\t\u{1}é";
        let out = run("a = \"${V}\"\nb = \"\"\"${V}\"\"\"\n", &[("V", nasty)]);
        assert!(out.problems.is_empty());
        assert_eq!(value_of(&out.text, "a"), nasty);
        assert_eq!(value_of(&out.text, "b"), nasty);
    }

    #[test]
    fn literal_strings_take_values_verbatim_or_report_them() {
        let out = run("a = '${V}'\n", &[("V", "C:\\dir \"x\"")]);
        assert!(out.problems.is_empty());
        assert_eq!(value_of(&out.text, "a"), "C:\\dir \"x\"");
        let out = run("a = '${V}'\n", &[("V", "it's")]);
        assert_eq!(out.problems.len(), 1);
        assert_eq!(out.problems[0].offset, 5);
        assert!(Document::parse(out.text.as_str()).is_ok());
    }

    #[test]
    fn unset_variables_are_reported_at_their_dollar() {
        let out = run("a = \"x ${NOPE} ${SET}\"\n", &[("SET", "1")]);
        assert_eq!(
            out.problems,
            vec![Problem {
                offset: 7,
                value: 4..22,
                message: "environment variable NOPE is not set".into()
            }]
        );
        assert_eq!(out.text, "a = \"x  1\"\n");
    }

    #[test]
    fn malformed_references_are_kept_as_written() {
        let out = run("a = \"${} ${a-b} ${open $${X}\"\n", &[("X", "1")]);
        assert_eq!(out.text, "a = \"${} ${a-b} ${open $1\"\n");
    }

    #[test]
    fn offsets_map_back_to_the_original() {
        let text = "a = \"${A}\"\nb = \"${B}\"\nc = 1\n";
        let out = run(text, &[("A", "a much longer value"), ("B", "")]);
        for key in ["a =", "b =", "c ="] {
            assert_eq!(
                out.original_offset(out.text.find(key).unwrap()),
                text.find(key).unwrap()
            );
        }
        let inside = out.text.find("much").unwrap();
        assert_eq!(out.original_offset(inside), text.find("${A}").unwrap());
    }
}
