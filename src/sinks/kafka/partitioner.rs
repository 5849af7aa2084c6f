//! Kafka's default partitioner for keyed records, bit for bit.
//!
//! The Java client places a record with a key on partition
//! `toPositive(murmur2(keyBytes)) % numPartitions`, where `toPositive(x) = x & 0x7fffffff`
//! (`BuiltInPartitioner.partitionForKey`). tidegate uses the same function so that a
//! reading lands on the partition any Java, librdkafka (`murmur2` partitioner) or
//! Kafka Streams producer would choose for that key: consumers that co-partition by key
//! keep working when tidegate is one of several producers of a topic.

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`, returned as the
/// signed `int` Java sees.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java works on `int` with wrapping arithmetic and `>>>` (logical shift); u32 with
    // wrapping_mul and `>>` is the same bit pattern. Java's `int length` is the byte count
    // truncated to 32 bits, which no key tidegate sends ever reaches (topics are < 64 KiB).
    let mut h: u32 = SEED ^ data.len() as u32;

    let mut blocks = data.chunks_exact(4);
    for block in blocks.by_ref() {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's Java producer chooses for a record with key `key` on a topic
/// with `partitions` partitions. `partitions` must be at least 1; 0 is treated as 1 so
/// that a bogus metadata answer can never cause a division by zero.
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32 as usize;
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's own `UtilsTest.testMurmur2` and librdkafka's `rdmurmur2.c`
    /// unit test (which checks its output against the Java client).
    const KNOWN: &[(&[u8], i32)] = &[
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
        (b"", 275_646_681),
        (b"kafka", 0xd067_cf64_u32 as i32),
        (b"giberish123456789", 0x8f55_2b0c_u32 as i32),
        (b"1234", 0x9fc9_7b14_u32 as i32),
        (b"234", 0xe7c0_09ca_u32 as i32),
        (b"34", 0x8739_30da_u32 as i32),
        (b"4", 0x5a4b_5ca1),
        (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x7842_4f1c),
    ];

    #[test]
    fn murmur2_matches_kafkas_utils_murmur2_for_known_keys() {
        for (key, expected) in KNOWN {
            assert_eq!(
                murmur2(key),
                *expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn every_tail_length_is_hashed_like_java() {
        // "1234" (no tail), "234" (tail 3), "34" (tail 2), "4" (tail 1), "" (no data)
        // are all in KNOWN; this checks a multi-block key with each tail length too.
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536); // 24 = 6 blocks
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829); // 26 = tail 2
        assert_eq!(murmur2(b"giberish123456789"), 0x8f55_2b0c_u32 as i32); // 17 = tail 1
        assert_eq!(murmur2(b"foobar"), -790_332_482); // 6 = tail 2
    }

    /// A key and, for some partition counts, the partition Java chooses.
    type PartitionCase = (&'static [u8], &'static [(usize, usize)]);

    #[test]
    fn partitions_match_javas_to_positive_modulo() {
        // Expected values are `(hash & 0x7fffffff) % n` computed outside Rust from the
        // hashes Kafka's tests publish.
        let cases: &[PartitionCase] = &[
            (b"21", &[(1, 0), (2, 0), (3, 0), (4, 0), (12, 0), (50, 40)]),
            (b"foobar", &[(3, 0), (4, 2), (12, 6), (50, 16)]),
            (
                b"a-little-bit-long-string",
                &[(3, 2), (6, 2), (12, 8), (50, 12)],
            ),
            (
                b"a-little-bit-longer-string",
                &[(2, 1), (3, 2), (4, 3), (50, 19)],
            ),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                &[(3, 2), (4, 1), (6, 5), (50, 27)],
            ),
            (b"abc", &[(3, 0), (4, 3), (12, 3), (50, 7)]),
            (b"", &[(2, 1), (3, 0), (12, 9), (50, 31)]),
            (b"kafka", &[(3, 1), (6, 4), (50, 30)]),
        ];
        for (key, expectations) in cases {
            for &(n, expected) in *expectations {
                assert_eq!(
                    partition_for_key(key, n),
                    expected,
                    "key {:?} over {n} partitions",
                    String::from_utf8_lossy(key)
                );
            }
        }
    }

    #[test]
    fn a_zero_partition_count_does_not_divide_by_zero() {
        assert_eq!(partition_for_key(b"anything", 0), 0);
    }
}
