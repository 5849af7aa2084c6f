//! The credentials file (`mqtt.auth.credentials_file`): owns its format (one
//! `[[device]]` per device: username, argon2id PHC hash, optional rights), its parsing
//! with errors that name the file and line, and the edits `tidegate passwd` makes, which
//! keep every other entry and comment as they are. A file the daemon would refuse is
//! never rewritten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::PasswordHash;
use serde::Deserialize;

use super::acl::{Template, TemplateError};

/// Why a credentials file could not be used. Each message names the file, the line of
/// the entry (0 when `tidegate passwd` refuses what it was asked to write) and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("mqtt.auth.credentials_file: cannot read {path}: {source} (create it with `tidegate passwd {path} <USERNAME>`)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or not the file's shape (an unknown key, say).
    #[error("mqtt.auth.credentials_file: {path} line {line}: {} (fix the entry, or write it again with `tidegate passwd`)", .source.message())]
    Syntax {
        path: PathBuf,
        line: usize,
        source: toml::de::Error,
    },
    #[error("mqtt.auth.credentials_file: {path} line {line}: password_hash of {username:?} is not a PHC string ({source}) (fix the entry, or write it again with `tidegate passwd`)")]
    Hash {
        path: PathBuf,
        line: usize,
        username: String,
        source: argon2::password_hash::Error,
    },
    /// A publish or subscribe pattern is refused; `entry` says whose (empty for the
    /// patterns given to `tidegate passwd`).
    #[error("mqtt.auth.credentials_file: {path} line {line}: {entry}{source} (fix the entry, or write it again with `tidegate passwd`)")]
    Pattern {
        path: PathBuf,
        line: usize,
        entry: String,
        source: TemplateError,
    },
    /// `tidegate passwd` cannot edit the file as TOML.
    #[error("mqtt.auth.credentials_file: {path} line 0: {source} (fix the entry, or write it again with `tidegate passwd`)")]
    Edit {
        path: PathBuf,
        source: toml_edit::TomlError,
    },
    #[error("mqtt.auth.credentials_file: {path} line {line}: {problem} (fix the entry, or write it again with `tidegate passwd`)")]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: Problem,
    },
}

/// What is wrong with an entry, where no underlying error says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    #[error("[[device]] username is empty")]
    EmptyUsername,
    #[error("device {0:?} is listed twice")]
    Twice(String),
    #[error("`device` is not an array of tables")]
    NotTables,
}

/// One `[[device]]` of the credentials file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// PHC string (`$argon2id$...`); `None` for a device that logs in by certificate only.
    pub password_hash: Option<String>,
    pub publish: Option<Vec<Template>>,
    pub subscribe: Option<Vec<Template>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaw {
    #[serde(default)]
    device: Vec<toml::Spanned<DeviceRaw>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceRaw {
    username: String,
    password_hash: Option<String>,
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
}

/// Parses a credentials file's text: device name → entry.
pub fn parse_credentials(text: &str, path: &Path) -> Result<HashMap<String, Device>, AuthError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let path = || path.to_owned();
    let invalid = |line: usize, problem: Problem| AuthError::Invalid {
        path: path(),
        line,
        problem,
    };
    let raw: FileRaw = toml::from_str(text).map_err(|source| AuthError::Syntax {
        path: path(),
        line: source.span().map(|s| line_of(s.start)).unwrap_or(1),
        source,
    })?;
    let mut devices = HashMap::new();
    for entry in raw.device {
        let line = line_of(entry.span().start);
        let d = entry.into_inner();
        if d.username.is_empty() {
            return Err(invalid(line, Problem::EmptyUsername));
        }
        if let Some(h) = &d.password_hash {
            PasswordHash::new(h).map_err(|source| AuthError::Hash {
                path: path(),
                line,
                username: d.username.clone(),
                source,
            })?;
        }
        let compile = |list: Option<Vec<String>>, key: &str| -> Result<_, AuthError> {
            list.map(|l| {
                l.iter()
                    .map(|p| Template::parse(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| AuthError::Pattern {
                        path: path(),
                        line,
                        entry: format!("{key} of {:?}: ", d.username),
                        source,
                    })
            })
            .transpose()
        };
        let device = Device {
            password_hash: d.password_hash.clone(),
            publish: compile(d.publish.clone(), "publish")?,
            subscribe: compile(d.subscribe.clone(), "subscribe")?,
        };
        if devices.insert(d.username.clone(), device).is_some() {
            return Err(invalid(line, Problem::Twice(d.username)));
        }
    }
    Ok(devices)
}

/// What [`set_device`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Added,
    Replaced,
}

