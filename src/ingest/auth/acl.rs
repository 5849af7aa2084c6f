//! Topic rights: owns the publish and subscribe patterns of `[mqtt.auth]` and the
//! credentials file ([`Template`], with its `%c` and `%u` placeholders), their expansion
//! for one connection, and the matching of every PUBLISH topic and SUBSCRIBE filter
//! against them ([`Rights`]).
//!
//! Invariant kept here: **a placeholder never widens a right.** `%c` (client id) and `%u`
//! (username) stand for one whole topic level and are substituted as *literal* levels when
//! the device connects: a client id of `+`, `#` or `a/b` matches only a topic level spelt
//! exactly like that, which a publish topic cannot contain (wildcards are refused) and a
//! single level cannot hold (`/` separates levels). A placeholder with no value (`%u` for
//! a device that gave no username) matches nothing.

use crate::config::MqttAuthConfig;

/// Why a pattern is refused (config validation and the credentials file show it with the
/// key or entry it came from).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    #[error("empty pattern")]
    Empty,
    #[error("{pattern:?}: {why}")]
    Level { pattern: String, why: LevelError },
}

/// What is wrong with one level of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LevelError {
    #[error("`#` must be the last level")]
    HashNotLast,
    #[error("`+` and `#` must be a whole level")]
    Wildcard,
    #[error("`%c` and `%u` must be a whole level (and `%` is allowed nowhere else)")]
    Placeholder,
    #[error("NUL in pattern")]
    Nul,
}

/// The problems in `[mqtt.auth]`'s publish and subscribe patterns, each naming its key,
/// found by parsing them as the listener does; called by the whole-config check.
pub fn validate(auth: &MqttAuthConfig, p: &mut Vec<String>) {
    for (key, list) in [("publish", &auth.publish), ("subscribe", &auth.subscribe)] {
        for (i, pattern) in list.iter().enumerate() {
            if let Err(e) = Template::parse(pattern) {
                p.push(format!("mqtt.auth.{key}[{i}]: {e}"));
            }
        }
    }
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
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        if source.is_empty() {
            return Err(TemplateError::Empty);
        }
        let refused = |why| TemplateError::Level {
            pattern: source.to_owned(),
            why,
        };
        let parts: Vec<&str> = source.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => TLevel::Plus,
                "#" if i + 1 == parts.len() => TLevel::Hash,
                "#" => return Err(refused(LevelError::HashNotLast)),
                "%c" => TLevel::ClientId,
                "%u" => TLevel::Username,
                p if p.contains(['+', '#']) => return Err(refused(LevelError::Wildcard)),
                p if p.contains('%') => return Err(refused(LevelError::Placeholder)),
                p if p.contains('\0') => return Err(refused(LevelError::Nul)),
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
    /// Whether a publish topic (no wildcards; checked by the listener) matches.
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
    /// The rights of one connection: each pattern of a grant (as written; already
    /// validated, so one that no longer parses is skipped) with its placeholders filled in.
    pub(super) fn expand(
        publish: &[String],
        subscribe: &[String],
        client_id: &str,
        username: Option<&str>,
    ) -> Rights {
        let expand = |l: &[String]| {
            l.iter()
                .filter_map(|p| Template::parse(p).ok())
                .map(|t| t.expand(client_id, username))
                .collect()
        };
        Rights {
            publish: expand(publish),
            subscribe: expand(subscribe),
        }
    }

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
        for (topic, allowed) in [
            ("turbines/wt-1/telemetry", true),
            ("turbines/wt-1", true),
            ("users/wt-1/status", true),
            ("turbines/wt-2/telemetry", false),
            ("turbines", false),
            ("users/wt-1/status/x", false),
        ] {
            assert_eq!(r.may_publish(topic), allowed, "{topic}");
        }
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
        let inside = [
            "turbines/wt-1/#",
            "turbines/wt-1/+",
            "turbines/wt-1/telemetry",
            "fleet/+/status",
            "fleet/wt-9/status",
        ];
        let reaching_out = [
            "fleet/#",
            "fleet/+/status/#",
            "turbines/+/telemetry",
            "#",
            "+/wt-1/#",
        ];
        for filter in inside {
            assert!(r.may_subscribe(filter), "{filter}");
        }
        for filter in reaching_out {
            assert!(!r.may_subscribe(filter), "{filter}");
        }
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
    fn refused_patterns_say_which_and_why_in_the_words_operators_know() {
        let e = |p: &str| Template::parse(p).expect_err(p).to_string();
        assert_eq!(e(""), "empty pattern");
        assert_eq!(e("a/#/b"), "\"a/#/b\": `#` must be the last level");
        assert_eq!(e("a/b+"), "\"a/b+\": `+` and `#` must be a whole level");
        assert_eq!(
            e("a/dev-%c"),
            "\"a/dev-%c\": `%c` and `%u` must be a whole level (and `%` is allowed nowhere else)"
        );
        assert_eq!(e("a/b\0"), "\"a/b\\0\": NUL in pattern");
    }
}
