//! Kafka's default partitioner: `toPositive(murmur2(key)) % partitions`.
//!
//! This is the function the Java client's `BuiltInPartitioner.partitionForKey` uses (and
//! librdkafka's `murmur2_random`). Statehouse keys every record of an entity by the entity id, so a
//! Kafka producer in any language that keys by the entity id lands on the same partition.

/// Kafka's murmur2 hash (the 32-bit MurmurHash2 variant of `org.apache.kafka.common.utils.Utils`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions` partitions, as Kafka's default partitioner computes it.
///
/// # Panics
/// If `partitions` is 0 (a topic always has at least one partition; callers validate config).
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hash values from Kafka's own `UtilsTest.testMurmur2`, which pins the Java implementation.
    #[test]
    fn murmur2_matches_kafka_java_client() {
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn partitions_follow_the_positive_hash() {
        // toPositive(-973932308) = 1173551340; 1173551340 % 12 = 0, % 7 = 4.
        assert_eq!(partition_for(b"21", 12), 1_173_551_340 % 12);
        assert_eq!(partition_for(b"21", 7), 1_173_551_340 % 7);
        // toPositive(479470107) = 479470107 (already positive).
        assert_eq!(partition_for(b"abc", 10), 479_470_107 % 10);
        assert_eq!(partition_for(b"anything", 1), 0);
        // Every key of a large sample lands in range, and a 12-way split uses every partition.
        let mut seen = [0u32; 12];
        for i in 0..10_000 {
            let p = partition_for(format!("cart-{i}").as_bytes(), 12);
            seen[p as usize] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 600),
            "skewed distribution: {seen:?}"
        );
    }
}
