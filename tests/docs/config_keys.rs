//! Configuration keys: every key the code accepts (and every key of the shipped example,
//! `deploy/tidegate.toml`) is documented in `docs/configuration.md`, and every key
//! documented there is one the code accepts, as `tidegate check-config` shows them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::{check_config, read, root};

/// A key no section has, used to make `check-config` list a section's keys.
const PROBE_KEY: &str = "tidegate_docs_probe";

/// A key by its documented name: `journal.max_size`, `upstream[].url`,
/// `modbus[].slave[].register[].scale`.
pub(crate) type KeyName = String;

/// `section` + `key`, with `section` in documented form (`mqtt.auth`, `modbus[].slave[]`,
/// empty for the top level).
fn join(section: &str, key: &str) -> KeyName {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// Every key of a parsed configuration with its value, walking tables and arrays of
/// tables; of an array of tables, the first one's value is kept.
pub(crate) fn values_of(
    section: &str,
    table: &toml::Table,
    out: &mut BTreeMap<KeyName, toml::Value>,
) {
    for (key, value) in table {
        match value {
            toml::Value::Table(t) => values_of(&join(section, key), t, out),
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
            {
                let sub = format!("{}[]", join(section, key));
                for item in items {
                    if let toml::Value::Table(t) = item {
                        values_of(&sub, t, out);
                    }
                }
            }
            _ => {
                out.entry(join(section, key))
                    .or_insert_with(|| value.clone());
            }
        }
    }
}

/// The keys of `deploy/tidegate.toml`, the ones set and the ones shown commented out
/// (`# key = value` under a possibly commented `[section]` / `[[section]]` header); prose
/// comments are told apart by not parsing as a TOML key/value line.
fn example_keys() -> BTreeSet<KeyName> {
    let text = read(&root().join("deploy/tidegate.toml"));
    let mut arrays: BTreeSet<String> = BTreeSet::new();
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        let code = line.strip_prefix('#').map_or(line, str::trim);
        if let Some(path) = code.strip_prefix("[[").and_then(|s| s.strip_suffix("]]")) {
            arrays.insert(path.to_string());
            section = documented_section(path, &arrays);
        } else if let Some(path) = code.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = documented_section(path, &arrays);
        } else if let Ok(table) = code.parse::<toml::Table>() {
            for key in table.keys() {
                keys.insert(join(&section, key));
            }
        }
    }
    keys
}

/// `modbus.slave.register` → `modbus[].slave[].register[]` when those are arrays of tables.
fn documented_section(path: &str, arrays: &BTreeSet<String>) -> String {
    let mut raw = String::new();
    let mut documented = String::new();
    for seg in path.split('.') {
        let seg = seg.trim();
        raw = join(&raw, seg);
        documented = join(&documented, seg);
        if arrays.contains(&raw) {
            documented.push_str("[]");
        }
    }
    documented
}

/// [`EVERY_SECTION`], a valid configuration, with `key = 0` added to `section` (documented
/// form; the first table of an array of tables). Every required key is there, so what
/// `check-config` says is about `key` alone.
fn every_section_with(section: &str, key: &str) -> String {
    let mut config: toml::Table = EVERY_SECTION.parse().expect("EVERY_SECTION is TOML");
    let mut table = &mut config;
    if !section.is_empty() {
        for seg in section.split('.') {
            table = match seg.strip_suffix("[]") {
                Some(name) => {
                    let items = table
                        .entry(name)
                        .or_insert_with(|| toml::Value::Array(vec![toml::Table::new().into()]));
                    match items {
                        toml::Value::Array(items) => match items.first_mut() {
                            Some(toml::Value::Table(t)) => t,
                            _ => panic!("{section}: {name} holds no table"),
                        },
                        _ => panic!("{section}: {name} is not an array of tables"),
                    }
                }
                None => match table
                    .entry(seg)
                    .or_insert_with(|| toml::Table::new().into())
                {
                    toml::Value::Table(t) => t,
                    _ => panic!("{section}: {seg} is not a table"),
                },
            };
        }
    }
    table.insert(key.to_string(), toml::Value::Integer(0));
    toml::to_string(&config).expect("a TOML table serialises")
}

