//! Device authentication and topic rights on the device-facing MQTT listener.
//!
//! This module owns the credentials file (`mqtt.auth.credentials_file`), the decision
//! whether a CONNECT is let in ([`AuthState::grant`], [`verify_password`]), and the per-connection rights
//! ([`Rights`]) that every PUBLISH and SUBSCRIBE of an authenticated device is checked
//! against. The broker only asks; it never looks at passwords or patterns itself.
//!
//! # Invariants
//!
//! * **A placeholder never widens a right.** `%c` (client id) and `%u` (username) stand
//!   for one whole topic level and are substituted as *literal* levels when the device
//!   connects: a client id of `+`, `#` or `a/b` matches only a topic level spelt exactly
//!   like that, which a publish topic cannot contain (wildcards are refused) and a single
//!   level cannot hold (`/` separates levels). A placeholder with no value (`%u` for a
//!   device that gave no username) matches nothing.
//! * **Nothing is cached that would let a changed password keep working.** Every CONNECT
//!   verifies against the hash in force; a reload ([`AuthHub::replace`]) compares every
//!   open connection's [`Grant`] with the one the new state gives it and revokes those
//!   that differ. Replacing the state and registering a connection happen under one lock,
//!   so a connection admitted under the old state while a reload runs is still checked.
//! * **No check when there is nothing to check.** Without a credentials file or a client
//!   CA, connections get no [`Rights`] at all and the publish path does no matching.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;

/// Why a credentials file or a rights pattern could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("mqtt.auth.credentials_file: cannot read {path}: {source} (create it with `tidegate passwd {path} <USERNAME>`)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mqtt.auth.credentials_file: {path} line {line}: {message} (fix the entry, or write it again with `tidegate passwd`)")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A publish or subscribe pattern as written: an MQTT topic filter whose levels may be
/// `%c` or `%u`. Compiled once at load; expanded once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    levels: Vec<TLevel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TLevel {
    Literal(Box<str>),
    ClientId,
    Username,
    Plus,
    Hash,
}

