//! The device-facing MQTT listener (MQTT 3.1.1 and 5 on one port).
//!
//! tidegate owns the connection loop so that it can keep invariant 1 of the journal:
//! **a PUBACK (or PUBREC) is written only after the commit that holds the reading**.
//! Each connection runs two halves joined by a bounded channel:
//!
//! * the *reader* parses every packet a socket read delivered, hands all of its
//!   publishes to the journal in one [`Journal::submit`], and queues the acknowledgements
//!   that depend on that commit, in packet order;
//! * the *writer* awaits each queued commit in turn and only then writes its acks.
//!
//! Because commits are awaited in queue order, a device's acknowledgements keep the order
//! of its publishes, and one device can pipeline many publishes into a single group commit
//! shared with every other connection.
//!
//! Refusals: with `on_full = "reject"` a refused QoS 1/2 reading is answered with reason
//! 0x97 (quota exceeded) under MQTT 5 and not acknowledged at all under 3.1.1; either way
//! the connection is then closed (MQTT 5: DISCONNECT 0x97), so the device keeps the reading
//! and sends it again, in order, after reconnecting. A per-connection [`Fence`] makes sure
//! nothing the device sent after the refused reading is journaled ahead of it. Malformed and oversized packets close the connection, counted and logged
//! with the client id; the good packets before them are journaled and acknowledged first.
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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::auth::{self, AuthHub, AuthState, Denied, Grant, Identity, Rights};
use super::codec::{
    self, AckReason, CodecError, DisconnectReason, Frame, Inbound, Refusal, SubCode, Version,
};
use super::local_bus::{LocalBus, Subscription};
use crate::config::MqttConfig;
use crate::journal::{now_ms, Appended, Fence, Journal, JournalError, Packet};
use crate::record::{Reading, SourceKind};
use crate::telemetry::{add, IngestCounters};

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
    subscribers: Arc<std::sync::atomic::AtomicUsize>,
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

/// How often a repeating refusal is logged at most (per connection for publishes, for the
/// whole listener for CONNECTs).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often a lasting failure to accept connections is logged again.
const ACCEPT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);

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
        subscribers: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        auth,
        auth_log: LogLimit::new(Duration::from_secs(1)),
    });
    if let Some((listener, acceptor)) = listeners.tls {
        tracker.spawn(accept_loop(
            listener,
            Some(acceptor),
            ctx.clone(),
            permits.clone(),
            tracker.clone(),
        ));
    }
    accept_loop(listeners.tcp, None, ctx, permits, tracker).await;
    tracing::info!("MQTT listener stopped accepting connections.");
}

/// Accepts on one socket until shutdown; `tls` set, each connection does its TLS
/// handshake (within `mqtt.connect_timeout`) in its own task before MQTT starts.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<super::tls::Acceptor>,
    ctx: Arc<Ctx>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let shutdown = ctx.shutdown.clone();
    let mut refused_logged = false;
    // Accept failures (usually EMFILE while descriptors run out) recur every 100 ms for as
    // long as the cause lasts: the first is logged, then one summary per interval.
    let mut accept_failures: u64 = 0;
    let mut accept_failure_logged: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                accept_failures += 1;
                if accept_failure_logged.is_none_or(|t| t.elapsed() >= ACCEPT_FAILURE_LOG_INTERVAL)
                {
                    accept_failure_logged = Some(std::time::Instant::now());
                    tracing::warn!(error = %e, failures = accept_failures, "Accepting an MQTT connection failed; retrying every 100ms (logged again every 30s while it lasts).");
                    accept_failures = 0;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            add(&ctx.counters.connections_refused, 1);
            if !refused_logged {
                tracing::warn!(%peer, max_connections = ctx.config.max_connections, "Refusing MQTT connection: mqtt.max_connections reached (logged once).");
                refused_logged = true;
            }
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => {
                    let (rd, wr) = stream.into_split();
                    handle(rd, wr, peer, None, ctx).await;
                }
                Some(acceptor) => {
                    let accepted = tokio::select! {
                        _ = ctx.shutdown.cancelled() => return,
                        r = tokio::time::timeout(ctx.config.connect_timeout, acceptor.accept(stream)) => r,
                    };
                    match accepted {
                        Ok(Ok((stream, device))) => {
                            let (rd, wr) = tokio::io::split(stream);
                            handle(rd, wr, peer, device, ctx).await;
                        }
                        Ok(Err(e)) => {
                            add(&ctx.counters.connections_refused, 1);
                            if let Some(skipped) = ctx.auth_log.allow() {
                                tracing::warn!(%peer, error = %e, skipped, "Refusing MQTT connection: TLS handshake failed.");
                            }
                        }
                        Err(_) => {
                            add(&ctx.counters.connections_refused, 1);
                            tracing::debug!(%peer, "No TLS handshake within mqtt.connect_timeout; closing.");
                        }
                    }
                }
            }
            drop(permit);
        });
    }
}

