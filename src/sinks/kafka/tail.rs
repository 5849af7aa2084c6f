//! The tail read that makes delivery into Kafka exactly once: before the first send, and
//! after any send of unknown outcome, the sink reads the end of every partition for the
//! highest position (`tidegate-seq`, and whether the record is a thinned marker) under this
//! gateway's id and the journal's epoch, and skips what is at or below it. It keeps
//! *nothing already in the topic is sent again* (see the [module docs](super)).

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::error::Error as KafkaError;
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::Record as KafkaRecord;
use tracing::{debug, info};

use super::produce::key;
use super::{
    partition_for_key, KafkaSink, HEADER_EPOCH, HEADER_GATEWAY, HEADER_SEQ, HEADER_THINNED,
};
use crate::record::{Item, Position, Slot};
use crate::sinks::SinkError;
use crate::telemetry::add;

/// Records past the newest one of this journal that the tail read may step over in one
/// partition (others' records, when the topic is shared), on top of two batches' worth.
/// See [`KafkaSink::tail_limit`].
pub(super) const TAIL_SCAN_MARGIN: i64 = 10_000;

/// Records the tail read looks at first; each further window is four times larger. A topic
/// this gateway writes alone has its newest record last, found by the first fetch.
pub(super) const TAIL_FIRST_WINDOW: i64 = 64;

/// How long after its start, or after a failed send, the sink waits before reading the
/// tails. A request the previous process (or the failed attempt) had already written to
/// the socket may still be applied by the broker after the sender is gone; reading the
/// tail too early would miss it and send its records again. Capped at `request_timeout`.
pub(super) const TAIL_SETTLE: Duration = Duration::from_secs(1);

/// Empty answers the tail read takes for an offset below a partition's end (each retry
/// waiting four times longer, from [`TAIL_FETCH_WAIT_MS`]) before it fails.
pub(super) const TAIL_EMPTY_RETRIES: u32 = 5;

/// Most bytes asked for in one fetch of the tail read.
pub(super) const TAIL_FETCH_BYTES: i32 = 4 * 1024 * 1024;

/// `max_wait_ms` of the tail read's fetches. The offsets read are below the end, so the
/// broker answers at once; Tansu answers a wait of 0 with no topic at all, hence not 0.
pub(super) const TAIL_FETCH_WAIT_MS: i32 = 10;

impl KafkaSink {
    /// How many records back from a partition's end the tail read looks at most.
    ///
    /// Of this journal, at most two batches can be in the topic past the stored cursor: the
    /// one acknowledged whose cursor store was still in progress, and the one being sent.
    /// When the topic is this gateway's alone, the newest record is ours and one small
    /// fetch finds it; when others write too, their records lie between ours, and the
    /// margin lets the read step over [`TAIL_SCAN_MARGIN`] of them.
    pub fn tail_limit(&self) -> i64 {
        2 * self.max_batch as i64 + TAIL_SCAN_MARGIN
    }

    /// Counts the records of `batch` that the last tail read found in the topic as
    /// acknowledged (once per batch), so that they are not sent again.
    pub(super) fn skip_delivered(&mut self, batch: &[Item], partitions: usize) {
        let Some(delivered) = &self.delivered else {
            return;
        };
        let count = partitions;
        let mut skipped = 0;
        for item in batch {
            let p = partition_for_key(key(item), count);
            if delivered
                .get(p)
                .copied()
                .flatten()
                .is_some_and(|d| item.position() <= d)
                && self.acked.seqs.insert(item.position())
            {
                skipped += 1;
            }
        }
        if skipped > 0 {
            info!(upstream = %self.target.upstream, skipped, first_seq = batch.first().map(Item::seq), "Skipping readings the topic already holds (sent before a restart or an unknown outcome).");
            if let Some(c) = &self.counters {
                add(&c.duplicates_skipped, skipped);
            }
        }
    }

    /// The highest position of this gateway and epoch in each partition; see the module
    /// docs. A failure drops the connection, like a failed produce.
    pub(super) async fn read_tails(
        &mut self,
        partitions: &[Arc<PartitionClient>],
    ) -> Result<Vec<Option<Position>>, SinkError> {
        let Some(epoch) = self.epoch else {
            return Ok(vec![None; partitions.len()]);
        };
        let settle = TAIL_SETTLE.min(self.request_timeout);
        let waited = self.unsettled_since.elapsed();
        if waited < settle {
            debug!(upstream = %self.target.upstream, wait = ?(settle - waited), "Letting requests of unknown outcome settle before reading the tails.");
            tokio::time::sleep(settle - waited).await;
        }
        let limit = self.tail_limit();
        let started = std::time::Instant::now();
        let this = &*self;
        let reads = partitions.iter().enumerate().map(|(p, client)| async move {
            this.within(
                &format!("reading the tail of partition {p}"),
                highest_delivered(client, &this.gateway_id, epoch, limit),
            )
            .await
        });
        let outcome = futures::future::try_join_all(reads).await;
        match outcome {
            Ok(found) => {
                let seqs: Vec<Option<u64>> = found.iter().map(|p| p.map(|p| p.seq)).collect();
                info!(upstream = %self.target.upstream, epoch, highest_delivered = ?seqs, took = ?started.elapsed(), "Read the topic's tail: records at or below these sequences (per partition) are there already and will not be sent again.");
                Ok(found)
            }
            Err(e) => {
                self.connection = None;
                Err(e)
            }
        }
    }
}