impl Template {
    /// Parses a pattern, refusing what MQTT would refuse as a filter and placeholders that
    /// are not a whole level (`dev-%c` would let `%c` be glued to other text).
    pub fn parse(source: &str) -> Result<Template, String> {
        if source.is_empty() {
            return Err("empty pattern".into());
        }
        let parts: Vec<&str> = source.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => TLevel::Plus,
                "#" if i + 1 == parts.len() => TLevel::Hash,
                "#" => return Err(format!("{source:?}: `#` must be the last level")),
                "%c" => TLevel::ClientId,
                "%u" => TLevel::Username,
                p if p.contains(['+', '#']) => {
                    return Err(format!(
                        "{source:?}: `+` and `#` must be a whole level"
                    ))
                }
                p if p.contains('%') => {
                    return Err(format!(
                        "{source:?}: `%c` and `%u` must be a whole level (and `%` is allowed nowhere else)"
                    ))
                }
                p if p.contains('\0') => return Err(format!("{source:?}: NUL in pattern")),
                p => TLevel::Literal(p.into()),
            };
            levels.push(level);
        }
        Ok(Template {
            source: source.to_owned(),
            levels,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The pattern for one connection: placeholders become literal levels.
    fn expand(&self, client_id: &str, username: Option<&str>) -> Pattern {
        let levels = self
            .levels
            .iter()
            .map(|l| match l {
                TLevel::Literal(s) => Level::Literal(s.clone()),
                TLevel::ClientId => Level::Literal(client_id.into()),
                TLevel::Username => match username {
                    Some(u) => Level::Literal(u.into()),
                    None => Level::Never,
                },
                TLevel::Plus => Level::Plus,
                TLevel::Hash => Level::Hash,
            })
            .collect();
        Pattern { levels }
    }
}

/// An expanded pattern: only literals and wildcards are left.
#[derive(Debug, Clone)]
struct Pattern {
    levels: Vec<Level>,
}

#[derive(Debug, Clone)]
enum Level {
    /// Equal to exactly this text as one level, whatever characters it holds.
    Literal(Box<str>),
    /// A placeholder with no value: equal to nothing.
    Never,
    Plus,
    Hash,
}

/// One level of a SUBSCRIBE filter, typed so that a literal `+` from a client id can
/// never be taken for the wildcard.
enum FLevel<'a> {
    Literal(&'a str),
    Plus,
    Hash,
}

impl Pattern {
    /// Whether a publish topic (no wildcards; checked by the broker) matches.
    fn matches_topic(&self, topic: &str) -> bool {
        // MQTT 4.7.2: a pattern starting with a wildcard does not match `$` topics.
        if topic.starts_with('$') && matches!(self.levels.first(), Some(Level::Plus | Level::Hash))
        {
            return false;
        }
        let mut levels = self.levels.iter();
        let mut parts = topic.split('/');
        loop {
            match (levels.next(), parts.next()) {
                (Some(Level::Hash), _) => return true,
                (None, None) => return true,
                (Some(Level::Plus), Some(_)) => {}
                (Some(Level::Literal(l)), Some(p)) if **l == *p => {}
                _ => return false,
            }
        }
    }

    /// Whether every topic `filter` can match is matched by this pattern, so that a
    /// subscription cannot reach past the device's rights.
    fn covers_filter(&self, filter: &[FLevel<'_>]) -> bool {
        let mut f = filter.iter();
        for level in &self.levels {
            match level {
                Level::Hash => return true,
                Level::Plus => match f.next() {
                    Some(FLevel::Literal(_) | FLevel::Plus) => {}
                    _ => return false,
                },
                Level::Literal(l) => match f.next() {
                    Some(FLevel::Literal(p)) if **l == **p => {}
                    _ => return false,
                },
                Level::Never => return false,
            }
        }
        f.next().is_none()
    }
}

/// What one connection may publish and subscribe to, expanded at CONNECT.
#[derive(Debug, Clone)]
pub struct Rights {
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
}

impl Rights {
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches_topic(topic))
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        let mut levels = Vec::new();
        for part in filter.split('/') {
            levels.push(match part {
                "+" => FLevel::Plus,
                "#" => FLevel::Hash,
                p => FLevel::Literal(p),
            });
        }
        self.subscribe.iter().any(|p| p.covers_filter(&levels))
    }
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
    let invalid = |line: usize, message: String| AuthError::Invalid {
        path: path.to_owned(),
        line,
        message,
    };
    let raw: FileRaw = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(s.start)).unwrap_or(1);
        invalid(line, e.message().to_owned())
    })?;
    let mut devices = HashMap::new();
    for entry in raw.device {
        let line = line_of(entry.span().start);
        let d = entry.into_inner();
        if d.username.is_empty() {
            return Err(invalid(line, "[[device]] username is empty".into()));
        }
        if let Some(h) = &d.password_hash {
            PasswordHash::new(h).map_err(|e| {
                invalid(
                    line,
                    format!(
                        "password_hash of {:?} is not a PHC string ({e})",
                        d.username
                    ),
                )
            })?;
        }
        let compile = |list: Option<Vec<String>>, key: &str| -> Result<_, AuthError> {
            list.map(|l| {
                l.iter()
                    .map(|p| Template::parse(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(line, format!("{key} of {:?}: {e}", d.username)))
            })
            .transpose()
        };
        let device = Device {
            password_hash: d.password_hash.clone(),
            publish: compile(d.publish.clone(), "publish")?,
            subscribe: compile(d.subscribe.clone(), "subscribe")?,
        };
        if devices.insert(d.username.clone(), device).is_some() {
            return Err(invalid(
                line,
                format!("device {:?} is listed twice", d.username),
            ));
        }
    }
    Ok(devices)
}

/// Why a CONNECT is refused (the broker maps these onto CONNACK codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Unknown device, wrong or missing password (3.1.1: 0x04, 5: 0x86).
    BadCredentials,
    /// Anonymous when anonymous access is off (3.1.1: 0x05, 5: 0x87).
    NotAuthorized,
    /// Client id not the device's name while `client_id_is_username` (3.1.1: 0x02, 5: 0x85).
    BadClientId,
}

/// How a connection proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Authentication is off: no rights are checked.
    Open,
    Anonymous,
    Password(String),
    Certificate(String),
}

impl Identity {
    /// The username its `%u` stands for.
    pub fn username(&self) -> Option<&str> {
        match self {
            Identity::Password(u) | Identity::Certificate(u) => Some(u),
            _ => None,
        }
    }
}

/// What a connection was let in with. A reload closes every connection whose grant under
/// the new state differs (password hash, rights, or no longer admitted at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Open,
    Granted {
        password_hash: Option<String>,
        publish: Vec<String>,
        subscribe: Vec<String>,
    },
}

/// The credentials and settings in force; replaced whole by a reload.
#[derive(Debug, Default)]
pub struct AuthState {
    enabled: bool,
    allow_anonymous: bool,
    client_id_is_username: bool,
    publish: Vec<Template>,
    subscribe: Vec<Template>,
    devices: HashMap<String, Device>,
}

