//! The per-client re-send memory: which QoS 1/2 publishes of each MQTT client are already
//! journaled, so that a device's re-send after a lost PUBACK is acknowledged again without
//! being journaled twice. It keeps *durable before acknowledged*: the memory is written in
//! the same transaction as the readings it names, so a re-send is only recognised once its
//! first copy has committed, and a failed commit forgets it along with the readings.
//!
//! Memories are forgotten [`SESSION_TTL`] after the client's latest journaled publish,
//! pruned inside an ordinary commit ([`PruneSchedule`]).

use std::time::Instant;

use super::store::Store;
use crate::record::Reading;

/// The MQTT packet a QoS 1 or 2 reading came in, for recognising a device's re-send.
///
/// MQTT delivers QoS 1 at least once: a device that never saw the PUBACK of a publish
/// (tidegate killed after the commit, a connection dropped with the PUBACK in flight)
/// sends it again, with the DUP flag and the same packet id. The writer keeps, per client
/// id and in the same transaction as the readings, the packet ids and fingerprints (CRC-32
/// of topic and payload) of that client's latest [`SESSION_PACKETS`] journaled publishes.
/// A publish with DUP set whose packet id and fingerprint match one of them is
/// acknowledged but not journaled again (counted as `duplicates_dropped`).
///
/// Limits: a re-send more than [`SESSION_PACKETS`] publishes late is journaled again; two
/// devices sharing a client id share the memory; a publish re-sent with a new packet id
/// (against the MQTT spec) is not recognised. A payload identical to an earlier one under
/// the same packet id and with DUP set is, by the spec, the same publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// The packet identifier.
    pub pkid: u16,
    /// The DUP flag: the device says it may have sent this publish before.
    pub dup: bool,
}

/// How many of a client's latest journaled publishes are remembered (see [`Packet`]): more
/// than a device may keep in flight under tidegate's default receive maximum
/// (`mqtt.max_inflight` = 1000). A client that cycles through few packet ids (most keep
/// fewer than 100 in flight) is remembered in as many entries of 6 bytes.
pub const SESSION_PACKETS: usize = 1024;

/// How long a client's memory of journaled publishes (see [`Packet`]) outlives its last
/// journaled publish. A device re-sends an unacknowledged publish when it reconnects,
/// within seconds or hours of the lost PUBACK; a week covers a site offline over a long
/// weekend. Without an end, every client id ever seen (devices replaced, ids made up by
/// misconfigured or hostile clients) would keep its row for the journal's lifetime.
pub const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// How often the writer looks for memories older than [`SESSION_TTL`] (inside an
/// ordinary commit; one pass over the `sessions` database).
pub const SESSION_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The per-client memory of journaled publishes that recognises a device's re-send (see
/// [`Packet`]): for each client id (the reading's `source`), its latest
/// [`SESSION_PACKETS`] publishes as (packet id, CRC-32 of topic and payload), oldest
/// first, stored in the `sessions` database in the same transaction as the readings — so
/// after a crash it says exactly what was journaled. Loaded on first use in a commit,
/// written back once at its end.
///
/// Row layout: 6-byte entries (packet id u16, CRC-32 u32, big-endian). An entry with packet
/// id 0 — never a QoS 1/2 packet id — is the row's header and holds the Unix time in
/// seconds of the client's latest journaled publish, for [`prune_sessions`]. Rows written
/// before the header existed have none and are read the same way.
#[derive(Default)]
pub(super) struct Sessions {
    clients: std::collections::HashMap<String, Remembered>,
}

/// One client's remembered publishes as stored: 6-byte entries (packet id, fingerprint),
/// oldest first, without the header; and whether this commit changed them. Kept as the
/// row's bytes, so that loading, remembering and writing back a full row (1,024 entries,
/// as a client cycling through every packet id has) are a few copies rather than a
/// decoded list built and encoded again for every commit that touches the client.
struct Remembered {
    entries: Vec<u8>,
    dirty: bool,
}

/// Bytes of one entry (and of the header).
const ENTRY: usize = 6;

impl Remembered {
    fn entry(pkid: u16, fp: u32) -> [u8; ENTRY] {
        let [p0, p1] = pkid.to_be_bytes();
        let [f0, f1, f2, f3] = fp.to_be_bytes();
        [p0, p1, f0, f1, f2, f3]
    }

    /// Where the entry of `pkid` is, if remembered.
    fn position(&self, pkid: u16) -> Option<usize> {
        let id = pkid.to_be_bytes();
        self.entries
            .chunks_exact(ENTRY)
            .position(|c| c[..2] == id)
            .map(|i| i * ENTRY)
    }
}

