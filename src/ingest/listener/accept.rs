//! The listener's accept loops: owns taking connections off a socket, the
//! `mqtt.max_connections` limit (one pool of permits for TCP and TLS) and each
//! connection's TLS handshake, before a connection becomes a [`session`](super::session).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use super::session;
use super::Ctx;
use crate::ingest::tls::Acceptor;
use crate::telemetry::add;

/// How often a lasting failure to accept connections is logged again.
const ACCEPT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// How long a failed accept waits before the next: usually EMFILE, which lasts until
/// descriptors are freed, so spinning would only burn the CPU.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Accepts on one socket until shutdown; `tls` set, each connection does its TLS
/// handshake (within `mqtt.connect_timeout`) in its own task before MQTT starts.
pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Option<Acceptor>,
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
                accept_failures += 1;
                if accept_failure_logged.is_none_or(|t| t.elapsed() >= ACCEPT_FAILURE_LOG_INTERVAL)
                {
                    accept_failure_logged = Some(std::time::Instant::now());
                    tracing::warn!(error = %e, failures = accept_failures, "Accepting an MQTT connection failed; retrying every 100ms (logged again every 30s while it lasts).");
                    accept_failures = 0;
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
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
        tracker.spawn(connection(stream, peer, tls.clone(), ctx.clone(), permit));
    }
}

/// One accepted connection, holding its permit until it ends: over plain TCP straight
/// into its session, over TLS after the handshake.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Acceptor>,
    ctx: Arc<Ctx>,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            let (rd, wr) = stream.into_split();
            session::handle(rd, wr, peer, None, ctx).await;
        }
        Some(acceptor) => {
            let accepted = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                // Boxed: the handshake's state (a rustls connection and its buffers) is
                // large, and unboxed it would size the task of every connection, TLS or
                // not, for its whole life.
                r = Box::pin(tokio::time::timeout(ctx.config.connect_timeout, acceptor.accept(stream))) => r,
            };
            match accepted {
                Ok(Ok((stream, device))) => {
                    let (rd, wr) = tokio::io::split(stream);
                    // Boxed, so that the task of a plain TCP connection is not sized for
                    // both kinds of session (the compiler does not overlap the two).
                    Box::pin(session::handle(rd, wr, peer, device, ctx)).await;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns: for an async fn, the state its task holds.
    fn state_size<F, A, B, C, D, E, R>(_: &F) -> usize
    where
        F: FnOnce(A, B, C, D, E) -> R,
    {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_connection_task_stays_small_for_its_whole_life() {
        // A task is as large as its largest state, and a gateway holds one per device: a
        // buffer or a handshake inline anywhere in a session is paid by every connection,
        // idle or not (a 4 KiB drain buffer once cost 10,000 devices 40 MiB). Unoptimised
        // builds make futures larger, so the bound holds for both.
        let size = state_size(&connection);
        assert!(size <= 2048, "a connection's task holds {size} bytes");
    }
}
