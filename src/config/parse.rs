//! Reading the file's text into a [`Config`] and finding every mistake in it in one pass.
//!
//! serde stops at the first value it cannot take. So that an operator fixes a bad file in
//! one run, a key serde refused is reported (its line, its key, serde's message) and then
//! blanked out of the text — its bytes turned to spaces, newlines kept, so every line
//! number still points into the operator's file — and the text is read again, until it
//! reads or nothing more can be blanked. The config read from the blanked text (a refused
//! key takes its default) then goes through the value checks, whose problems are added
//! unless they are about a key already reported.

use std::fmt;
use std::ops::Range;

use super::{mqtt_client, mqtt_subscribe, upstream, Config};

/// One mistake in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The line of the file it is on (1-based); `None` when no line can be named (a key
    /// that is missing, or a mistake of the file as a whole).
    pub line: Option<usize>,
    /// The key, as `section.key` or `upstream[0].key`; `None` for a syntax error.
    pub key: Option<String>,
    /// What is wrong: what was found and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Most mistakes collected from one file: each costs a read of the whole text.
const MAX_PROBLEMS: usize = 100;

/// Every mistake serde finds in `text` (see the module docs; none: it reads as it is),
/// and the config read once those keys were blanked (`None` when the text could not be
/// repaired that far, e.g. a syntax error).
pub(super) fn parse(text: &str) -> (Vec<Problem>, Option<Config>) {
    let mut text = text.to_owned();
    let mut problems = Vec::new();
    // `[[table]]` entries blanked whole, by their paths in the operator's file: the
    // entries after one keep their numbers in later problems.
    let mut removed: Vec<String> = Vec::new();
    loop {
        let doc = match toml_edit::ImDocument::parse(text.as_str()) {
            Ok(doc) => doc,
            Err(e) => {
                // Not TOML: nothing can be located, so this is the one problem left.
                problems.push(Problem {
                    line: e.span().map(|s| line_of(&text, s.start)),
                    key: None,
                    message: e.message().trim().lines().collect::<Vec<_>>().join("; "),
                });
                return (problems, None);
            }
        };
        let nodes = nodes(&doc, &removed);
        let refused = match unknown_flattened_key(&doc, &nodes) {
            Some(refused) => refused,
            None => match toml::from_str::<Config>(&text) {
                Ok(config) => return (problems, Some(config)),
                Err(e) => {
                    let node = e.span().and_then(|s| innermost(&nodes, s.start));
                    (node, plain_types(e.message().trim()))
                }
            },
        };
        let (node, message) = refused;
        problems.push(Problem {
            line: node.map(|n| line_of(&text, n.start)),
            key: node.map(|n| n.path.clone()),
            message,
        });
        let blanked = node.is_some_and(|n| blank(&mut text, n.line_level.clone()));
        if let Some(n) = node.filter(|n| n.entry) {
            removed.push(n.path.clone());
        }
        if !blanked || problems.len() >= MAX_PROBLEMS {
            return (problems, None);
        }
    }
}

/// The line of the key `path` (as [`Problem::key`] writes it) in `text`, if it is there.
pub(super) fn line_of_key(text: &str, path: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let nodes = nodes(&doc, &[]);
    let node = nodes.iter().find(|n| n.path == path)?;
    Some(line_of(text, node.start))
}

/// A key or table of the document, where it is and what to blank to remove it.
#[derive(Debug)]
struct Node {
    path: String,
    /// Where the key (or a table's header) starts.
    start: usize,
    /// From the key to the end of its value (a table: its header to its last key).
    extent: Range<usize>,
    /// What removing it takes without breaking the TOML around it: the extent itself for a
    /// key on its own line or a table, the whole `key = …` line for a key inside an
    /// inline table or array.
    line_level: Range<usize>,
    /// A `[[table]]` entry: blanking it shifts the numbers of those after it.
    entry: bool,
}