/// The state in force and the connections admitted under it; shared by the listener
/// (admits and registers) and the reload (replaces).
pub struct AuthHub {
    state: std::sync::Mutex<Arc<AuthState>>,
    /// Connection number → what it was admitted with and its revoke token.
    conns: std::sync::Mutex<HashMap<u64, Admitted>>,
}

struct Admitted {
    identity: Identity,
    client_id: String,
    grant: Grant,
    revoke: CancellationToken,
}

impl AuthHub {
    pub fn new(state: AuthState) -> Arc<AuthHub> {
        Arc::new(AuthHub {
            state: std::sync::Mutex::new(Arc::new(state)),
            conns: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The state in force, for one CONNECT.
    pub fn current(&self) -> Arc<AuthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records an admitted connection. The token it returns (a child of `parent`, so it
    /// also fires with it) is cancelled when a reload changes the connection's grant, or
    /// at once if the state changed since the connection was admitted.
    pub fn register(
        &self,
        conn: u64,
        identity: &Identity,
        client_id: &str,
        grant: &Grant,
        parent: &CancellationToken,
    ) -> CancellationToken {
        let revoke = parent.child_token();
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if self.current().grant(identity, client_id).as_ref() != Ok(grant) {
            revoke.cancel();
        }
        conns.insert(
            conn,
            Admitted {
                identity: identity.clone(),
                client_id: client_id.to_owned(),
                grant: grant.clone(),
                revoke: revoke.clone(),
            },
        );
        revoke
    }

    pub fn unregister(&self, conn: u64) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
    }

    /// Puts `new` in force and revokes every connection whose grant under it differs
    /// (entry removed, password or rights changed, no longer admitted). Returns how many.
    pub fn replace(&self, new: AuthState) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let new = Arc::new(new);
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
        let mut revoked = 0;
        for a in conns.values() {
            if new.grant(&a.identity, &a.client_id).as_ref() != Ok(&a.grant) {
                a.revoke.cancel();
                revoked += 1;
            }
        }
        revoked
    }
}

impl AuthState {
    /// No authentication: everything is let in, nothing checked.
    pub fn open() -> AuthState {
        AuthState::default()
    }

    /// Builds the state from `[mqtt]`, reading the credentials file it names.
    pub fn load(mqtt: &MqttConfig) -> Result<AuthState, AuthError> {
        let a = &mqtt.auth;
        let devices = match &a.credentials_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                    path: path.clone(),
                    source,
                })?;
                parse_credentials(&text, path)?
            }
            None => HashMap::new(),
        };
        // Patterns were validated with the rest of the configuration.
        let compile = |l: &[String]| l.iter().filter_map(|p| Template::parse(p).ok()).collect();
        Ok(AuthState {
            enabled: a.credentials_file.is_some() || mqtt.tls_client_ca.is_some(),
            allow_anonymous: a.allow_anonymous,
            client_id_is_username: a.client_id_is_username,
            publish: compile(&a.publish),
            subscribe: compile(&a.subscribe),
            devices,
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// What `identity` would be let in with now, password aside; `Err` if it is refused.
    pub fn grant(&self, identity: &Identity, client_id: &str) -> Result<Grant, Denied> {
        if !self.enabled {
            return Ok(Grant::Open);
        }
        let entry = match identity {
            Identity::Open => return Err(Denied::NotAuthorized),
            Identity::Anonymous if self.allow_anonymous => None,
            Identity::Anonymous => return Err(Denied::NotAuthorized),
            Identity::Password(u) => match self.devices.get(u) {
                Some(d) if d.password_hash.is_some() => Some(d),
                _ => return Err(Denied::BadCredentials),
            },
            Identity::Certificate(u) => self.devices.get(u),
        };
        if let Some(u) = identity.username() {
            if self.client_id_is_username && client_id != u {
                return Err(Denied::BadClientId);
            }
        }
        let names = |own: Option<&Vec<Template>>, default: &[Template]| {
            own.map(|v| v.as_slice())
                .unwrap_or(default)
                .iter()
                .map(|t| t.source.clone())
                .collect()
        };
        Ok(Grant::Granted {
            password_hash: match identity {
                Identity::Password(_) => entry.and_then(|d| d.password_hash.clone()),
                _ => None,
            },
            publish: names(entry.and_then(|d| d.publish.as_ref()), &self.publish),
            subscribe: names(entry.and_then(|d| d.subscribe.as_ref()), &self.subscribe),
        })
    }

    /// The rights of an admitted connection; `None` when nothing is checked.
    pub fn rights(&self, grant: &Grant, identity: &Identity, client_id: &str) -> Option<Rights> {
        let Grant::Granted {
            publish, subscribe, ..
        } = grant
        else {
            return None;
        };
        let username = identity.username();
        let expand = |l: &[String]| {
            l.iter()
                .filter_map(|p| Template::parse(p).ok())
                .map(|t| t.expand(client_id, username))
                .collect()
        };
        Some(Rights {
            publish: expand(publish),
            subscribe: expand(subscribe),
        })
    }

    /// Whether the device's name must be its client id, so the broker can give a device
    /// that sent none its own name as id.
    pub fn client_id_is_username(&self) -> bool {
        self.enabled && self.client_id_is_username
    }
}

/// Checks `password` against a PHC hash. CPU-heavy by design (argon2): call it off the
/// runtime's worker threads ([`verify_password_blocking`]).
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// [`verify_password`] on tokio's blocking pool, so a storm of CONNECTs does not stall the
/// connections already running; at most two at once (`VERIFY_PERMITS`).
pub async fn verify_password_blocking(hash: String, password: Vec<u8>) -> bool {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(VERIFY_PERMITS);
    let Ok(_permit) = PERMITS.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false)
}

