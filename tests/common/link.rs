//! A shaping [`Link`] (firmware-sim's constrained uplink) in front of a real broker, for the
//! constrained-uplink tests: Tansu advertising the link's port, so every Kafka connection
//! goes through it, or Mosquitto, which the gateway's MQTT upstream reaches through it.
//!
//! The test switches the link with [`Link::set_up`] and asserts on its own log
//! ([`Link::max_bytes_in_window_since`], [`Link::bytes_up_since`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

pub use firmware_sim::link::{Link, LinkError, LinkOptions, Outage, RESOLUTION};
use firmware_sim::testbed::Process;

use super::brokers::{free_port, retry_on_port_clash, tansu_behind};
use super::Mosquitto;

/// The window the constrained-uplink tests bound: bytes ≤ bandwidth × 5 s + burst.
pub const WINDOW: Duration = Duration::from_secs(5);

/// How many fresh port pairs a start tries when the link's port is taken before it binds.
const ATTEMPTS: usize = 5;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Tansu (log in `dir`) behind a link shaped by `shape` (which gets the link's options with
/// listen and target set), Tansu advertising the link's port: give the gateway
/// `brokers = ["127.0.0.1:{link.port()}"]`. Readers of the topic go through the link too.
pub async fn tansu_behind_link(dir: &Path, shape: impl Fn(&mut LinkOptions)) -> (Process, Link) {
    for attempt in 1..=ATTEMPTS {
        let (tansu, tansu_port, link_port) = retry_on_port_clash(|| {
            let (tansu_port, link_port) = (free_port(), free_port());
            tansu_behind(tansu_port, link_port, dir).map(|t| (t, tansu_port, link_port))
        });
        let mut opts = LinkOptions::new(loopback(tansu_port));
        opts.listen = loopback(link_port);
        shape(&mut opts);
        match Link::start(opts).await {
            Ok(link) => return (tansu, link),
            // Another process took the advertised port: both start again on fresh ones.
            Err(e @ LinkError::Bind { .. }) if attempt < ATTEMPTS => {
                eprintln!("link port taken (attempt {attempt}), trying fresh ports: {e}");
            }
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!("the loop returns or panics")
}

/// Mosquitto behind a link on a free port shaped by `shape`: give the gateway's MQTT
/// upstream the link's port; subscribers of the test connect to Mosquitto directly.
pub async fn mosquitto_behind_link(shape: impl Fn(&mut LinkOptions)) -> (Mosquitto, Link) {
    let mosquitto = Mosquitto::start();
    let mut opts = LinkOptions::new(loopback(mosquitto.port()));
    shape(&mut opts);
    let link = Link::start(opts).await.unwrap_or_else(|e| panic!("{e}"));
    (mosquitto, link)
}

/// The largest number of upstream bytes the link forwarded in any [`WINDOW`] from `since`
/// on (e.g. the moment it came up).
pub fn max_window_up_since(link: &Link, since: Instant) -> u64 {
    link.max_bytes_in_window_since(WINDOW, since)
}

/// The largest number of upstream bytes the link forwarded in any [`WINDOW`] between `from`
/// and `to` (e.g. from link-up until a reload raised the gateway's limit), sliding one
/// [`RESOLUTION`] bucket at a time; the buckets holding `from` and `to` count whole.
pub fn max_window_up_between(link: &Link, from: Instant, to: Instant) -> u64 {
    let bucket = |t: Instant| {
        let offset = t.saturating_duration_since(link.started());
        usize::try_from(offset.as_nanos() / RESOLUTION.as_nanos()).unwrap_or(usize::MAX)
    };
    let log = link.up_meter().buckets();
    let end = bucket(to).saturating_add(1).min(log.len());
    let span = log.get(bucket(from).min(end)..end).unwrap_or_default();
    let width = usize::try_from(WINDOW.as_nanos().div_ceil(RESOLUTION.as_nanos())).unwrap_or(1);
    span.windows(width.min(span.len()).max(1))
        .map(|w| w.iter().sum())
        .max()
        .unwrap_or(0)
}
