//! A device connection's local subscription: owns opening it on the
//! [`LocalBus`](crate::ingest::local_bus::LocalBus) at the first SUBSCRIBE, adding
//! filters, and the task that feeds the connection's writer from it, so that the reader
//! never waits on delivery. Delivery is QoS 0, best effort; it never touches the journal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::channel::mpsc as out_channel;
use futures::SinkExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::writer::Out;
use super::Ctx;
use crate::ingest::codec::SubCode;
use crate::ingest::local_bus::Subscription;

/// A request to add filters, answered with whether each was granted.
type FilterRequest = (Vec<String>, oneshot::Sender<Vec<bool>>);

/// The local subscription of one connection, opened at its first SUBSCRIBE.
#[derive(Default)]
pub(super) struct Subscriptions {
    handle: Option<SubscriptionHandle>,
    /// Whether "local subscriptions are off" was logged for this connection already.
    off_logged: bool,
}

impl Subscriptions {
    /// Adds `filters` (already checked against the device's rights) to the connection's
    /// subscription, opening it first if need be; says whether each was granted.
    /// `stop` ends the delivery task with the connection.
    pub(super) async fn add(
        &mut self,
        ctx: &Ctx,
        client_id: &str,
        filters: Vec<String>,
        out: &out_channel::Sender<Out>,
        stop: &CancellationToken,
    ) -> Vec<bool> {
        if filters.is_empty() {
            return Vec::new();
        }
        let Some(bus) = &ctx.bus else {
            if !self.off_logged {
                tracing::info!(
                    "Refusing SUBSCRIBE: local subscriptions are off; consume readings upstream."
                );
                self.off_logged = true;
            }
            return vec![false; filters.len()];
        };
        if self.handle.is_none() {
            match bus.subscribe(client_id).await {
                Ok(s) => {
                    self.handle = Some(SubscriptionHandle::start(
                        s,
                        out.clone(),
                        stop.clone(),
                        ctx.subscribers.clone(),
                    ))
                }
                Err(e) => tracing::warn!(error = %e, "Cannot open a local subscription."),
            }
        }
        match &self.handle {
            Some(h) => h.add_filters(filters).await,
            None => vec![false; filters.len()],
        }
    }
}

/// The SUBACK codes of a SUBSCRIBE: `allowed` says, per filter in packet order, whether
/// the device's rights allow it; `granted` answers, in order, for the allowed ones only.
pub(super) fn sub_codes(allowed: &[bool], granted: Vec<bool>) -> Vec<SubCode> {
    let mut granted = granted.into_iter();
    allowed
        .iter()
        .map(|&a| match (a, a.then(|| granted.next()).flatten()) {
            (false, _) => SubCode::NotAuthorized,
            (true, Some(true)) => SubCode::Granted,
            (true, _) => SubCode::Refused,
        })
        .collect()
}

/// A connection's local subscription: a task that feeds the connection's writer from the
/// bus and adds filters on request.
struct SubscriptionHandle {
    filters: mpsc::Sender<FilterRequest>,
}

impl SubscriptionHandle {
    fn start(
        mut sub: Subscription,
        mut out: out_channel::Sender<Out>,
        stop: CancellationToken,
        open: Arc<AtomicUsize>,
    ) -> Self {
        let (filters, mut requests) = mpsc::channel::<FilterRequest>(4);
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(
            async move {
                let _open = OpenCount(open);
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
                            let Some(reading) = m else { break };
                            if out.send(Out::Deliver(Box::new(reading))).await.is_err() {
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
struct OpenCount(Arc<AtomicUsize>);

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
