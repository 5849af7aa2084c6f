//! A device session from CONNECT to close: owns reading the CONNECT, admission and
//! authentication (the CONNACK refusals), the client id (assigned when empty), takeover
//! of an existing session with the same id, and starting the connection's reader and
//! writer. A device is let in only once its credentials check against the state in force.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::read_buffer::{ReadBuffer, MIN_READ};
use super::reader::{read_loop, Conn, Reader};
use super::writer::{self, Writer};
use super::Ctx;
use crate::ingest::auth::{self, AuthState, Denied, Grant, Identity, Rights};
use crate::ingest::codec::{self, CodecError, ConnectInfo, Frame, Refusal, Version};
use crate::telemetry::add;

/// Longest a closing connection waits for the device to close its side.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// The same while the daemon shuts down, where every connection closes at once.
const CLOSE_DRAIN_SHUTDOWN: Duration = Duration::from_millis(300);

/// How long a connection refused at CONNECT waits for the device to close, so that the
/// refusing CONNACK is not lost to a reset.
const REFUSED_DRAIN: Duration = Duration::from_millis(200);

/// A connection's authentication: who it is, what it was let in with, its expanded
/// rights (`None`: nothing is checked) and its view of reloads.
pub(super) struct ConnAuth {
    pub(super) identity: Identity,
    pub(super) grant: Grant,
    pub(super) rights: Option<Rights>,
    /// 3.1.1 connections are closed after this many refused publishes.
    pub(super) max_refused: u32,
}

/// The client id a session runs under.
struct ClientId {
    id: String,
    /// The id to tell an MQTT 5 device in its CONNACK, when it is not the one it sent.
    assigned: Option<String>,
    /// Whether tidegate made the id up for this connection alone.
    made_up: bool,
}

/// One device connection, over TCP or TLS (generic, so the plain TCP path keeps its
/// owned halves and pays for no indirection). `device` is the name on a verified client
/// certificate.
pub(super) async fn handle<R, W>(
    rd: R,
    wr: W,
    peer: SocketAddr,
    device: Option<String>,
    ctx: Arc<Ctx>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // The task of a connection is as large as its largest state, for its whole life, and
    // a gateway holds thousands of them. So the CONNECT and admission are boxed (they end
    // before the session runs; inline, their timers and the password check on the
    // blocking pool would size the task), and the session is built inside the match, so
    // that nothing but its running future is kept beside it.
    let session = match Box::pin(admit_session(rd, wr, peer, device, &ctx)).await {
        Some(admitted) => {
            let span = tracing::info_span!("device", client_id = %admitted.client_id.id, %peer);
            run(admitted, ctx).instrument(span)
        }
        None => return,
    };
    session.await
}

/// A device let in: its connection, what it sent with its CONNECT, and its rights.
struct Admitted<R, W> {
    rd: R,
    wr: W,
    /// What was read after the CONNECT and not parsed yet.
    buf: BytesMut,
    connect: ConnectInfo,
    client_id: ClientId,
    conn_id: u64,
    auth: ConnAuth,
}

/// Reads the CONNECT and admits the device, or refuses it (`None`; answered, counted and
/// logged).
async fn admit_session<R, W>(
    mut rd: R,
    mut wr: W,
    peer: SocketAddr,
    device: Option<String>,
    ctx: &Ctx,
) -> Option<Box<Admitted<R, W>>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Buffers start small and grow with the traffic (see `read_buffer`): a gateway holds
    // thousands of connections that each send a reading a second.
    let mut buf = BytesMut::with_capacity(MIN_READ);
    let mut connect = first_connect(&mut rd, &mut wr, &mut buf, peer, ctx).await?;
    let conn_id = ctx.next_conn.fetch_add(1, Ordering::Relaxed);

    // Authentication: the state in force now; a reload after this is caught when the
    // connection registers (AuthHub::register).
    let auth_state = ctx.auth.current();
    let identity = identify(&auth_state, device, &connect);
    let Some(client_id) = client_id(&auth_state, &identity, &mut connect, conn_id) else {
        // 3.1.1 §3.1.3.1: an empty id needs a clean session.
        write_refusal(&mut wr, connect.version, Refusal::BadClientId).await;
        add(&ctx.counters.connections_refused, 1);
        tracing::warn!(%peer, "Refusing MQTT connection: empty client id with a persistent session.");
        return None;
    };

    let grant = match admit(
        &auth_state,
        &identity,
        &client_id.id,
        connect.password.take(),
    )
    .await
    {
        Ok(g) => g,
        Err(denied) => {
            let why = count_refusal(ctx, denied);
            write_refusal(&mut wr, connect.version, refusal(denied)).await;
            let _ = wr.shutdown().await;
            if let Some(skipped) = ctx.auth_log.allow() {
                tracing::warn!(%peer, client_id = %client_id.id, username = identity.username().unwrap_or(""), reason = why, skipped, "Refusing MQTT connection: authentication failed.");
            }
            drain_before_close(&mut rd, REFUSED_DRAIN).await;
            return None;
        }
    };
    let rights = auth_state.rights(&grant, &identity, &client_id.id);
    drop(auth_state);
    let auth = ConnAuth {
        identity,
        grant,
        rights,
        max_refused: ctx.config.auth.max_refused_publishes,
    };
    Some(Box::new(Admitted {
        rd,
        wr,
        buf,
        connect,
        client_id,
        conn_id,
        auth,
    }))
}

