//! The device-facing MQTT listener (MQTT 3.1.1 and 5 on one port): owns every device
//! connection, and keeps invariant 1 — **a PUBACK (or PUBREC) is written only after the
//! journal commit that holds the reading**.
//!
//! # How a PUBLISH becomes a durable PUBACK
//!
//! Each connection runs two halves joined by a bounded channel:
//!
//! * the *reader* ([`reader`]) parses every packet a socket read delivered, hands all of its
//!   publishes to the journal in one [`Journal::submit`], and
//!   queues the acknowledgements that depend on that commit, in packet order;
//! * the *writer* ([`writer`]) awaits each queued commit in turn and only then writes its
//!   acks.
//!
//! Because commits are awaited in queue order, a device's acknowledgements keep the order
//! of its publishes, and one device can pipeline many publishes into a single group commit
//! shared with every other connection.
//!
//! Refusals: with `on_full = "reject"` a refused QoS 1/2 reading is answered with reason
//! 0x97 (quota exceeded) under MQTT 5 and not acknowledged at all under 3.1.1; either way
//! the connection is then closed (MQTT 5: DISCONNECT 0x97), so the device keeps the reading
//! and sends it again, in order, after reconnecting. A per-connection
//! [`Fence`](crate::journal::Fence) makes sure nothing the device sent after the refused
//! reading is journaled ahead of it. Malformed and oversized packets close the connection,
//! counted and logged with the client id; the good packets before them are journaled and
//! acknowledged first.
//!
//! Authentication (on when `[mqtt.auth]` names a credentials file or `mqtt.tls_client_ca`
//! is set; see [`super::auth`]): the CONNECT is admitted or refused before the session is
//! taken (CONNACK 0x04/0x05/0x02 under 3.1.1, 0x86/0x87/0x85 under 5), and the device's
//! rights are expanded once for the connection. A publish outside them is **never
//! journaled**: MQTT 5 answers it 0x87 in its place in the ack order; 3.1.1 withholds the
//! ack and closes the connection after `max_refused_publishes`. The readings around it go
//! on as if it had not been sent. A reload that changes the device's grant cancels the
//! connection's revoke token, a child of its own token, so the read loop waits on nothing
//! more than it did without authentication. The same loop serves the TLS listener
//! ([`super::tls`]): it is generic over the stream halves, so plain TCP keeps its owned
//! halves with no indirection.
//!
//! Local subscribers: committed readings are also handed to an embedded rumqttd router
//! ([`super::local_bus`]); a device that SUBSCRIBEs gets matching readings at QoS 0, best
//! effort. Only readings the journal accepted are ever delivered, and the journal — not the
//! router — is what the durability guarantees rest on. Readings are handed to the router
//! only while at least one subscription is open (so a retained reading published while
//! nobody subscribes is not kept). UNSUBSCRIBE is not supported: a subscription ends with
//! its connection.
//!
//! # Layout
//!
//! * this file: the entry points ([`bind`], [`serve`], [`serve_with`]) and the state every
//!   connection shares;
//! * [`accept`]: the accept loops, the connection limit and the TLS handshake;
//! * [`session`]: CONNECT, admission and authentication, takeover of a client id;
//! * [`reader`]: the read loop, one function per packet kind;
//! * [`read_buffer`]: a connection's read buffer, sized to its traffic;
//! * [`writer`]: the write half, which awaits commits and keeps the ack order;
//! * [`subscriptions`]: a connection's local subscription.

mod accept;
mod read_buffer;
mod reader;
mod session;
mod subscriptions;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{AuthHub, AuthState};
use super::local_bus::LocalBus;
use crate::config::MqttConfig;
use crate::journal::Journal;
use crate::telemetry::IngestCounters;

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    #[error("cannot listen for MQTT on {addr}: {source} (is another broker using the port? set mqtt.listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the listener socket, so that a port conflict stops start-up with a clear error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })
}

/// State shared by every connection.
struct Ctx {
    config: MqttConfig,
    journal: Journal,
    counters: Arc<IngestCounters>,
    /// Client id → (connection number, its cancel token): a new connection with the same
    /// id takes the session over and closes the old one, as MQTT requires.
    sessions: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_conn: AtomicU64,
    shutdown: CancellationToken,
    /// Fan-out of committed readings to local subscribers; `None` refuses SUBSCRIBE.
    bus: Option<Arc<LocalBus>>,
    /// Open local subscriptions. While there are none, readings are not copied to the bus
    /// at all, so the fan-out costs nothing on a gateway nobody subscribes to.
    subscribers: Arc<AtomicUsize>,
    /// Credentials and rights in force, and the connections admitted under them; a reload
    /// replaces the state and revokes connections whose grant changed.
    auth: Arc<AuthHub>,
    /// Refused CONNECTs are logged at most once a second, with how many were not.
    auth_log: LogLimit,
}

/// At most one log line per `interval` for a kind of event that can repeat in a tight
/// loop (a refused publish, a CONNECT storm with a wrong password); `allow` says whether
/// to log now and how many were left unlogged since the last line.
struct LogLimit {
    interval: Duration,
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogLimit {
    fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.is_none_or(|t| t.elapsed() >= self.interval) {
            let skipped = s.1;
            *s = (Some(std::time::Instant::now()), 0);
            Some(skipped)
        } else {
            s.1 += 1;
            None
        }
    }
}

/// Accepts devices until `shutdown` is cancelled; every connection task is tracked by
/// `tracker`, and each one finishes by writing the acks of what it already journaled.
pub async fn serve(
    listener: TcpListener,
    config: MqttConfig,
    journal: Journal,
    bus: Option<Arc<LocalBus>>,
    counters: Arc<IngestCounters>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let auth = AuthHub::new(AuthState::open());
    serve_with(
        Listeners {
            tcp: listener,
            tls: None,
        },
        config,
        journal,
        bus,
        counters,
        auth,
        shutdown,
        tracker,
    )
    .await
}

/// The sockets the device listener accepts on.
pub struct Listeners {
    pub tcp: TcpListener,
    /// `mqtt.tls_listen` and its acceptor.
    pub tls: Option<(TcpListener, super::tls::Acceptor)>,
}

/// [`serve`] with authentication (`auth`, replaced by a reload) and the TLS listener.
#[allow(clippy::too_many_arguments)]
pub async fn serve_with(
    listeners: Listeners,
    config: MqttConfig,
    journal: Journal,
    bus: Option<Arc<LocalBus>>,
    counters: Arc<IngestCounters>,
    auth: Arc<AuthHub>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    // One pool of connection permits for both listeners: max_connections is per gateway.
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let ctx = Arc::new(Ctx {
        config,
        journal,
        counters,
        sessions: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        shutdown: shutdown.clone(),
        bus,
        subscribers: Arc::new(AtomicUsize::new(0)),
        auth,
        auth_log: LogLimit::new(Duration::from_secs(1)),
    });
    if let Some((listener, acceptor)) = listeners.tls {
        tracker.spawn(accept::accept_loop(
            listener,
            Some(acceptor),
            ctx.clone(),
            permits.clone(),
            tracker.clone(),
        ));
    }
    accept::accept_loop(listeners.tcp, None, ctx, permits, tracker).await;
    tracing::info!("MQTT listener stopped accepting connections.");
}