/// An acknowledgement waiting for its commit.
#[derive(Debug)]
enum Action {
    /// PUBACK (QoS 1) or PUBREC (QoS 2) of the reading at `index` in the batch; `None`
    /// when the reading was not journaled and `reason` says why.
    Ack {
        qos: u8,
        pkid: u16,
        index: Option<usize>,
        reason: AckReason,
    },
    PubComp(u16),
    PingResp,
    SubAck {
        pkid: u16,
        granted: Vec<SubCode>,
    },
    UnsubAck {
        pkid: u16,
        filters: usize,
    },
}

/// What the reader hands the writer.
enum Out {
    Batch {
        commit: Option<oneshot::Receiver<Result<Appended, JournalError>>>,
        actions: Vec<Action>,
        /// (topic, payload, retain) of each reading of the batch, for local subscribers
        /// once committed; empty when there is no bus.
        local: Vec<(String, Bytes, bool)>,
    },
    /// A reading for this connection's local subscription (QoS 0, written at once).
    Deliver {
        topic: String,
        payload: Bytes,
        retain: bool,
    },
    Close(Option<DisconnectReason>),
}

/// One device connection, over TCP or TLS (generic, so the plain TCP path keeps its
/// owned halves and pays for no indirection). `device` is the name on a verified client
/// certificate.
async fn handle<R, W>(mut rd: R, mut wr: W, peer: SocketAddr, device: Option<String>, ctx: Arc<Ctx>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let max = ctx.config.max_packet.as_u64() as usize;
    // Buffers start small and grow with the traffic (see `ReadSize`): a gateway holds
    // thousands of connections that each send a reading a second.
    let mut buf = BytesMut::with_capacity(MIN_READ);

    let connect = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        r = tokio::time::timeout(ctx.config.connect_timeout, read_connect(&mut rd, &mut buf, max)) => r,
    };
    let connect = match connect {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return, // closed before CONNECT
        Ok(Err(e)) => {
            add(&ctx.counters.connections_refused, 1);
            if matches!(e, CodecError::TooLarge { .. }) {
                add(&ctx.counters.rejected_oversized, 1);
            } else {
                add(&ctx.counters.rejected_malformed, 1);
            }
            tracing::warn!(%peer, error = %e, "Refusing MQTT connection: bad CONNECT.");
            if let CodecError::UnsupportedVersion(_) = e {
                // 3.1.1 CONNACK 0x01 is understood by every client version.
                let _ = wr.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            }
            return;
        }
        Err(_) => {
            add(&ctx.counters.connections_refused, 1);
            tracing::debug!(%peer, "No CONNECT within mqtt.connect_timeout; closing.");
            return;
        }
    };

    let conn_id = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let version = connect.version;
    let mut out = BytesMut::with_capacity(256);
    let mut assigned = None;

    // Authentication: the state in force now; a reload after this is caught when the
    // connection registers (AuthHub::register).
    let auth_state = ctx.auth.current();
    let identity = if !auth_state.enabled() {
        Identity::Open
    } else if let Some(name) = device {
        Identity::Certificate(name)
    } else if let Some(user) = connect.username.clone() {
        Identity::Password(user)
    } else {
        Identity::Anonymous
    };
    let mut connect = connect;
    if connect.client_id.is_empty() && auth_state.client_id_is_username() {
        // A device that sends no id is given its own name, which the binding requires.
        if let Some(u) = identity.username() {
            connect.client_id = u.to_owned();
            if version == Version::V5 {
                assigned = Some(u.to_owned());
            }
        }
    }

    // Whether the id is one tidegate made up for this connection alone.
    let mut made_up_id = false;
    let client_id = if connect.client_id.is_empty() {
        if version == Version::V4 && !connect.clean_session {
            // 3.1.1 §3.1.3.1: an empty id needs a clean session.
            codec::write_connack(
                version,
                false,
                Some(Refusal::BadClientId),
                None,
                0,
                0,
                &mut out,
            );
            let _ = wr.write_all(&out).await;
            add(&ctx.counters.connections_refused, 1);
            tracing::warn!(%peer, "Refusing MQTT connection: empty client id with a persistent session.");
            return;
        }
        made_up_id = true;
        let id = format!("tidegate-auto-{conn_id}");
        if version == Version::V5 {
            assigned = Some(id.clone());
        }
        id
    } else {
        connect.client_id.clone()
    };

    let grant = match admit(&auth_state, &identity, &client_id, connect.password.take()).await {
        Ok(g) => g,
        Err(denied) => {
            let (refusal, counter, why) = match denied {
                Denied::BadCredentials => (
                    Refusal::BadUserNameOrPassword,
                    &ctx.counters.auth_bad_credentials,
                    "unknown device or wrong password",
                ),
                Denied::NotAuthorized => (
                    Refusal::NotAuthorized,
                    &ctx.counters.auth_not_authorized,
                    "no credentials, and mqtt.auth.allow_anonymous is off",
                ),
                Denied::BadClientId => (
                    Refusal::BadClientId,
                    &ctx.counters.auth_client_id,
                    "client id is not the device's name (mqtt.auth.client_id_is_username)",
                ),
            };
            add(counter, 1);
            add(&ctx.counters.connections_refused, 1);
            codec::write_connack(version, false, Some(refusal), None, 0, 0, &mut out);
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
            if let Some(skipped) = ctx.auth_log.allow() {
                tracing::warn!(%peer, client_id = %client_id, username = identity.username().unwrap_or(""), reason = why, skipped, "Refusing MQTT connection: authentication failed.");
            }
            drain_before_close(&mut rd, Duration::from_millis(200)).await;
            return;
        }
    };
    let rights = auth_state.rights(&grant, &identity, &client_id);
    drop(auth_state);
    let auth = ConnAuth {
        identity,
        grant,
        rights,
        max_refused: ctx.config.auth.max_refused_publishes,
    };

    let span = tracing::info_span!("device", client_id = %client_id, %peer);
    async move {
        let conn_token = ctx.shutdown.child_token();
        if let Some((_, old)) = ctx
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.clone(), (conn_id, conn_token.clone()))
        {
            tracing::info!("Session taken over by a new connection with the same client id.");
            old.cancel();
        }

        // tidegate keeps no server-side state a publisher needs, so a persistent session is
        // always "present": a device then keeps and resends its unacknowledged publishes.
        let session_present = !connect.clean_session;
        // A device's re-sends are recognised by its client id (journal::Packet); an id
        // tidegate made up for this one connection will never be seen again.
        // (A device's username given as its id is its own, and is seen again.)
        let remember_packets = !made_up_id;
        codec::write_connack(
            version,
            session_present,
            None,
            assigned,
            ctx.config.max_inflight,
            max as u32,
            &mut out,
        );
        if wr.write_all(&out).await.is_err() {
            release_session(&ctx, &client_id, conn_id);
            return;
        }
        add(&ctx.counters.connections_accepted, 1);
        ctx.counters
            .connections_active
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            ?version,
            clean_session = connect.clean_session,
            keep_alive = connect.keep_alive,
            "Device connected."
        );

        // QoS 2 packet ids received and not yet released: a resend with one of these ids
        // is a duplicate and is not journaled again.
        let awaiting_rel = Arc::new(Mutex::new(HashSet::new()));
        let (tx, rx) = mpsc::channel::<Out>(64);
        let writer_done = CancellationToken::new();
        let writer = tokio::spawn(
            write_loop(
                wr,
                rx,
                version,
                ctx.counters.clone(),
                ctx.bus.clone(),
                awaiting_rel.clone(),
                writer_done.clone(),
            )
            .in_current_span(),
        );
        // Registered only now, with the connection running: a reload from here on
        // revokes it through `revoke`, and one since CONNECT already has.
        let revoke = ctx.auth.register(
            conn_id,
            &auth.identity,
            &client_id,
            &auth.grant,
            &conn_token,
        );
        let reason = read_loop(
            &mut rd,
            buf,
            &ctx,
            &client_id,
            version,
            connect.keep_alive,
            &tx,
            &conn_token,
            &writer_done,
            &awaiting_rel,
            remember_packets,
            auth,
            &revoke,
        )
        .await;
        ctx.auth.unregister(conn_id);
        let _ = tx.send(Out::Close(reason)).await;
        drop(tx);
        let _ = writer.await;
        // The writer has sent its last acks and FIN. Closing a socket with unread input
        // makes the kernel send RST, and the device could then lose those last acks
        // (a refusal's 0x97, say) from its receive buffer: drain what it still sends first.
        let drain = if ctx.shutdown.is_cancelled() {
            CLOSE_DRAIN_SHUTDOWN
        } else {
            CLOSE_DRAIN
        };
        drain_before_close(&mut rd, drain).await;
        release_session(&ctx, &client_id, conn_id);
        ctx.counters
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(?reason, "Device disconnected.");
    }
    .instrument(span)
    .await
}