/// The keys `check-config` says a section accepts when it refuses an unknown one
/// (serde's "unknown field `x`, expected one of `a`, `b`"); empty when the message does not
/// list them. Also asserts that an unknown key is refused naming it.
fn keys_the_code_lists(section: &str) -> BTreeSet<KeyName> {
    let out = check_config(&every_section_with(section, PROBE_KEY));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(PROBE_KEY),
        "check-config must refuse the unknown key {} naming it; it said:\n{stderr}",
        join(section, PROBE_KEY),
    );
    // serde: "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
    let Some(list) = stderr
        .lines()
        .find(|l| l.contains(PROBE_KEY) && l.contains("expected"))
        .and_then(|l| l.split("expected").nth(1))
    else {
        return BTreeSet::new();
    };
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(|k| join(section, k))
        .collect()
}

/// A configuration with one of every section, so that `check-config` prints every key
/// that has a value by default.
pub(crate) const EVERY_SECTION: &str = r#"
upstream = [
  { name = "cluster", kind = "kafka", brokers = ["127.0.0.1:9092"], topic = "telemetry" },
  { name = "cloud", kind = "mqtt", url = "mqtt://127.0.0.1:1884", topic_prefix = "site-7/" },
]
serial = [{ port = "/dev/ttyUSB0" }]
modbus = [{ port = "/dev/ttyUSB1", slave = [
  { id = 1, name = "wt-0001", register = [{ name = "wind_ms", kind = "input", address = 0 }] },
] }]
mqtt_subscribe = [{ url = "mqtt://127.0.0.1:1885", topics = ["sensors/#"] }]
"#;

