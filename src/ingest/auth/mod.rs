//! Device authentication and topic rights on the device-facing MQTT listener: this file
//! owns the decision whether a CONNECT is let in ([`AuthState::grant`]) and the state in
//! force with the connections admitted under it ([`AuthHub`], replaced by a reload).
//!
//! The listener only asks; it never looks at passwords or patterns itself. The parts:
//!
//! * [`acl`]: the publish and subscribe patterns and the per-connection [`Rights`] that
//!   every PUBLISH and SUBSCRIBE of an authenticated device is checked against;
//! * [`credentials`]: the credentials file (`mqtt.auth.credentials_file`) and the edits
//!   of `tidegate passwd`;
//! * [`password`]: argon2id hashing and [`verify_password`].
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
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;

mod acl;
mod credentials;
mod password;

pub use acl::{validate, LevelError, Rights, Template, TemplateError};
pub use credentials::{parse_credentials, set_device, AuthError, Device, Problem, SetOutcome};
pub use password::{
    dummy_hash, hash_password, verify_password, verify_password_blocking, PasswordError,
};

/// Why a CONNECT is refused (the listener maps these onto CONNACK codes).
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
                .map(|t| t.as_str().to_owned())
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
        Some(Rights::expand(
            publish,
            subscribe,
            client_id,
            identity.username(),
        ))
    }

    /// Whether the device's name must be its client id, so the listener can give a device
    /// that sent none its own name as id.
    pub fn client_id_is_username(&self) -> bool {
        self.enabled && self.client_id_is_username
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