fn release_session(ctx: &Ctx, client_id: &str, conn_id: u64) {
    let mut sessions = ctx.sessions.lock().unwrap_or_else(|p| p.into_inner());
    if sessions
        .get(client_id)
        .is_some_and(|(id, _)| *id == conn_id)
    {
        sessions.remove(client_id);
    }
}

/// Whether `identity` may connect now: its grant, with the password checked against the
/// hash in force (on the blocking pool).
async fn admit(
    state: &AuthState,
    identity: &Identity,
    client_id: &str,
    password: Option<String>,
) -> Result<Grant, Denied> {
    let grant = match state.grant(identity, client_id) {
        Ok(g) => g,
        Err(Denied::BadCredentials) => {
            // An unknown device costs the same hash as a known one, so that the answer's
            // timing does not tell which usernames exist.
            if let Some(p) = password {
                let _ = auth::verify_password_blocking(auth::dummy_hash(), p.into_bytes()).await;
            }
            return Err(Denied::BadCredentials);
        }
        Err(d) => return Err(d),
    };
    if let (Identity::Password(_), Grant::Granted { password_hash, .. }) = (identity, &grant) {
        let (Some(hash), Some(password)) = (password_hash.clone(), password) else {
            return Err(Denied::BadCredentials);
        };
        if !auth::verify_password_blocking(hash, password.into_bytes()).await {
            return Err(Denied::BadCredentials);
        }
    }
    Ok(grant)
}

