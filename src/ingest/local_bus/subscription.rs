//! A local subscriber's side of the bus: owns one device connection's rumqttd link
//! ([`Subscription`]: its filters, the readings matching them, the router's flow control)
//! and its slot ([`Reservation`]), which is freed only once the link is disconnected, so
//! the router's connection table never overflows.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{self, Packet};
use rumqttd::Notification;
use tokio_util::sync::CancellationToken;

use super::{link_error, lock, BusError, Closing, Shared};

/// A subscription slot: freed on drop, directly if no link was made, else by the
/// `local-bus` thread after it has disconnected the link.
pub(super) struct Reservation {
    pub(super) link_id: String,
    client: String,
    suffix: u32,
    shared: Arc<Shared>,
    /// The link to disconnect, once there is one.
    linked: Option<Arc<Mutex<LinkTx>>>,
}

impl Reservation {
    pub(super) fn new(client: String, suffix: u32, shared: Arc<Shared>) -> Reservation {
        Reservation {
            link_id: format!("{client}~{suffix}"),
            client,
            suffix,
            shared,
            linked: None,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        match self.linked.take() {
            Some(tx) => st.closing.push(Closing {
                tx,
                client: std::mem::take(&mut self.client),
                suffix: self.suffix,
            }),
            None => st.release(&self.client, self.suffix),
        }
        drop(st);
        // Either way the thread has work, or may now end after a shutdown.
        self.shared.work.notify_one();
    }
}

/// One device connection's view of the bus: its filters and the readings matching them.
/// Dropping it disconnects its link.
pub struct Subscription {
    link_id: String,
    /// Disconnects the link and frees the slot on drop.
    _slot: Reservation,
    /// Shared with the blocking task of [`Subscription::add_filter`] and, after drop, with
    /// the `local-bus` thread.
    tx: Arc<Mutex<LinkTx>>,
    rx: LinkRx,
    /// Readings taken from the link but not yet returned by `next`.
    inbox: VecDeque<(String, Bytes, bool)>,
    /// SUBSCRIBEs sent whose SUBACK has not arrived.
    pending_subacks: usize,
    /// The router parked this link (`Notification::Unschedule`) and has not been told
    /// it may send more; kept across a cancelled `wake`.
    needs_wake: bool,
    stop: CancellationToken,
}

impl Subscription {
    /// The subscription over a new link, holding its slot until dropped.
    pub(super) fn new(
        mut slot: Reservation,
        tx: LinkTx,
        rx: LinkRx,
        stop: CancellationToken,
    ) -> Subscription {
        let tx = Arc::new(Mutex::new(tx));
        slot.linked = Some(tx.clone());
        Subscription {
            link_id: slot.link_id.clone(),
            _slot: slot,
            tx,
            rx,
            inbox: VecDeque::new(),
            pending_subacks: 0,
            needs_wake: false,
            stop,
        }
    }

    /// Adds a filter (MQTT wildcards + and #). Returns false if the filter is invalid.
    ///
    /// Invalid: empty, `#` not alone as the last level, `+` not alone in its level, NUL,
    /// over 65535 bytes, or starting with `$` (system topics and shared subscriptions are
    /// not offered). Returns once the router has the filter, so every reading published
    /// afterwards is matched against it.
    pub async fn add_filter(&mut self, filter: &str) -> Result<bool, BusError> {
        if !valid_filter(filter) {
            return Ok(false);
        }
        if self.stop.is_cancelled() {
            return Err(BusError::Stopped);
        }
        let tx = self.tx.clone();
        let filter = filter.to_owned();
        // `LinkTx::subscribe` does a blocking send to the router's channel.
        tokio::task::spawn_blocking(move || lock(&tx).subscribe(filter).map_err(link_error))
            .await
            .map_err(|_| BusError::Stopped)??;
        self.pending_subacks += 1;
        while self.pending_subacks > 0 {
            self.pump().await?;
        }
        Ok(true)
    }

    /// Next message for this subscriber: (topic, payload, retain). None when the bus stopped.
    pub async fn next(&mut self) -> Option<(String, Bytes, bool)> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Some(m);
            }
            self.pump().await.ok()?;
        }
    }

    /// The link's client id, as rumqttd logs it.
    pub fn link_id(&self) -> &str {
        &self.link_id
    }

    /// Takes one notification from the router and acts on it.
    async fn pump(&mut self) -> Result<(), BusError> {
        if self.needs_wake {
            // The router paused this link when its buffer filled; it resumes on `Ready`,
            // which must be sent exactly once per `Unschedule`.
            self.rx.wake().await.map_err(|_| BusError::Stopped)?;
            self.needs_wake = false;
        }
        let notification = tokio::select! {
            _ = self.stop.cancelled() => return Err(BusError::Stopped),
            n = self.rx.next() => n.map_err(|_| BusError::Stopped)?,
        };
        match notification {
            None => {}
            Some(Notification::Forward(forward)) => {
                let publish = forward.publish;
                if let Ok(topic) = String::from_utf8(publish.topic.to_vec()) {
                    self.inbox
                        .push_back((topic, publish.payload, publish.retain));
                }
            }
            Some(Notification::Unschedule) => {
                self.needs_wake = true;
                self.rx.wake().await.map_err(|_| BusError::Stopped)?;
                self.needs_wake = false;
            }
            Some(Notification::Disconnect(..)) => return Err(BusError::Stopped),
            Some(n @ Notification::DeviceAck(_)) => {
                if let Some(Packet::SubAck(..)) = Option::<Packet>::from(n) {
                    self.pending_subacks = self.pending_subacks.saturating_sub(1);
                }
            }
            Some(_) => {}
        }
        Ok(())
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("link_id", &self.link_id)
            .field("buffered", &self.inbox.len())
            .finish_non_exhaustive()
    }
}

/// MQTT filter syntax, plus tidegate's refusals (`$`, NUL). rumqttd itself accepts
/// `a/#/b` and disconnects the link on a `$` filter, so both are checked here.
fn valid_filter(filter: &str) -> bool {
    !filter.is_empty()
        && filter.len() <= u16::MAX as usize
        && !filter.starts_with('$')
        && !filter.contains('\0')
        && protocol::valid_filter(filter)
}
