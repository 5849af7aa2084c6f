//! `firmware-sim link`: a [`Link`] run from the command line until stopped, with a line per
//! reporting interval and a summary at the end ([`LinkSummary`], also what `load` prints
//! for the link it runs).

use std::fmt;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Link, LinkError, LinkOptions};

/// The window the summary's largest-window figure is over: the one the constrained-uplink
/// tests bound (bandwidth × 5 s + burst).
pub const SUMMARY_WINDOW: Duration = Duration::from_secs(5);

/// What a link forwarded over its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSummary {
    /// Bytes client → target.
    pub bytes_up: u64,
    /// Bytes target → client.
    pub bytes_down: u64,
    /// The largest number of upstream bytes in any [`SUMMARY_WINDOW`].
    pub max_up_in_window: u64,
    /// The largest number of downstream bytes in any [`SUMMARY_WINDOW`].
    pub max_down_in_window: u64,
    /// Connections accepted (refused ones included).
    pub accepted: u64,
    /// Connections closed as soon as accepted because the link was down.
    pub refused: u64,
}

impl Link {
    /// The link's figures so far.
    pub fn summary(&self) -> LinkSummary {
        LinkSummary {
            bytes_up: self.bytes_up(),
            bytes_down: self.bytes_down(),
            max_up_in_window: self.max_bytes_in_window(SUMMARY_WINDOW),
            max_down_in_window: self.max_bytes_down_in_window(SUMMARY_WINDOW),
            accepted: self.accepted(),
            refused: self.refused(),
        }
    }
}

/// Bytes per second as KiB/s.
fn kib_per_s(bytes: u64, over: Duration) -> f64 {
    bytes as f64 / 1024.0 / over.as_secs_f64().max(1e-9)
}

impl fmt::Display for LinkSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = SUMMARY_WINDOW;
        write!(
            f,
            "link             up {} B  down {} B  largest {} s window up {} B ({:.1} KiB/s)  down {} B ({:.1} KiB/s)  connections {} ({} refused while down)",
            self.bytes_up,
            self.bytes_down,
            w.as_secs(),
            self.max_up_in_window,
            kib_per_s(self.max_up_in_window, w),
            self.max_down_in_window,
            kib_per_s(self.max_down_in_window, w),
            self.accepted,
            self.refused
        )
    }
}

/// Runs a link until `stop`, printing `link: LISTEN -> TARGET` first, then every `every` the
/// bytes up and down in that interval and their rates, and the summary at the end.
pub async fn run_cli(
    opts: LinkOptions,
    every: Duration,
    stop: CancellationToken,
) -> Result<LinkSummary, LinkError> {
    use std::io::Write as _;
    let link = Link::start(opts).await?;
    println!("link: {} -> {}", link.addr(), link.target());
    let _ = std::io::stdout().flush();
    let every = every.max(super::RESOLUTION);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let (mut up, mut down) = (0, 0);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let span = now.saturating_duration_since(last);
        let (u, d) = (link.bytes_up(), link.bytes_down());
        println!(
            "[{:>7.1}s] {}  up {:>10} B {:>8.1} KiB/s  down {:>10} B {:>8.1} KiB/s  open {}",
            now.saturating_duration_since(link.started()).as_secs_f64(),
            if link.is_up() {
                "link up  "
            } else {
                "link DOWN"
            },
            u - up,
            kib_per_s(u - up, span),
            d - down,
            kib_per_s(d - down, span),
            link.open_connections()
        );
        let _ = std::io::stdout().flush();
        (up, down, last) = (u, d, now);
    }
    let summary = link.summary();
    println!("{summary}");
    Ok(summary)
}