/// A connection's authentication: who it is, what it was let in with, its expanded
/// rights (`None`: nothing is checked) and its view of reloads.
struct ConnAuth {
    identity: Identity,
    grant: Grant,
    rights: Option<Rights>,
    /// 3.1.1 connections are closed after this many refused publishes.
    max_refused: u32,
}

async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<codec::ConnectInfo>, CodecError> {
    loop {
        if let Frame::Packet(c) = codec::read_connect(buf, max)? {
            return Ok(Some(c));
        }
        buf.reserve(MIN_READ);
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Reads packets until the device leaves, an error, takeover or shutdown. Returns the
/// reason to give the device (MQTT 5), if any.
#[allow(clippy::too_many_arguments)]
async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    mut buf: BytesMut,
    ctx: &Ctx,
    client_id: &str,
    version: Version,
    keep_alive: u16,
    tx: &mpsc::Sender<Out>,
    conn_token: &CancellationToken,
    writer_done: &CancellationToken,
    awaiting_rel: &Arc<Mutex<HashSet<u16>>>,
    remember_packets: bool,
    auth: ConnAuth,
    revoke: &CancellationToken,
) -> Option<DisconnectReason> {
    // Publishes refused on this connection as outside its rights, and their log limit.
    let mut refused: u32 = 0;
    let refusal_log = LogLimit::new(REFUSAL_LOG_INTERVAL);
    let max = ctx.config.max_packet.as_u64() as usize;
    // MQTT: the server may close after 1.5 keep-alive periods of silence.
    let idle = (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500));
    let mut subscribe_logged = false;
    // The connection's local subscription, created at its first SUBSCRIBE.
    let mut subscription: Option<SubscriptionHandle> = None;
    // Once the journal refuses one of this connection's readings, it refuses all later
    // ones too, and the connection closes: the device resends in order on a new one.
    let fence = Fence::new();
    let mut read_size = ReadSize::default();
    loop {
        // Parse everything already buffered into one journal submission.
        let mut readings = Vec::new();
        let mut packets = Vec::new();
        let mut local = Vec::new();
        let mut actions = Vec::new();
        let mut stop: Option<Option<DisconnectReason>> = None;
        loop {
            match codec::read(version, &mut buf, max) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::Packet(p)) => match p {
                    Inbound::Publish {
                        topic,
                        payload,
                        qos,
                        pkid,
                        retain,
                        dup,
                        topic_alias,
                    } => {
                        if topic_alias.is_some() {
                            add(&ctx.counters.rejected_topic, 1);
                            tracing::warn!(
                                "Closing connection: topic alias used but none was offered."
                            );
                            stop = Some(Some(DisconnectReason::TopicAliasInvalid));
                            break;
                        }
                        let topic = match validate_topic(topic) {
                            Ok(t) => t,
                            Err(why) => {
                                add(&ctx.counters.rejected_topic, 1);
                                tracing::warn!(
                                    reason = why,
                                    "Closing connection: invalid publish topic."
                                );
                                stop = Some(Some(topic_disconnect_reason(why)));
                                break;
                            }
                        };
                        if topic.starts_with('$') {
                            add(&ctx.counters.rejected_system_topic, 1);
                            if qos > 0 {
                                actions.push(Action::Ack {
                                    qos,
                                    pkid,
                                    index: None,
                                    reason: AckReason::TopicNameInvalid,
                                });
                            }
                            continue;
                        }
                        if let Some(rights) = &auth.rights {
                            if !rights.may_publish(&topic) {
                                // Never journaled; the readings around it go on in order.
                                add(&ctx.counters.rejected_not_authorized, 1);
                                refused = refused.saturating_add(1);
                                if let Some(skipped) = refusal_log.allow() {
                                    tracing::warn!(topic = %topic, refused, skipped, "Refusing publish: topic outside the device's rights (not journaled).");
                                }
                                if version == Version::V5 {
                                    if qos > 0 {
                                        actions.push(Action::Ack {
                                            qos,
                                            pkid,
                                            index: None,
                                            reason: AckReason::NotAuthorized,
                                        });
                                    }
                                } else if refused >= auth.max_refused {
                                    // 3.1.1 has no negative ack: the device would resend
                                    // the withheld one for ever; close instead.
                                    tracing::warn!(refused, "Closing connection: too many publishes outside the device's rights (mqtt.auth.max_refused_publishes).");
                                    stop = Some(None);
                                    break;
                                }
                                continue;
                            }
                        }
                        if qos == 2 {
                            let mut set = awaiting_rel.lock().unwrap_or_else(|p| p.into_inner());
                            if !set.insert(pkid) {
                                // Resent before PUBREL: already journaled.
                                actions.push(Action::Ack {
                                    qos,
                                    pkid,
                                    index: None,
                                    reason: AckReason::Success,
                                });
                                continue;
                            }
                        }
                        let index = readings.len();
                        if ctx.bus.is_some() && ctx.subscribers.load(Ordering::Relaxed) > 0 {
                            local.push((topic.clone(), payload.clone(), retain));
                        }
                        readings.push(Reading {
                            ingest_ms: now_ms(),
                            source_kind: SourceKind::MqttListener,
                            source: client_id.to_owned(),
                            topic,
                            payload,
                            qos,
                            retain,
                        });
                        packets.push((qos > 0 && remember_packets).then_some(Packet { pkid, dup }));
                        if qos > 0 {
                            actions.push(Action::Ack {
                                qos,
                                pkid,
                                index: Some(index),
                                reason: AckReason::Success,
                            });
                        }
                    }
                    Inbound::PubRel { pkid } => {
                        awaiting_rel
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&pkid);
                        actions.push(Action::PubComp(pkid));
                    }
                    Inbound::PingReq => actions.push(Action::PingResp),
                    Inbound::Subscribe { pkid, filters } => {
                        // Filters outside the device's rights never reach the bus.
                        let allowed: Vec<bool> = filters
                            .iter()
                            .map(|f| auth.rights.as_ref().is_none_or(|r| r.may_subscribe(f)))
                            .collect();
                        let denied = allowed.iter().filter(|a| !**a).count();
                        if denied > 0 {
                            add(&ctx.counters.subscribe_not_authorized, denied as u64);
                            if let Some(skipped) = refusal_log.allow() {
                                tracing::warn!(
                                    refused = denied,
                                    skipped,
                                    "Refusing SUBSCRIBE filters outside the device's rights."
                                );
                            }
                        }
                        let filters: Vec<String> = filters
                            .into_iter()
                            .zip(&allowed)
                            .filter(|(_, a)| **a)
                            .map(|(f, _)| f)
                            .collect();
                        let granted = match (&ctx.bus, &mut subscription) {
                            _ if filters.is_empty() => Vec::new(),
                            (None, _) => {
                                if !subscribe_logged {
                                    tracing::info!("Refusing SUBSCRIBE: local subscriptions are off; consume readings upstream.");
                                    subscribe_logged = true;
                                }
                                vec![false; filters.len()]
                            }
                            (Some(bus), sub) => {
                                if sub.is_none() {
                                    match bus.subscribe(client_id).await {
                                        Ok(s) => {
                                            *sub = Some(SubscriptionHandle::start(
                                                s,
                                                tx.clone(),
                                                conn_token.clone(),
                                                ctx.subscribers.clone(),
                                            ))
                                        }
                                        Err(e) => {
                                            tracing::warn!(error = %e, "Cannot open a local subscription.")
                                        }
                                    }
                                }
                                match sub {
                                    Some(h) => h.add_filters(filters).await,
                                    None => vec![false; filters.len()],
                                }
                            }
                        };
                        let mut granted = granted.into_iter();
                        let granted = allowed
                            .iter()
                            .map(|&a| match (a, a.then(|| granted.next()).flatten()) {
                                (false, _) => SubCode::NotAuthorized,
                                (true, Some(true)) => SubCode::Granted,
                                (true, _) => SubCode::Refused,
                            })
                            .collect();
                        actions.push(Action::SubAck { pkid, granted });
                    }
                    Inbound::Unsubscribe { pkid, filters } => {
                        actions.push(Action::UnsubAck { pkid, filters })
                    }
                    Inbound::Ignored => {}
                    Inbound::Disconnect => {
                        stop = Some(None);
                        break;
                    }
                    Inbound::Unexpected(what) => {
                        add(&ctx.counters.rejected_malformed, 1);
                        tracing::warn!(packet = what, "Closing connection: protocol error.");
                        stop = Some(Some(DisconnectReason::ProtocolError));
                        break;
                    }
                },
                Err(e) => {
                    let reason = if matches!(e, CodecError::TooLarge { .. }) {
                        add(&ctx.counters.rejected_oversized, 1);
                        DisconnectReason::PacketTooLarge
                    } else {
                        add(&ctx.counters.rejected_malformed, 1);
                        DisconnectReason::Malformed
                    };
                    tracing::warn!(error = %e, "Closing connection: rejected packet; the readings before it are kept.");
                    stop = Some(Some(reason));
                    break;
                }
            }
        }

        if !readings.is_empty() || !actions.is_empty() {
            let commit = if readings.is_empty() {
                None
            } else {
                add(&ctx.counters.readings_received, readings.len() as u64);
                match ctx
                    .journal
                    .submit_packets(readings, packets, Some(fence.clone()))
                    .await
                {
                    Ok(rx) => Some(rx),
                    Err(e) => {
                        tracing::error!(error = %e, "Journal unavailable; closing the connection without acknowledging.");
                        return Some(DisconnectReason::ShuttingDown);
                    }
                }
            };
            if tx
                .send(Out::Batch {
                    commit,
                    actions,
                    local,
                })
                .await
                .is_err()
            {
                return None;
            }
        }
        if let Some(reason) = stop {
            return reason;
        }

        buf.reserve(read_size.get());
        let spare = buf.capacity() - buf.len();
        let read = async {
            match idle {
                Some(d) => tokio::time::timeout(d, rd.read_buf(&mut buf)).await.ok(),
                None => Some(rd.read_buf(&mut buf).await),
            }
        };
        tokio::select! {
            // A child of conn_token: one wait covers shutdown, takeover and revocation, so
            // authentication adds nothing to a read.
            _ = revoke.cancelled() => {
                return Some(if ctx.shutdown.is_cancelled() {
                    DisconnectReason::ShuttingDown
                } else if conn_token.is_cancelled() {
                    DisconnectReason::SessionTakenOver
                } else {
                    add(&ctx.counters.auth_revoked, 1);
                    tracing::info!("Closing connection: a reload changed or removed the device's credentials or rights; it must log in again.");
                    DisconnectReason::NotAuthorized
                });
            }
            _ = writer_done.cancelled() => return None,
            r = read => match r {
                None => {
                    tracing::info!("Closing connection: no packet within 1.5 keep-alive periods.");
                    return Some(DisconnectReason::KeepAliveTimeout);
                }
                Some(Ok(0)) | Some(Err(_)) => return None,
                Some(Ok(n)) => read_size.record(n, spare),
            },
        }
    }
}

