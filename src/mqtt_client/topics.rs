//! Topics on the bridge: how a reading's topic becomes an MQTT upstream's topic
//! ([`TopicMap`]), and whether a subscription's filter could receive what an upstream
//! publishes (the loop rule both the sink's and the subscriber's checks rely on).

use crate::config::UpstreamConfig;

/// How a record's topic becomes the upstream topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicMap {
    /// `prefix` + the record's topic.
    Prefix(String),
    /// The template with `{topic}` and `{gateway}` replaced.
    Template(String),
}

impl TopicMap {
    /// The map an upstream's config asks for.
    pub fn from_config(config: &UpstreamConfig) -> TopicMap {
        match &config.topic_template {
            Some(t) => TopicMap::Template(t.clone()),
            None => TopicMap::Prefix(config.topic_prefix.clone()),
        }
    }

    /// The upstream topic of a record with `topic`.
    pub fn apply(&self, topic: &str, gateway: &str) -> String {
        match self {
            TopicMap::Prefix(p) => format!("{p}{topic}"),
            TopicMap::Template(t) => t.replace("{gateway}", gateway).replace("{topic}", topic),
        }
    }

    /// The fixed start of every topic this map produces (for the loop check of the
    /// config): the prefix, or the template up to its first `{topic}`.
    pub fn fixed_prefix(&self, gateway: &str) -> String {
        match self {
            TopicMap::Prefix(p) => p.clone(),
            TopicMap::Template(t) => {
                let head = t.split("{topic}").next().unwrap_or("");
                head.replace("{gateway}", gateway)
            }
        }
    }
}

/// Whether a subscription to `filter` could receive a message published to some topic
/// that starts with `prefix` (and continues with anything): the loop check of the bridge.
/// An empty prefix can be any topic, so every filter (but `$…` ones) matches.
pub fn filter_matches_prefix(filter: &str, prefix: &str) -> bool {
    // Wildcards at the first level never match `$` topics; a `$` prefix is refused anyway.
    let levels: Vec<&str> = prefix.split('/').collect();
    let (complete, partial) = levels.split_at(levels.len() - 1);
    let partial = partial[0];
    let mut f = filter.split('/');
    for level in complete {
        match f.next() {
            None => return false,
            Some("#") => return true,
            Some("+") => {}
            Some(l) if l == *level => {}
            Some(_) => return false,
        }
    }
    // The last level of the prefix can be completed (and more levels added) at will.
    match f.next() {
        None => false,
        Some("#" | "+") => true,
        Some(l) => l.starts_with(partial),
    }
}

/// Why a topic filter is unusable, if it is (MQTT 4.7 rules).
pub fn filter_problem(f: &str) -> Option<&'static str> {
    if f.is_empty() {
        return Some("is empty");
    }
    if f.contains('\0') {
        return Some("contains NUL");
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return Some("has '#' other than as the whole last level");
        }
        if l.contains('+') && *l != "+" {
            return Some("has '+' that is not a whole level");
        }
    }
    if f.starts_with('$') {
        return Some("starts with '$': broker topics are not readings");
    }
    None
}

/// Whether a topic (no wildcards) matches `filter` (MQTT 4.7: `+` one level, `#` the
/// rest, wildcards at the first level never matching a `$` topic).
pub fn filter_matches_topic(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(l), Some(p)) if l == p => {}
            _ => return false,
        }
    }
}

/// The fixed start of every topic an MQTT upstream publishes.
pub fn published_prefix(u: &UpstreamConfig, gateway_id: &str) -> String {
    TopicMap::from_config(u).fixed_prefix(gateway_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_matches_topics_level_by_level() {
        for (filter, topic, matches) in [
            ("turbines/+/alarm", "turbines/t1/alarm", true),
            ("turbines/+/alarm", "turbines/t1/telemetry", false),
            ("turbines/+/alarm", "turbines/t1/alarm/x", false),
            ("turbines/#", "turbines", true),
            ("turbines/#", "turbines/t1/alarm", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$a/x", false),
            ("a/b", "a/b", true),
            ("a/b", "a", false),
            ("a/+", "a/", true),
        ] {
            assert_eq!(
                filter_matches_topic(filter, topic),
                matches,
                "{filter} vs {topic}"
            );
        }
    }

    #[test]
    fn a_filter_matches_a_prefix_when_some_topic_under_it_could_match() {
        for (filter, prefix) in [
            ("#", "site-7/"),
            ("site-7/#", "site-7/"),
            ("site-7/+/telemetry", "site-7/"),
            ("+/turbines/#", "site-7/"),
            ("site-7/turbines/x", "site-7/"),
            ("site-7/tur", "site-7/"),
            ("site", "site"),
            ("site-7", "site"),
            ("sensors/#", ""),
            ("a/b", ""),
            ("up/gw-1/#", "up/gw-1/"),
        ] {
            assert!(
                filter_matches_prefix(filter, prefix),
                "{filter} should match under {prefix:?}"
            );
        }
        for (filter, prefix) in [
            ("sensors/#", "site-7/"),
            ("site-7", "site-7/"),
            ("site-8/#", "site-7/"),
            ("x/+/y", "a/b/"),
            ("up/gw-2/#", "up/gw-1/"),
        ] {
            assert!(
                !filter_matches_prefix(filter, prefix),
                "{filter} should not match under {prefix:?}"
            );
        }
    }

    #[test]
    fn templates_map_topics_and_have_a_fixed_prefix() {
        let t = TopicMap::Template("up/{gateway}/{topic}/raw".into());
        assert_eq!(t.apply("a/b", "gw"), "up/gw/a/b/raw");
        assert_eq!(t.fixed_prefix("gw"), "up/gw/");
        let p = TopicMap::Prefix("site-7/".into());
        assert_eq!(p.apply("a/b", "gw"), "site-7/a/b");
        assert_eq!(p.fixed_prefix("gw"), "site-7/");
    }
}
