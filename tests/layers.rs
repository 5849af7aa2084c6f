//! The layer check: which top-level modules of `src/` may import which (docs/design.md,
//! "Layers"), and no import cycle among them.
//!
//! It reads every `src/**/*.rs`, blanks out comments (line, doc and block) and string and
//! char literals, and collects each `crate::<module>` path: in `use` lines, grouped
//! (`use crate::{a, b::c}`), inline (`crate::a::f()`), and `super::` paths that climb out
//! of a top-level module. A failure names the file and the offending path. No parsing of
//! Rust beyond that: a path in a comment or a string never counts, and a path in code
//! always does (test modules included: a test of a stage imports what the stage may).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The stages: sources, the journal, the forwarders and the sinks.
const STAGES: &[&str] = &["ingest", "journal", "forward", "sinks"];
/// Pieces shared by the stages; they know none of them.
const SHARED: &[&str] = &["mqtt_client", "backoff", "calendar", "tls", "telemetry"];

/// What a top-level module may not import. `None` in the second place means "anything of
/// the crate but itself".
fn forbidden(module: &str) -> Option<&'static [&'static str]> {
    match module {
        "journal" => Some(&["ingest", "forward", "sinks"]),
        "ingest" => Some(&["forward", "sinks"]),
        "sinks" => Some(&["journal", "ingest", "forward"]),
        m if SHARED.contains(&m) => Some(STAGES),
        _ => None,
    }
}

/// Modules that import nothing of the crate outside themselves.
const SELF_CONTAINED: &[&str] = &["config", "record"];

/// Known violations, each removed by the work that owns the file. Empty when none is
/// left; an entry that no longer matches anything fails the check too, so the list
/// cannot go stale.
const KNOWN: &[(&str, &str)] = &[];

/// One `crate::` path found in a file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Import {
    /// The top-level module it names.
    module: String,
    /// The path as written (with `super::` resolved to `crate::`), for messages.
    path: String,
}

/// `text` with comments, string literals and char literals replaced by spaces (newlines
/// kept), so that only code is left to search.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let blank = |s: &[u8], out: &mut String| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&rest[..end], &mut out);
            i += end;
        } else if rest.starts_with(b"/*") {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (0usize, 0);
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&rest[..j], &mut out);
            i += j;
        } else if let Some(len) = raw_string_len(rest, i == 0 || !is_ident(b[i - 1])) {
            blank(&rest[..len], &mut out);
            i += len;
        } else if rest[0] == b'"' || (rest.starts_with(b"b\"") && (i == 0 || !is_ident(b[i - 1]))) {
            let start = if rest[0] == b'"' { 1 } else { 2 };
            let mut j = start;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&rest[..end], &mut out);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{1F600}', '"'), or a lifetime ('a), kept.
            let len = if rest.get(1) == Some(&b'\\') {
                rest.iter().skip(2).position(|&c| c == b'\'').map(|p| p + 3)
            } else {
                let ch = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + ch) == Some(&b'\'')).then_some(ch + 2)
            };
            match len {
                Some(len) => {
                    blank(&rest[..len], &mut out);
                    i += len;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + ch]);
            i += ch;
        }
    }
    out
}

/// The length of a raw string literal (`r"…"`, `r#"…"#`, `br"…"`) at the start of `s`.
fn raw_string_len(s: &[u8], at_word_start: bool) -> Option<usize> {
    if !at_word_start {
        return None;
    }
    let after_prefix = if s.starts_with(b"br") {
        2
    } else if s.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = s[after_prefix..].iter().take_while(|&&c| c == b'#').count();
    if s.get(after_prefix + hashes) != Some(&b'"') {
        return None;
    }
    let body = after_prefix + hashes + 1;
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let end = s[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map_or(s.len(), |p| body + p + close.len());
    Some(end)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The identifier at the start of `s`, if any.
fn ident(s: &str) -> &str {
    let end = s.bytes().position(|c| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The module path of a file under `src/`: `src/a/b.rs` and `src/a/b/mod.rs` are `[a, b]`,
/// `src/lib.rs` is `[]`.
fn module_path(file: &str) -> Vec<String> {
    let rel = file.strip_prefix("src/").unwrap_or(file);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The top-level modules named by the `crate::…` items at the start of `s` (just after
/// `crate::`): one ident, or each item of a `{…}` group.
fn group_heads(s: &str) -> Vec<(String, String)> {
    if let Some(inner) = s.strip_prefix('{') {
        // The group up to its matching brace; its top-level items split on commas.
        let (mut depth, mut end) = (1, inner.len());
        for (j, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let group = &inner[..end];
        let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..j]);
                    start = j + 1;
                }
                _ => {}
            }
        }
        items.push(&group[start..]);
        items
            .into_iter()
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let head = ident(item).to_owned();
                let shown: String = item.split_whitespace().collect::<Vec<_>>().join(" ");
                (head, shown)
            })
            .collect()
    } else {
        let head = ident(s);
        let shown: String = s
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | ':'))
            .collect();
        vec![(head.to_owned(), shown.trim_end_matches(':').to_owned())]
    }
}

