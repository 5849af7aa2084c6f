//! A bandwidth-shaping TCP proxy on loopback: the metered, slow and sometimes absent uplink
//! between a gateway and its upstream (Kafka, an MQTT broker), for the constrained-uplink
//! tests, the benchmark and `firmware-sim link`.
//!
//! [`Link::start`] listens on a loopback address and connects every accepted client to the
//! target. Each direction has a [`TokenBucket`](bucket) shared by every connection of the
//! link (one pipe, one rate) and passes bytes chunk by chunk: read at most [`CHUNK`] bytes,
//! wait for their tokens, write them, log them in that direction's [`Meter`]. "Up" is
//! client → target, what a gateway sends upstream; "down" is the answers.
//!
//! [`Link::set_up`]`(false)` is an outage: every open connection is cut (both sockets
//! closed) and new ones are closed as soon as accepted, until `set_up(true)`. An outage
//! schedule ([`Outage`]) drives the same switch from a task.
//!
//! The link keeps what it forwarded in its meters, so a test asserts on the link's own log
//! ("at most this many bytes in any 5 s window"), not on how long the test took.

mod bucket;
mod meter;
mod report;
#[cfg(test)]
mod tests;

pub use meter::{Meter, RESOLUTION};
pub use report::{run_cli, LinkSummary};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use bucket::TokenBucket;

/// Largest chunk a shaped direction passes at once: small enough that the bucket's
/// bookkeeping follows the traffic closely at tens of KiB/s.
pub const CHUNK: usize = 4 * 1024;

/// Largest chunk an unshaped direction passes at once.
const UNSHAPED_CHUNK: usize = 64 * 1024;

/// One scheduled outage: the link goes down `after` its start and comes back `lasting`
/// later. Written `AFTER+LASTING` on the command line, e.g. `30s+60s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// From the link's start to the outage.
    pub after: Duration,
    /// How long the link stays down.
    pub lasting: Duration,
}

impl FromStr for Outage {
    type Err = LinkError;

    fn from_str(s: &str) -> Result<Outage, LinkError> {
        let bad = |why: String| LinkError::BadOutage {
            outage: s.to_owned(),
            why,
        };
        let (after, lasting) = s
            .split_once('+')
            .ok_or_else(|| bad("expected AFTER+LASTING, e.g. 30s+60s".to_owned()))?;
        let parse = |d: &str| humantime::parse_duration(d.trim()).map_err(|e| bad(e.to_string()));
        Ok(Outage {
            after: parse(after)?,
            lasting: parse(lasting)?,
        })
    }
}

/// How a [`Link`] is set up. [`LinkOptions::new`] gives an unshaped link on a free
/// loopback port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOptions {
    /// Where the link listens: a loopback address; port 0 picks a free port
    /// ([`Link::addr`] says which).
    pub listen: SocketAddr,
    /// Where every connection goes: a loopback address.
    pub target: SocketAddr,
    /// Bytes per second client → target (upstream); `None` passes them unshaped.
    pub rate: Option<u64>,
    /// Size of the upstream bucket in bytes: what may pass at once after a quiet spell
    /// (default: one second of `rate`).
    pub burst: Option<u64>,
    /// Bytes per second target → client; `None` passes them unshaped. Its bucket holds one
    /// second's worth.
    pub rate_down: Option<u64>,
    /// When the link goes down by itself, relative to its start.
    pub outages: Vec<Outage>,
}

impl LinkOptions {
    /// An unshaped link to `target` on a free port of 127.0.0.1, with no outage.
    pub fn new(target: SocketAddr) -> LinkOptions {
        LinkOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            target,
            rate: None,
            burst: None,
            rate_down: None,
            outages: Vec::new(),
        }
    }
}

/// Errors of setting up a [`Link`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The link only stands between processes of this machine.
    #[error("the link's {what} address {addr} is not a loopback address (127.0.0.0/8 or ::1)")]
    NotLoopback {
        /// `listen` or `target`.
        what: &'static str,
        /// The address given.
        addr: SocketAddr,
    },
    /// A rate or burst of zero would pass nothing at all.
    #[error("the link's {what} must be at least 1 byte")]
    Zero {
        /// Which figure.
        what: &'static str,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An outage written on the command line does not parse.
    #[error("bad outage {outage:?}: {why}")]
    BadOutage {
        /// What was given.
        outage: String,
        /// What is wrong with it.
        why: String,
    },
}

