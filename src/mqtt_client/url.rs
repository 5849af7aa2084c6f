//! Broker addresses: parses `mqtt://host[:port]` and `mqtts://host[:port]` as configured,
//! and says precisely what is wrong with one that is not.

/// A broker address as configured: `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// `mqtts://`: TLS.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port; 1883 (`mqtt`) or 8883 (`mqtts`) when not given.
    pub port: u16,
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]` / `mqtts://host[:port]` (a trailing `/` is allowed,
    /// IPv6 hosts in brackets). The error says what is wrong, without the key.
    pub fn parse(url: &str) -> Result<BrokerUrl, BrokerUrlError> {
        let bad = |problem| BrokerUrlError {
            url: url.to_owned(),
            problem,
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(bad(UrlProblem::Scheme));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(UrlProblem::Extra));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad(UrlProblem::UnclosedBracket))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad(UrlProblem::AfterBracket))?,
                ),
            };
            (host.to_owned(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(bad(UrlProblem::NoHost));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(UrlProblem::Port(p.to_owned())))?,
        };
        Ok(BrokerUrl {
            tls,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether `other` is the same broker (scheme aside: one port speaks one of them).
    /// `localhost` and `127.0.0.1` count as different: see the loop rule in the README.
    pub fn same_broker(&self, other: &BrokerUrl) -> bool {
        self.host == other.host && self.port == other.port
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A broker url that is not `mqtt://host[:port]` or `mqtts://host[:port]`; the text says
/// what is wrong, without the key (the caller adds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct BrokerUrlError {
    /// The url as configured.
    pub url: String,
    /// What is wrong with it.
    pub problem: UrlProblem,
}

/// What is wrong with a broker url.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlProblem {
    /// Neither `mqtt://` nor `mqtts://`.
    Scheme,
    /// A path, query or user part.
    Extra,
    /// `[` without `]` around an IPv6 host.
    UnclosedBracket,
    /// Something other than `:port` after `]`.
    AfterBracket,
    /// No host.
    NoHost,
    /// A port that is not 1 ..= 65535.
    Port(String),
}

impl BrokerUrlError {
    fn describe(&self) -> String {
        let url = &self.url;
        match &self.problem {
            UrlProblem::Scheme => {
                format!("{url:?} is not \"mqtt://host:port\" or \"mqtts://host:port\"")
            }
            UrlProblem::Extra => format!(
                "{url:?} has a path, query or user part; give only \"mqtt://host:port\" (credentials go in username / password_file)"
            ),
            UrlProblem::UnclosedBracket => format!("{url:?}: unclosed '[' in the host"),
            UrlProblem::AfterBracket => format!("{url:?}: expected ':port' after ']'"),
            UrlProblem::NoHost => format!("{url:?} has no host"),
            UrlProblem::Port(p) => format!("{url:?}: port {p:?} is not 1 ..= 65535"),
        }
    }
}