/// Every `crate::` path of the (already stripped) code of `file`, resolved to top-level
/// modules among `modules`.
fn imports(file: &str, code: &str, modules: &BTreeSet<String>) -> Vec<Import> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for (at, _) in code.match_indices("crate::") {
        // `$crate::` is a macro's own crate, and `foo_crate::` another path.
        if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b'$') {
            continue;
        }
        let after = code[at + "crate::".len()..].trim_start();
        for (head, shown) in group_heads(after) {
            if modules.contains(&head) {
                found.push(Import {
                    module: head,
                    path: format!("crate::{shown}"),
                });
            }
        }
    }
    // `super::` chains that climb to the crate root from a file `depth` modules deep. An
    // inline `mod tests` adds a level the file path does not show; only a chain that then
    // names a top-level module counts, so `super::*` in a test module never does.
    let depth = module_path(file).len();
    for (at, _) in code.match_indices("super::") {
        if at > 0 && (is_ident(bytes[at - 1]) || code[..at].ends_with("super::")) {
            continue;
        }
        let mut rest = &code[at..];
        let mut climbs = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = r.trim_start();
        }
        if depth == 0 || climbs < depth {
            continue;
        }
        for (head, shown) in group_heads(rest) {
            if modules.contains(&head) {
                found.push(Import {
                    module: head,
                    path: format!("{} (crate::{shown})", "super::".repeat(climbs) + &shown),
                });
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The layer rules and the cycle rule over `files` (path under the crate, text). Returns
/// one line per violation, naming the file and the path.
fn check(files: &[(String, String)], known: &[(&str, &str)]) -> Vec<String> {
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|(f, _)| module_path(f).first().cloned())
        .collect();
    let mut problems = Vec::new();
    let mut used_known = BTreeSet::new();
    // Edges between top-level modules, each with one file and path that makes it.
    let mut graph: BTreeMap<String, BTreeMap<String, (String, String)>> = BTreeMap::new();
    for (file, text) in files {
        let Some(top) = module_path(file).first().cloned() else {
            continue; // lib.rs and main.rs: the crate root wires everything.
        };
        for import in imports(file, &strip(text), &modules) {
            if import.module == top {
                continue;
            }
            graph
                .entry(top.clone())
                .or_default()
                .entry(import.module.clone())
                .or_insert_with(|| (file.clone(), import.path.clone()));
            let bad = if SELF_CONTAINED.contains(&top.as_str()) {
                true
            } else {
                forbidden(&top).is_some_and(|f| f.contains(&import.module.as_str()))
            };
            if !bad {
                continue;
            }
            if let Some(k) = known
                .iter()
                .find(|(f, p)| f == file && import.path.starts_with(p))
            {
                used_known.insert(*k);
                continue;
            }
            problems.push(format!(
                "{file}: `{}` ({top} may not import {})",
                import.path, import.module
            ));
        }
    }
    for k in known {
        if !used_known.contains(k) {
            problems.push(format!(
                "{}: the known violation `{}` is gone; remove it from KNOWN in tests/layers.rs",
                k.0, k.1
            ));
        }
    }
    problems.extend(cycles(&graph));
    problems
}

/// Every import cycle among top-level modules, one line each (`a -> b -> a`, with the
/// file and path of each step).
fn cycles(graph: &BTreeMap<String, BTreeMap<String, (String, String)>>) -> Vec<String> {
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    // From every module, a depth-first search for paths back to it; each cycle is kept
    // once, rotated to start at its smallest module.
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).map(|e| e.keys()).into_iter().flatten() {
                if next == start {
                    let min = path
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, m)| *m)
                        .map_or(0, |(i, _)| i);
                    let mut cycle = path[min..].to_vec();
                    cycle.extend_from_slice(&path[..min]);
                    found.insert(cycle);
                } else if !path.contains(next) && next > start {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    found
        .into_iter()
        .map(|cycle| {
            let steps: Vec<String> = cycle
                .iter()
                .zip(cycle.iter().cycle().skip(1))
                .map(|(a, b)| {
                    let (file, path) = &graph[a][b];
                    format!("{a} -> {b} ({file}: `{path}`)")
                })
                .collect();
            format!(
                "import cycle {} -> {}: {}",
                cycle.join(" -> "),
                cycle[0],
                steps.join("; ")
            )
        })
        .collect()
}

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let rel = path.strip_prefix(root).expect("under the crate");
            out.push((rel.to_string_lossy().replace('\\', "/"), text));
        }
    }
}