/// One direction of the link: its bucket (if shaped), chunk size and log.
#[derive(Debug)]
struct Direction {
    bucket: Option<TokenBucket>,
    chunk: usize,
    meter: Meter,
}

impl Direction {
    fn new(rate: Option<u64>, burst: Option<u64>, started: Instant) -> Direction {
        let bucket = rate.map(|r| TokenBucket::new(r, burst.unwrap_or(r)));
        // A chunk never exceeds the bucket, so one chunk alone never waits longer than the
        // bucket takes to fill.
        let chunk = match (rate, burst) {
            (None, _) => UNSHAPED_CHUNK,
            (Some(r), b) => CHUNK.min(usize::try_from(b.unwrap_or(r)).unwrap_or(CHUNK)),
        };
        Direction {
            bucket,
            chunk,
            meter: Meter::starting_at(started),
        }
    }
}

/// What the link's tasks share with the [`Link`] handle.
#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    up: Direction,
    down: Direction,
    /// Whether the link is up; connections watch it to be cut.
    state: watch::Sender<bool>,
    /// Every switch of `state`, with its time, so a test can tell when a scheduled outage
    /// began and ended.
    switches: std::sync::Mutex<Vec<(Instant, bool)>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
}

impl Shared {
    fn switch(&self, up: bool) {
        // Logged under the lock so the log's order is the order of the switches.
        let mut log = self.lock_switches();
        self.state.send_replace(up);
        log.push((Instant::now(), up));
    }

    fn lock_switches(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, bool)>> {
        // Every update is one push, so a poisoned lock is used as is.
        self.switches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running shaping proxy; stopped (every connection closed) when dropped.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    started: Instant,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Link {
    /// Checks `opts`, binds the listening socket and starts passing connections on; the
    /// outage schedule starts now.
    pub async fn start(opts: LinkOptions) -> Result<Link, LinkError> {
        for (what, addr) in [("listen", opts.listen), ("target", opts.target)] {
            if !addr.ip().is_loopback() {
                return Err(LinkError::NotLoopback { what, addr });
            }
        }
        for (what, value) in [
            ("rate", opts.rate),
            ("burst", opts.burst),
            ("rate_down", opts.rate_down),
        ] {
            if value == Some(0) {
                return Err(LinkError::Zero { what });
            }
        }
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|source| LinkError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| LinkError::Bind {
            addr: opts.listen,
            source,
        })?;
        let started = Instant::now();
        let shared = Arc::new(Shared {
            target: opts.target,
            up: Direction::new(opts.rate, opts.burst, started),
            down: Direction::new(opts.rate_down, None, started),
            state: watch::channel(true).0,
            switches: std::sync::Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            open: AtomicU64::new(0),
        });
        let mut tasks = vec![tokio::spawn(accept_loop(listener, shared.clone()))];
        if !opts.outages.is_empty() {
            tasks.push(tokio::spawn(run_schedule(
                opts.outages,
                tokio::time::Instant::now(),
                shared.clone(),
            )));
        }
        Ok(Link {
            addr,
            started,
            shared,
            tasks,
        })
    }

    /// The address the link listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the link listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where the link passes connections on.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// When the link started: the origin of the outage schedule and of the meters.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Brings the link down (every open connection is cut, new ones are closed as soon as
    /// accepted) or up again. A scheduled outage switches it again when it starts or ends.
    pub fn set_up(&self, up: bool) {
        self.shared.switch(up);
    }

    /// Every switch of the link so far (by [`Link::set_up`] or the schedule): when, and
    /// whether it came up (`true`) or went down.
    pub fn switches(&self) -> Vec<(Instant, bool)> {
        self.shared.lock_switches().clone()
    }

    /// Waits until the link is up (`true`) or down.
    pub async fn wait_until(&self, up: bool) {
        let mut state = self.shared.state.subscribe();
        // The sender lives in `self.shared`, so the wait ends only by the state.
        let _ = state.wait_for(|s| *s == up).await;
    }

    /// Whether the link is up.
    pub fn is_up(&self) -> bool {
        *self.shared.state.borrow()
    }

    /// Connections accepted so far, refused ones included.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed as soon as accepted because the link was down.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Bytes forwarded upstream (client → target) so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.meter.total()
    }