/// Every key and table of `doc` with a place in the text, `[[table]]` entries numbered
/// as in the file before the entries in `removed` were blanked.
fn nodes(doc: &toml_edit::ImDocument<&str>, removed: &[String]) -> Vec<Node> {
    let mut out = Vec::new();
    walk_table(doc.as_table(), "", removed, &mut out);
    out
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Adds the nodes of `table` (at `prefix`) to `out` (an inline table's keys are added by
/// [`walk_value`]). Returns the end of the table's last key.
fn walk_table(
    table: &toml_edit::Table,
    prefix: &str,
    removed: &[String],
    out: &mut Vec<Node>,
) -> Option<usize> {
    let mut end = table.span().map(|s| s.end);
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let path = join(prefix, name);
        let item_end = walk_item(key, item, &path, removed, out);
        end = end.max(item_end);
    }
    end
}

fn walk_item(
    key: &toml_edit::Key,
    item: &toml_edit::Item,
    path: &str,
    removed: &[String],
    out: &mut Vec<Node>,
) -> Option<usize> {
    match item {
        toml_edit::Item::None => None,
        toml_edit::Item::Value(value) => {
            let start = key.span()?.start;
            let end = value.span()?.end;
            // A key on its own line: removing it removes exactly its extent.
            let extent = start..end;
            out.push(Node {
                path: path.to_owned(),
                start,
                extent: extent.clone(),
                line_level: extent.clone(),
                entry: false,
            });
            walk_value(value, path, &extent, out);
            Some(end)
        }
        toml_edit::Item::Table(table) => table_node(table, path, false, removed, out),
        toml_edit::Item::ArrayOfTables(tables) => {
            let mut end = None;
            let mut numbers = (0..).map(|i| format!("{path}[{i}]"));
            for table in tables.iter() {
                let Some(entry) = numbers.find(|p| !removed.contains(p)) else {
                    break;
                };
                end = end.max(table_node(table, &entry, true, removed, out));
            }
            end
        }
    }
}

/// A `[table]` (or one `[[table]]`): its own node from the header to its last key, then
/// its keys. A table without a header of its own (`[a.b]` makes `a` implicit) gets no node.
fn table_node(
    table: &toml_edit::Table,
    path: &str,
    entry: bool,
    removed: &[String],
    out: &mut Vec<Node>,
) -> Option<usize> {
    let header = table.span();
    let at = out.len();
    let end = walk_table(table, path, removed, out);
    if let (Some(header), Some(end)) = (header, end) {
        let extent = header.start..end;
        out.insert(
            at,
            Node {
                path: path.to_owned(),
                start: header.start,
                extent: extent.clone(),
                line_level: extent,
                entry,
            },
        );
    }
    end
}

/// The keys inside an inline table or array value, removed with their whole line.
fn walk_value(value: &toml_edit::Value, path: &str, line: &Range<usize>, out: &mut Vec<Node>) {
    match value {
        toml_edit::Value::InlineTable(t) => {
            for (name, _) in t.iter() {
                if let Some((key, item)) = t.get_key_value(name) {
                    let path = join(path, name);
                    if let Some(v) = item.as_value() {
                        if let (Some(k), Some(s)) = (key.span(), v.span()) {
                            out.push(Node {
                                path: path.clone(),
                                start: k.start,
                                extent: k.start..s.end,
                                line_level: line.clone(),
                                entry: false,
                            });
                        }
                        walk_value(v, &path, line, out);
                    }
                }
            }
        }
        toml_edit::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                walk_value(v, &format!("{path}[{i}]"), line, out);
            }
        }
        _ => {}
    }
}

/// The smallest node whose extent holds byte `at` (serde's span of a refused value or
/// key falls inside its key's node).
fn innermost(nodes: &[Node], at: usize) -> Option<&Node> {
    nodes
        .iter()
        .filter(|n| n.extent.contains(&at) || n.extent.start == at)
        .min_by_key(|n| n.extent.len())
}

/// The first key of a `[[upstream]]` or `[[mqtt_subscribe]]` table that neither the
/// section nor its flattened client keys take: serde cannot report these itself
/// (`deny_unknown_fields` does not work with `flatten`; see `mqtt_client`).
fn unknown_flattened_key<'a>(
    doc: &toml_edit::ImDocument<&str>,
    nodes: &'a [Node],
) -> Option<(Option<&'a Node>, String)> {
    let table: toml::Table = toml::from_str(doc.raw()).ok()?;
    for (section, own) in [
        ("upstream", upstream::OWN_KEYS),
        ("mqtt_subscribe", mqtt_subscribe::OWN_KEYS),
    ] {
        let tables = (table.get(section).and_then(toml::Value::as_array))
            .into_iter()
            .flatten()
            .filter_map(toml::Value::as_table);
        for (i, t) in tables.enumerate() {
            if let Some((key, message)) = mqtt_client::unknown_key(t, own) {
                let path = format!("{section}[{i}].{key}");
                let node = nodes.iter().find(|n| n.path == path);
                return Some((node, message));
            }
        }
    }
    None
}