/// Password checks running at once: each takes ~19 MiB and tens of ms of one core
/// (argon2id defaults), and a gateway has few cores.
const VERIFY_PERMITS: usize = 2;

/// A hash no password is expected to match, with the same parameters as real ones: what
/// an unknown device's password is checked against (see the broker's `admit`).
pub fn dummy_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        hash_password(b"tidegate: no such device").unwrap_or_else(|_| {
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".to_owned()
        })
    })
    .clone()
}

/// An argon2id PHC string for `password` with a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
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
    let invalid = |message: String| AuthError::Invalid {
        path: path.to_owned(),
        line: 0,
        message,
    };
    for p in publish.into_iter().chain(subscribe).flatten() {
        Template::parse(p).map_err(invalid)?;
    }
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| invalid(e.to_string()))?;
    let array = doc
        .entry("device")
        .or_insert(toml_edit::Item::ArrayOfTables(
            toml_edit::ArrayOfTables::new(),
        ))
        .as_array_of_tables_mut()
        .ok_or_else(|| invalid("`device` is not an array of tables".into()))?;
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

    fn rights(publish: &[&str], subscribe: &[&str], client_id: &str, user: Option<&str>) -> Rights {
        let ex = |l: &[&str]| {
            l.iter()
                .map(|p| Template::parse(p).expect("pattern").expand(client_id, user))
                .collect()
        };
        Rights {
            publish: ex(publish),
            subscribe: ex(subscribe),
        }
    }

    #[test]
    fn placeholders_stand_for_the_devices_own_level() {
        let r = rights(
            &["turbines/%c/#", "users/%u/status"],
            &[],
            "wt-1",
            Some("wt-1"),
        );
        assert!(r.may_publish("turbines/wt-1/telemetry"));
        assert!(r.may_publish("turbines/wt-1"));
        assert!(r.may_publish("users/wt-1/status"));
        assert!(!r.may_publish("turbines/wt-2/telemetry"));
        assert!(!r.may_publish("turbines"));
        assert!(!r.may_publish("users/wt-1/status/x"));
    }

    #[test]
    fn wildcards_or_slashes_in_a_client_id_match_only_their_literal_level() {
        for evil in ["+", "#", "a/b", "wt-1/#", "+/+", ""] {
            let r = rights(&["turbines/%c/#"], &["turbines/%c/#"], evil, Some(evil));
            assert!(!r.may_publish("turbines/wt-2/telemetry"), "{evil:?}");
            assert!(!r.may_publish("turbines/a/b"), "{evil:?}");
            assert!(!r.may_subscribe("turbines/+/telemetry"), "{evil:?}");
            assert!(!r.may_subscribe("turbines/#"), "{evil:?}");
            assert!(!r.may_subscribe("#"), "{evil:?}");
            assert!(!r.may_subscribe("turbines/wt-2/#"), "{evil:?}");
        }
        // A literal `+` level is a level spelt `+`, not a wildcard: subscribing with the
        // wildcard is refused even where the device's own level is `+`.
        let r = rights(&[], &["turbines/%c/#"], "+", None);
        assert!(!r.may_subscribe("turbines/+/x"));
        let r = rights(&["a/%u"], &["a/%u"], "x", None);
        assert!(!r.may_publish("a/"), "no username: %u matches nothing");
        assert!(!r.may_subscribe("a/"));
    }

    #[test]
    fn a_subscription_is_allowed_only_inside_a_pattern() {
        let r = rights(&[], &["turbines/%c/#", "fleet/+/status"], "wt-1", None);
        assert!(r.may_subscribe("turbines/wt-1/#"));
        assert!(r.may_subscribe("turbines/wt-1/+"));
        assert!(r.may_subscribe("turbines/wt-1/telemetry"));
        assert!(r.may_subscribe("fleet/+/status"));
        assert!(r.may_subscribe("fleet/wt-9/status"));
        assert!(!r.may_subscribe("fleet/#"));
        assert!(!r.may_subscribe("fleet/+/status/#"));
        assert!(!r.may_subscribe("turbines/+/telemetry"));
        assert!(!r.may_subscribe("#"));
        assert!(!r.may_subscribe("+/wt-1/#"));
    }

    #[test]
    fn patterns_must_be_well_formed_filters_with_whole_level_placeholders() {
        assert!(Template::parse("a/%c/#").is_ok());
        assert!(Template::parse("a/dev-%c").is_err());
        assert!(Template::parse("a/#/b").is_err());
        assert!(Template::parse("a/b+").is_err());
        assert!(Template::parse("").is_err());
        assert!(Template::parse("a/%x").is_err());
    }

    #[test]
    fn wildcard_patterns_do_not_reach_system_topics() {
        let r = rights(&["#"], &[], "c", None);
        assert!(r.may_publish("a/b"));
        assert!(!r.may_publish("$SYS/x"));
    }

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
    fn a_hash_verifies_its_password_only() {
        let h = hash_password(b"correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, b"correct horse"));
        assert!(!verify_password(&h, b"wrong"));
        assert!(!verify_password("garbage", b"correct horse"));
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
    fn a_reload_revokes_only_connections_whose_grant_changed() {
        let device = |hash: &str, publish: &str| Device {
            password_hash: Some(hash.into()),
            publish: Some(vec![Template::parse(publish).expect("p")]),
            subscribe: None,
        };
        let state = |a: Device, b: Device| AuthState {
            enabled: true,
            client_id_is_username: true,
            devices: [("a".to_owned(), a), ("b".to_owned(), b)].into(),
            ..AuthState::default()
        };
        const H1: &str = "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        const H2: &str = "$argon2id$v=19$m=2,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        let hub = AuthHub::new(state(device(H1, "a/#"), device(H1, "b/#")));
        let parent = CancellationToken::new();
        let ids = [
            Identity::Password("a".into()),
            Identity::Password("b".into()),
        ];
        let tokens: Vec<_> = ids
            .iter()
            .zip(["a", "b"])
            .enumerate()
            .map(|(i, (id, cid))| {
                let g = hub.current().grant(id, cid).expect("admitted");
                hub.register(i as u64, id, cid, &g, &parent)
            })
            .collect();
        // b's rights change; a's entry is rewritten identically.
        assert_eq!(hub.replace(state(device(H1, "a/#"), device(H1, "b/x"))), 1);
        assert!(!tokens[0].is_cancelled());
        assert!(tokens[1].is_cancelled());
        // a's password changes.
        assert_eq!(hub.replace(state(device(H2, "a/#"), device(H1, "b/x"))), 2);
        assert!(tokens[0].is_cancelled());
        // Admitted under an older state than the one in force: revoked at registration.
        let old_grant = state(device(H1, "a/#"), device(H1, "b/#"))
            .grant(&ids[0], "a")
            .expect("admitted");
        assert!(hub
            .register(9, &ids[0], "a", &old_grant, &parent)
            .is_cancelled());
    }

    #[test]
    fn grants_follow_the_rules() {
        let mut s = AuthState {
            enabled: true,
            client_id_is_username: true,
            publish: vec![Template::parse("#").expect("p")],
            ..AuthState::default()
        };
        s.devices.insert(
            "wt-1".into(),
            Device {
                password_hash: Some(
                    "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
                ),
                publish: None,
                subscribe: None,
            },
        );
        assert_eq!(
            s.grant(&Identity::Anonymous, "x"),
            Err(Denied::NotAuthorized)
        );
        assert_eq!(
            s.grant(&Identity::Password("nobody".into()), "nobody"),
            Err(Denied::BadCredentials)
        );
        assert_eq!(
            s.grant(&Identity::Password("wt-1".into()), "wt-2"),
            Err(Denied::BadClientId)
        );
        assert!(s.grant(&Identity::Password("wt-1".into()), "wt-1").is_ok());
        assert!(s
            .grant(&Identity::Certificate("cert-dev".into()), "cert-dev")
            .is_ok());
        s.allow_anonymous = true;
        assert!(s.grant(&Identity::Anonymous, "x").is_ok());
        assert_eq!(
            AuthState::open().grant(&Identity::Open, "x"),
            Ok(Grant::Open)
        );
    }
}