impl Sessions {
    fn fingerprint(r: &Reading) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(r.topic.as_bytes());
        h.update(&[0]);
        h.update(&r.payload);
        h.finalize()
    }

    fn entries(
        &mut self,
        store: &Store,
        txn: &heed::RwTxn<'_>,
        client: &str,
    ) -> Result<&mut Remembered, heed::Error> {
        if !self.clients.contains_key(client) {
            let mut entries = Vec::new();
            if let Some(db) = &store.sessions {
                if let Some(bytes) = db.get(txn, client)? {
                    // The header (packet id 0) is the row's first entry when there is one;
                    // any other entry with packet id 0 is dropped the same way.
                    entries.reserve(bytes.len() + ENTRY);
                    for c in bytes.chunks_exact(ENTRY) {
                        if c[..2] != [0, 0] {
                            entries.extend_from_slice(c);
                        }
                    }
                }
            }
            self.clients.insert(
                client.to_owned(),
                Remembered {
                    entries,
                    dirty: false,
                },
            );
        }
        // Present: inserted just above when missing. Looked up by &str, so a client already
        // loaded costs no allocation per reading.
        Ok(self
            .clients
            .get_mut(client)
            .expect("the client's entry was inserted above"))
    }

    /// Whether `r`, sent under `pkid`, is one of its client's journaled publishes.
    pub(super) fn holds(
        &mut self,
        store: &Store,
        txn: &heed::RwTxn<'_>,
        r: &Reading,
        pkid: u16,
    ) -> Result<bool, heed::Error> {
        let want = Remembered::entry(pkid, Self::fingerprint(r));
        let remembered = self.entries(store, txn, &r.source)?;
        Ok(remembered.entries.chunks_exact(ENTRY).any(|c| c == want))
    }

    /// Records that `r`, sent under `pkid`, was journaled.
    pub(super) fn remember(
        &mut self,
        store: &Store,
        txn: &heed::RwTxn<'_>,
        r: &Reading,
        pkid: u16,
    ) -> Result<(), heed::Error> {
        if pkid == 0 {
            // Not a QoS 1/2 packet id (and the row header's marker): nothing to remember.
            return Ok(());
        }
        let entry = Remembered::entry(pkid, Self::fingerprint(r));
        let remembered = self.entries(store, txn, &r.source)?;
        // A packet id names one publish at a time: the newest use replaces older ones.
        while let Some(at) = remembered.position(pkid) {
            remembered.entries.drain(at..at + ENTRY);
        }
        remembered.entries.extend_from_slice(&entry);
        let excess = remembered
            .entries
            .len()
            .saturating_sub(SESSION_PACKETS * ENTRY);
        if excess > 0 {
            remembered.entries.drain(..excess);
        }
        remembered.dirty = true;
        Ok(())
    }

    /// Writes back what changed, stamped with `now` (Unix seconds).
    pub(super) fn store(
        self,
        store: &Store,
        txn: &mut heed::RwTxn<'_>,
        now: u32,
    ) -> Result<(), heed::Error> {
        let Some(db) = &store.sessions else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        for (client, remembered) in self.clients {
            if !remembered.dirty {
                continue;
            }
            bytes.clear();
            bytes.extend_from_slice(&[0, 0]);
            bytes.extend_from_slice(&now.to_be_bytes());
            bytes.extend_from_slice(&remembered.entries);
            db.put(txn, &client, &bytes)?;
        }
        Ok(())
    }
}

/// Unix time in seconds, as the `sessions` rows store it (u32 lasts until 2106).
pub(super) fn now_secs() -> u32 {
    u32::try_from(super::now_ms() / 1000).unwrap_or(u32::MAX)
}

/// Removes the re-send memory of every client whose latest journaled publish is more than
/// `ttl` seconds before `now`; returns how many. A row without a time (written before rows
/// carried one) is stamped `now` instead, so it ages from the first prune that sees it.
pub(super) fn prune_sessions(
    store: &Store,
    txn: &mut heed::RwTxn<'_>,
    now: u32,
    ttl: u64,
) -> Result<usize, heed::Error> {
    let Some(db) = &store.sessions else {
        return Ok(0);
    };
    let mut expired = Vec::new();
    let mut unstamped = Vec::new();
    for row in db.iter(txn)? {
        let (client, bytes) = row?;
        match bytes.get(..6) {
            Some([0, 0, t @ ..]) => {
                let at = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
                if u64::from(now).saturating_sub(u64::from(at)) > ttl {
                    expired.push(client.to_owned());
                }
            }
            _ => {
                let mut stamped = Vec::with_capacity(bytes.len() + 6);
                stamped.extend_from_slice(&[0, 0]);
                stamped.extend_from_slice(&now.to_be_bytes());
                stamped.extend_from_slice(bytes);
                unstamped.push((client.to_owned(), stamped));
            }
        }
    }
    for client in &expired {
        db.delete(txn, client)?;
    }
    for (client, bytes) in &unstamped {
        db.put(txn, client, bytes)?;
    }
    Ok(expired.len())
}

/// When the writer's next commit also prunes re-send memories past [`SESSION_TTL`]: the
/// first commit after opening (which also stamps rows of older builds), then once every
/// [`SESSION_PRUNE_EVERY`].
pub(super) struct PruneSchedule {
    next: Instant,
}

impl PruneSchedule {
    pub(super) fn new() -> Self {
        Self {
            next: Instant::now(),
        }
    }

    /// The Unix time in seconds to prune as of, if the next commit is due to prune.
    pub(super) fn due(&self) -> Option<u32> {
        (Instant::now() >= self.next).then(now_secs)
    }

    /// After a commit that pruned (`pruned` clients forgotten): logs them and schedules the
    /// next prune. A commit that failed did not prune, so the next attempt tries again.
    pub(super) fn pruned(&mut self, pruned: usize) {
        self.next = Instant::now() + SESSION_PRUNE_EVERY;
        if pruned > 0 {
            tracing::info!(
                clients = pruned,
                "Forgot the re-send memory of clients with no journaled publish for {}.",
                humantime::format_duration(SESSION_TTL)
            );
        }
    }
}
