//! Sizes and durations as the config file writes them (`"512MiB"`, `"250ms"`), read with
//! errors that say what was found and show a valid value: an operator who wrote
//! `max_size = "10 apples"` reads `invalid value: string "10 apples", expected a size like
//! "512MiB"…`, not the parser's own wording.
//!
//! Used through `#[serde(deserialize_with = "…")]`; writing them back stays with
//! `bytesize` and `humantime_serde`, whose forms these functions read.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::de::{self, Deserializer, Unexpected, Visitor};

/// What a size must look like, for error messages.
const SIZE: &str = r#"a size like "512MiB", "64KiB" or "1GB" (a bare number is bytes)"#;
/// What a duration must look like, for error messages.
const DURATION: &str = r#"a duration like "10s", "250ms" or "1h 30m""#;
/// What a listening address must look like, for error messages.
const ADDRESS: &str = r#"an address and port like "127.0.0.1:1883", "0.0.0.0:8883" or "[::1]:1883" (port 0 to 65535)"#;

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(SIZE)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        v.trim()
            .parse::<ByteSize>()
            .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(DURATION)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        humantime::parse_duration(v.trim()).map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
    }
}

struct AddressVisitor;

impl Visitor<'_> for AddressVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(ADDRESS)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        v.trim()
            .parse()
            .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
    }
}

/// A socket address to listen on: an IP address and a port (no host name: a listener
/// binds an address, and a name that resolves differently later would move it).
pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_any(AddressVisitor)
}

/// [`socket_addr`] for an optional key (absent: `None`, with `#[serde(default)]`).
pub(super) fn option_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

/// A size: a string with a unit, or a number of bytes.
pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    d.deserialize_any(SizeVisitor)
}

/// [`size`] for an optional key (absent: `None`, with `#[serde(default)]`).
pub(super) fn option_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    size(d).map(Some)
}

/// A duration: a string with its units (a bare number is refused: seconds or
/// milliseconds would be a guess).
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// [`duration`] for an optional key (absent: `None`, with `#[serde(default)]`).
pub(super) fn option_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "size")]
        s: ByteSize,
        #[serde(default, deserialize_with = "option_duration")]
        d: Option<Duration>,
    }

    fn parse(text: &str) -> Result<T, String> {
        toml::from_str::<T>(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn sizes_and_durations_in_their_written_forms() {
        let t = parse("s = \"512MiB\"\nd = \"1h 30m\"").expect("valid");
        assert_eq!(t.s, ByteSize::mib(512));
        assert_eq!(t.d, Some(Duration::from_secs(5400)));
        assert_eq!(parse("s = 4096").expect("bytes").s, ByteSize(4096));
        assert_eq!(parse("").expect("defaults").d, None);
    }

    #[test]
    fn a_bad_value_is_named_with_an_example_of_a_good_one() {
        let e = parse("s = \"10 apples\"").expect_err("refused");
        assert_eq!(
            e,
            r#"invalid value: string "10 apples", expected a size like "512MiB", "64KiB" or "1GB" (a bare number is bytes)"#
        );
        let e = parse("s = -1").expect_err("refused");
        assert!(e.contains("integer `-1`") && e.contains("512MiB"), "{e}");
        let e = parse("d = \"soon\"").expect_err("refused");
        assert_eq!(
            e,
            r#"invalid value: string "soon", expected a duration like "10s", "250ms" or "1h 30m""#
        );
        let e = parse("d = 5").expect_err("refused");
        assert!(e.contains("integer `5`") && e.contains("\"10s\""), "{e}");
    }

    #[test]
    fn an_address_out_of_range_is_named_with_an_example() {
        #[derive(Debug, Deserialize)]
        struct A {
            #[serde(deserialize_with = "socket_addr")]
            a: SocketAddr,
        }
        let ok: A = toml::from_str("a = \"[::1]:1883\"").expect("valid");
        assert_eq!(ok.a, "[::1]:1883".parse().expect("an address"));
        let e = toml::from_str::<A>("a = \"127.0.0.1:99999\"").expect_err("refused");
        assert!(
            e.message().starts_with(
                r#"invalid value: string "127.0.0.1:99999", expected an address and port like "127.0.0.1:1883""#
            ),
            "{e}"
        );
    }
}
