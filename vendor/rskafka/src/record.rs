use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// High-level record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, Vec<u8>>,
    pub timestamp: DateTime<Utc>,
}

impl Record {
    /// Returns the approximate uncompressed size of this [`Record`]
    pub fn approximate_size(&self) -> usize {
        self.key.as_ref().map(|k| k.len()).unwrap_or_default()
            + self.value.as_ref().map(|v| v.len()).unwrap_or_default()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Record that has offset information attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAndOffset {
    pub record: Record,
    pub offset: i64,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn test_approximate_size() {
        let record = Record {
            key: Some(vec![0; 23]),
            value: Some(vec![0; 45]),
            headers: vec![("a".to_string(), vec![0; 5]), ("b".to_string(), vec![0; 7])]
                .into_iter()
                .collect(),
            timestamp: Utc.timestamp_millis_opt(1337).unwrap(),
        };

        assert_eq!(record.approximate_size(), 23 + 45 + 1 + 5 + 1 + 7);
    }
}

/// Records already encoded in Kafka's v2 record format, for
/// [`PartitionClient::produce_encoded`](crate::client::partition::PartitionClient::produce_encoded):
/// each [`push`](Self::push) writes one record from borrowed fields onto one buffer, so a
/// batch costs no allocation per record (a [`Record`] holds its key, value and every header
/// in allocations of their own, and `produce` converts and frees them all). The bytes are
/// those `produce` would send for the same records (see [`from_records`](Self::from_records)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedRecords {
    pub(crate) bytes: Vec<u8>,
    pub(crate) count: usize,
    pub(crate) first_timestamp: i64,
    pub(crate) max_timestamp: i64,
}

/// A field or a record too long for Kafka's 32-bit lengths (or too many records in one batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a record field, record or batch is too large to encode")]
pub struct EncodeError;

impl EncodedRecords {
    /// No records, with room for `bytes` bytes of them.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Appends one record. Headers go in the order given (a [`Record`]'s go in key order).
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        timestamp: DateTime<Utc>,
    ) -> Result<(), EncodeError> {
        let ts = timestamp.timestamp_millis();
        if self.count == 0 {
            self.first_timestamp = ts;
            self.max_timestamp = ts;
        }
        let offset_delta = i32::try_from(self.count).map_err(|_| EncodeError)?;
        let timestamp_delta = ts.checked_sub(self.first_timestamp).ok_or(EncodeError)?;
        let before = self.bytes.len();
        let written = crate::protocol::record::write_record(
            &mut self.bytes,
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers.iter().map(|(k, v)| (k.as_bytes(), *v)),
        );
        if written.is_err() {
            // Leave the records before it intact.
            self.bytes.truncate(before);
            return Err(EncodeError);
        }
        self.max_timestamp = self.max_timestamp.max(ts);
        self.count += 1;
        Ok(())
    }

    /// The records of `records`, encoded the way `produce` encodes them (through its own
    /// conversion to protocol records, not through [`push`](Self::push)).
    pub fn from_records(records: Vec<Record>) -> Result<Self, EncodeError> {
        use crate::protocol::traits::WriteType;
        let (protocol_records, first_timestamp, max_timestamp) =
            crate::client::partition::to_protocol_records(records);
        let mut bytes = Vec::new();
        for r in &protocol_records {
            r.write(&mut bytes).map_err(|_| EncodeError)?;
        }
        Ok(Self {
            bytes,
            count: protocol_records.len(),
            first_timestamp,
            max_timestamp,
        })
    }

    /// Records pushed.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded bytes of the records (before any compression).
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    /// The encoded records, back to back.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}