/// Whose a Kafka record is, as far as de-duplication cares.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// This gateway and epoch, with its position: its sequence number, and whether it is
    /// a thinned marker (which stands just before a reading of the same number).
    Ours(Position),
    /// This gateway under another epoch (or none: an older build). Epochs of one gateway
    /// follow each other in time, so nothing of the current epoch lies before it.
    OurGatewayEarlier,
    /// Anyone else.
    Other,
}

pub(super) fn owner(record: &KafkaRecord, gateway: &str, epoch: u64) -> Owner {
    if record.headers.get(HEADER_GATEWAY).map(Vec::as_slice) != Some(gateway.as_bytes()) {
        return Owner::Other;
    }
    let epoch_matches = record
        .headers
        .get(HEADER_EPOCH)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        == Some(epoch);
    if !epoch_matches {
        return Owner::OurGatewayEarlier;
    }
    match record
        .headers
        .get(HEADER_SEQ)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
    {
        Some(seq) => Owner::Ours(Position {
            seq,
            slot: if record.headers.contains_key(HEADER_THINNED) {
                Slot::Thinned
            } else {
                Slot::Record
            },
        }),
        None => Owner::Other,
    }
}

/// Reads one partition backwards from its end, in growing windows, for the highest
/// position (`tidegate-seq`, a thinned marker before a reading of the same number) of
/// `gateway` under `epoch`. Stops at the first window holding one (the partition holds
/// this journal's records in position order, so the newest is the highest), at a record of this gateway under an earlier epoch, at the partition's start,
/// or `limit` records back (`None` then: nothing of ours within reach). A fetch that returns
/// nothing below the end is asked again (see [`TAIL_EMPTY_RETRIES`]), unless retention
/// deleted those records meanwhile.
pub async fn highest_delivered(
    client: &PartitionClient,
    gateway: &str,
    epoch: u64,
    limit: i64,
) -> Result<Option<Position>, KafkaError> {
    let latest = client.get_offset(OffsetAt::Latest).await?;
    let start_offset = client.get_offset(OffsetAt::Earliest).await?;
    // The high watermark a fetch reports is the authority: Tansu answers ListOffsets
    // "latest" with the start of the last record batch, not the end of the partition.
    let (_, high_watermark) = client
        .fetch_records(latest, 1..TAIL_FETCH_BYTES, TAIL_FETCH_WAIT_MS)
        .await?;
    let end_offset = latest.max(high_watermark);
    let floor = start_offset.max(end_offset.saturating_sub(limit));
    let mut end = end_offset;
    let mut window = TAIL_FIRST_WINDOW;
    while end > floor {
        let start = end.saturating_sub(window).max(floor);
        let mut offset = start;
        let mut highest: Option<Position> = None;
        let mut earlier_epoch = false;
        let mut empty_answers = 0;
        while offset < end {
            // A retry waits longer: the broker may answer a short wait with nothing.
            let wait = TAIL_FETCH_WAIT_MS.saturating_mul(1 << (2 * empty_answers.min(4)));
            let (records, _) = client
                .fetch_records(offset, 1..TAIL_FETCH_BYTES, wait)
                .await?;
            let before = offset;
            for r in records {
                // A compressed batch may start before the offset asked for.
                if r.offset < offset {
                    continue;
                }
                if r.offset >= end {
                    offset = end;
                    break;
                }
                offset = r.offset + 1;
                match owner(&r.record, gateway, epoch) {
                    Owner::Ours(seq) => highest = highest.max(Some(seq)),
                    Owner::OurGatewayEarlier => earlier_epoch = true,
                    Owner::Other => {}
                }
            }
            if offset == before {
                // Nothing came back for an offset below the end. Passing over it would
                // take an older window's highest for the partition's and send the newer
                // records again; that happened against Tansu under load, which answers a
                // fetch of records it holds with nothing now and then. Only records
                // deleted under us (retention moved the partition's start past them) may
                // be passed over; anything else is asked for again, and after
                // TAIL_EMPTY_RETRIES empty answers the tail read fails, so that nothing is
                // sent until a later read succeeds.
                let start_now = client.get_offset(OffsetAt::Earliest).await?;
                if start_now > offset {
                    offset = start_now.min(end);
                    continue;
                }
                empty_answers += 1;
                if empty_answers > TAIL_EMPTY_RETRIES {
                    return Err(KafkaError::InvalidResponse(format!(
                        "fetching offset {offset} (below the partition's end {end_offset}) returned no records {empty_answers} times"
                    )));
                }
                info!(offset, end = end_offset, empty_answers, "The tail read's fetch returned no records below the partition's end; asking again.");
                continue;
            }
            empty_answers = 0;
        }
        if highest.is_some() || earlier_epoch {
            return Ok(highest);
        }
        end = start;
        window = window.saturating_mul(4);
    }
    Ok(None)
}