    /// Bytes forwarded downstream (target → client) so far.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.meter.total()
    }

    /// Bytes forwarded upstream from the [`RESOLUTION`] bucket holding `since` on.
    pub fn bytes_up_since(&self, since: Instant) -> u64 {
        self.shared.up.meter.since(since)
    }

    /// Bytes forwarded downstream from the [`RESOLUTION`] bucket holding `since` on.
    pub fn bytes_down_since(&self, since: Instant) -> u64 {
        self.shared.down.meter.since(since)
    }

    /// The largest number of bytes forwarded upstream in any `window` since the start,
    /// sliding at the [`RESOLUTION`] of the log (see [`Meter::max_in_window_since`]).
    pub fn max_bytes_in_window(&self, window: Duration) -> u64 {
        self.shared.up.meter.max_in_window(window)
    }

    /// [`Link::max_bytes_in_window`] over the windows from the bucket holding `since` on
    /// (e.g. from the end of an outage).
    pub fn max_bytes_in_window_since(&self, window: Duration, since: Instant) -> u64 {
        self.shared.up.meter.max_in_window_since(window, since)
    }

    /// The largest number of bytes forwarded downstream in any `window` since the start.
    pub fn max_bytes_down_in_window(&self, window: Duration) -> u64 {
        self.shared.down.meter.max_in_window(window)
    }

    /// The upstream log, for figures the methods above do not give.
    pub fn up_meter(&self) -> &Meter {
        &self.shared.up.meter
    }

    /// The downstream log.
    pub fn down_meter(&self) -> &Meter {
        &self.shared.down.meter
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The accept loop owns the connection tasks: aborting it drops and closes them all.
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "link: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if !*shared.state.borrow() {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        connections.spawn(connection(client, shared.clone()));
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

/// Decrements the open-connection count however the connection ends.
struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Passes one client's connection on until either side closes, an error, or an outage.
async fn connection(client: TcpStream, shared: Arc<Shared>) {
    shared.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(&shared.open);
    let mut state = shared.state.subscribe();
    let pass = async {
        let server = match TcpStream::connect(shared.target).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, target = %shared.target, "link: target refused");
                return;
            }
        };
        // Chunks are already sized by the link; Nagle would only add delay to them.
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        // Each direction ends on its own at a clean close (passing the close on); an error
        // in either ends both.
        let _ = tokio::try_join!(pump(cr, sw, &shared.up), pump(sr, cw, &shared.down));
    };
    tokio::select! {
        // Dropping `pass` closes both sockets: the cut of an outage.
        _ = state.wait_for(|up| !*up) => {}
        () = pass => {}
    }
}

/// Passes bytes from `from` to `to` as `dir`'s bucket allows, logging each chunk written.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: &Direction,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; dir.chunk];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Some(bucket) = &dir.bucket {
            bucket.take(n).await;
        }
        to.write_all(&buf[..n]).await?;
        dir.meter.record(n as u64);
    }
}

/// Brings the link down and up as `outages` say, relative to `start`. Overlapping outages
/// merge into one.
async fn run_schedule(outages: Vec<Outage>, start: tokio::time::Instant, shared: Arc<Shared>) {
    for (down_at, up_at) in down_spans(outages) {
        // An outage too far off to be an instant never starts (or never ends).
        let Some(down) = start.checked_add(down_at) else {
            return;
        };
        tokio::time::sleep_until(down).await;
        tracing::info!(after = ?down_at, "link: scheduled outage starts");
        shared.switch(false);
        let Some(up) = start.checked_add(up_at) else {
            return;
        };
        tokio::time::sleep_until(up).await;
        tracing::info!(after = ?up_at, "link: scheduled outage ends");
        shared.switch(true);
    }
}

/// The spans the link is down, `(from, to)` after its start, in order: overlapping or
/// touching outages merge into one.
fn down_spans(mut outages: Vec<Outage>) -> Vec<(Duration, Duration)> {
    outages.sort_by_key(|o| o.after);
    let mut spans: Vec<(Duration, Duration)> = Vec::new();
    for o in outages {
        let end = o.after.saturating_add(o.lasting);
        match spans.last_mut() {
            Some((_, last_end)) if o.after <= *last_end => *last_end = (*last_end).max(end),
            _ => spans.push((o.after, end)),
        }
    }
    spans
}
