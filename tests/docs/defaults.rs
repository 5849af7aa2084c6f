//! Defaults: every default `docs/configuration.md` states is the one `tidegate
//! check-config` fills in.

use std::collections::BTreeMap;

use crate::config_keys::{documented_keys, effective_values, values_of, EVERY_SECTION};
use crate::{read, root};

/// Whether a "default" cell states `printed`, the value `check-config` filled in. Only a cell
/// that is one plain backquoted value is compared (`1GiB`, `drop-oldest`, `["#"]`); prose
/// ("host name", "required") and patterns (`serial/<port file name>`) are not.
fn states_default(cell: &str, printed: &toml::Value) -> bool {
    let Some(token) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
        return true;
    };
    if token.contains('`') || token.contains('<') {
        return true;
    }
    let stated = format!("v = {token}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(token.to_string()));
    match (&stated, printed) {
        _ if &stated == printed => true,
        (toml::Value::Integer(a), toml::Value::Float(b)) => (*a as f64 - b).abs() < f64::EPSILON,
        (toml::Value::String(a), toml::Value::String(b)) => {
            let durations = humantime::parse_duration(a)
                .ok()
                .zip(humantime::parse_duration(b).ok())
                .is_some_and(|(a, b)| a == b);
            let sizes = a
                .parse::<bytesize::ByteSize>()
                .ok()
                .zip(b.parse::<bytesize::ByteSize>().ok())
                .is_some_and(|(a, b)| a == b);
            durations || sizes
        }
        _ => false,
    }
}

#[test]
fn every_documented_default_is_the_one_the_code_fills_in() {
    let text = read(&root().join("docs/configuration.md"));
    let mut set_by_the_test = BTreeMap::new();
    values_of(
        "",
        &EVERY_SECTION.parse().expect("EVERY_SECTION is TOML"),
        &mut set_by_the_test,
    );
    let effective = effective_values();
    let mut wrong = Vec::new();
    let mut compared = 0;
    for (key, row) in documented_keys(&text) {
        let Some(printed) = effective.get(&key) else {
            continue;
        };
        if set_by_the_test.contains_key(&key) {
            continue;
        }
        compared += 1;
        if !states_default(&row.default, printed) {
            wrong.push(format!(
                "{key} (docs/configuration.md:{}): documented default {}, check-config fills in {printed}",
                row.line, row.default
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong defaults:\n{}", wrong.join("\n"));
    assert!(
        compared > 50,
        "only {compared} defaults compared: is the key table still read?"
    );
}