/// Smallest read (and initial buffer) of a connection.
const MIN_READ: usize = 1024;
/// Largest read of a connection: enough for a fast publisher's window of readings in one
/// journal submission.
const MAX_READ: usize = 64 * 1024;

/// How much buffer space a connection's next read gets: it doubles while reads fill the
/// space they were given (a fast publisher) and halves back while they use less than a
/// quarter of it, between [`MIN_READ`] and [`MAX_READ`]. A device sending a reading a
/// second keeps a 1 KiB buffer; one with a window of readings in flight gets one
/// submission per window.
#[derive(Debug, Clone, Copy)]
struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> ReadSize {
        ReadSize(MIN_READ)
    }
}

impl ReadSize {
    fn get(self) -> usize {
        self.0
    }

    /// Adjusts after a read of `n` bytes into `spare` bytes of space.
    fn record(&mut self, n: usize, spare: usize) {
        if n >= spare {
            self.0 = (self.0 * 2).min(MAX_READ);
        } else if n < self.0 / 4 {
            self.0 = (self.0 / 2).max(MIN_READ);
        }
    }
}

/// A connection's local subscription: a task that feeds the connection's writer from the
/// bus and adds filters on request, so the reader never waits on delivery.
struct SubscriptionHandle {
    filters: mpsc::Sender<(Vec<String>, oneshot::Sender<Vec<bool>>)>,
}