/// The effective configuration `check-config` prints for [`EVERY_SECTION`], by key: every
/// key that has a value by default, with that value (the first of each array of tables).
pub(crate) fn effective_values() -> BTreeMap<KeyName, toml::Value> {
    let out = check_config(EVERY_SECTION);
    assert!(
        out.status.success(),
        "the test's own full configuration must be valid:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("check-config prints its effective configuration as TOML");
    let mut values = BTreeMap::new();
    values_of("", &printed, &mut values);
    values
}

/// Whether `check-config` refuses `key` in `section` as unknown (in any wording that names it).
fn refused_as_unknown(section: &str, key: &str) -> bool {
    let stderr = String::from_utf8_lossy(&check_config(&every_section_with(section, key)).stderr)
        .to_string();
    stderr.to_lowercase().contains("unknown") && stderr.contains(key)
}

/// Every key the code accepts, as far as `check-config` shows them: the keys of the
/// effective configuration (those with a default), plus, per section, the keys an
/// unknown-key error lists (optional keys too). A section whose error lists none (serde
/// cannot list them for a section that flattens another struct) is asked about each name in
/// `candidates` instead: a name it does not refuse as unknown is one of its keys.
fn code_keys(
    effective: &BTreeMap<KeyName, toml::Value>,
    candidates: &BTreeSet<String>,
) -> BTreeSet<KeyName> {
    let mut keys: BTreeSet<KeyName> = effective.keys().cloned().collect();
    let mut sections: BTreeSet<String> = keys
        .iter()
        .filter_map(|k| k.rsplit_once('.').map(|(s, _)| s.to_string()))
        .collect();
    sections.extend(
        example_keys()
            .iter()
            .filter_map(|k| k.rsplit_once('.').map(|(s, _)| s.to_string())),
    );
    for section in &sections {
        let mut listed = keys_the_code_lists(section);
        if listed.is_empty() {
            listed = candidates
                .iter()
                .filter(|name| !refused_as_unknown(section, name))
                .map(|name| join(section, name))
                .collect();
        }
        // A section's list names its subsections too (`mqtt` lists `auth`): not keys.
        keys.extend(
            listed
                .into_iter()
                .filter(|k| !sections.contains(k) && !sections.contains(&format!("{k}[]"))),
        );
    }
    // Sections the code has that neither the output nor the example shows.
    for top in keys_the_code_lists("") {
        let known = sections.iter().any(|s| {
            s.trim_end_matches("[]") == top
                || s.starts_with(&format!("{top}."))
                || s.starts_with(&format!("{top}[]"))
        });
        assert!(known, "configuration section `{top}` is neither printed by check-config nor in deploy/tidegate.toml: add it to the example");
    }
    keys
}

/// The names of the `pub` fields declared in the configuration's source files (those with
/// `config` in their path): candidates for keys that nothing else names.
fn config_field_names(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a readable src/ entry").path();
        if path.is_dir() {
            names.extend(config_field_names(&path));
        } else if path.to_string_lossy().contains("config")
            && path.extension().is_some_and(|x| x == "rs")
        {
            for line in read(&path).lines() {
                let Some(field) = line.trim().strip_prefix("pub ") else {
                    continue;
                };
                let Some((name, _)) = field.split_once(':') else {
                    continue;
                };
                let name = name.trim().trim_start_matches("r#");
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

/// A row of the key table: its line in docs/configuration.md and its "default" cell.
pub(crate) struct Row {
    pub(crate) line: usize,
    pub(crate) default: String,
}

/// The keys docs/configuration.md documents: the backquoted names in the first cell of each
/// row of its key tables. A name with a dot is whole (`upstream[].password_file`); a bare
/// one in the same cell belongs to the section of the cell's first (`password_env`).
pub(crate) fn documented_keys(text: &str) -> BTreeMap<KeyName, Row> {
    let mut keys = BTreeMap::new();
    let mut in_key_table = false;
    for (n, line) in text.lines().enumerate() {
        let Some(row) = line.trim().strip_prefix('|') else {
            in_key_table = false;
            continue;
        };
        let mut cells = row.split('|').map(str::trim);
        let first = cells.next().unwrap_or("");
        let default = cells.next().unwrap_or("");
        if first == "key" {
            in_key_table = true;
            continue;
        }
        if !in_key_table || first.starts_with("---") {
            continue;
        }
        let mut section = String::new();
        for name in first.split('`').skip(1).step_by(2) {
            let key = match name.rsplit_once('.') {
                Some((s, _)) => {
                    section = s.to_string();
                    name.to_string()
                }
                None => join(&section, name),
            };
            keys.insert(
                key,
                Row {
                    line: n + 1,
                    default: default.to_string(),
                },
            );
        }
    }
    keys
}

#[test]
fn every_configuration_key_is_documented_and_every_documented_key_exists() {
    let text = read(&root().join("docs/configuration.md"));
    let documented = documented_keys(&text);
    let effective = effective_values();
    // Every bare key name the docs, the example or the effective configuration use, and
    // every field name of the configuration structs.
    let mut candidates: BTreeSet<String> = documented
        .keys()
        .chain(effective.keys())
        .chain(example_keys().iter())
        .map(|k| k.rsplit('.').next().unwrap_or(k).to_string())
        .collect();
    candidates.extend(config_field_names(&root().join("src")));
    let mut needed = code_keys(&effective, &candidates);
    needed.extend(example_keys());

    let missing: Vec<&KeyName> = needed
        .iter()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document these keys (add a row to its key table): {missing:?}"
    );

    // A documented key the code does not accept is refused by check-config as unknown.
    let mut stale = Vec::new();
    for (key, Row { line, .. }) in &documented {
        if needed.contains(key) {
            continue;
        }
        let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
        if refused_as_unknown(section, name) {
            stale.push(format!("{key} (docs/configuration.md:{line})"));
        }
    }
    assert!(
        stale.is_empty(),
        "docs/configuration.md documents keys tidegate does not accept: {stale:?}"
    );
}