/// Reads the CONNECT within `mqtt.connect_timeout`; `None` when there is none to go on
/// with (closed, timed out, shutdown, or bad, which is counted and logged, and answered
/// where the device can understand the answer).
async fn first_connect<R, W>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    peer: SocketAddr,
    ctx: &Ctx,
) -> Option<ConnectInfo>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let max = ctx.config.max_packet.as_u64() as usize;
    let connect = tokio::select! {
        _ = ctx.shutdown.cancelled() => return None,
        r = tokio::time::timeout(ctx.config.connect_timeout, read_connect(rd, buf, max)) => r,
    };
    match connect {
        Ok(Ok(c)) => c, // `None`: closed before CONNECT
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
            None
        }
        Err(_) => {
            add(&ctx.counters.connections_refused, 1);
            tracing::debug!(%peer, "No CONNECT within mqtt.connect_timeout; closing.");
            None
        }
    }
}

async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<ConnectInfo>, CodecError> {
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

/// How the connection proves who it is: a verified certificate's name first, then the
/// CONNECT's username.
fn identify(state: &AuthState, device: Option<String>, connect: &ConnectInfo) -> Identity {
    if !state.enabled() {
        Identity::Open
    } else if let Some(name) = device {
        Identity::Certificate(name)
    } else if let Some(user) = connect.username.clone() {
        Identity::Password(user)
    } else {
        Identity::Anonymous
    }
}

/// The id the session runs under: the device's own, else its name where the id must be
/// its name, else one made up for this connection (`conn_id`). `None` for an empty id
/// with a persistent session under 3.1.1, which must be refused.
fn client_id(
    state: &AuthState,
    identity: &Identity,
    connect: &mut ConnectInfo,
    conn_id: u64,
) -> Option<ClientId> {
    let v5 = connect.version == Version::V5;
    let mut assigned = None;
    if connect.client_id.is_empty() && state.client_id_is_username() {
        // A device that sends no id is given its own name, which the binding requires.
        if let Some(u) = identity.username() {
            connect.client_id = u.to_owned();
            assigned = v5.then(|| u.to_owned());
        }
    }
    if !connect.client_id.is_empty() {
        return Some(ClientId {
            id: connect.client_id.clone(),
            assigned,
            made_up: false,
        });
    }
    if !v5 && !connect.clean_session {
        return None;
    }
    let id = format!("tidegate-auto-{conn_id}");
    Some(ClientId {
        assigned: v5.then(|| id.clone()),
        id,
        made_up: true,
    })
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

/// The CONNACK refusal for a denied CONNECT.
fn refusal(denied: Denied) -> Refusal {
    match denied {
        Denied::BadCredentials => Refusal::BadUserNameOrPassword,
        Denied::NotAuthorized => Refusal::NotAuthorized,
        Denied::BadClientId => Refusal::BadClientId,
    }
}

/// Counts a denied CONNECT; returns the reason to log.
fn count_refusal(ctx: &Ctx, denied: Denied) -> &'static str {
    let (counter, why) = match denied {
        Denied::BadCredentials => (
            &ctx.counters.auth_bad_credentials,
            "unknown device or wrong password",
        ),
        Denied::NotAuthorized => (
            &ctx.counters.auth_not_authorized,
            "no credentials, and mqtt.auth.allow_anonymous is off",
        ),
        Denied::BadClientId => (
            &ctx.counters.auth_client_id,
            "client id is not the device's name (mqtt.auth.client_id_is_username)",
        ),
    };
    add(counter, 1);
    add(&ctx.counters.connections_refused, 1);
    why
}

/// Writes a refusing CONNACK (best effort: the connection closes either way).
async fn write_refusal<W: AsyncWrite + Unpin>(wr: &mut W, version: Version, refusal: Refusal) {
    let mut out = BytesMut::with_capacity(16);
    codec::write_connack(version, false, Some(refusal), None, 0, 0, &mut out);
    let _ = wr.write_all(&out).await;
}

/// An admitted session: takes the client id over, answers CONNACK, runs the reader here
/// and the writer in its own task until either ends, then closes in order (last acks,
/// then FIN, then drain) and releases the id.
///
/// `session` comes boxed: an async fn keeps its arguments for its whole life, and this
/// one lives as long as the connection.
async fn run<R, W>(session: Box<Admitted<R, W>>, ctx: Arc<Ctx>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Admitted {
        mut rd,
        mut wr,
        buf,
        connect,
        client_id,
        conn_id,
        auth,
    } = *session;
    let version = connect.version;
    let ClientId {
        id: client_id,
        assigned,
        made_up,
    } = client_id;
    let conn_token = take_over(&ctx, &client_id, conn_id);

    if !accept_connect(&mut wr, &ctx, &connect, assigned).await {
        release_session(&ctx, &client_id, conn_id);
        return;
    }

    // QoS 2 packet ids received and not yet released: a resend with one of these ids
    // is a duplicate and is not journaled again.
    let awaiting_rel = Arc::new(Mutex::new(HashSet::new()));
    let (tx, rx) = writer::channel();
    let writer_done = CancellationToken::new();
    let writer = Writer::new(
        wr,
        version,
        ctx.counters.clone(),
        ctx.bus.clone(),
        awaiting_rel.clone(),
    );
    let writer = tokio::spawn(writer.run(rx, writer_done.clone()).in_current_span());
    // Registered only now, with the connection running: a reload from here on
    // revokes it through `revoke`, and one since CONNECT already has.
    let revoke = ctx.auth.register(
        conn_id,
        &auth.identity,
        &client_id,
        &auth.grant,
        &conn_token,
    );
    let mut reader = Reader::new(Conn {
        ctx: &ctx,
        client_id: &client_id,
        version,
        tx,
        conn_token: &conn_token,
        awaiting_rel: &awaiting_rel,
        // A device's re-sends are recognised by its client id (journal::Packet); an id
        // tidegate made up for this one connection will never be seen again.
        // (A device's username given as its id is its own, and is seen again.)
        remember_packets: !made_up,
        auth,
    });
    let mut buf = ReadBuffer::new(buf);
    let reason = read_loop(
        &mut rd,
        &mut buf,
        &mut reader,
        connect.keep_alive,
        &writer_done,
        &revoke,
    )
    .await;
    ctx.auth.unregister(conn_id);
    reader.close(reason).await;
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

/// Answers an admitted CONNECT and counts the device connected; `false` if it is gone
/// already.
async fn accept_connect<W: AsyncWrite + Unpin>(
    wr: &mut W,
    ctx: &Ctx,
    connect: &ConnectInfo,
    assigned: Option<String>,
) -> bool {
    let version = connect.version;
    // tidegate keeps no server-side state a publisher needs, so a persistent session is
    // always "present": a device then keeps and resends its unacknowledged publishes.
    let session_present = !connect.clean_session;
    let mut out = BytesMut::with_capacity(256);
    codec::write_connack(
        version,
        session_present,
        None,
        assigned,
        ctx.config.max_inflight,
        ctx.config.max_packet.as_u64() as u32,
        &mut out,
    );
    if wr.write_all(&out).await.is_err() {
        return false;
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
    true
}

/// Takes the session of `client_id`: a connection already holding it is closed, as MQTT
/// requires. Returns the new connection's token, cancelled by shutdown or a later takeover.
fn take_over(ctx: &Ctx, client_id: &str, conn_id: u64) -> CancellationToken {
    let conn_token = ctx.shutdown.child_token();
    if let Some((_, old)) = ctx
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(client_id.to_owned(), (conn_id, conn_token.clone()))
    {
        tracing::info!("Session taken over by a new connection with the same client id.");
        old.cancel();
    }
    conn_token
}

/// Gives the client id up, unless a newer connection has taken it over meanwhile.
fn release_session(ctx: &Ctx, client_id: &str, conn_id: u64) {
    let mut sessions = ctx.sessions.lock().unwrap_or_else(|p| p.into_inner());
    if sessions
        .get(client_id)
        .is_some_and(|(id, _)| *id == conn_id)
    {
        sessions.remove(client_id);
    }
}

/// Reads and discards until the peer closes, for at most `limit`.
async fn drain_before_close<R: AsyncRead + Unpin>(rd: &mut R, limit: Duration) {
    // On the heap, and only while draining: an array here would sit in every
    // connection's task for its whole life, since the task is as large as its largest
    // state.
    let mut scratch = vec![0u8; 4096];
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