impl SubscriptionHandle {
    fn start(
        mut sub: Subscription,
        out: mpsc::Sender<Out>,
        stop: CancellationToken,
        open: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        let (filters, mut requests) = mpsc::channel::<(Vec<String>, oneshot::Sender<Vec<bool>>)>(4);
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(
            async move {
                let _open = scopeguard_decrement(open);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        req = requests.recv() => {
                            let Some((wanted, reply)) = req else { break };
                            let mut granted = Vec::with_capacity(wanted.len());
                            for f in wanted {
                                granted.push(matches!(sub.add_filter(&f).await, Ok(true)));
                            }
                            let _ = reply.send(granted);
                        }
                        m = sub.next() => {
                            let Some((topic, payload, retain)) = m else { break };
                            if out.send(Out::Deliver { topic, payload, retain }).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            .in_current_span(),
        );
        Self { filters }
    }

    async fn add_filters(&self, wanted: Vec<String>) -> Vec<bool> {
        let n = wanted.len();
        let (reply, rx) = oneshot::channel();
        if self.filters.send((wanted, reply)).await.is_err() {
            return vec![false; n];
        }
        rx.await.unwrap_or_else(|_| vec![false; n])
    }
}

/// Decrements the open-subscription count when the delivery task ends, however it ends.
fn scopeguard_decrement(open: Arc<std::sync::atomic::AtomicUsize>) -> impl Drop {
    struct Guard(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    Guard(open)
}

/// Reads and discards until the peer closes, for at most `limit`.
async fn drain_before_close<R: AsyncRead + Unpin>(rd: &mut R, limit: Duration) {
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match rd.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Longest a closing connection waits for the device to close its side.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// The same while the daemon shuts down, where every connection closes at once.
const CLOSE_DRAIN_SHUTDOWN: Duration = Duration::from_millis(300);

/// A publish topic must be UTF-8, non-empty and free of wildcards.
fn validate_topic(topic: Bytes) -> Result<String, &'static str> {
    let topic = String::from_utf8(topic.to_vec()).map_err(|_| TOPIC_NOT_UTF8)?;
    if topic.is_empty() {
        return Err("empty topic");
    }
    if topic.contains(['+', '#']) {
        return Err("wildcard in a publish topic");
    }
    if topic.contains('\0') {
        return Err(TOPIC_NUL);
    }
    Ok(topic)
}

const TOPIC_NOT_UTF8: &str = "topic is not UTF-8";
const TOPIC_NUL: &str = "NUL in topic";

/// The MQTT 5 reason for closing over a bad topic: ill-formed UTF-8 (a NUL included) makes
/// the packet malformed (0x81, spec 1.5.4); an empty or wildcard topic is a protocol error.
fn topic_disconnect_reason(why: &str) -> DisconnectReason {
    if why == TOPIC_NOT_UTF8 || why == TOPIC_NUL {
        DisconnectReason::Malformed
    } else {
        DisconnectReason::ProtocolError
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Out>,
    version: Version,
    counters: Arc<IngestCounters>,
    bus: Option<Arc<LocalBus>>,
    awaiting_rel: Arc<Mutex<HashSet<u16>>>,
    done: CancellationToken,
) {
    // Grows to the largest batch of acknowledgements written; most connections stay small.
    let mut out = BytesMut::with_capacity(256);
    let _done = done.drop_guard();
    while let Some(msg) = rx.recv().await {
        match msg {
            Out::Deliver {
                topic,
                payload,
                retain,
            } => {
                codec::write_publish(version, &topic, payload, retain, &mut out);
                if wr.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            Out::Batch {
                commit,
                actions,
                local,
            } => {
                let accepted = match commit {
                    None => usize::MAX,
                    Some(rx) => match rx.await {
                        Ok(Ok(a)) => a.accepted,
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "Journal commit failed; closing without acknowledging.");
                            let _ = wr.shutdown().await;
                            return;
                        }
                        Err(_) => {
                            let _ = wr.shutdown().await;
                            return;
                        }
                    },
                };
                if let Some(bus) = &bus {
                    if !local.is_empty() {
                        bus.publish_batch(local.into_iter().take(accepted));
                    }
                }
                let mut close_after = false;
                for action in actions {
                    match action {
                        Action::Ack {
                            qos,
                            pkid,
                            index,
                            reason,
                        } => {
                            let reason = match index {
                                Some(i) if i >= accepted => {
                                    add(&counters.rejected_full, 1);
                                    if qos == 2 {
                                        awaiting_rel
                                            .lock()
                                            .unwrap_or_else(|p| p.into_inner())
                                            .remove(&pkid);
                                    }
                                    // Close after this batch: nothing later from this
                                    // connection can be journaled (see Fence), and the device
                                    // resends from here on a new connection.
                                    close_after = true;
                                    if version == Version::V4 {
                                        // 3.1.1 has no negative ack: withhold it.
                                        break;
                                    }
                                    AckReason::QuotaExceeded
                                }
                                Some(_) => {
                                    add(&counters.readings_acknowledged, 1);
                                    reason
                                }
                                None => reason,
                            };
                            if qos == 2 {
                                codec::write_pubrec(version, pkid, reason, &mut out);
                            } else {
                                codec::write_puback(version, pkid, reason, &mut out);
                            }
                        }
                        Action::PubComp(pkid) => codec::write_pubcomp(version, pkid, &mut out),
                        Action::PingResp => codec::write_pingresp(&mut out),
                        Action::SubAck { pkid, granted } => {
                            codec::write_suback(version, pkid, &granted, &mut out)
                        }
                        Action::UnsubAck { pkid, filters } => {
                            codec::write_unsuback(version, pkid, filters, &mut out)
                        }
                    }
                }
                if !out.is_empty() {
                    if wr.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                if close_after {
                    // DEBUG: every device resends and is refused again while the journal is
                    // full; the journal writer sums the refusals up every 10 s at WARN.
                    tracing::debug!("Journal full (on_full = \"reject\"): refusing the device's readings and closing its connection; it keeps them and resends.");
                    out.clear();
                    codec::write_disconnect(version, DisconnectReason::QuotaExceeded, &mut out);
                    let _ = wr.write_all(&out).await;
                    let _ = wr.shutdown().await;
                    return;
                }
            }
            Out::Close(reason) => {
                if let Some(r) = reason {
                    codec::write_disconnect(version, r, &mut out);
                    let _ = wr.write_all(&out).await;
                }
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_topics_with_wildcards_or_bad_utf8_are_refused() {
        assert!(validate_topic(Bytes::from_static(b"turbines/wt-1/telemetry")).is_ok());
        assert!(validate_topic(Bytes::from_static(b"a/+/b")).is_err());
        assert!(validate_topic(Bytes::from_static(b"a/#")).is_err());
        assert!(validate_topic(Bytes::from_static(b"")).is_err());
        assert!(validate_topic(Bytes::from_static(b"\xff\xfe")).is_err());
    }

    #[test]
    fn read_size_grows_for_fast_publishers_and_shrinks_back_for_slow_ones() {
        let mut r = ReadSize::default();
        assert_eq!(r.get(), MIN_READ);
        // A reading a second: small reads never grow it.
        r.record(120, MIN_READ);
        assert_eq!(r.get(), MIN_READ);
        // Reads that fill their space double it, up to the limit.
        for _ in 0..20 {
            let spare = r.get();
            r.record(spare, spare);
        }
        assert_eq!(r.get(), MAX_READ);
        // Quiet again: it halves back to the minimum.
        for _ in 0..20 {
            r.record(100, r.get());
        }
        assert_eq!(r.get(), MIN_READ);
    }
}