#[test]
fn every_module_imports_only_what_its_layer_allows_and_no_import_circles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), root, &mut files);
    assert!(files.len() > 20, "only {} files under src/", files.len());
    let problems = check(&files, KNOWN);
    assert!(
        problems.is_empty(),
        "layer violations (docs/design.md, \"Layers\"):\n  {}",
        problems.join("\n  ")
    );
}

fn example(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect()
}

#[test]
fn the_check_fails_on_a_forbidden_use_naming_the_file_and_the_path() {
    let files = example(&[
        (
            "src/lib.rs",
            "pub mod config; pub mod journal; pub mod sinks;",
        ),
        ("src/config/mod.rs", "pub struct Config;"),
        ("src/sinks/mod.rs", "use crate::config::Config;"),
        (
            "src/journal/writer.rs",
            "use crate::config::Config;\nuse crate::sinks::Sink;\n",
        ),
    ]);
    assert_eq!(
        check(&files, &[]),
        ["src/journal/writer.rs: `crate::sinks::Sink` (journal may not import sinks)"]
    );
}

#[test]
fn comments_and_strings_do_not_count_but_groups_inline_paths_and_super_do() {
    let files = example(&[
        ("src/config/mod.rs", "pub struct Config;"),
        ("src/sinks/mod.rs", ""),
        ("src/forward/mod.rs", ""),
        ("src/ingest/mod.rs", ""),
        (
            "src/journal/a.rs",
            "// use crate::sinks;\n/* crate::forward /* nested */ crate::ingest */\n\
             /// [`crate::sinks::Sink`]\nlet s = \"crate::sinks\"; let r = r#\"crate::ingest\"#;\n\
             let c = '\"'; fn f<'a>(x: &'a str) {}\nuse crate::{config::Config, forward::Forwarder};\n",
        ),
        ("src/journal/b.rs", "fn g() { crate::ingest::run(); }"),
        ("src/journal/mod.rs", "use super::sinks::Sink;\nmod tests { use super::*; }"),
    ]);
    assert_eq!(
        check(&files, &[]),
        [
            "src/journal/a.rs: `crate::forward::Forwarder` (journal may not import forward)",
            "src/journal/b.rs: `crate::ingest::run` (journal may not import ingest)",
            "src/journal/mod.rs: `super::sinks::Sink (crate::sinks::Sink)` (journal may not import sinks)",
        ]
    );
}

#[test]
fn config_and_record_import_nothing_and_a_cycle_is_named() {
    let files = example(&[
        ("src/config/mod.rs", "use crate::telemetry::get;"),
        ("src/record.rs", "use crate::config::Config;"),
        ("src/telemetry/mod.rs", "use crate::health::Health;"),
        ("src/health.rs", "use crate::telemetry::get;"),
    ]);
    let problems = check(&files, &[]);
    assert!(problems.contains(
        &"src/config/mod.rs: `crate::telemetry::get` (config may not import telemetry)".to_owned()
    ));
    assert!(problems.contains(
        &"src/record.rs: `crate::config::Config` (record may not import config)".to_owned()
    ));
    let cycles: Vec<&String> = problems
        .iter()
        .filter(|p| p.starts_with("import cycle"))
        .collect();
    assert_eq!(
        cycles,
        ["import cycle health -> telemetry -> health: health -> telemetry (src/health.rs: `crate::telemetry::get`); telemetry -> health (src/telemetry/mod.rs: `crate::health::Health`)"]
    );
}

#[test]
fn a_known_violation_is_allowed_until_it_is_gone() {
    let files = example(&[
        ("src/sinks/kafka.rs", "use crate::forward::gap_range;"),
        ("src/forward/mod.rs", ""),
    ]);
    let known = [("src/sinks/kafka.rs", "crate::forward::gap_range")];
    assert!(check(&files, &known).is_empty());
    let fixed = example(&[("src/sinks/kafka.rs", ""), ("src/forward/mod.rs", "")]);
    assert_eq!(
        check(&fixed, &known),
        ["src/sinks/kafka.rs: the known violation `crate::forward::gap_range` is gone; remove it from KNOWN in tests/layers.rs"]
    );
}
