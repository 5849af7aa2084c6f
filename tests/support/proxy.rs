//! A TCP proxy between tidegate and its cluster that misbehaves on command: the network
//! faults of `tests/network_faults.rs`, on loopback, without root or `tc`.
//!
//! Each accepted connection gets its own connection to the upstream address and two pumps
//! (one per direction) that look at the current [`Mode`] before every chunk they pass on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Passes every byte on at once.
    Pass,
    /// The cluster is down: open connections are closed, new ones closed as soon as accepted.
    Down,
    /// Every chunk is held this long before it is passed on (each direction).
    Latency(Duration),
    /// Packet loss, approximated the way TCP shows it to an application: before each chunk,
    /// with this probability the connection is either cut (both sides closed) or stalled
    /// for 0.2–1.5 s (a burst of losses being retransmitted).
    Lossy(f64),
    /// A broker that hangs: no byte is passed on in either direction, but every socket stays
    /// open, so only the client's own timeouts notice. Bytes held are passed on once the
    /// mode changes to one that passes bytes.
    Hang,
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub cut: AtomicU64,
    pub stalled: AtomicU64,
    pub bytes: AtomicU64,
}

/// The proxy: listens on a free loopback port; stopped when dropped.
pub struct FaultProxy {
    port: u16,
    mode: watch::Sender<Mode>,
    pub stats: Arc<ProxyStats>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port, passing everything.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        FaultProxy::serve(listener, upstream)
    }

    /// Starts a proxy on `port` (already chosen, e.g. the one a broker advertises).
    pub async fn start_on(port: u16, upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind proxy port");
        FaultProxy::serve(listener, upstream)
    }

    /// Passes what `listener` accepts on to `upstream`, faults as set.
    fn serve(listener: TcpListener, upstream: SocketAddr) -> FaultProxy {
        let port = listener.local_addr().expect("proxy addr").port();
        let (mode, modes) = watch::channel(Mode::Pass);
        let stats = Arc::new(ProxyStats::default());
        let task = tokio::spawn(accept_loop(listener, upstream, modes, stats.clone()));
        FaultProxy {
            port,
            mode,
            stats,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Switches the fault; open connections obey from their next chunk (`Down` closes them
    /// at once).
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    modes: watch::Receiver<Mode>,
    stats: Arc<ProxyStats>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if *modes.borrow() == Mode::Down {
            drop(client);
            continue;
        }
        let modes = modes.clone();
        let stats = stats.clone();
        connections.spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            // Either pump ending (a cut, a close, an error) ends both: dropping the halves
            // closes both sockets.
            tokio::select! {
                _ = pump(cr, sw, modes.clone(), stats.clone()) => {}
                _ = pump(sr, cw, modes, stats) => {}
            }
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

/// Passes bytes from `from` to `to` as the mode allows; returns when the connection must end.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut modes: watch::Receiver<Mode>,
    stats: Arc<ProxyStats>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = modes.changed() => {
                if changed.is_err() || *modes.borrow() == Mode::Down {
                    return;
                }
                continue;
            }
        };
        loop {
            let mode = *modes.borrow_and_update();
            match mode {
                Mode::Pass => break,
                Mode::Down => return,
                Mode::Latency(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Lossy(p) => {
                    let (roll, cut, stall) = {
                        let mut rng = rand::rng();
                        (
                            rng.random::<f64>(),
                            rng.random_bool(0.5),
                            rng.random_range(200..1500),
                        )
                    };
                    if roll >= p {
                        break;
                    }
                    if cut {
                        stats.cut.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    stats.stalled.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(stall)).await;
                    break;
                }
                Mode::Hang => {
                    // Hold the bytes, keep the socket: wait for another mode.
                    if modes.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}
