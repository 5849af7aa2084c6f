//! What a fleet run reports: live progress counters while it runs ([`FleetProgress`]) and,
//! at the end, exactly which readings of which boot each device had acknowledged
//! ([`FleetReport`], which `verify` checks a Kafka topic against).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::options::{Protocol, Qos};
use crate::faults::FaultCounts;
use crate::latency::{Histogram, LatencySummary};
use crate::seqset::SeqSet;

/// Live counters of a running fleet, for progress lines.
#[derive(Debug, Default)]
pub struct FleetProgress {
    /// Readings handed to the MQTT clients.
    pub published: AtomicU64,
    /// Readings acknowledged with PUBACK.
    pub acked: AtomicU64,
    /// Devices connected right now.
    pub connected: AtomicU64,
    /// Connection losses so far.
    pub disconnects: AtomicU64,
    /// Devices that finished.
    pub finished: AtomicU64,
    /// Publish → PUBACK latency of the readings acknowledged since the last
    /// [`FleetProgress::take_puback`]: a long run reports it per interval, where the whole
    /// run's histogram would hide a slow hour in a fast day.
    pub puback: Mutex<Histogram>,
}

/// A point-in-time copy of [`FleetProgress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Readings handed to the MQTT clients.
    pub published: u64,
    /// Readings acknowledged.
    pub acked: u64,
    /// Devices connected.
    pub connected: u64,
    /// Connection losses.
    pub disconnects: u64,
    /// Devices finished.
    pub finished: u64,
}

impl FleetProgress {
    /// Reads every counter.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            published: self.published.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
        }
    }

    /// Counts one reading's publish → PUBACK latency in the current interval.
    pub fn record_puback(&self, latency: Duration) {
        self.puback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_duration(latency);
    }

    /// The latencies recorded since the last call, leaving an empty histogram for the next
    /// interval.
    pub fn take_puback(&self) -> Histogram {
        std::mem::take(&mut *self.puback.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What one boot of a device published (see [`DeviceReport::earlier_boots`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootReport {
    /// Boot id on the readings of this boot.
    pub boot: u64,
    /// Readings handed to the MQTT client (counters `1..=published`).
    pub published: u64,
    /// Counters acknowledged with PUBACK (QoS 1; empty for QoS 0).
    pub acked: SeqSet,
    /// QoS 1 counters still unacknowledged when the boot ended.
    pub unacked: SeqSet,
}

/// What one device did. `boot`, `published`, `acked` and `unacked` describe its last boot
/// (its only one unless the fault plan reboots it); the other counts cover every boot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceReport {
    /// Boot id on the readings of the last boot.
    pub boot: u64,
    /// Topic it published to.
    pub topic: String,
    /// Readings of the last boot handed to the MQTT client (counters `1..=published`).
    pub published: u64,
    /// Counters of the last boot acknowledged with PUBACK (QoS 1; empty for QoS 0).
    pub acked: SeqSet,
    /// QoS 1 counters of the last boot still unacknowledged when the device stopped.
    pub unacked: SeqSet,
    /// Boots before the last one, oldest first (boot ids grow by one per reboot).
    #[serde(default)]
    pub earlier_boots: Vec<BootReport>,
    /// PUBLISH packets written, re-sends and injected faults (extra QoS 0 publishes) included.
    pub sent: u64,
    /// PUBLISH packets re-sent after a connection loss.
    pub retransmits: u64,
    /// Successful connections (CONNACK).
    pub connects: u64,
    /// Connection attempts or connections that failed.
    pub connection_errors: u64,
    /// MQTT 5 PUBACKs with a failure reason code (reading refused, kept and re-sent).
    pub rejected: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
    /// Events that contradicted the PUBACK accounting (must be 0).
    pub anomalies: u64,
    /// Faults injected and handed to the MQTT client (extra QoS 0 publishes: garbage the
    /// gateway must reject, and duplicates of readings in `1..=published`).
    #[serde(default)]
    pub injected: FaultCounts,
}

impl DeviceReport {
    /// Every boot, oldest first, the last one included.
    pub fn boots(&self) -> Vec<BootReport> {
        let mut all = self.earlier_boots.clone();
        all.push(BootReport {
            boot: self.boot,
            published: self.published,
            acked: self.acked.clone(),
            unacked: self.unacked.clone(),
        });
        all
    }

    /// Readings handed to the client over every boot.
    pub fn published_total(&self) -> u64 {
        self.published + self.sum_earlier(|b| b.published)
    }

    /// Readings acknowledged over every boot.
    pub fn acked_total(&self) -> u64 {
        self.acked.len() + self.sum_earlier(|b| b.acked.len())
    }

    /// Readings left unacknowledged over every boot.
    pub fn unacked_total(&self) -> u64 {
        self.unacked.len() + self.sum_earlier(|b| b.unacked.len())
    }

    /// `count` summed over the boots before the last.
    fn sum_earlier(&self, count: impl Fn(&BootReport) -> u64) -> u64 {
        self.earlier_boots.iter().map(count).sum()
    }
}

/// What a fleet run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetReport {
    /// Broker address.
    pub broker: String,
    /// QoS used.
    pub qos: Qos,
    /// MQTT version used.
    pub protocol: Protocol,
    /// Per device, by device id.
    pub devices: BTreeMap<String, DeviceReport>,
    /// First write → PUBACK latency over all devices.
    pub puback_latency: LatencySummary,
    /// Start of the run → every device finished (publishing and draining).
    pub elapsed: Duration,
    /// Start of the run → publishing stopped (before draining).
    pub publish_elapsed: Duration,
    /// The full latency histogram (not serialized).
    #[serde(skip)]
    pub puback_histogram: Histogram,
}

impl FleetReport {
    /// Readings handed to the clients, all devices and boots.
    pub fn published(&self) -> u64 {
        self.devices
            .values()
            .map(DeviceReport::published_total)
            .sum()
    }

    /// Readings acknowledged, all devices and boots.
    pub fn acked(&self) -> u64 {
        self.devices.values().map(DeviceReport::acked_total).sum()
    }

    /// QoS 1 readings left unacknowledged, all devices and boots.
    pub fn unacked(&self) -> u64 {
        self.devices.values().map(DeviceReport::unacked_total).sum()
    }

    /// Re-sent PUBLISH packets, all devices.
    pub fn retransmits(&self) -> u64 {
        self.devices.values().map(|d| d.retransmits).sum()
    }

    /// Failed connections or connection attempts, all devices.
    pub fn connection_errors(&self) -> u64 {
        self.devices.values().map(|d| d.connection_errors).sum()
    }

    /// Faults injected, all devices.
    pub fn injected(&self) -> FaultCounts {
        let mut c = FaultCounts::default();
        for d in self.devices.values() {
            c.merge(&d.injected);
        }
        c
    }

    /// Accounting anomalies, all devices (must be 0).
    pub fn anomalies(&self) -> u64 {
        self.devices.values().map(|d| d.anomalies).sum()
    }

    /// Whether every published QoS 1 reading was acknowledged exactly as `1..=published`,
    /// in every boot.
    pub fn all_acked(&self) -> bool {
        self.qos == Qos::AtLeastOnce
            && self.devices.values().all(|d| {
                d.boots().iter().all(|b| {
                    b.unacked.is_empty()
                        && b.acked.len() == b.published
                        && (b.published == 0 || b.acked.ranges().eq([(1, b.published)]))
                })
            })
    }

    /// Acknowledged readings per second over the whole run.
    pub fn acked_per_sec(&self) -> f64 {
        self.acked() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}