/// serde's names of Rust types (`expected u16`) in the words of a config file, with the
/// range a number may take.
fn plain_types(message: &str) -> String {
    const NAMES: [(&str, &str); 12] = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected usize", "expected a whole number of 0 or more"),
        (
            "expected i16",
            "expected a whole number from -32768 to 32767",
        ),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number like 0.5"),
        ("expected f32", "expected a number like 0.5"),
        ("expected a boolean", "expected true or false"),
        ("expected a borrowed string", "expected a string in quotes"),
    ];
    for (rust, plain) in NAMES {
        if let Some(rest) = message.strip_suffix(rust) {
            return format!("{rest}{plain}");
        }
    }
    message.to_owned()
}

/// 1-based line of byte `at` of `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Turns the bytes of `range` into spaces, newlines kept (so later lines keep their
/// numbers, and the text stays UTF-8: every byte replaced is replaced whole). False if
/// there was nothing left to blank there.
fn blank(text: &mut String, range: Range<usize>) -> bool {
    let end = range.end.min(text.len());
    let start = range.start.min(end);
    let mut bytes = std::mem::take(text).into_bytes();
    let mut changed = false;
    for b in &mut bytes[start..end] {
        if *b != b'\n' && *b != b' ' {
            *b = b' ';
            changed = true;
        }
    }
    // Every byte of the range is now ASCII or untouched; a multi-byte character cut by
    // the range's ends cannot happen (spans fall on token boundaries), but stay safe.
    *text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        parse(text).0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_refused_key_is_named_with_its_line_in_the_file() {
        let text =
            "[journal]\nmax_size = \"x\"\non_full = \"maybe\"\n\n[mqtt]\nmax_inflight = -1\n";
        assert_eq!(
            problems(text),
            [
                r#"line 2: journal.max_size: invalid value: string "x", expected a size like "512MiB", "64KiB" or "1GB" (a bare number is bytes)"#,
                "line 3: journal.on_full: unknown variant `maybe`, expected one of `drop-oldest`, `reject`, `thin`",
                "line 6: mqtt.max_inflight: invalid value: integer `-1`, expected a whole number from 0 to 65535",
            ]
        );
    }

    #[test]
    fn a_refused_entry_leaves_the_next_entries_their_numbers() {
        let text = "[[upstream]]\nname = \"a\"\nbrokers = [\"127.0.0.1:1\"]\ntopic = \"t\"\n\
                    [[upstream]]\nname = \"b\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:1\"]\n\
                    topic = \"t\"\nlinger = 5\n";
        let p = problems(text);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0], "line 1: upstream[0]: missing field `kind`");
        assert!(
            p[1].starts_with("line 10: upstream[1].linger: invalid type: integer `5`"),
            "{p:?}"
        );
    }

    #[test]
    fn a_key_inside_an_inline_table_is_named_by_its_own_path() {
        let text = "[mqtt]\nauth = { allow_anonymous = \"no\" }\nmax_packet = \"big\"\n";
        let p = problems(text);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            p[0],
            r#"line 2: mqtt.auth.allow_anonymous: invalid type: string "no", expected true or false"#
        );
        assert!(
            p[1].starts_with("line 3: mqtt.max_packet: invalid value"),
            "{p:?}"
        );
    }

    #[test]
    fn a_syntax_error_is_one_problem_with_its_line() {
        let (p, config) = parse("[gateway]\nid = \"a\"\n[journal\n");
        assert!(config.is_none());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, Some(3));
        assert_eq!(p[0].key, None);
        assert!(!p[0].message.contains('\n'), "{p:?}");
    }

    #[test]
    fn blanking_keeps_every_line_and_the_text_utf8() {
        let mut text = "a = \"ü\"\nb = 1\n".to_owned();
        assert!(blank(&mut text, 0..8));
        assert_eq!(text, format!("{}\nb = 1\n", " ".repeat(8)));
        assert!(!blank(&mut text, 0..8), "nothing left to blank");
        assert_eq!(line_of(&text, text.find('b').expect("b")), 2);
    }
}