/// Adds or replaces `username`'s entry in a credentials file's text, keeping every other
/// entry and comment as it is. `publish`/`subscribe` of `None` keep the rights a replaced
/// entry had (or give none, so the defaults apply).
pub fn set_device(
    text: &str,
    path: &Path,
    username: &str,
    password_hash: &str,
    publish: Option<&[String]>,
    subscribe: Option<&[String]>,
) -> Result<(String, SetOutcome), AuthError> {
    // Refuse to rewrite a file the daemon would refuse anyway.
    parse_credentials(text, path)?;
    for p in publish.into_iter().chain(subscribe).flatten() {
        Template::parse(p).map_err(|source| AuthError::Pattern {
            path: path.to_owned(),
            line: 0,
            entry: String::new(),
            source,
        })?;
    }
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|source| AuthError::Edit {
        path: path.to_owned(),
        source,
    })?;
    let array = doc
        .entry("device")
        .or_insert(toml_edit::Item::ArrayOfTables(
            toml_edit::ArrayOfTables::new(),
        ))
        .as_array_of_tables_mut()
        .ok_or_else(|| AuthError::Invalid {
            path: path.to_owned(),
            line: 0,
            problem: Problem::NotTables,
        })?;
    let list = |l: &[String]| {
        let mut a = toml_edit::Array::new();
        for p in l {
            a.push(p.as_str());
        }
        toml_edit::value(a)
    };
    let existing = array
        .iter_mut()
        .find(|t| t.get("username").and_then(|u| u.as_str()) == Some(username));
    let outcome = match existing {
        Some(t) => {
            t["password_hash"] = toml_edit::value(password_hash);
            if let Some(p) = publish {
                t["publish"] = list(p);
            }
            if let Some(s) = subscribe {
                t["subscribe"] = list(s);
            }
            SetOutcome::Replaced
        }
        None => {
            let mut t = toml_edit::Table::new();
            t["username"] = toml_edit::value(username);
            t["password_hash"] = toml_edit::value(password_hash);
            if let Some(p) = publish {
                t["publish"] = list(p);
            }
            if let Some(s) = subscribe {
                t["subscribe"] = list(s);
            }
            array.push(t);
            SetOutcome::Added
        }
    };
    Ok((doc.to_string(), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_errors_name_the_line() {
        let p = Path::new("/etc/tidegate/devices.toml");
        let bad_hash = "# fleet\n[[device]]\nusername = \"a\"\npassword_hash = \"$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\n\n[[device]]\nusername = \"b\"\npassword_hash = \"plain\"\n";
        let e = parse_credentials(bad_hash, p)
            .expect_err("bad hash")
            .to_string();
        assert!(e.contains("line 6"), "{e}");
        assert!(e.contains("\"b\""), "{e}");
        assert!(e.contains("/etc/tidegate/devices.toml"), "{e}");

        let unknown = "[[device]]\nusername = \"a\"\npasword = \"x\"\n";
        let e = parse_credentials(unknown, p)
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("pasword"), "{e}");

        let twice = "[[device]]\nusername = \"a\"\n[[device]]\nusername = \"a\"\n";
        let e = parse_credentials(twice, p).expect_err("twice").to_string();
        assert!(e.contains("line 3") && e.contains("twice"), "{e}");

        let pattern = "[[device]]\nusername = \"a\"\npublish = [\"x/dev-%c\"]\n";
        let e = parse_credentials(pattern, p)
            .expect_err("pattern")
            .to_string();
        assert!(e.contains("line 1") && e.contains("whole level"), "{e}");

        let syntax = "[[device]]\nusername = \"a\"\npublish = [\n";
        let e = parse_credentials(syntax, p)
            .expect_err("syntax")
            .to_string();
        assert!(e.contains("line "), "{e}");
    }

    #[test]
    fn passwd_edits_keep_other_entries_and_comments() {
        let p = Path::new("d.toml");
        let text = "# devices of site 4\n[[device]]\nusername = \"a\"\npassword_hash = \"$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\npublish = [\"a/#\"]\n";
        let (t, o) = set_device(
            text,
            p,
            "b",
            "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            Some(&["b/#".into()]),
            None,
        )
        .expect("add");
        assert_eq!(o, SetOutcome::Added);
        assert!(t.starts_with("# devices of site 4\n"), "{t}");
        let devices = parse_credentials(&t, p).expect("valid");
        assert_eq!(devices.len(), 2);
        let (t, o) = set_device(
            &t,
            p,
            "a",
            "$argon2id$v=19$m=2,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            None,
            None,
        )
        .expect("replace");
        assert_eq!(o, SetOutcome::Replaced);
        let devices = parse_credentials(&t, p).expect("valid");
        assert!(devices["a"]
            .password_hash
            .as_deref()
            .is_some_and(|h| h.contains("m=2")));
        assert_eq!(
            devices["a"].publish.as_ref().map(|v| v.len()),
            Some(1),
            "rights kept"
        );
    }

    #[test]
    fn credentials_file_errors_keep_their_cause_and_their_wording() {
        let p = Path::new("d.toml");
        let twice = "[[device]]\nusername = \"a\"\n[[device]]\nusername = \"a\"\n";
        let e = parse_credentials(twice, p).expect_err("twice");
        assert_eq!(
            e.to_string(),
            "mqtt.auth.credentials_file: d.toml line 3: device \"a\" is listed twice (fix the entry, or write it again with `tidegate passwd`)"
        );
        let bad_hash = "[[device]]\nusername = \"b\"\npassword_hash = \"plain\"\n";
        let e = parse_credentials(bad_hash, p).expect_err("bad hash");
        let cause = std::error::Error::source(&e).expect("the hash error is kept");
        assert!(e.to_string().contains(&format!("({cause})")), "{e}");
        let syntax = "[[device]]\nusername = \"a\"\npasword = \"x\"\n";
        let e = parse_credentials(syntax, p).expect_err("unknown key");
        assert!(std::error::Error::source(&e).is_some(), "{e}");
        let e = set_device("", p, "a", "h", Some(&["x/dev-%c".into()]), None)
            .expect_err("pattern")
            .to_string();
        assert!(
            e.starts_with("mqtt.auth.credentials_file: d.toml line 0: \"x/dev-%c\": `%c`"),
            "{e}"
        );
    }
}
