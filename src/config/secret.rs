//! Secrets named by the configuration: where they may come from, and who may read them.
//!
//! tidegate never takes a password inline in `tidegate.toml`: a secret is either a file
//! (`password_file`, `client_key`, `mqtt.auth.credentials_file`, `mqtt.tls_key`, …) or an
//! environment variable (`password_env`, set by systemd's `LoadCredential=` /
//! `Environment=` or an `EnvironmentFile=` readable by root only). This module owns the
//! one check the loader makes on those files: a file holding a secret that every user on
//! the gateway can read is worth a warning (not an error: the daemon still starts, so a
//! permission slip never takes a site offline), naming the key, the path and the fix.

use std::path::{Path, PathBuf};

use super::{Config, MqttClientConfig};

/// Where a password comes from: `password_file` or `password_env` of a section with client
/// keys. Never inline in the config file: a config is printed by `check-config` and often
/// readable by more people than the credentials should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// A file; a trailing newline is not part of the password.
    File(PathBuf),
    /// An environment variable of the daemon.
    Env(String),
}

/// A password that could not be read (at connect time, so a rotated secret is picked up).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    #[error("cannot read password_file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("environment variable {0} (password_env) is not set, empty or not UTF-8")]
    Env(String),
}

impl PasswordSource {
    /// The password, read now.
    pub fn read(&self) -> Result<String, PasswordError> {
        match self {
            PasswordSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| PasswordError::File {
                    path: path.clone(),
                    source,
                })?;
                // `echo secret > file` leaves a newline that is not part of the password.
                Ok(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            PasswordSource::Env(var) => std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| PasswordError::Env(var.clone())),
        }
    }
}

impl MqttClientConfig {
    /// Where the password comes from, if one is configured (validation refuses both
    /// `password_file` and `password_env`; the file would win).
    pub fn password_source(&self) -> Option<PasswordSource> {
        match (&self.password_file, &self.password_env) {
            (Some(f), _) => Some(PasswordSource::File(f.clone())),
            (None, Some(v)) => Some(PasswordSource::Env(v.clone())),
            (None, None) => None,
        }
    }
}

/// The warning for one secret file, when its mode lets users other than its owner and
/// group read it (`o+r`). `None` when it is private enough, or cannot be inspected (a
/// missing file is reported by the component that opens it, with its own error).
pub fn exposure_warning(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{key}: {} holds a secret but every user on this machine can read it (mode {:03o}); run `chmod 600 {}` (or 640 with the service's group)",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

impl Config {
    /// Every secret file the configuration names, with its key, for [`exposure_warning`].
    pub fn secret_files(&self) -> Vec<(String, &Path)> {
        let mut files = Vec::new();
        // Both sections that hold MQTT client keys name their secrets the same way.
        let clients = (self.upstream.iter().map(|u| &u.client).enumerate())
            .map(|(i, c)| (format!("upstream[{i}]"), c))
            .chain(
                (self.mqtt_subscribe.iter().map(|s| &s.client).enumerate())
                    .map(|(i, c)| (format!("mqtt_subscribe[{i}]"), c)),
            );
        for (section, c) in clients {
            if let Some(p) = &c.password_file {
                files.push((format!("{section}.password_file"), p.as_path()));
            }
            if let Some(p) = &c.client_key {
                files.push((format!("{section}.client_key"), p.as_path()));
            }
        }
        if let Some(p) = &self.mqtt.auth.credentials_file {
            files.push(("mqtt.auth.credentials_file".to_owned(), p.as_path()));
        }
        if let Some(p) = &self.mqtt.tls_key {
            files.push(("mqtt.tls_key".to_owned(), p.as_path()));
        }
        files
    }

    /// A warning for every secret file that others can read; logged at start and reload,
    /// printed by `tidegate check-config`.
    pub fn secret_warnings(&self) -> Vec<String> {
        self.secret_files()
            .into_iter()
            .filter_map(|(key, path)| exposure_warning(&key, path))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn with_mode(dir: &Path, name: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "s3cret\n").expect("write secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_world_readable_secret_is_named_with_its_key_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = with_mode(dir.path(), "open", 0o644);
        let private = with_mode(dir.path(), "private", 0o600);
        let group = with_mode(dir.path(), "group", 0o640);
        let text = format!(
            "[[upstream]]\nname = \"cloud\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"gw\"\npassword_file = \"{}\"\n\n[[mqtt_subscribe]]\nurl = \"mqtt://127.0.0.1:1884\"\ntopics = [\"sensors/#\"]\nusername = \"gw\"\npassword_file = \"{}\"\n\n[[mqtt_subscribe]]\nurl = \"mqtt://127.0.0.1:1885\"\ntopics = [\"plant/#\"]\nusername = \"gw\"\npassword_file = \"{}\"\n",
            open.display(),
            private.display(),
            group.display()
        );
        let config = Config::from_toml_with(&text, Path::new("t.toml"), |_| Vec::new())
            .expect("valid config");
        let warnings = config.secret_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("upstream[0].password_file: "),
            "{}",
            warnings[0]
        );
        assert!(warnings[0].contains("mode 644"), "{}", warnings[0]);
        assert!(warnings[0].contains("chmod 600"), "{}", warnings[0]);
    }

    #[test]
    fn a_missing_file_is_left_to_the_component_that_opens_it() {
        assert_eq!(
            exposure_warning("k", Path::new("/nonexistent/tidegate/secret")),
            None
        );
    }
}
